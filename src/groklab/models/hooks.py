"""Named hook points, so analysis can cache or edit any activation by its TransformerLens name."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["HookPoint", "HookedModule"]


class HookPoint(nn.Module):
    """An identity module; its dotted name in the model is the activation's name."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class HookedModule(nn.Module):
    """Base class giving models ``hook_names``, ``run_with_cache`` and ``hooks``.

    Models may take a faster path that skips hook points while no hook is attached;
    ``hooks_active`` tells them when one is.
    """

    @property
    def hooks_active(self) -> bool:
        return any(
            m._forward_hooks or m._forward_pre_hooks
            for m in self.modules()
            if isinstance(m, HookPoint)
        )

    @property
    def hook_names(self) -> list[str]:
        return [name for name, m in self.named_modules() if isinstance(m, HookPoint)]

    def _hook_points(self, names: Iterable[str] | Callable[[str], bool] | None) -> dict:
        points = {n: m for n, m in self.named_modules() if isinstance(m, HookPoint)}
        if names is None:
            return points
        if callable(names):
            return {n: m for n, m in points.items() if names(n)}
        names = list(names)
        unknown = [n for n in names if n not in points]
        if unknown:
            raise KeyError(f"unknown hook point {unknown[0]!r}; see model.hook_names")
        return {n: points[n] for n in names}

    @contextmanager
    def hooks(self, fwd_hooks: dict[str, Callable[[torch.Tensor], torch.Tensor | None]]):
        """Temporarily run ``fn(activation)`` at named hook points; a returned tensor replaces it."""
        handles = []
        try:
            for name, m in self._hook_points(list(fwd_hooks)).items():
                fn = fwd_hooks[name]
                handles.append(m.register_forward_hook(lambda _m, _i, out, fn=fn: fn(out)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_cache(
        self,
        tokens: torch.Tensor,
        *,
        names: Iterable[str] | Callable[[str], bool] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass returning the logits and the activations at the named hook points."""
        cache: dict[str, torch.Tensor] = {}

        def saver(name: str) -> Callable[[torch.Tensor], None]:
            def fn(x: torch.Tensor) -> None:
                cache[name] = x.detach()

            return fn

        with self.hooks({n: saver(n) for n in self._hook_points(names)}):
            logits = self(tokens, **kwargs)
        return logits, cache
