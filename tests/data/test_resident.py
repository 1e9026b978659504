import torch

from semmae.data import resident
from semmae.data.resident import ResidentBatches


def _make(n=100, bs=8, train=True):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ResidentBatches(images, torch.arange(n), bs, train=train, seed=3)


def test_train_epochs_differ_and_drop_last():
    ds = _make()
    e0 = torch.cat([b["label"] for b in ds])
    assert len(e0) == 96 and len(set(e0.tolist())) == 96 and len(ds) == 12
    ds.epoch_fn = lambda: 1
    e1 = torch.cat([b["label"] for b in ds])
    assert not torch.equal(e0, e1)
    ds.epoch_fn = lambda: 0
    assert torch.equal(torch.cat([b["label"] for b in ds]), e0)  # same epoch, same order (resume)


def test_ranks_get_disjoint_equal_shares(monkeypatch):
    seen = []
    for rank in range(3):
        monkeypatch.setattr(resident, "dist_rank_world", lambda r=rank: (r, 3))
        ds = _make(n=100, bs=8)
        labels = torch.cat([b["label"] for b in ds])
        assert len(labels) == 32 and len(ds) == 4
        seen.append(set(labels.tolist()))
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


def test_validation_covers_everything_once_with_padding(monkeypatch):
    counts, valid_total, lengths = torch.zeros(10, dtype=torch.long), 0, []
    for rank in range(3):
        monkeypatch.setattr(resident, "dist_rank_world", lambda r=rank: (r, 3))
        ds = _make(n=10, bs=2, train=False)
        batches = list(ds)
        lengths.append(len(batches))
        assert len(batches) == len(ds)
        for b in batches:
            counts.index_add_(0, b["label"][b["valid"]], torch.ones(int(b["valid"].sum()), dtype=torch.long))
            valid_total += int(b["valid"].sum())
    assert len(set(lengths)) == 1  # every rank runs the same number of steps
    assert valid_total == 10 and torch.all(counts == 1)
