"""compile=true must change the speed of the pretraining step, not its numbers: the compiled training forward
(encoder on the visible tokens, decoder, loss) and the compiled probe encoder give the eager loss, gradients and
features to float tolerance on CPU."""

from __future__ import annotations

import pytest
import torch

from semmae.errors import ConfigError
from semmae.masking.random import RandomMasking
from semmae.models.mae import MaskedAutoencoder
from semmae.tasks.pretrain import PretrainTask


def tiny_task(compile: bool | str) -> PretrainTask:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(
        img_size=16,
        patch_size=4,
        in_chans=1,
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    return PretrainTask(mae, RandomMasking(0.75), num_classes=10, batch_size=8, compile=compile)


def test_auto_compiles_on_gpus_only():
    task = tiny_task("auto")
    task.configure_model()  # on the CPU
    assert task.train_forward == task.mae.forward
    with pytest.raises(ConfigError, match="model.compile"):
        tiny_task("yes")


@pytest.mark.slow  # inductor compiles C++ kernels: ~30-60 s on 2 cores
def test_compiled_step_equals_eager_step():
    eager, compiled = tiny_task(False), tiny_task(True)
    compiled.configure_model()
    assert compiled.train_forward is not compiled.mae.forward  # the compiled path is the one in use
    images = torch.randn(8, 1, 16, 16)
    mask = eager.masking(images, eager.mae.grid_size, torch.Generator().manual_seed(3))

    losses, grads = [], []
    for task in (eager, compiled):
        loss, pred = task.train_forward(images, mask)
        loss.backward()
        losses.append((loss.detach(), pred.detach()))
        grads.append({n: p.grad.clone() for n, p in task.mae.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1][0], losses[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses[1][1], losses[0][1], rtol=1e-4, atol=1e-4)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-3, atol=1e-5, msg=name)

    eager.probe_cfg["bf16"] = compiled.probe_cfg["bf16"] = False
    torch.testing.assert_close(compiled.probe_features(images), eager.probe_features(images), rtol=1e-4, atol=1e-5)
