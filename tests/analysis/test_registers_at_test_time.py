"""Test-time registers on a real encoder with a planted outlier neuron: calibration finds the neuron, the outlier moves
from the patch to the register, every forward path (features, pooling, intermediates, the pretraining view) counts
the registers as prefix, the state dict is untouched and detaching restores the encoder; an encoder without outliers
gets a warning and no change."""

import pytest
import torch

from semmae.analysis import register_neurons as RN
from semmae.analysis.capture import capture
from semmae.analysis.fixes import FixSettings, apply_fixes, remove_fixes
from semmae.analysis.registers_at_test_time import RegistersAtTestTime, find_register_neurons, sign_max
from semmae.masking.random import RandomMasking
from semmae.models.heads import pool_tokens
from semmae.models.segmenter import Segmenter
from tests.analysis import planting

POSITION, NEURON = 5, 7


def planted():
    enc = planting.encoder()
    planting.plant_outlier_neuron(enc, POSITION, NEURON)
    return enc


def test_sign_max_keeps_the_largest_magnitude_with_its_sign():
    x = torch.tensor([[[1.0, -5.0], [-3.0, 2.0]]])  # [B=1, tokens 2, neurons 2]
    assert sign_max(x, dim=1).tolist() == [[-3.0, -5.0]]


def test_calibration_finds_the_planted_neuron():
    ranked, n = find_register_neurons(planted(), [planting.images(8)], RN.OutlierSettings(), top_k=3)
    assert n == 8 and (ranked[0]["block"], ranked[0]["neuron"]) == (1, NEURON)


def test_the_outlier_moves_to_the_register():
    enc, x = planted(), planting.images(6)
    before = capture(enc, x)
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    done = apply_fixes(enc, FixSettings(test_time_registers=1, register_neurons=1), [x], [0.0], [1.0])
    assert done and "1:7" in done[0]
    assert enc.num_prefix_tokens == 2 and enc.num_reg_tokens == 1
    after = capture(enc, x)
    assert after.num_prefix_tokens == 2 and after.tokens[0].shape[1] == 2 + planting.P
    norms = after.tokens[0].norm(dim=-1)
    patch_before = before.tokens[0][:, 1 + POSITION].norm(dim=-1)
    # the register (token 1) carries the planted activation; the patch is back among the others
    assert (norms[:, 1] > 0.5 * patch_before).all()
    assert not RN.outlier_mask(after.tokens[0], 2).any()
    # the state dict is the plain encoder's
    assert {k: v.shape for k, v in enc.state_dict().items()} == {k: v.shape for k, v in state.items()}
    assert all(torch.equal(v, state[k]) for k, v in enc.state_dict().items())
    remove_fixes(enc)
    assert enc.num_prefix_tokens == 1
    torch.testing.assert_close(capture(enc, x).output, before.output)


def test_every_forward_path_counts_the_registers_as_prefix():
    enc, x = planted(), planting.images(4)
    RegistersAtTestTime(2, {0: [NEURON]}).attach(enc)
    with torch.no_grad():
        out = enc.forward_features(x)
        assert out.shape == (4, 3 + planting.P, planting.WIDTH)
        torch.testing.assert_close(pool_tokens(out, "avg", enc.num_prefix_tokens), out[:, 3:].mean(dim=1))
        ids = RandomMasking(0.75)(x, (planting.GRID, planting.GRID), torch.Generator().manual_seed(0)).ids_keep
        visible = enc.forward_visible(x, ids)
        assert visible.shape == (4, 3 + 4, planting.WIDTH)
        cap = capture(enc, x, ids_keep=ids)
        assert cap.attn[0].shape[-1] == 3 + 4 and cap.num_prefix_tokens == 3
        seg = Segmenter(enc, num_classes=3, out_blocks=[1, 2, 2, 3], channels=8, aux_channels=None)
        maps = seg.block_features(torch.randn(2, 1, 24, 24))  # another image size: the position embedding resampled
        assert maps[0].shape == (2, planting.WIDTH, 6, 6)


def test_nothing_to_move_is_a_warning_and_no_change():
    enc, x = planting.encoder(seed=3), planting.images(6)
    with pytest.warns(UserWarning, match="no high-norm outliers"):
        done = apply_fixes(enc, FixSettings(test_time_registers=1), [x], [0.0], [1.0])
    assert done == [] and enc.num_prefix_tokens == 1 and getattr(enc, "test_time_registers", None) is None


def test_settings_are_checked():
    for bad in ({"test_time_registers": -1}, {"test_time_registers": True}, {"soap": "yes"}, {"images": 0}):
        with pytest.raises(Exception, match="encoder"):
            FixSettings(**bad)
    with pytest.raises(Exception, match="encoder.fix"):
        FixSettings.from_config({"test_time_registers": 1, "fix": {"imges": 3}})
    assert not FixSettings.from_config({"test_time_registers": 0, "soap": None}).requested
