"""Every masking.segmenter on every dataset family, end to end through semmae-pretrain on fixtures in the real
on-disk formats: it trains, or it says in one line why that data cannot give what the segmenter reads (the
ImageFolder path used to end in an AttributeError)."""

import json

import pytest

from tests.conftest import one_error_line, run_entry
from tests.data.test_cifar import write_cifar
from tests.data.test_imagefolder import write_tree

TINY = [
    "logger=none",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "backbone.embed_dim=32",
    "backbone.depth=2",
    "backbone.num_heads=2",
    "backbone.decoder_embed_dim=16",
    "backbone.decoder_depth=1",
    "backbone.decoder_num_heads=2",
    "dataset.batch_size=8",
    "dataset.eval_batch_size=8",
    "dataset.num_workers=0",
    "callbacks.reconstruction.num_images=2",
    "masking=semantic",
]


@pytest.fixture(scope="module")
def roots(tmp_path_factory, fmnist_root):
    tmp = tmp_path_factory.mktemp("families")
    write_cifar(tmp / "cifar", 10)
    write_tree(tmp / "folder", per_class=8)
    return {
        "fashion_mnist": [f"dataset.root={fmnist_root}", "dataset.train_subset=64", "dataset.val_subset=32"],
        "cifar10": ["dataset=cifar10", f"dataset.root={tmp / 'cifar'}", "backbone.img_size=32"],
        "imagenet": ["dataset=imagenet", f"dataset.root={tmp / 'folder'}", "backbone.img_size=32"],
    }


@pytest.mark.parametrize("family", ["fashion_mnist", "cifar10", "imagenet"])
@pytest.mark.parametrize("segmenter", ["color_kmeans", "slic"])
def test_each_computed_segmenter_trains_on_each_family(roots, tmp_path, family, segmenter):
    code, err = run_entry(
        "pretrain", [*TINY, *roots[family], f"masking.segmenter={segmenter}", f"hydra.run.dir={tmp_path / 'run'}"]
    )
    assert code == 0, err[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["checkpoint"] and results["global_step"] == 2


def test_given_segments_train_where_the_data_has_them(roots, tmp_path):
    code, err = run_entry(
        "pretrain",
        [
            *TINY,
            *roots["fashion_mnist"],
            "masking.segmenter=given",
            "dataset.segments=foreground",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
    )
    assert code == 0, err[-2000:]


@pytest.mark.parametrize(
    "family,needle",
    [
        ("fashion_mnist", "dataset.segments=foreground"),
        ("cifar10", "reads batch['segments']"),
        ("imagenet", "an ImageFolder has none: use masking.segmenter=slic or color_kmeans"),
    ],
)
def test_given_segments_elsewhere_are_one_line(roots, tmp_path, family, needle):
    code, err = run_entry(
        "pretrain", [*TINY, *roots[family], "masking.segmenter=given", f"hydra.run.dir={tmp_path / 'run'}"]
    )
    assert code == 2 and needle in one_error_line(err, "semmae-pretrain")


def test_slic_with_device_decoding_is_one_line(roots, tmp_path):
    code, err = run_entry(
        "pretrain",
        [
            *TINY,
            *roots["imagenet"],
            "masking.segmenter=slic",
            "dataset.decode=device",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
    )
    assert code == 2 and "use dataset.decode=workers" in one_error_line(err, "semmae-pretrain")
