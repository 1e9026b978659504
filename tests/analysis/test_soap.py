"""SOAP on a real encoder with a direction written only by the position embedding: calibration finds it, the fix
projects it out of the patch tokens (not the prefix) at the output or after a block, the state dict is untouched;
an encoder without an invariant component gets a warning and no change."""

import pytest
import torch

from semmae.analysis.fixes import FixSettings, apply_fixes, remove_fixes
from tests.analysis import planting
from tests.analysis.test_invariance import MEAN, STD, real_images


def planted():
    enc = planting.encoder()
    planting.plant_positional_direction(enc)
    return enc


def direction_share(tokens: torch.Tensor) -> float:
    """The share of the patch tokens' centred energy along dimension 0 (the planted direction)."""
    t = tokens[:, 1:].flatten(0, 1)
    t = t - t.mean(dim=0)
    return float(t[:, 0].square().sum() / t.square().sum())


def test_soap_projects_the_positional_direction_out_of_the_patches():
    enc = planted()
    x = real_images(128)
    with torch.no_grad():
        before = enc.forward_features(x)
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    done = apply_fixes(enc, FixSettings(soap=True, soap_mu=1), list(x.split(64)), MEAN, STD)
    assert done and "components [1]" in done[0]
    with torch.no_grad():
        after = enc.forward_features(x)
    assert direction_share(before) > 0.9 > 0.01 > direction_share(after)
    torch.testing.assert_close(after[:, 0], before[:, 0])  # CLS untouched
    assert all(torch.equal(v, state[k]) for k, v in enc.state_dict().items())
    remove_fixes(enc)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), before)


def test_soap_after_a_block_changes_what_follows():
    enc = planted()
    x = real_images(64)
    with torch.no_grad():
        before = enc.forward_features(x)
    apply_fixes(enc, FixSettings(soap=True, soap_mu=1, soap_block=2), [x], MEAN, STD)
    assert enc.soap.block == 2
    with torch.no_grad():
        after = enc.forward_features(x)
    assert not torch.allclose(after, before)
    remove_fixes(enc)
    with pytest.raises(Exception, match="encoder.fix.soap_block=9"):
        apply_fixes(enc, FixSettings(soap=True, soap_block=9), [x], MEAN, STD)


def test_nothing_invariant_is_a_warning_and_no_change():
    enc = planting.encoder(seed=3)
    with torch.no_grad():
        enc.pos_embed.zero_()
    with pytest.warns(UserWarning, match="nothing to project out"):
        done = apply_fixes(enc, FixSettings(soap=True), [real_images(128)], MEAN, STD)
    assert done == [] and getattr(enc, "soap", None) is None
