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

    Definitions (REFERENCE-NUMBERS.md; Lee et al. 2024, Prieto et al. 2025):
        EMA: ``e ← α e + (1 − α) g`` (``e`` starts at the first gradient); ``g ← g + λ e``.
        MA:  ``m`` = mean of the last ``window`` gradients; once the window is full,
             ``g ← g + λ m``.
        ⊥Grad: ``g⊥ = g − (⟨g, w⟩ / ⟨w, w⟩) w``, then ``g ← g⊥ · ‖g‖ / ‖g⊥‖`` per tensor.

    Args:
        params: the parameters whose ``.grad`` is filtered in place.
        cfg: the optimiser config (``grokfast*``, ``perp_grad``).
        stacked: the parameters hold K models along their first axis (the trainer's stack);
            ⊥Grad then projects each model's tensor on its own. EMA and MA are elementwise.

    The MA filter keeps the last ``window`` gradients and a float64 running sum of them, so a
    step costs one pass over the parameters instead of ``window``; the sum in float64 makes
    the mean equal to the mean of the window to float32 rounding.
    """

    def __init__(
        self, params: Sequence[torch.nn.Parameter], cfg: OptimConfig, *, stacked: bool = False
    ) -> None:
        self.params = list(params)
        self.cfg = cfg
        self.mode = cfg.grokfast
        self.perp = cfg.perp_grad
        self.stacked = stacked
        self._ema: list[torch.Tensor] | None = None
        self._ring: list[torch.Tensor] | None = None  # [(K,) window, ...] last gradients
        self._sum: list[torch.Tensor] | None = None  # float64 sum of the ring
        self._count = 0  # gradients seen by the MA filter

    @property
    def active(self) -> bool:
        return self.mode != "none" or self.perp

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """Everything a resumed run needs, as a flat dict of tensors."""
        out: dict[str, torch.Tensor] = {}
        if self._ema is not None:
            out.update({f"ema.{i}": e for i, e in enumerate(self._ema)})
        if self._ring is not None and self._sum is not None:
            out.update({f"ma.{i}": b for i, b in enumerate(self._ring)})
            out.update({f"ma_sum.{i}": b for i, b in enumerate(self._sum)})
            out["ma.count"] = torch.tensor(self._count, dtype=torch.int64)
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        n = len(self.params)
        if "ema.0" in state:
            self._ema = [state[f"ema.{i}"] for i in range(n)]
        if "ma.count" in state:
            self._ring = [state[f"ma.{i}"] for i in range(n)]
            self._sum = [state[f"ma_sum.{i}"] for i in range(n)]
            self._count = int(state["ma.count"])

    @torch.no_grad()
    def apply(self) -> None:
        grads = [p.grad for p in self.params]
        if self.mode == "ema":
            self._apply_ema(grads)
        elif self.mode == "ma":
            self._apply_ma(grads)
        if self.perp:
            self._apply_perp(grads)

    def _apply_ema(self, grads: list[torch.Tensor]) -> None:
        a, lam = self.cfg.grokfast_alpha, self.cfg.grokfast_lambda
        if self._ema is None:
            self._ema = [g.clone() for g in grads]
        else:
            torch._foreach_mul_(self._ema, a)
            torch._foreach_add_(self._ema, grads, alpha=1 - a)
        torch._foreach_add_(grads, self._ema, alpha=lam)

    def _apply_ma(self, grads: list[torch.Tensor]) -> None:
        w, lam = self.cfg.grokfast_window, self.cfg.grokfast_lambda
        axis = 1 if self.stacked else 0  # the window axis of the ring
        if self._ring is None or self._sum is None:
            self._ring = [g.new_zeros((*g.shape[:axis], w, *g.shape[axis:])) for g in grads]
            self._sum = [torch.zeros_like(g, dtype=torch.float64) for g in grads]
        slot = self._count % w
        for g, ring, total in zip(grads, self._ring, self._sum, strict=True):
            old = ring.select(axis, slot)
            if self._count >= w:
                total.sub_(old)  # the gradient leaving the window
            total.add_(g)
            old.copy_(g)
        self._count += 1
        if self._count >= w:
            for g, total in zip(grads, self._sum, strict=True):
                g.add_((total / w).to(g.dtype), alpha=lam)

    def _apply_perp(self, grads: list[torch.Tensor]) -> None:
        for w, g in zip(self.params, grads, strict=True):
            # Reduce over each model's whole tensor: all axes, or all but the model axis.
            if self.stacked:
                ww, gg = w.flatten(1), g.flatten(1)
            else:
                ww, gg = w.reshape(1, -1), g.reshape(1, -1)
            tiny = torch.finfo(w.dtype).tiny
            coef = (gg * ww).sum(1, keepdim=True) / (ww * ww).sum(1, keepdim=True).clamp_min(tiny)
            g_perp = gg - coef * ww
            # Rescale to the original norm; a zero projection stays zero.
            ratio = gg.norm(dim=1, keepdim=True) / g_perp.norm(dim=1, keepdim=True).clamp_min(tiny)
            g.copy_((g_perp * ratio).view_as(g))


def make_grad_filter(
    params: Sequence[torch.nn.Parameter], cfg: OptimConfig, *, stacked: bool = False
) -> GradFilter:
    """The gradient filter of ``cfg`` (inactive when no filter is configured)."""
    return GradFilter(params, cfg, stacked=stacked)
