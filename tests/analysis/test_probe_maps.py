"""The attentive probe's attention figure: the mean map and the most peaked queries, saved as a PNG."""

import torch

from semmae.analysis.probe_maps import probe_attention_figure, shown_queries
from semmae.utils.plotting import save_figure


def test_most_peaked_queries_first():
    attention = torch.full((2, 3, 4), 0.25)
    attention[:, 2] = torch.tensor([0.7, 0.1, 0.1, 0.1])
    attention[:, 0] = torch.tensor([0.4, 0.2, 0.2, 0.2])
    assert shown_queries(attention, 2) == [2, 0]


def test_figure_is_written(tmp_path):
    attention = torch.rand(3, 5, 16).softmax(-1)
    fig = probe_attention_figure(torch.rand(3, 1, 16, 16), attention, (4, 4), "ep", queries=3)
    assert len(fig.axes) == 3 * 4 + 1  # 3 images x (mean + 3 queries), and the colour bar
    path = save_figure(fig, tmp_path / "ep_attention.png")
    assert path.stat().st_size > 1000
