"""Data problems through the CLI: device-side JPEG decoding with DataLoader workers trains (it used to hang), and
bad data (a corrupt image, an empty class folder, a broken Fashion-MNIST file, a missing root) is one line on
stderr naming the file or folder, exit code 2."""

import pytest

from tests.conftest import write_fashion_mnist
from tests.data.test_imagefolder import truncate, write_tree
from tests.test_cli import assert_one_line_error, run_cli

TINY = ["backbone.img_size=32", "backbone.patch_size=4", "debug=fast_dev_run", "logger=none"]


def imagefolder_args(root, decode, workers=2):
    return [
        "dataset=imagenet",
        f"dataset.root={root}",
        f"dataset.decode={decode}",
        f"dataset.num_workers={workers}",
        "dataset.batch_size=4",
        "dataset.num_classes=2",
        "dataset.loader_timeout_s=60",
        *TINY,
    ]


@pytest.mark.timeout(180)  # the regression was a hang: fail instead of waiting forever
def test_device_decode_with_workers_trains(tmp_path):
    write_tree(tmp_path / "data", per_class=2)
    proc = run_cli(imagefolder_args(tmp_path / "data", "device"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Bad file descriptor" not in proc.stderr


def assert_error_line_last(proc, *needles):
    """An error found once training has started follows Lightning's start-up lines: it must still be the only error
    line, the last one, and no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], proc.stderr
    assert lines[-1].startswith("semmae-pretrain: error: ")
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def corrupt_jpeg(root):
    write_tree(root, per_class=2)  # 4 training images: fast_dev_run's one batch of 4 reads them all
    return truncate(root / "train" / "dog" / "1.JPEG")


def not_an_image(root):
    write_tree(root, per_class=2)
    bad = root / "train" / "cat" / "x.jpg"
    bad.write_text("hello\n")
    (root / "train" / "cat" / "0.JPEG").unlink()
    return bad


def empty_class(root):
    write_tree(root, per_class=2)
    (root / "val" / "bird").mkdir()
    return root / "val" / "bird"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("make,decode", [(corrupt_jpeg, "workers"), (corrupt_jpeg, "device"), (not_an_image, "device")])
def test_corrupt_image_is_one_error_line_naming_it(tmp_path, make, decode):
    bad = make(tmp_path / "data")
    proc = run_cli(imagefolder_args(tmp_path / "data", decode), cwd=tmp_path)
    assert_error_line_last(proc, str(bad), "skip_corrupt")


@pytest.mark.timeout(180)
def test_empty_class_folder_is_one_line_naming_it(tmp_path):
    bad = empty_class(tmp_path / "data")
    proc = run_cli(imagefolder_args(tmp_path / "data", "workers"), cwd=tmp_path)
    assert_one_line_error(proc, str(bad))  # found by prepare_data, before training starts


@pytest.mark.timeout(180)
def test_truncated_fashion_mnist_is_one_line_naming_it(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=32)
    bad = root / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-12])
    proc = run_cli([f"dataset.root={root}", *TINY], cwd=tmp_path)
    assert_one_line_error(proc, str(bad), "truncated")


@pytest.mark.timeout(180)
def test_missing_fashion_mnist_root_creates_nothing(tmp_path):
    root = tmp_path / "nonexistent"
    proc = run_cli([f"dataset.root={root}", *TINY], cwd=tmp_path)
    assert_one_line_error(proc, f"dataset.root={root}", str(root / "FashionMNIST" / "raw"), "dataset-fashion-mnist")
    assert not root.exists()
