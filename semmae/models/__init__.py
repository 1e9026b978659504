"""Models: the ViT encoder that runs on visible tokens, the MAE decoder and loss, heads, checkpoint import/export."""
