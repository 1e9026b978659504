"""LARS takes exactly the step its formula gives (MAE's linear-probe optimiser)."""

import math

import pytest
import torch

from semmae.optim.lars import LARS


def test_first_and_second_step_match_the_formula_by_hand():
    w = torch.nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    lr, wd, mom, eta = 0.5, 0.1, 0.9, 0.001
    opt = LARS([w, b], lr=lr, weight_decay=wd, momentum=mom, trust_coefficient=eta)
    gw, gb = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([0.5, -0.5])

    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    # step 1, by hand: u = g + wd w = [[1.3, 0], [0, 0.4]], ||u|| = sqrt(1.85); ratio = 0.001 * 5 / sqrt(1.85)
    ratio1 = eta * 5.0 / math.sqrt(1.85)
    buf_w = torch.tensor([[1.3, 0.0], [0.0, 0.4]]) * ratio1
    expected_w = torch.tensor([[3.0, 0.0], [0.0, 4.0]]) - lr * buf_w
    expected_b = torch.tensor([1.0, 2.0]) - lr * gb  # 1-D: plain SGD, no weight decay, no trust ratio
    assert torch.allclose(w.detach(), expected_w, atol=1e-7)
    assert torch.allclose(b.detach(), expected_b, atol=1e-7)

    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    # step 2: u from the new weights, momentum buffer = 0.9 * previous + ratio * u
    u2 = gw + wd * expected_w
    ratio2 = eta * expected_w.norm() / u2.norm()
    buf_w = mom * buf_w + ratio2 * u2
    buf_b = mom * gb + gb
    assert torch.allclose(w.detach(), expected_w - lr * buf_w, atol=1e-7)
    assert torch.allclose(b.detach(), expected_b - lr * buf_b, atol=1e-7)


def test_zero_weights_take_the_plain_update():
    w = torch.nn.Parameter(torch.zeros(3, 2))
    opt = LARS([w], lr=0.1, weight_decay=0.0, momentum=0.0)
    w.grad = torch.ones(3, 2)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((3, 2), -0.1))


def test_without_weight_decay_the_step_size_is_relative_to_the_weight_norm():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(10, 16))
    before = w.detach().clone()
    opt = LARS([w], lr=2.0, weight_decay=0.0, momentum=0.9, trust_coefficient=0.001)
    w.grad = torch.randn(10, 16) * 123.0  # the gradient's scale does not matter, only its direction
    opt.step()
    assert (w.detach() - before).norm() == pytest.approx(2.0 * 0.001 * before.norm().item(), rel=1e-5)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="momentum"):
        LARS([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=1.5)
