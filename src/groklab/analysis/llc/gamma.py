"""The γ-sensitivity check: how much an LLC estimate depends on the localisation γ.

The estimate is repeated at ``gamma / k`` and ``gamma * k`` and the elasticity
``d log LLC / d log gamma`` is read off the two side estimates (:class:`GammaCheck`, built by
:func:`_gamma_check`). Beyond :data:`GAMMA_SENSITIVE` the prior N(w*, 1/γ), not the loss
landscape, sets the value, and the estimate says so. The side estimates themselves are drawn
by the sampler (:func:`groklab.analysis.llc.sampler.estimate_llc`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from groklab.analysis.llc.result import _num

if TYPE_CHECKING:
    from groklab.analysis.llc.result import LLCResult

GAMMA_SENSITIVE = 0.2
"""An estimate is *γ-sensitive* when ``|d log LLC / d log γ|`` exceeds this: it changes by
more than 25% per factor of 3 in γ. For a quadratic direction of curvature ``h`` the
elasticity is ``-γ / (nβ h + γ)``, the share of the localisation in the precision of the
draws, so 0.2 means the prior N(w*, 1/γ), not the loss, sets a fifth of the answer."""


@dataclass(frozen=True)
class GammaCheck:
    """How much an estimate depends on the localisation γ.

    The estimate is repeated at ``gamma / factor`` and ``gamma * factor`` (same ε, nβ, draws
    and burn-in; ``chains`` chains each) and the elasticity ``d log LLC / d log γ`` is read
    off the two: ``log(llc_hi / llc_lo) / (2 log factor)``. Near 0 the estimate is the loss
    landscape's; near -1 it is ``nβ tr(H) / 2γ``, set by the prior N(w*, 1/γ) (for a
    quadratic direction of curvature ``h`` the elasticity is ``-γ / (nβ h + γ)``).

    Attributes:
        factor: ``k``.
        chains: chains per side estimate.
        gamma_lo, gamma_hi: ``gamma / k`` and ``gamma * k``.
        llc_lo, llc_lo_std, llc_hi, llc_hi_std: the side estimates (mean, sd over chains).
        elasticity: ``d log LLC / d log γ`` (NaN when a side estimate is not positive).
        elasticity_se: its standard error from the chains' spread (NaN with one chain).
        sensitive: ``|elasticity| > GAMMA_SENSITIVE``, or a side estimate is not positive
            or diverged: the estimate cannot be read as the landscape's.
    """

    factor: float
    chains: int
    gamma_lo: float
    gamma_hi: float
    llc_lo: float
    llc_lo_std: float
    llc_hi: float
    llc_hi_std: float
    elasticity: float
    elasticity_se: float
    sensitive: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: _num(v) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def describe(self) -> str:
        """One line: the side estimates and the verdict."""
        e = (
            f"d log LLC / d log γ = {self.elasticity:.2f}"
            if math.isfinite(self.elasticity)
            else "d log LLC / d log γ undefined (a side estimate is not positive)"
        )
        return (
            f"LLC {self.llc_lo:.4g} at γ={self.gamma_lo:.4g}, {self.llc_hi:.4g} at "
            f"γ={self.gamma_hi:.4g}: {e}"
        )


def _gamma_check(factor: float, lo: LLCResult, hi: LLCResult) -> GammaCheck:
    """The elasticity of the estimate in γ from the side estimates ``lo`` and ``hi``."""
    span = 2 * math.log(factor)
    if lo.llc > 0 and hi.llc > 0:
        e = math.log(hi.llc / lo.llc) / span
        kept = [len(r.llc_per_chain) - len(r.diverged) for r in (lo, hi)]
        if min(kept) > 1:
            # se of log(mean) ~ sd / (mean sqrt(chains)), the two sides independent
            var = sum((r.llc_std / r.llc) ** 2 / k for r, k in zip((lo, hi), kept, strict=True))
            se = math.sqrt(var) / span
        else:
            se = float("nan")
    else:
        e = se = float("nan")
    sensitive = not math.isfinite(e) or abs(e) > GAMMA_SENSITIVE
    return GammaCheck(
        factor=factor,
        chains=len(lo.llc_per_chain),
        gamma_lo=lo.settings.gamma,
        gamma_hi=hi.settings.gamma,
        llc_lo=lo.llc,
        llc_lo_std=lo.llc_std,
        llc_hi=hi.llc,
        llc_hi_std=hi.llc_std,
        elasticity=e,
        elasticity_se=se,
        sensitive=sensitive,
    )
