"""The sink taxonomy of attention heads (docs/artifacts.md#head-sinks), after Fesser, Jacobs, Fel et al., "A Unifying
View of Attention Sinks" (2026) and their public diagnostics (KempnerInstitute/attention_sink,
vit_causal/diagnose_heads.py): for each image and head, the key that takes the most attention over all keys (prefix
included), how much it takes, whether the queries are routed to it, what it writes (its output-projected value
against the others') and how many directions the head's update spans. Each (image, head) is classed none / NOP /
broadcast / other; a head takes its most frequent class over the images.

Pure functions over [B, H, ...] tensors, and an accumulator that keeps [images, heads] statistics per block."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semmae.analysis.capture import Capture
from semmae.errors import ConfigError

CLASSES = ("none", "nop", "broadcast", "other")  # index = class code
POSITIONS = ("cls", "register", "patch")  # where a sink sits; index = position code
TIE_ORDER = ("nop", "broadcast", "other", "none")  # a head's class on a tie between class counts


@dataclass(frozen=True)
class SinkThresholds:
    """route: a query is routed to the sink when it gives it at least this share; event: the share of all queries
    that must be routed for a sink event (otherwise the class is none); nop_ratio: NOP when ratio_out is at most
    this; broadcast_ratio, broadcast_rank: broadcast when ratio_out is at least broadcast_ratio and the stable rank
    of the head's update at most broadcast_rank. Defaults: the paper's code."""

    route: float = 0.5
    event: float = 0.9
    nop_ratio: float = 0.2
    broadcast_ratio: float = 0.5
    broadcast_rank: float = 1.5

    def __post_init__(self):
        for name in ("route", "event"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"analysis.sinks.{name}={getattr(self, name)}: must be in (0, 1]")
        if not 0 <= self.nop_ratio < self.broadcast_ratio:
            raise ConfigError(
                f"analysis.sinks.nop_ratio={self.nop_ratio}, broadcast_ratio={self.broadcast_ratio}: "
                "need 0 <= nop_ratio < broadcast_ratio (defaults 0.2 and 0.5)"
            )
        if not self.broadcast_rank >= 1:
            raise ConfigError(
                f"analysis.sinks.broadcast_rank={self.broadcast_rank}: a stable rank is >= 1 (default 1.5)"
            )


def value_factor(head_out: torch.Tensor) -> torch.Tensor:
    """[H, D, dh] head projections W_h -> R [H, dh, dh] with R_h^T R_h = W_h^T W_h, so that ||W_h v|| = ||R_h v||
    and the singular values of M W_h^T are those of M R_h^T: the head diagnostics then work in the head's dh
    dimensions instead of the model width (R = Lambda^1/2 Q^T from the eigendecomposition of the Gram matrix, which
    also holds when W_h is rank-deficient)."""
    gram = head_out.double().transpose(-1, -2) @ head_out.double()
    values, vectors = torch.linalg.eigh(gram)
    return (values.clamp_min(0).sqrt()[..., :, None] * vectors.transpose(-1, -2)).float()


def head_stats(
    attn: torch.Tensor,
    values: torch.Tensor,
    head_out: torch.Tensor,
    gates: torch.Tensor | None = None,
    route: float = 0.5,
    event: float | None = None,
    factor: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One block's attention A [B, H, T, T], value vectors v [B, H, T, dh], head projections W [H, D, dh] (u_j =
    W_h v_j) and optional gates [B, H, T, 1 or dh] (a factor on each head's output per query) -> per image and
    head [B, H]:

    - sink: s = argmax_j mean_i A[i, j] over all T keys (prefix included);
    - mass: mean_i A[i, s];
    - routed_frac: share of the T queries with A[i, s] >= route;
    - ratio_out: ||u_s|| / mean_{j != s} ||u_j||;
    - stable_rank: ||U||_F^2 / ||U||_2^2 of the head's update U = diag(g) A u [T, D] (1 = one direction); with
      `event` set, only where routed_frac >= event (the only place the classes read it), NaN elsewhere.
    factor: value_factor(head_out), when the caller keeps it."""
    b, h, t, _ = attn.shape
    a = attn.float()
    mass, sink = a.mean(dim=2).max(dim=-1)
    a_s = a.gather(3, sink[:, :, None, None].expand(b, h, t, 1)).squeeze(-1)
    routed = (a_s >= route).float().mean(dim=-1)
    r_t = (value_factor(head_out) if factor is None else factor).to(a.device).transpose(-1, -2)  # [H, dh, dh]
    v = values.float().contiguous()
    un = (v @ r_t).norm(dim=-1)  # ||u_j|| [B, H, T]
    u_s = un.gather(2, sink[..., None]).squeeze(-1)
    others = (un.sum(dim=-1) - u_s) / max(1, t - 1)
    ratio = u_s / others.clamp_min(1e-30)
    rank = torch.full_like(mass, float("nan"))
    sel = torch.ones_like(routed, dtype=torch.bool) if event is None else routed >= event
    if bool(sel.any()):
        bi, hi = sel.nonzero(as_tuple=True)
        m = a[bi, hi] @ v[bi, hi]  # each selected head's output per query, before the gate and the projection
        if gates is not None:
            m = m * gates.float()[bi, hi]
        n = m @ r_t[hi]  # the update U = M W_h^T up to an orthonormal factor: the same singular values
        top = torch.linalg.eigvalsh(n.transpose(-1, -2) @ n)[..., -1].clamp_min(0.0)
        total = n.square().sum(dim=(-2, -1))
        rank[bi, hi] = torch.where(top > 0, total / top.clamp_min(1e-30), torch.ones_like(top))
    return {"sink": sink, "mass": mass, "routed_frac": routed, "ratio_out": ratio, "stable_rank": rank}


