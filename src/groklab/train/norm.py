"""Weight-norm control: hold the total parameter norm fixed (Omnigrok's constrained runs).

Omnigrok (Liu et al. 2023) explains grokking by the weight norm: a large initial norm
memorises, weight decay slowly shrinks the norm to the "Goldilocks" zone where generalising
solutions live, and generalisation arrives only then. Holding the norm fixed at a good value
from the start removes the delay. :class:`NormConstraint` does that projection: after every
optimiser step all parameters are multiplied by one common factor so that the total L2 norm
``sqrt(Σ_tensors ‖w‖²)`` (weights and biases together) equals the target.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from groklab.config import OptimConfig

__all__ = ["NormConstraint", "make_norm_constraint", "total_norm"]


@torch.no_grad()
def total_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sqrt(Σ ‖p‖²)`` over all tensors, as a 0-d float64 tensor (stays on the device)."""
    norms = torch._foreach_norm(list(params))
    return torch.stack([n.to(torch.float64) for n in norms]).square().sum().sqrt()


class NormConstraint:
    """Rescales ``params`` in place so that their total L2 norm is ``target``.

    Args:
        params: the parameters (all of them, as Omnigrok does).
        target: the total norm to hold.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], target: float) -> None:
        self.params = list(params)
        self.target = float(target)

    @torch.no_grad()
    def apply(self) -> None:
        """Project onto the sphere of radius ``target`` (one common factor for every tensor)."""
        norm = total_norm(self.params)
        # No host sync: the factor stays a device tensor (a zero norm is left at zero).
        factor = self.target / norm.clamp_min(torch.finfo(torch.float64).tiny)
        torch._foreach_mul_(self.params, factor.to(self.params[0].dtype))


def make_norm_constraint(
    params: Sequence[torch.nn.Parameter], cfg: OptimConfig
) -> NormConstraint | None:
    """The constraint ``cfg.fixed_norm`` asks for, already applied once; ``None`` when off.

    ``"initial"`` resolves to the total norm of ``params`` as they are now, so call this
    right after initialisation (before a resumed run loads its saved weights, which already lie
    on the sphere).
    """
    if cfg.fixed_norm is None:
        return None
    params = list(params)
    fixed = cfg.fixed_norm
    target = float(total_norm(params)) if fixed == "initial" else float(fixed)
    constraint = NormConstraint(params, target)
    constraint.apply()
    return constraint
