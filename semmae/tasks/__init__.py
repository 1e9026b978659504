"""LightningModules that wire a model, a masking strategy, an optimiser and metrics. The maths lives elsewhere."""
