"""Pretraining follows MAE's recipe where this project used to differ: the CLS and mask tokens get weight decay
(model.optim.decay_tokens=true, as main_pretrain.py); false keeps them out of it."""

import lightning as L
import pytest

from semmae.cli.pretrain import run
from tests.tasks.test_pretrain import TINY


class TokenDecay(L.Callback):
    seen: dict = {}

    def on_train_start(self, trainer, pl_module):
        groups = trainer.optimizers[0].param_groups
        for name in ("encoder.cls_token", "decoder.mask_token", "encoder.blocks.0.norm1.weight"):
            p = pl_module.mae.get_parameter(name)
            TokenDecay.seen[name] = next(g["weight_decay"] for g in groups if any(q is p for q in g["params"]))


@pytest.mark.parametrize("override,token_decay", [([], 0.05), (["model.optim.decay_tokens=false"], 0.0)])
def test_token_weight_decay(compose_cfg, fmnist_root, override, token_decay):
    TokenDecay.seen = {}
    run(
        compose_cfg(
            "pretrain",
            [
                "debug=fast_dev_run",
                f"dataset.root={fmnist_root}",
                *TINY,
                *override,
                f"+callbacks.decay._target_={__name__}.TokenDecay",
            ],
        )
    )
    assert TokenDecay.seen == {
        "encoder.cls_token": token_decay,
        "decoder.mask_token": token_decay,
        "encoder.blocks.0.norm1.weight": 0.0,
    }
