"""Semantic invariance of the principal components of the patch tokens (docs/artifacts.md#semantic-invariance), after
Hjelkrem-Tan et al., "Suppressing Non-Semantic Noise in Masked Image Modeling Representations" (SOAP, CVPR 2026)
and their public code (dsb-ifi/soap: soap/soap.py, soap/welford.py).

The covariance of the patch tokens of real images is streamed (Chan's parallel update, float64); its eigenvectors
v_d (descending variance) are the components. For each patch position j and component d, P[j, d] is the share of
real images whose centred token at j projects positively on v_d, Q[j, d] the same on synthetic images without
content (centred with the real images' mean). The score of component d is the mean over positions of

    SI(p, q) = 2 (p q + (1 - p)(1 - q)) / (||(p, 1 - p)|| + ||(q, 1 - q)||),

1 when the component answers alike with and without content at every position (positional), about 0.71 when
both are coin flips (p = q = 1/2), 0 when they disagree fully."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from semmae.errors import ConfigError


@dataclass(frozen=True)
class InvarianceSettings:
    """block: the tokens scored (None = the encoder's output after its final norm; n = block n's output, 1-based);
    threshold: a component counts as semantically invariant at s >= threshold; synthetic_images: how many
    content-free images (None = as many as real images); seed: of the synthetic images; top: scores reported;
    min_variance: components with less variance than this fraction of the mean component variance are not scored
    (the numerical null space, e.g. the direction a LayerNorm removes, whose signs are rounding noise)."""

    block: int | None = None
    threshold: float = 0.75
    synthetic_images: int | None = None
    seed: int = 0
    top: int = 5
    min_variance: float = 0.01

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"analysis.invariance.threshold={self.threshold}: must be in (0, 1] (default 0.75)")
        if self.synthetic_images is not None and self.synthetic_images < 1:
            raise ConfigError(f"analysis.invariance.synthetic_images={self.synthetic_images}: must be >= 1 or null")
        if self.top < 1:
            raise ConfigError(f"analysis.invariance.top={self.top}: must be >= 1")
        if not 0 <= self.min_variance < 1:
            raise ConfigError(f"analysis.invariance.min_variance={self.min_variance}: must be in [0, 1) (default 0.01)")


def si_score(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Elementwise SI(p, q) of two shares in [0, 1]."""
    p, q = p.double(), q.double()
    num = 2 * (p * q + (1 - p) * (1 - q))
    den = torch.stack([p, 1 - p]).norm(dim=0) + torch.stack([q, 1 - q]).norm(dim=0)
    return num / den


def component_scores(p_real: torch.Tensor, q_synth: torch.Tensor) -> torch.Tensor:
    """Positive shares [P, D] on real and synthetic images -> [D]: each component's SI averaged over positions."""
    return si_score(p_real, q_synth).mean(dim=0)


class Covariance:
    """Streamed mean and covariance of row vectors (float64; Chan et al.'s pairwise update)."""

    def __init__(self, dim: int):
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double().cpu()
        m = x.shape[0]
        if m == 0:
            return
        mean_b = x.mean(dim=0)
        xc = x - mean_b
        delta = mean_b - self.mean
        n = self.n + m
        self.m2 += xc.T @ xc + torch.outer(delta, delta) * (self.n * m / n)
        self.mean += delta * (m / n)
        self.n = n

    @property
    def cov(self) -> torch.Tensor:
        if self.n < 2:
            raise ConfigError("the covariance of the patch tokens needs at least two tokens")
        return self.m2 / (self.n - 1)

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(variances [D] descending, eigenvectors [D, D] as columns in that order)."""
        values, vectors = torch.linalg.eigh(self.cov)
        return values.flip(0).clamp_min(0), vectors.flip(1)


class PositiveShares:
    """Per patch position and component, the share of images whose centred token projects positively."""

    def __init__(self, mean: torch.Tensor, vectors: torch.Tensor, num_patches: int):
        self.mean, self.vectors = mean.float(), vectors.float()
        self.counts = torch.zeros(num_patches, vectors.shape[1], dtype=torch.float64)
        self.n = 0

    def update(self, patches: torch.Tensor) -> None:
        """Patch tokens [B, P, D] (prefix excluded)."""
        proj = (patches.float().cpu() - self.mean) @ self.vectors
        self.counts += (proj > 0).double().sum(dim=0)
        self.n += patches.shape[0]

    @property
    def shares(self) -> torch.Tensor:
        return self.counts / max(1, self.n)


@dataclass
class Invariance:
    """scores [D] in descending-variance order; variance [D] the components' share of the total variance; scored [D]
    the components with enough variance to be scored (the others are left out of top and count)."""

    scores: torch.Tensor
    variance: torch.Tensor
    scored: torch.Tensor
    threshold: float
    where: str  # "output" or "block_NN"
    num_real: int
    num_synthetic: int
    vectors: torch.Tensor | None = field(default=None, repr=False)  # [D, D], columns by descending variance
    mean: torch.Tensor | None = field(default=None, repr=False)

    def count(self) -> int:
        """Scored components with s >= threshold."""
        return int(((self.scores >= self.threshold) & self.scored).sum())

    def top(self, k: int = 5) -> list[dict]:
        """The k highest scores: component rank (1 = most variance), score, share of the variance."""
        masked = torch.where(self.scored, self.scores, torch.full_like(self.scores, -1.0))
        order = masked.argsort(descending=True)[: min(k, int(self.scored.sum()))]
        return [
            {"component": int(i) + 1, "score": float(self.scores[i]), "variance": float(self.variance[i])}
            for i in order
        ]

    def to_dict(self, k: int = 5) -> dict:
        return {
            "where": self.where,
            "threshold": self.threshold,
            "count": self.count(),
            "top": self.top(k),
            "scored": int(self.scored.sum()),
            "num_real": self.num_real,
            "num_synthetic": self.num_synthetic,
        }


def invariance(
    real: PositiveShares,
    synthetic: PositiveShares,
    variances: torch.Tensor,
    vectors: torch.Tensor,
    mean: torch.Tensor,
    settings: InvarianceSettings,
    where: str,
) -> Invariance:
    """The scores of every component from the positive shares on real and synthetic images."""
    total = variances.sum().clamp_min(1e-300)
    scored = variances >= settings.min_variance * variances.mean()
    return Invariance(
        scores=component_scores(real.shares, synthetic.shares).float(),
        variance=(variances / total).float(),
        scored=scored,
        threshold=settings.threshold,
        where=where,
        num_real=real.n,
        num_synthetic=synthetic.n,
        vectors=vectors,
        mean=mean,
    )


def soap_weights(
    scores: torch.Tensor, mu: float | None = None, tau: float = 0.05, threshold: float = 0.75
) -> torch.Tensor:
    """SOAP's soft rank cutoff: with the scores sorted from highest, the component of rank r (from 0) gets
    w = s * sigmoid((mu - 0.5 - r) / tau), so about the mu highest-scoring components are projected out, each by
    its score; mu None = the number of scores >= threshold. Returned in the scores' own order."""
    if mu is None:
        mu = float((scores >= threshold).sum())
    if mu <= 0:
        return torch.zeros_like(scores)
    sorted_scores, order = scores.sort(descending=True)
    r = torch.arange(len(scores), dtype=scores.dtype)
    w = torch.zeros_like(scores)
    w[order] = sorted_scores * torch.sigmoid((mu - 0.5 - r) / tau)
    return w


