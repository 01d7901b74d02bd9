"""Optimisers, the learning-rate schedule, and gradient filters (Grokfast, ⊥Grad).

Gradient filters run between ``backward()`` and ``optimizer.step()`` and edit ``p.grad`` in
place. Their state is a flat dict of tensors so it is saved with the run state and a resumed
run continues exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from groklab.config import OptimConfig

__all__ = ["GradFilter", "lr_at", "make_grad_filter", "make_optimizer"]


def _fast_flags(params: Sequence[torch.Tensor]) -> dict[str, bool]:
    # The fused kernels do the whole update in one pass over all tensors; they exist for
    # float32 on CPU and CUDA in the supported torch range. Fall back to foreach otherwise.
    if all(p.dtype in (torch.float32, torch.float64, torch.float16) for p in params):
        return {"fused": True}
    return {"foreach": True}


def make_optimizer(params: Sequence[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over ``params`` (weight decay on every tensor, as published)."""
    params = list(params)
    flags = _fast_flags(params)
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, **flags
        )
    if cfg.name == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, **flags
        )
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **flags
    )


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Linear warmup from 0 over ``warmup_steps`` (as in the published code), then constant."""
    if cfg.warmup_steps <= 0:
        return cfg.lr
    return cfg.lr * min(step / cfg.warmup_steps, 1.0)


class GradFilter:
    """Grokfast EMA/MA amplification of slow gradients, then the optional ⊥Grad projection.

    Definitions (REFERENCE-NUMBERS.md):
        EMA: ``e ← α e + (1 − α) g`` (``e`` starts at the first gradient); ``g ← g + λ e``.
        MA:  ``m`` = mean of the last ``window`` gradients; once the window is full,
             ``g ← g + λ m``.
        ⊥Grad: ``g⊥ = g − (⟨g, w⟩ / ⟨w, w⟩) w``, then ``g ← g⊥ · ‖g‖ / ‖g⊥‖`` per tensor.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], cfg: OptimConfig) -> None:
        self.params = list(params)
        self.cfg = cfg
        self.mode = cfg.grokfast
        self.perp = cfg.perp_grad
        self.state: dict[str, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return self.mode != "none" or self.perp

    @torch.no_grad()
    def apply(self) -> None:
        grads = [p.grad for p in self.params]
        if self.mode == "ema":
            self._ema(grads)
        elif self.mode == "ma":
            self._ma(grads)
        if self.perp:
            self._perp(grads)

    def _ema(self, grads: list[torch.Tensor]) -> None:
        a, lam = self.cfg.grokfast_alpha, self.cfg.grokfast_lambda
        ema = [self.state.get(f"ema.{i}") for i in range(len(grads))]
        if ema[0] is None:
            ema = [g.clone() for g in grads]
        else:
            torch._foreach_mul_(ema, a)
            torch._foreach_add_(ema, grads, alpha=1 - a)
        for i, e in enumerate(ema):
            self.state[f"ema.{i}"] = e
        torch._foreach_add_(grads, ema, alpha=lam)

    def _ma(self, grads: list[torch.Tensor]) -> None:
        w, lam = self.cfg.grokfast_window, self.cfg.grokfast_lambda
        count = self.state.get("ma.count")
        n = 0 if count is None else int(count.item())
        for i, g in enumerate(grads):
            buf = self.state.get(f"ma.{i}")
            if buf is None:
                buf = torch.zeros((w, *g.shape), dtype=g.dtype, device=g.device)
                self.state[f"ma.{i}"] = buf
            buf[n % w].copy_(g)
        n += 1
        self.state["ma.count"] = torch.tensor(n, dtype=torch.int64)
        if n >= w:
            for i, g in enumerate(grads):
                g.add_(self.state[f"ma.{i}"].mean(dim=0), alpha=lam)

    def _perp(self, grads: list[torch.Tensor]) -> None:
        for w, g in zip(self.params, grads, strict=True):
            ww = (w * w).sum()
            g_perp = g - ((g * w).sum() / ww.clamp_min(torch.finfo(w.dtype).tiny)) * w
            # Rescale to the original norm; a zero projection stays zero.
            ratio = g.norm() / g_perp.norm().clamp_min(torch.finfo(w.dtype).tiny)
            g.copy_(g_perp * ratio)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.state = dict(state)


def make_grad_filter(params: Sequence[torch.nn.Parameter], cfg: OptimConfig) -> GradFilter:
    """The gradient filter of ``cfg`` (inactive when no filter is configured)."""
    return GradFilter(params, cfg)