def classify(
    routed_frac: torch.Tensor,
    ratio_out: torch.Tensor,
    stable_rank: torch.Tensor,
    thresholds: SinkThresholds = SinkThresholds(),
) -> torch.Tensor:
    """Class codes (index into CLASSES) elementwise: none unless at least `event` of the queries are routed to the
    sink; then NOP when ratio_out <= nop_ratio, broadcast when ratio_out >= broadcast_ratio and stable rank <=
    broadcast_rank, other otherwise."""
    out = torch.full_like(ratio_out, CLASSES.index("other"), dtype=torch.long)
    out[ratio_out <= thresholds.nop_ratio] = CLASSES.index("nop")
    broadcast = (ratio_out >= thresholds.broadcast_ratio) & (stable_rank <= thresholds.broadcast_rank)
    out[broadcast] = CLASSES.index("broadcast")
    out[~(routed_frac >= thresholds.event)] = CLASSES.index("none")
    return out


def sink_position(sink: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Token indices -> position codes (index into POSITIONS): 0 CLS (token 0), 1 a register (the other prefix
    tokens, 1..num_prefix_tokens - 1), 2 a patch (from num_prefix_tokens on)."""
    out = torch.full_like(sink, POSITIONS.index("patch"))
    if num_prefix_tokens > 0:
        out[sink < num_prefix_tokens] = POSITIONS.index("register")
        out[sink == 0] = POSITIONS.index("cls")
    return out


def _mode(codes: torch.Tensor, order: tuple[int, ...], minlength: int) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [N, H] -> (per head the most frequent code, ties by `order`; per head the counts [H, minlength])."""
    counts = torch.stack([torch.bincount(codes[:, j], minlength=minlength) for j in range(codes.shape[1])])
    rank = torch.empty(minlength, dtype=torch.long)
    rank[list(order)] = torch.arange(len(order))
    best = (counts * (minlength + 1) - rank[None, :]).argmax(dim=1)  # most frequent; on a tie the earliest in order
    return best, counts


@dataclass
class BlockHeads:
    """One block's heads, each summarised over the images (lists indexed by head, from 0)."""

    classes: list[str]  # the most frequent per-image class
    class_shares: list[dict[str, float]]  # share of images in each class
    mass: list[float]  # mean over images
    routed_frac: list[float]
    ratio_out: list[float]  # median over images (a ratio; heavy-tailed)
    stable_rank: list[float | None]  # median over the head's sink events (None: no event)
    positions: list[str]  # where the sink sits most often: cls / register / patch
    sink_token: list[int]  # the most frequent sink token index (0 = CLS)

    def counts(self) -> dict[str, int]:
        """Heads per class and, for the heads that are not none, per sink position."""
        out = {f"{c}_heads": sum(1 for k in self.classes if k == c) for c in CLASSES[1:]}
        for p in POSITIONS:
            out[f"sinks_on_{p}"] = sum(
                1 for k, q in zip(self.classes, self.positions, strict=True) if k != "none" and q == p
            )
        return out

    def scalars(self) -> dict[str, float]:
        """The per-block numbers of docs/artifacts.md#head-sinks: counts, and the mean sink mass over heads."""
        return {**{k: float(v) for k, v in self.counts().items()}, "sink_mass": sum(self.mass) / len(self.mass)}


SCALARS = (
    "nop_heads",
    "broadcast_heads",
    "other_heads",
    "sinks_on_cls",
    "sinks_on_register",
    "sinks_on_patch",
    "sink_mass",
)


class HeadSinkAccumulator:
    """Per-image head statistics of every block over batches of captures (made with values=True)."""

    def __init__(self, thresholds: SinkThresholds = SinkThresholds()):
        self.thresholds = thresholds
        self.stats: list[dict[str, list[torch.Tensor]]] | None = None
        self.factors: list[torch.Tensor] | None = None  # value_factor per block: the weights do not change here

    def update(self, cap: Capture) -> None:
        if cap.values is None:
            raise ConfigError("the head-sink taxonomy needs capture(..., values=True)")
        if self.stats is None:
            self.stats = [
                {k: [] for k in ("class", "position", "sink", "mass", "routed_frac", "ratio_out", "stable_rank")}
                for _ in range(cap.depth)
            ]
            self.factors = [value_factor(w) for w in cap.head_out]
        for i, slot in enumerate(self.stats):
            s = head_stats(
                cap.attn[i],
                cap.values[i],
                cap.head_out[i],
                cap.gates[i],
                self.thresholds.route,
                self.thresholds.event,
                self.factors[i],
            )
            slot["class"].append(classify(s["routed_frac"], s["ratio_out"], s["stable_rank"], self.thresholds).cpu())
            slot["position"].append(sink_position(s["sink"], cap.num_prefix_tokens).cpu())
            for k in ("sink", "mass", "routed_frac", "ratio_out", "stable_rank"):
                slot[k].append(s[k].cpu())

    def result(self) -> list[BlockHeads]:
        if self.stats is None:
            raise ConfigError("no images were analysed for the head-sink taxonomy")
        out = []
        for slot in self.stats:
            cat = {k: torch.cat(v) for k, v in slot.items()}
            classes, counts = _mode(cat["class"], tuple(CLASSES.index(c) for c in TIE_ORDER), len(CLASSES))
            n = cat["class"].shape[0]
            positions, _ = _mode(cat["position"], (0, 1, 2), len(POSITIONS))
            heads = cat["sink"].shape[1]
            sink_token = [int(torch.bincount(cat["sink"][:, j]).argmax()) for j in range(heads)]
            out.append(
                BlockHeads(
                    classes=[CLASSES[int(c)] for c in classes],
                    class_shares=[{c: float(counts[j, k]) / n for k, c in enumerate(CLASSES)} for j in range(heads)],
                    mass=cat["mass"].mean(dim=0).tolist(),
                    routed_frac=cat["routed_frac"].mean(dim=0).tolist(),
                    ratio_out=cat["ratio_out"].median(dim=0).values.tolist(),
                    stable_rank=[
                        None if bool(col.isnan().all()) else float(col.nanmedian()) for col in cat["stable_rank"].T
                    ],
                    positions=[POSITIONS[int(p)] for p in positions],
                    sink_token=sink_token,
                )
            )
        return out