def projector(vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """I - V diag(w) V^T [D, D] for components V [D, D] (columns) and weights w [D]."""
    eye = torch.eye(vectors.shape[0], dtype=vectors.dtype)
    return eye - vectors @ torch.diag(weights.to(vectors.dtype)) @ vectors.T


def patch_tokens(encoder: nn.Module, images: torch.Tensor, block: int | None) -> torch.Tensor:
    """The patch tokens [B, P, D] an invariance score reads: the encoder's output after its final norm (block None),
    or block n's output (1-based); fused attention, eval mode, no gradients."""
    npt = int(getattr(encoder, "num_prefix_tokens", 1))
    training = [(m, m.training) for m in encoder.modules()]
    out: list[torch.Tensor] = []
    handle = None
    if block is not None:
        handle = encoder.blocks[block - 1].register_forward_hook(lambda _m, _i, o: out.append(o))
    try:
        encoder.eval()
        with torch.no_grad():
            final = encoder.forward_features(images)
    finally:
        if handle is not None:
            handle.remove()
        for m, flag in training:
            m.training = flag
    return (out[0] if block is not None else final)[:, npt:].float()


class InvarianceAccumulator:
    """The semantic-invariance score over a stream of real batches: the covariance from the tokens the main pass
    captures (update), then the positive shares on the real tokens (kept from the first pass while they fit in
    `keep_mb`, else recomputed from `real_batches`) and on the synthetic images (finish)."""

    def __init__(self, settings: InvarianceSettings, depth: int, keep_mb: float = 512.0):
        self.settings = settings
        if settings.block is not None and not 1 <= settings.block <= depth:
            raise ConfigError(f"analysis.invariance.block={settings.block}: must be between 1 and the depth ({depth})")
        self.cov: Covariance | None = None
        self.kept: list[torch.Tensor] | None = []
        self.keep_bytes = keep_mb * 2**20
        self.num_real = 0

    @property
    def where(self) -> str:
        return "output" if self.settings.block is None else f"block_{self.settings.block:02d}"

    def select(self, output: torch.Tensor, tokens: list[torch.Tensor], num_prefix_tokens: int) -> torch.Tensor:
        """The scored patch tokens [B, P, D] of one capture (its final output, or a block's)."""
        x = output if self.settings.block is None else tokens[self.settings.block - 1]
        return x[:, num_prefix_tokens:].float()

    def update(self, patches: torch.Tensor) -> None:
        if self.cov is None:
            self.cov = Covariance(patches.shape[-1])
        self.cov.update(patches)
        self.num_real += patches.shape[0]
        if self.kept is not None:
            self.kept.append(patches.detach().cpu())
            if sum(t.numel() * t.element_size() for t in self.kept) > self.keep_bytes:
                self.kept = None

    def finish(self, encoder: nn.Module, real_batches, synthetic_batches) -> Invariance:
        """real_batches: a callable giving the real image batches again (used only when the tokens were not kept);
        synthetic_batches: an iterable of content-free image batches."""
        if self.cov is None:
            raise ConfigError("no images were analysed for the semantic-invariance score")
        variances, vectors = self.cov.components()
        mean = self.cov.mean
        real = synthetic = None
        device = next(encoder.parameters()).device
        if self.kept:
            num_patches = self.kept[0].shape[1]
            real = PositiveShares(mean, vectors, num_patches)
            for t in self.kept:
                real.update(t)
        else:
            for images in real_batches():
                t = patch_tokens(encoder, images.to(device), self.settings.block)
                real = real or PositiveShares(mean, vectors, t.shape[1])
                real.update(t)
        for images in synthetic_batches:
            t = patch_tokens(encoder, images.to(device), self.settings.block)
            synthetic = synthetic or PositiveShares(mean, vectors, t.shape[1])
            synthetic.update(t)
        if real is None or synthetic is None:
            raise ConfigError("the semantic-invariance score needs real and synthetic images")
        return invariance(real, synthetic, variances, vectors, mean, self.settings, self.where)
