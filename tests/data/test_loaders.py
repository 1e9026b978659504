"""split_loader: a DataLoader worker that hangs or dies ends the iteration with an error, never a hang, and a
DataError raised in a worker reaches the main process as its own one-line message."""

import os
import time

import pytest
from torch.utils.data import Dataset

from semmae.cli import is_user_error, one_line
from semmae.data.loaders import split_loader
from semmae.errors import DataError


class Misbehaving(Dataset):
    def __init__(self, how):
        self.how = how

    def __len__(self):
        return 4

    def __getitem__(self, i):
        if self.how == "hangs":
            time.sleep(120)
        elif self.how == "dies":
            os._exit(3)
        raise DataError(f"cannot read image /data/{i}.jpg: broken")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "how,error,match",
    [
        ("hangs", DataError, "a DataLoader worker sent no batch for 2 s"),  # one line for the user, not torch's
        ("dies", RuntimeError, "exited unexpectedly"),
    ],
)
def test_hung_or_dead_worker_is_an_error(how, error, match):
    loader = split_loader(Misbehaving(how), 2, False, num_workers=1, pin=False, timeout_s=2)
    with pytest.raises(error, match=match) as err:
        next(iter(loader))
    assert how != "hangs" or is_user_error(err.value)


@pytest.mark.timeout(60)
def test_worker_data_error_arrives_as_one_line():
    loader = split_loader(Misbehaving("raises"), 2, False, num_workers=1, pin=False, timeout_s=30)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    assert str(info.value) == "cannot read image /data/0.jpg: broken"
    assert is_user_error(info.value) and one_line(info.value) == "cannot read image /data/0.jpg: broken"


def test_no_workers_no_timeout():
    assert split_loader(Misbehaving("raises"), 2, False, num_workers=0, pin=False, timeout_s=5).timeout == 0
