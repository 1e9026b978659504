"""measure(): streaming over batches, the flat metric keys, and an end-to-end case with a known answer."""

import torch

from semmae.analysis import ArtifactSettings, measure
from semmae.analysis.metrics import METRICS
from semmae.analysis.tables import artifacts_markdown, comparison_markdown
from semmae.models.encoder import ViTEncoder


def encoder(depth: int = 3) -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=depth, num_heads=4)


def test_metrics_do_not_depend_on_how_images_are_batched():
    enc, x = encoder(), torch.randn(10, 1, 16, 16)
    whole = measure(enc, [x], keep_images=3)
    split = measure(enc, [x[:4], x[4:7], x[7:]], keep_images=3)
    assert whole.num_images == split.num_images == 10
    for a, b in zip(whole.blocks, split.blocks):
        for m in METRICS:
            assert abs(a[m] - b[m]) < 1e-5, m
    torch.testing.assert_close(whole.received, split.received)
    assert split.images.shape == (3, 1, 16, 16) and split.received.shape == (3, 3, 16) and split.cls.shape == (3, 3, 16)


def test_zero_queries_and_keys_give_even_attention_end_to_end():
    enc = encoder()
    with torch.no_grad():
        for blk in enc.blocks:
            blk.attn.qkv.weight[: 2 * 32].zero_()  # q = k = 0: every query attends uniformly
            blk.attn.qkv.bias[: 2 * 32].zero_()
    report = measure(enc, [torch.randn(4, 1, 16, 16)])
    for block in report.blocks:
        assert abs(block["sink_ratio"] - 1.0) < 1e-5
        assert block["artifact_fraction"] == 0.0
        assert abs(block["attention_entropy"] - 1.0) < 1e-6


def test_scalar_keys_are_one_based_zero_padded_and_model_level_shallow():
    report = measure(encoder(depth=6), [torch.randn(2, 1, 16, 16)], ArtifactSettings(shallow_blocks=[1, 2, 3]))
    keys = report.scalars()
    assert "attn/block_01/sink_ratio" in keys and "attn/block_06/flat_patch_share" in keys
    assert "attn/block_00/sink_ratio" not in keys and "attn/block_07/sink_ratio" not in keys
    for m in METRICS:
        expected = sum(report.blocks[i][m] for i in range(3)) / 3
        assert abs(keys[f"attn/shallow_{m}"] - expected) < 1e-9
    assert len(keys) == 6 * len(METRICS) + len(METRICS)
    d = report.to_dict()
    assert [b["block"] for b in d["blocks"]] == [1, 2, 3, 4, 5, 6] and d["shallow_blocks"] == [1, 2, 3]


def test_markdown_tables_list_every_block():
    report = measure(encoder(), [torch.randn(2, 1, 16, 16)])
    table = artifacts_markdown(report, "x")
    assert table.count("\n| ") == 1 + 3 + 1  # header, three blocks, shallow
    assert "| shallow (1) |" in table
    both = comparison_markdown({"a": report, "b": report})
    assert both.count("| a |") == 1 + len(METRICS)
