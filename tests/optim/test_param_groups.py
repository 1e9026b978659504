"""Weight decay of the CLS and mask tokens: MAE's pretraining (main_pretrain.py, timm's old add_weight_decay) decays
everything but 1-D parameters and biases, so the tokens too (decay_tokens=True, pretraining's default)."""

from semmae.models.mae import MaskedAutoencoder
from semmae.optim import weight_decay_groups


def mae():
    return MaskedAutoencoder(
        embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2
    )


def split(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    skipped = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    return decayed, skipped


def test_decay_tokens_is_the_official_mae_rule():
    model = mae()
    decayed, skipped = split(model, weight_decay_groups(model, 0.05, decay_tokens=True))
    # timm 0.3.2 add_weight_decay, as main_pretrain.py calls it: skip frozen params, no decay if ndim <= 1 or bias
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert skipped == {n for n, p in trained.items() if p.ndim <= 1 or n.endswith(".bias")}
    assert decayed == set(trained) - skipped
    assert {"encoder.cls_token", "decoder.mask_token"} <= decayed
    assert "encoder.pos_embed" not in decayed | skipped  # frozen sin-cos, as in MAE


def test_without_decay_tokens_the_models_no_weight_decay_list_is_skipped():
    model = mae()
    official, _ = split(model, weight_decay_groups(model, 0.05, decay_tokens=True))
    decayed, skipped = split(model, weight_decay_groups(model, 0.05, decay_tokens=False))
    assert official - decayed == {"encoder.cls_token", "decoder.mask_token"}
    assert {"encoder.cls_token", "decoder.mask_token"} <= skipped
