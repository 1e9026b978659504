"""A recipe's total batch splits into per-device batch x devices x nodes x accumulation, exactly."""

import pytest

from semmae.errors import ConfigError
from semmae.optim.batching import split_batch


@pytest.mark.parametrize(
    "total,devices,nodes,cap,expected",
    [
        (4096, 8, 1, 256, (256, 2)),
        (4096, 8, 4, 256, (128, 1)),
        (16384, 8, 1, 512, (512, 4)),
        (1024, 8, 1, 128, (128, 1)),
        (1024, 1, 1, 128, (128, 8)),
        (1024, 2, 1, 96, (64, 8)),
    ],
)
def test_total_batch_splits_over_devices(total, devices, nodes, cap, expected):
    per_device, accum = split_batch(total, devices, nodes, cap)
    assert (per_device, accum) == expected and per_device * accum * devices * nodes == total


def test_a_total_batch_that_does_not_split_is_refused():
    with pytest.raises(ConfigError, match="3 devices"):
        split_batch(1024, 3, 1, 128)
