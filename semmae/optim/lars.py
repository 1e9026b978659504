"""LARS (You et al. 2017) as MAE's linear probe uses it: SGD with momentum whose update for every parameter with
more than one dimension is scaled by a trust ratio; biases and other 1-D parameters take the plain SGD update.

Per parameter w with gradient g, at each step:
    if w.ndim > 1:  u = g + weight_decay * w;  u = u * trust_coefficient * ||w|| / ||u||  (x 1 if either norm is 0)
    else:           u = g                      (no weight decay, no trust ratio)
    buf = momentum * buf + u                   (buf starts at 0)
    w   = w - lr * buf

Why not timm.optim.Lars: it applies the trust ratio to every parameter (1-D ones too), only when weight decay is
non-zero unless always_adapt=True (MAE's probe runs with weight decay 0), and divides by ||g|| + wd * ||w|| instead
of ||g + wd * w||."""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(
                f"invalid LARS settings: lr={lr}, weight_decay={weight_decay}, momentum={momentum}, "
                f"trust_coefficient={trust_coefficient}"
            )
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = torch.where(
                        (w_norm > 0) & (u_norm > 0),
                        group["trust_coefficient"] * w_norm / u_norm,
                        torch.ones_like(w_norm),
                    )
                    update = update.mul(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
        return loss
