"""One LLC estimate and its diagnostics: :class:`LLCResult`, summarised from a loss trace.

:func:`_summarise` turns a ``[chains, burnin + draws]`` trace of SGLD losses into the estimate
``nbeta * (mean loss of the draws - L(w*))`` and its diagnostics: the spread over chains, the
second-half / first-half convergence ratio and its z-score, the share of draws below
``L(w*)``, and the chains excluded as diverged (non-finite loss, a loss above the bound, or a
per-chain estimate far above ``d/2``), each named in ``warnings``. The γ check, when there is
one, is attached afterwards by the sampler (:mod:`groklab.analysis.llc.gamma`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from groklab.analysis.llc.settings import LLCSettings

if TYPE_CHECKING:
    from groklab.analysis.llc.gamma import GammaCheck


@dataclass(frozen=True, eq=False)
class LLCResult:
    """One LLC estimate and its diagnostics.

    Attributes:
        llc: mean over the chains that did not diverge (NaN if all diverged).
        llc_std: standard deviation over those chains (ddof 1; 0 with one chain).
        llc_per_chain: ``[chains]`` each chain's estimate (NaN where non-finite).
        init_loss: ``L(w*)`` on the full training data.
        nbeta: the inverse temperature used.
        n: training rows behind the loss.
        n_params: number of sampled parameters ``d``.
        settings: the settings.
        trace: ``[chains, burnin + draws]`` minibatch loss at every SGLD step (burn-in first).
        convergence_ratio: estimate from the second half of the draws / from the first half.
        convergence_z: the shift between the halves in standard errors (over chains, of the
            per-chain difference of half means); a ratio away from 1 with ``z <= 2`` is noise.
        frac_below_init: share of draws (kept chains) with loss below ``L(w*)``.
        diverged: indices of the chains excluded as diverged.
        warnings: human-readable problems (divergence, dips, no convergence, γ-sensitive,
            ...).
        seconds: wall time of the sampling (the γ check's side estimates included).
        max_loss: the loss bound above which a chain counts as diverged.
        gamma_check: the γ-sensitivity diagnostic (``None`` when off or at γ = 0).
    """

    llc: float
    llc_std: float
    llc_per_chain: np.ndarray
    init_loss: float
    nbeta: float
    n: int
    n_params: int
    settings: LLCSettings
    trace: np.ndarray
    convergence_ratio: float
    convergence_z: float
    frac_below_init: float
    diverged: tuple[int, ...] = ()
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    max_loss: float | None = None
    gamma_check: GammaCheck | None = None

    @property
    def draws_trace(self) -> np.ndarray:
        """``[chains, draws]``: the trace without burn-in."""
        return self.trace[:, self.settings.burnin :]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the trace)."""
        return {
            "llc": _num(self.llc),
            "llc_std": _num(self.llc_std),
            "llc_per_chain": [_num(v) for v in self.llc_per_chain],
            "init_loss": self.init_loss,
            "nbeta": self.nbeta,
            "n": self.n,
            "n_params": self.n_params,
            "convergence_ratio": _num(self.convergence_ratio),
            "convergence_z": _num(self.convergence_z),
            "frac_below_init": _num(self.frac_below_init),
            "diverged": list(self.diverged),
            "warnings": list(self.warnings),
            "seconds": self.seconds,
            "max_loss": self.max_loss,
            "settings": self.settings.to_dict(),
            "gamma_check": None if self.gamma_check is None else self.gamma_check.to_dict(),
        }


def _num(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _shift_z(first: np.ndarray, second: np.ndarray) -> float:
    """|mean(second - first)| in standard errors over chains (inf with one chain)."""
    d = second - first
    if len(d) < 2:
        return float("inf")
    se = d.std(ddof=1) / math.sqrt(len(d))
    return float(abs(d.mean()) / se) if se > 0 else float("inf")


def _summarise(
    trace: np.ndarray,
    *,
    init_loss: float,
    nbeta: float,
    n: int,
    n_params: int,
    settings: LLCSettings,
    max_loss: float | None,
    seconds: float,
) -> LLCResult:
    """Estimate and diagnostics from a ``[chains, burnin + draws]`` loss trace."""
    draws = trace[:, settings.burnin :]
    finite = np.isfinite(draws).all(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        per_chain = nbeta * (draws.mean(axis=1) - init_loss)
    per_chain = np.where(np.isfinite(per_chain), per_chain, np.nan)
    reasons: dict[int, str] = {}
    for c in range(trace.shape[0]):
        if not np.isfinite(trace[c]).all():
            reasons[c] = "NaN/inf loss"
        elif max_loss is not None and trace[c].max() > max_loss:
            reasons[c] = f"loss above {max_loss:.4g}"
        elif per_chain[c] > 5 * n_params:
            # The LLC is at most d/2; a chain estimate ten times that is a blow-up, not noise.
            reasons[c] = f"estimate {per_chain[c]:.4g} above 10 d/2 = {5 * n_params:g}"
    keep = np.array([c not in reasons for c in range(trace.shape[0])]) & finite
    warns: list[str] = []
    if reasons:
        detail = "; ".join(f"chain {c}: {r}" for c, r in sorted(reasons.items()))
        warns.append(
            f"{len(reasons)} of {trace.shape[0]} chains diverged and were excluded ({detail}); "
            "lower epsilon or raise gamma"
        )
    nan = float("nan")
    llc = llc_std = ratio = z = below = nan
    if not keep.any():
        warns.append("all chains diverged: no estimate")
    else:
        kept = draws[keep]
        llc = float(per_chain[keep].mean())
        llc_std = float(per_chain[keep].std(ddof=1)) if keep.sum() > 1 else 0.0
        half = kept.shape[1] // 2
        first = kept[:, :half].mean() - init_loss
        second = kept[:, half:].mean() - init_loss
        ratio = float(second / first) if first != 0 else nan
        z = _shift_z(kept[:, :half].mean(axis=1), kept[:, half:].mean(axis=1))
        below = float((kept < init_loss).mean())
        if llc <= 0:
            warns.append(
                f"estimate {llc:.4g} <= 0: the draws found lower loss than w*; w* is not a local "
                "minimum at this temperature, or epsilon is too large"
            )
        elif below > 0.25:
            warns.append(
                f"{below:.0%} of draws below L(w*): w* may not be a local minimum; read with care"
            )
        if math.isfinite(ratio) and not 0.8 <= ratio <= 1.25 and z > 2:
            warns.append(
                f"not converged: second-half / first-half estimate = {ratio:.3g}; "
                "use more burn-in or a larger epsilon"
            )
    return LLCResult(
        llc=llc,
        llc_std=llc_std,
        llc_per_chain=per_chain,
        init_loss=init_loss,
        nbeta=nbeta,
        n=n,
        n_params=n_params,
        settings=settings,
        trace=trace,
        convergence_ratio=ratio,
        convergence_z=z,
        frac_below_init=below,
        diverged=tuple(sorted(reasons)),
        warnings=tuple(warns),
        seconds=seconds,
        max_loss=max_loss,
    )
