import pytest

from semmae.optim import warmup_poly


def test_warmup_then_poly_values():
    assert warmup_poly(0, 10, 110) == 0.0
    assert warmup_poly(5, 10, 110) == pytest.approx(0.5)
    assert warmup_poly(10, 10, 110) == pytest.approx(1.0)
    assert warmup_poly(60, 10, 110) == pytest.approx(0.5)  # power 1: linear decay
    assert warmup_poly(60, 10, 110, power=2.0) == pytest.approx(0.25)
    assert warmup_poly(110, 10, 110) == pytest.approx(0.0)
    assert warmup_poly(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_poly(500, 10, 110) == pytest.approx(0.0)  # clamps past the end
