"""The probe heads: EP against a softmax pooling computed by hand and against EP's own project-then-pool form, the
cross-attention probe against an explicit computation, the bad settings, and every head learning a separable set."""

import math

import pytest
import torch
import torch.nn.functional as F

from semmae.errors import ConfigError
from semmae.models.heads import ProbeHead
from semmae.models.probe_heads import (
    AttentiveProbe,
    CrossAttentionPooling,
    EfficientPooling,
    build_probe_head,
)


def test_ep_with_one_query_and_identity_values_is_a_softmax_pooling_by_hand():
    pool = EfficientPooling(embed_dim=2, num_queries=1)
    with torch.no_grad():
        pool.queries.copy_(torch.tensor([[1.0, 0.0]]))
        pool.value.weight.copy_(torch.eye(2))
    tokens = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [-2.0, 3.0]]])  # q . x_j = 2, 0, -2
    s = 1 / math.sqrt(2)  # 1 / sqrt(D)
    w = [math.exp(2 * s), math.exp(0.0), math.exp(-2 * s)]
    total = sum(w)
    expected = [(2.0 * w[0] + 0.0 * w[1] - 2.0 * w[2]) / total, (0.0 * w[0] + 1.0 * w[1] + 3.0 * w[2]) / total]
    assert torch.allclose(pool(tokens), torch.tensor([expected]), atol=1e-6)
    assert torch.allclose(pool.attention(tokens), torch.tensor([[[x / total for x in w]]]), atol=1e-6)


def test_ep_pools_then_projects_exactly_as_eps_project_then_pool():
    torch.manual_seed(0)
    b, n, d, m = 3, 7, 16, 4
    pool = EfficientPooling(d, num_queries=m)
    x = torch.randn(b, n, d)
    attn = pool.attention(x)  # [B, M, N]
    v = pool.value(x).reshape(b, n, m, d // m).permute(0, 2, 1, 3)  # EP's code: values split over the queries
    reference = (attn.unsqueeze(2) @ v).reshape(b, d)
    assert torch.allclose(pool(x), reference, atol=1e-5)
    assert torch.allclose(attn.sum(-1), torch.ones(b, m), atol=1e-6)
    # keys are the tokens themselves: no query or key projection among the parameters
    assert sorted(name for name, _ in pool.named_parameters()) == ["queries", "value.weight"]


def test_cross_attention_probe_matches_an_explicit_multi_head_attention():
    torch.manual_seed(1)
    b, n, d, h = 2, 5, 8, 2
    pool = CrossAttentionPooling(d, num_heads=h)
    x = torch.randn(b, n, d)
    q = pool.q(pool.query).reshape(1, h, d // h)  # [1, H, d/H]
    kv = pool.kv(pool.norm1(x)).reshape(b, n, 2, h, d // h)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [B, H, N, d/H]
    a = torch.einsum("qhc,bhnc->bhn", q, k).div(math.sqrt(d // h)).softmax(-1)
    attended = torch.einsum("bhn,bhnc->bhc", a, v).reshape(b, 1, d)
    out = pool.query + attended
    out = out + pool.mlp(pool.norm2(out))
    assert torch.allclose(pool(x), out[:, 0], atol=1e-5)
    assert torch.allclose(pool.attention(x), a.mean(1, keepdim=True), atol=1e-6)


@pytest.mark.parametrize(
    "name,settings,match",
    [
        ("ep", {"ep": {"num_queries": 3}}, "does not divide"),
        ("ep", {"ep": {"num_queries": 0}}, "num_queries"),
        ("mhca", {"mhca": {"num_heads": 3}}, "does not divide"),
        ("attentive", {}, "not a probe head"),
    ],
)
def test_bad_head_settings_are_config_errors(name, settings, match):
    with pytest.raises(ConfigError, match=match):
        build_probe_head(name, 16, 4, num_heads=2, **settings)


def test_head_layouts():
    assert isinstance(build_probe_head("linear", 16, 4, num_heads=2), ProbeHead)
    ep = build_probe_head("ep", 16, 4, num_heads=2, ep={"num_queries": 8})
    assert isinstance(ep, AttentiveProbe) and ep.pool.queries.shape == (8, 16)
    mhca = build_probe_head("mhca", 16, 4, num_heads=2)
    assert mhca.pool.num_heads == 2  # the encoder's, when model.mhca.num_heads is null
    assert ep(torch.randn(3, 9, 16)).shape == mhca(torch.randn(3, 9, 16)).shape == (3, 4)


def separable_tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 8, 16] noise tokens; one token at a random position carries its class's direction."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    tokens = torch.randn(n, 8, 16, generator=g)
    where = torch.randint(0, 8, (n,), generator=g)
    tokens[torch.arange(n), where, labels] += 10.0
    return tokens, labels


@pytest.mark.parametrize("name", ["linear", "ep", "mhca"])
def test_every_head_learns_a_separable_set(name):
    torch.manual_seed(0)
    head = build_probe_head(name, 16, 4, num_heads=2, ep={"num_queries": 4})
    x, y = separable_tokens(512, 0)
    xt, yt = separable_tokens(256, 1)
    inputs = (lambda t: t.mean(1)) if name == "linear" else (lambda t: t)

    def accuracy():
        head.eval()
        with torch.no_grad():
            return (head(inputs(xt)).argmax(1) == yt).float().mean().item()

    before = accuracy()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    head.train()
    for step in range(150):
        idx = torch.randint(0, 512, (64,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(head(inputs(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = accuracy()
    assert after > 0.9 and after > before + 0.4, (before, after)
