"""Local learning coefficient (LLC) by SGLD, with diagnostics, calibration and caching.

The estimator (Lau et al. 2023, as in devinterp): draw weights near a trained ``w*`` with
stochastic-gradient Langevin dynamics on the tempered, localised posterior

    w <- w - (eps/2) [nbeta * grad L_m(w) + gamma (w - w*)] + N(0, eps)

and read the LLC off the mean training loss of the draws:

    llc = nbeta * (mean_{draws} L_m(w) - L(w*)).

``L_m`` is the loss on a minibatch of ``m`` training rows (or the full training set),
``L(w*)`` is always measured on the full training data, ``nbeta`` defaults to ``n / log n``
with ``n`` the number of training rows. Burn-in steps are discarded. Every chain runs in one
batched computation (``torch.func.vmap`` over stacked weights), not one after another.

Every estimate comes with its diagnostics (:class:`LLCResult`): the loss traces, the mean and
spread over chains, the ratio of the estimate from the second half of the draws to the first
half's (convergence), the share of draws below ``L(w*)``, and the chains that diverged
(non-finite loss, a loss above a bound, or a per-chain estimate above ``d/2``, which no model
with ``d`` parameters can have). Diverged chains are excluded and named in ``warnings``: the
estimator never hands back an enormous number in silence. With ``gamma > 0`` every estimate
also carries a :class:`GammaCheck`: the estimate at ``gamma / 3`` and ``gamma * 3`` (half the
chains each, so the check doubles the cost) and ``d log LLC / d log gamma``; beyond
:data:`GAMMA_SENSITIVE` the localisation, not the loss landscape, sets the value and the
result says so in ``warnings``.

Which data ``--subset`` selects: the LLC describes the *training* loss landscape, so a subset
restricts the loss to the *training* rows of one operation. ``add``, ``train/add`` and
``test/add`` all select the training problems of addition (``train/add``); ``total`` (the
default) is the whole training set. With a subset, ``n`` (for ``nbeta`` and the minibatches)
is that subset's number of training rows.

Example::

    from groklab import load_run
    from groklab.analysis import llc

    run = load_run("runs/nanda2023")
    res = llc.estimate_llc_at(run, 5000)               # LLCSettings() defaults
    print(res.llc, res.llc_std, res.convergence_ratio, res.warnings)
    df = llc.llc_over_checkpoints(run, every=500)      # cached in runs/nanda2023/analysis/llc/
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call, vmap

from groklab.errors import ConfigError

if TYPE_CHECKING:
    from groklab.run import Run

__all__ = [
    "CALIBRATION_FILE",
    "GAMMA_SENSITIVE",
    "LLC_DIR",
    "Calibration",
    "GammaCheck",
    "LLCResult",
    "LLCSettings",
    "LossFn",
    "calibrate",
    "default_max_loss",
    "estimate_llc",
    "estimate_llc_at",
    "judge",
    "landmarks",
    "llc_over_checkpoints",
    "load_calibration",
    "read_cache",
    "resolve_nbeta",
    "resolve_subset",
    "run_loss",
    "select_steps",
]

LLC_DIR = "analysis/llc"
"""Where a run's LLC results are cached, relative to the run directory."""
CALIBRATION_FILE = "calibration.json"
"""The latest calibration's recommendation (inside :data:`LLC_DIR`)."""

LossFn = Callable[[Any, "torch.Tensor | None"], torch.Tensor]
"""``loss_fn(params, rows) -> 0-d tensor``: the loss at ``params`` (a dict of tensors, or one
tensor) on the training rows ``rows`` (a long tensor ``[m]``) or on all of them (``None``).
It must be made of plain torch operations so that it can be vmapped over chains."""

_NBETA_SPECS = ("n/log n", "m/log m")

GAMMA_SENSITIVE = 0.2
"""An estimate is *γ-sensitive* when ``|d log LLC / d log γ|`` exceeds this: it changes by
more than 25% per factor of 3 in γ. For a quadratic direction of curvature ``h`` the
elasticity is ``-γ / (nβ h + γ)``, the share of the localisation in the precision of the
draws, so 0.2 means the prior N(w*, 1/γ), not the loss, sets a fifth of the answer."""

_CHECK_FIELDS = ("gamma_check", "gamma_check_chains")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class LLCSettings:
    """Settings of one LLC estimate.

    Attributes:
        epsilon: SGLD step size ``eps`` (the noise has variance ``eps``).
        gamma: localisation strength ``gamma`` (0 = none).
        nbeta: inverse temperature: a number, ``"n/log n"`` (theory; ``n`` = training rows)
            or ``"m/log m"`` (devinterp's default; ``m`` = batch size).
        chains: independent chains (run as one batched computation).
        draws: draws per chain that enter the estimate.
        burnin: SGLD steps per chain before the first draw (discarded).
        batch_size: minibatch rows per step; ``None`` = full batch.
        seed: seed of the local generator (noise and minibatches).
        max_loss: a chain whose loss exceeds this is diverged; ``None`` = automatic
            (:func:`default_max_loss` for runs; no loss bound for generic losses, where only
            non-finite losses and impossible estimates above ``d/2`` count).
        gamma_check: the γ-sensitivity diagnostic (:class:`GammaCheck`): every estimate is
            repeated at ``gamma / k`` and ``gamma * k`` for this factor ``k``; ``None`` or 0 =
            off (it is also skipped at ``gamma = 0``).
        gamma_check_chains: chains of each side estimate (same burn-in and draws);
            ``None`` = half the chains (at least 1), so the check doubles the cost.

    The diagnostic's fields do not enter :meth:`key`: they do not change the estimate itself
    (its chains and seed are the same with or without the check).
    """

    epsilon: float = 3e-4
    gamma: float = 300.0
    nbeta: float | str = "n/log n"
    chains: int = 4
    draws: int = 200
    burnin: int = 100
    batch_size: int | None = 512
    seed: int = 0
    max_loss: float | None = None
    gamma_check: float | None = 3.0
    gamma_check_chains: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"llc.{name}={getattr(self, name)!r} is not allowed; {allowed}")

        if self.gamma_check == 0 and not isinstance(self.gamma_check, bool):
            object.__setattr__(self, "gamma_check", None)  # 0 = off (TOML has no None)
        # Numbers as floats, so that gamma = 1000 (TOML) and 1000.0 (CLI) are the same settings
        # and share one cache key.
        for name in ("epsilon", "gamma", "nbeta", "max_loss", "gamma_check"):
            v = getattr(self, name)
            if (v is None and name in ("max_loss", "gamma_check")) or (
                isinstance(v, str) and name == "nbeta"
            ):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise bad(name, "use a number")
            object.__setattr__(self, name, float(v))
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise bad("epsilon", "use a positive step size such as 1e-4")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise bad("gamma", "use a localisation >= 0 such as 100")
        if isinstance(self.nbeta, str):
            if self.nbeta not in _NBETA_SPECS:
                raise bad("nbeta", f"use a positive number or one of {', '.join(_NBETA_SPECS)}")
        elif not (math.isfinite(self.nbeta) and self.nbeta > 0):
            raise bad("nbeta", f"use a positive number or one of {', '.join(_NBETA_SPECS)}")
        for name, lo in (("chains", 1), ("draws", 2), ("burnin", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise bad(name, f"use an integer >= {lo}")
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise bad("batch_size", "use a positive integer, or None for full batch")
        if self.max_loss is not None and not self.max_loss > 0:
            raise bad("max_loss", "use a positive bound, or None for automatic")
        if self.gamma_check is not None and not (
            math.isfinite(self.gamma_check) and self.gamma_check > 1
        ):
            raise bad("gamma_check", "use a factor > 1 such as 3, or 0/None to switch it off")
        c = self.gamma_check_chains
        if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 1):
            raise bad("gamma_check_chains", "use an integer >= 1, or None for half the chains")

    @property
    def check_chains(self) -> int:
        """Chains of each side estimate of the γ check."""
        return self.gamma_check_chains or max(1, self.chains // 2)

    @property
    def checks_gamma(self) -> bool:
        """Whether estimates with these settings carry the γ check."""
        return self.gamma_check is not None and self.gamma > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LLCSettings:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"llc settings: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(known)}"
            )
        return cls(**dict(d))

    def key(self) -> str:
        """Short hash naming these settings in cache files (the estimate's settings only:
        the γ check's are recorded per cached row, so caches made before it stay valid)."""
        d = {k: v for k, v in self.to_dict().items() if k not in _CHECK_FIELDS}
        blob = json.dumps(d, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def resolve_nbeta(spec: float | str, *, n: int, batch_size: int | None) -> float:
    """The inverse temperature ``nbeta`` for ``n`` training rows and minibatches of ``batch_size``."""
    if not isinstance(spec, str):
        return float(spec)
    size = n if spec == "n/log n" or batch_size is None else min(batch_size, n)
    if size < 2:
        raise ConfigError(f"llc.nbeta={spec!r} needs at least 2 rows (got {size}); give a number")
    return size / math.log(size)


# --------------------------------------------------------------------------- results


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
    if not keep.any():
        warns.append("all chains diverged: no estimate")
        return LLCResult(
            llc=float("nan"),
            llc_std=float("nan"),
            llc_per_chain=per_chain,
            init_loss=init_loss,
            nbeta=nbeta,
            n=n,
            n_params=n_params,
            settings=settings,
            trace=trace,
            convergence_ratio=float("nan"),
            convergence_z=float("nan"),
            frac_below_init=float("nan"),
            diverged=tuple(sorted(reasons)),
            warnings=tuple(warns),
            seconds=seconds,
            max_loss=max_loss,
        )
    kept = draws[keep]
    llc = float(per_chain[keep].mean())
    llc_std = float(per_chain[keep].std(ddof=1)) if keep.sum() > 1 else 0.0
    half = kept.shape[1] // 2
    first = kept[:, :half].mean() - init_loss
    second = kept[:, half:].mean() - init_loss
    ratio = float(second / first) if first != 0 else float("nan")
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


# --------------------------------------------------------------------------- sampler


class _Flat:
    """Named parameters laid out in one flat vector ``[P]`` (and back)."""

    def __init__(self, params: Mapping[str, torch.Tensor] | torch.Tensor) -> None:
        self.single = isinstance(params, torch.Tensor)
        items = {"w": params} if self.single else dict(params)
        if not items:
            raise ConfigError("llc: no parameters to sample")
        self.names = list(items)
        self.shapes = [tuple(t.shape) for t in items.values()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.n_params = sum(self.sizes)
        self.w_star = torch.cat([t.detach().reshape(-1) for t in items.values()])

    def views(self, flat: torch.Tensor) -> Any:
        """``flat [..., P]`` → the params as views (a dict, or one tensor)."""
        lead = flat.shape[:-1]
        out, off = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes, strict=True):
            out[name] = flat[..., off : off + size].view((*lead, *shape))
            off += size
        return out["w"] if self.single else out


def _run_chains(
    loss_fn: LossFn,
    flat: _Flat,
    *,
    n: int,
    eps: torch.Tensor,
    gamma: torch.Tensor,
    nbeta: torch.Tensor,
    steps: int,
    batch_size: int | None,
    seed: int,
    w0: torch.Tensor | None = None,
    batched: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """SGLD for ``C`` chains at once; returns the loss trace ``[C, steps]`` (float64).

    ``loss_fn`` is one chain's loss (vmapped here), or with ``batched`` already the losses
    ``[C]`` of all chains from stacked parameters ``[C, ...]`` and rows ``[C, m]``.

    ``eps``, ``gamma``, ``nbeta`` are per-chain ``[C]`` (so one batched computation can
    sweep settings); ``w0`` ``[C, P]`` per-chain centres (default: ``w*`` for every chain).
    The loss recorded at step ``t`` is the minibatch loss at the weights before step ``t``'s
    update, as in devinterp.
    """
    n_chains = eps.shape[0]
    dev, dtype = flat.w_star.device, flat.w_star.dtype
    center = flat.w_star.expand(n_chains, -1) if w0 is None else w0
    w = center.clone()  # [chain, P], updated in place
    gen = torch.Generator(device=dev).manual_seed(seed)
    e = eps.to(dev, dtype)[:, None]
    g = gamma.to(dev, dtype)[:, None]
    nb = nbeta.to(dev, dtype)[:, None]
    sqrt_e = e.sqrt()
    trace = torch.empty(n_chains, steps, dtype=torch.float64, device=dev)

    full = batch_size is None or batch_size >= n
    # vmap over chains for the forward pass, one autograd backward for all chains: chains are
    # independent, so the gradient of the summed loss w.r.t. chain c's weights is chain c's
    # gradient. (Cheaper per step than vmap(grad(...)) on CPU.)
    if batched:
        fwd = (lambda p: loss_fn(p, None)) if full else loss_fn
    else:
        fwd = vmap(lambda p: loss_fn(p, None)) if full else vmap(loss_fn)
    per_epoch = 1 if full else n // batch_size
    perm = torch.empty(0, dtype=torch.long)
    shapes = [(n_chains, *sh) for sh in flat.shapes]
    offsets = np.cumsum([0, *flat.sizes]).tolist()
    # The update w <- w - (eps/2)[nbeta grad + gamma (w - w0)] + sqrt(eps) xi, split into a
    # flat part on w [chain, P] (localisation, noise) and a per-parameter part (gradient), so
    # the gradients are never copied into one flat buffer.
    keep = 1 - 0.5 * e * g  # [chain, 1]
    pull = (0.5 * e * g) * center  # [chain, P], constant
    has_gamma = bool((g != 0).any())
    grad_scale = [(-0.5 * e * nb).view(n_chains, *([1] * len(sh))) for sh in flat.shapes]
    for t in range(steps):
        # Leaves that share memory with w: the update below writes through to them.
        leaves = [
            w[:, a:b].view(sh).detach().requires_grad_()
            for a, b, sh in zip(offsets[:-1], offsets[1:], shapes, strict=True)
        ]
        p = leaves[0] if flat.single else dict(zip(flat.names, leaves, strict=True))
        if full:
            loss = fwd(p)
        else:
            j = t % per_epoch
            if j == 0:  # a fresh shuffle of the training rows for every chain
                keys = torch.rand(n_chains, n, generator=gen, device=dev)
                perm = keys.argsort(dim=1)
            rows = perm[:, j * batch_size : (j + 1) * batch_size]  # [chain, m]
            loss = fwd(p, rows)
        grads = torch.autograd.grad(loss.sum(), leaves, materialize_grads=True)
        trace[:, t] = loss.detach()
        with torch.no_grad():
            if has_gamma:
                w.mul_(keep).add_(pull)
            w.add_(torch.randn(w.shape, generator=gen, device=dev, dtype=dtype).mul_(sqrt_e))
            for leaf, gr, sc in zip(leaves, grads, grad_scale, strict=True):
                leaf.addcmul_(gr, sc)  # leaf is a view of w
        if progress is not None and (t + 1) % 25 == 0:
            progress(t + 1, steps)
    return trace


def _init_loss(loss_fn: LossFn, flat: _Flat, batched: bool) -> float:
    """``L(w*)`` on the full training data."""
    with torch.no_grad():
        if batched:
            return float(loss_fn(flat.views(flat.w_star[None]), None)[0])
        return float(loss_fn(flat.views(flat.w_star), None))


def estimate_llc(
    loss_fn: LossFn,
    params: Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    n: int,
    settings: LLCSettings | None = None,
    init_loss: float | None = None,
    max_loss: float | None = None,
    batched: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> LLCResult:
    """Estimate the LLC of the loss ``loss_fn`` at ``params`` (the trained ``w*``).

    Args:
        loss_fn: ``loss_fn(params, rows) -> 0-d tensor``; ``rows`` is a long tensor of
            training-row indices ``[m]`` or ``None`` (all ``n`` rows). It is vmapped over
            chains, so it must use plain torch operations (no ``.item()``, no in-place
            writes into ``params``). A loss without data may ignore ``rows``.
        params: ``w*``: a dict of tensors (e.g. ``dict(model.named_parameters())``) or one
            tensor. Not modified.
        n: training rows (for ``nbeta = n / log n`` and the minibatches).
        settings: sampler settings (default :class:`LLCSettings`).
        init_loss: ``L(w*)`` if already known (default: ``loss_fn(params, None)``).
        max_loss: loss bound above which a chain counts as diverged (default
            ``settings.max_loss``; ``None`` = no bound).
        batched: ``loss_fn`` is already batched over chains: it takes the parameters with a
            leading chain axis (``[C, ...]``) and rows ``[C, m]`` (or ``None``) and returns
            ``[C]`` losses (e.g. a model's stacked forward). Otherwise it is vmapped.
        progress: called as ``progress(step, total)`` every 25 SGLD steps.

    Returns:
        The estimate with its diagnostics; with ``settings.gamma_check`` (the default) and
        ``gamma > 0`` also the :class:`GammaCheck`: the estimate at ``gamma / k`` and
        ``gamma * k`` from ``settings.check_chains`` chains each (one more batched run, on
        its own seed, so the estimate itself is the same with or without the check), and
        a warning when it is γ-sensitive.
    """
    s = settings or LLCSettings()
    if n < 1:
        raise ConfigError(f"llc: n={n} training rows; need at least 1")
    flat = _Flat(params)
    l0 = _init_loss(loss_fn, flat, batched) if init_loss is None else init_loss
    nbeta = resolve_nbeta(s.nbeta, n=n, batch_size=s.batch_size)
    bound = s.max_loss if s.max_loss is not None else max_loss
    steps = s.burnin + s.draws

    def sample(gammas: list[float], seed: int, prog: Any) -> np.ndarray:
        c = len(gammas)
        return (
            _run_chains(
                loss_fn,
                flat,
                n=n,
                eps=torch.full((c,), s.epsilon, dtype=torch.float64),
                gamma=torch.tensor(gammas, dtype=torch.float64),
                nbeta=torch.full((c,), nbeta, dtype=torch.float64),
                steps=steps,
                batch_size=s.batch_size,
                seed=seed,
                batched=batched,
                progress=prog,
            )
            .cpu()
            .numpy()
        )

    def summary(trace: np.ndarray, settings: LLCSettings, seconds: float) -> LLCResult:
        return _summarise(
            trace,
            init_loss=l0,
            nbeta=nbeta,
            n=n,
            n_params=flat.n_params,
            settings=settings,
            max_loss=bound,
            seconds=seconds,
        )

    check = s.checks_gamma
    t0 = time.perf_counter()
    # progress spans the main run and the check's (2 x check_chains chains, same steps),
    # counted in main-run steps
    r = 2 * s.check_chains / s.chains if check else 0.0
    total = round(steps * (1 + r))
    main_prog = None if progress is None else (lambda t, _: progress(t, total))
    trace = sample([s.gamma] * s.chains, s.seed, main_prog)
    main_seconds = time.perf_counter() - t0
    res = summary(trace, s, main_seconds)
    if not check:
        return res
    k, cc = float(s.gamma_check or 3.0), s.check_chains
    lo_s, hi_s = replace(s, gamma=s.gamma / k), replace(s, gamma=s.gamma * k)
    side_prog = None if progress is None else (lambda t, _: progress(round(steps + t * r), total))
    side = sample([lo_s.gamma] * cc + [hi_s.gamma] * cc, s.seed + 1, side_prog)
    gc = _gamma_check(k, summary(side[:cc], lo_s, 0.0), summary(side[cc:], hi_s, 0.0))
    warns = res.warnings
    if gc.sensitive:
        warns = (
            *warns,
            f"γ-sensitive: {gc.describe()} (|elasticity| > {GAMMA_SENSITIVE:g}); the "
            "localisation, not the loss landscape, sets this estimate",
        )
    return replace(res, gamma_check=gc, warnings=warns, seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class _RunLoss:
    """The training loss of a run's model as a function of its parameters."""

    loss_fn: LossFn
    params: dict[str, torch.Tensor]
    n: int
    max_loss: float
    subset: str
    batched: bool
    init_loss: float


def resolve_subset(run: Run, subset: str | None) -> tuple[str, torch.Tensor | None, int | None]:
    """Canonical name, training rows and scored position of ``subset``.

    ``None``/``total`` = every training row. ``add``, ``train/add`` and ``test/add`` all
    select the *training* rows of addition (the LLC is about the training loss). Any other
    training subset of the task (``train/<name>``) is accepted by name too.
    """
    if subset in (None, "", "total", "train"):
        return "total", None, None
    task = run.task
    name = subset
    for prefix in ("train/", "test/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    sub = task.subsets.get(f"train/{name}")
    if sub is not None and sub.split == "train":
        return name, sub.rows, sub.position
    ops = list(task.info.get("operations", []))
    if ops == [name]:  # a single-operation task: the subset is the whole training set
        return name, None, None
    allowed = [
        "total",
        *sorted(
            {k.split("/", 1)[1] for k, v in task.subsets.items() if v.split == "train"}
            | ({ops[0]} if len(ops) == 1 else set())
        ),
    ]
    raise ConfigError(
        f"--subset={subset!r} is not a training subset of {run.path}; allowed: "
        f"{', '.join(allowed)} (also as train/<name> or test/<name>)"
    )


def default_max_loss(init_loss: float, d_vocab_out: int) -> float:
    """Loss bound for a run's chains: ``L(w*)`` plus the loss of a uniform guess.

    A chain whose training loss has risen by more than chance level has left the
    neighbourhood of ``w*``; its draws say nothing about the local geometry.
    """
    return init_loss + max(math.log(d_vocab_out), 1.0)


def run_loss(
    run: Run, step: int, *, subset: str | None = None, device: str | torch.device = "cpu"
) -> _RunLoss:
    """The run's training loss at checkpoint ``step`` as a function of the parameters.

    The loss is the run's own (``train.loss`` with ``train.loss_dtype`` log-softmax) on the
    scored positions of the training rows (restricted to ``subset``'s training rows).
    """
    from groklab.train.losses import token_losses

    name, rows, position = resolve_subset(run, subset)
    task = run.task
    model = run.model_at(step, device=device)
    x, y = task.train_x.to(device), task.train_y.to(device)
    if rows is not None:
        x, y = x[rows.to(device)], y[rows.to(device)]
    if x.shape[0] == 0:
        raise ConfigError(f"--subset={subset!r} has no training rows in {run.path}")
    kind = run.config.train.loss
    dtype = torch.float64 if run.config.train.loss_dtype == "float64" else torch.float32
    n_scored = task.n_scored
    params = {k: v.detach() for k, v in model.named_parameters()}

    def token_mean(tok: torch.Tensor) -> torch.Tensor:
        # tok: [..., batch, n_scored] → mean over the scored rows (and position) → [...]
        if position is not None:
            return tok[..., position].mean(dim=-1)
        return tok.mean(dim=(-2, -1))

    stacked = _stacked_forward(model)
    if stacked is not None:
        # Batched weights: all chains through the model's own stacked forward, no vmap.
        def batched_fn(p: dict[str, torch.Tensor], idx: torch.Tensor | None) -> torch.Tensor:
            k = p["embed.W_E"].shape[0]
            xb = x if idx is None else x[idx]  # [batch, pos] shared, or [chain, m, pos]
            yb = y.expand(k, *y.shape) if idx is None else y[idx]  # [chain, batch, n_scored]
            logits = stacked(model.cfg, p, xb, n_out=n_scored)  # [chain, batch, n_scored, V]
            return token_mean(token_losses(logits, yb, kind=kind, dtype=dtype))

        loss_fn, batched = batched_fn, True
    else:

        def single_fn(p: dict[str, torch.Tensor], idx: torch.Tensor | None) -> torch.Tensor:
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            logits = functional_call(model, p, (xb,), {"n_scored": n_scored})
            return token_mean(token_losses(logits, yb, kind=kind, dtype=dtype))

        loss_fn, batched = single_fn, False
    l0 = _init_loss(loss_fn, _Flat(params), batched)
    return _RunLoss(
        loss_fn,
        params,
        int(x.shape[0]),
        default_max_loss(l0, task.d_vocab_out),
        name,
        batched,
        l0,
    )


def _stacked_forward(model: torch.nn.Module) -> Callable[..., torch.Tensor] | None:
    """The transformer's forward over a stack of weights, if the model has one."""
    from groklab.models import transformer

    fn = getattr(transformer, "stacked_forward", None)
    if fn is None or not isinstance(model, transformer.Transformer):
        return None
    return fn


def estimate_llc_at(
    run: Run,
    step: int,
    settings: LLCSettings | None = None,
    *,
    subset: str | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> LLCResult:
    """LLC of ``run``'s training loss at checkpoint ``step`` (see :func:`estimate_llc`)."""
    rl = run_loss(run, step, subset=subset, device=device)
    return estimate_llc(
        rl.loss_fn,
        rl.params,
        n=rl.n,
        settings=settings,
        init_loss=rl.init_loss,
        max_loss=rl.max_loss,
        batched=rl.batched,
        progress=progress,
    )


# --------------------------------------------------------------------------- over checkpoints


def select_steps(
    available: Sequence[int], *, every: int | None = None, steps: Iterable[int] | None = None
) -> list[int]:
    """Checkpoint steps to analyse: ``steps`` if given, else multiples of ``every`` (plus the
    first and last checkpoint), else all."""
    avail = sorted(available)
    if steps is not None:
        want = sorted(set(int(s) for s in steps))
        missing = [s for s in want if s not in set(avail)]
        if missing:
            hint = f"{avail[0]}..{avail[-1]} ({len(avail)} saved)" if avail else "none saved"
            raise ConfigError(f"--steps: no checkpoint at step {missing[0]}; available: {hint}")
        return want
    if every is None:
        return avail
    if every < 1:
        raise ConfigError(f"--every={every} is not allowed; use a positive number of steps")
    out = {s for s in avail if s % every == 0}
    if avail:
        out |= {avail[0], avail[-1]}
    return sorted(out)


def _cache_paths(run: Run, key: str) -> tuple[Path, Path, Path]:
    d = run.path / LLC_DIR
    return d / f"{key}.json", d / f"{key}.parquet", d / f"{key}-traces.parquet"


def _cache_key(run: Run, subset_name: str, settings: LLCSettings) -> str:
    slug = subset_name.replace("/", "-")
    if run.has_imported_split:  # sampled on the imported rows: never a cache of another split
        slug += f"-split{run.task.split_hash[:8]}"
    return f"llc-{slug}-{settings.key()}"


def _write_parquet(path: Path, df: pd.DataFrame) -> None:
    from groklab.store import atomic_write_bytes

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def read_cache(
    run: Run, settings: LLCSettings, *, subset: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cached rows (one per step) and traces (long format) for these settings and subset."""
    name, _, _ = resolve_subset(run, subset)
    _, p_rows, p_traces = _cache_paths(run, _cache_key(run, name, settings))
    rows = pd.read_parquet(p_rows) if p_rows.exists() else pd.DataFrame({"step": []})
    traces = (
        pd.read_parquet(p_traces)
        if p_traces.exists()
        else pd.DataFrame({"step": [], "chain": [], "t": [], "loss": []})
    )
    return rows, traces


def _row(step: int, res: LLCResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "step": step,
        "llc": res.llc,
        "llc_std": res.llc_std,
        "init_loss": res.init_loss,
        "nbeta": res.nbeta,
        "convergence_ratio": res.convergence_ratio,
        "frac_below_init": res.frac_below_init,
        "n_diverged": len(res.diverged),
        "seconds": res.seconds,
        "warnings": " | ".join(res.warnings),
    }
    gc = res.gamma_check
    row.update(
        {
            "gamma_check": float("nan") if gc is None else gc.factor,
            "gamma_check_chains": 0 if gc is None else gc.chains,
            "llc_gamma_lo": float("nan") if gc is None else gc.llc_lo,
            "llc_gamma_lo_std": float("nan") if gc is None else gc.llc_lo_std,
            "llc_gamma_hi": float("nan") if gc is None else gc.llc_hi,
            "llc_gamma_hi_std": float("nan") if gc is None else gc.llc_hi_std,
            "gamma_elasticity": float("nan") if gc is None else gc.elasticity,
            "gamma_elasticity_se": float("nan") if gc is None else gc.elasticity_se,
            # a float (1/0, NaN = not checked) so that rows cached before the check concat
            "gamma_sensitive": float("nan") if gc is None else float(gc.sensitive),
        }
    )
    for c, v in enumerate(res.llc_per_chain):
        row[f"llc_chain_{c}"] = float(v)
    return row


def _has_check(row: Mapping[str, Any], settings: LLCSettings) -> bool:
    """Whether a cached row carries the γ check these settings ask for (rows cached before
    the check existed, or with another factor or chain count, do not)."""
    if not settings.checks_gamma:
        return True
    factor, chains = row.get("gamma_check"), row.get("gamma_check_chains")
    try:
        return float(factor) == settings.gamma_check and int(chains) == settings.check_chains
    except (TypeError, ValueError):
        return False


def _trace_frame(step: int, trace: np.ndarray) -> pd.DataFrame:
    c, t = trace.shape
    return pd.DataFrame(
        {
            "step": np.full(c * t, step, dtype=np.int64),
            "chain": np.repeat(np.arange(c, dtype=np.int32), t),
            "t": np.tile(np.arange(t, dtype=np.int32), c),
            "loss": trace.reshape(-1).astype(np.float64),
        }
    )


def llc_over_checkpoints(
    run: Run,
    settings: LLCSettings | None = None,
    *,
    every: int | None = None,
    steps: Iterable[int] | None = None,
    subset: str | None = None,
    device: str | torch.device = "cpu",
    recompute: bool = False,
    on_step: Callable[[int, LLCResult | None], None] | None = None,
) -> pd.DataFrame:
    """The LLC at each selected checkpoint, with fixed settings, cached in the run directory.

    Results are stored in ``<run>/analysis/llc/llc-<subset>-<settings hash>.parquet`` (one
    row per step: estimate, spread, diagnostics, per-chain estimates), ``...-traces.parquet``
    (every chain's loss at every SGLD step) and ``....json`` (the settings, subset, ``n``,
    ``nbeta``). Steps already in the cache are not recomputed (unless ``recompute``), except
    a step cached without the γ check that ``settings`` ask for (its estimate comes out the
    same, the check is added); the cache is rewritten after every new step, so an
    interrupted call keeps its progress.

    Args:
        run: the run.
        settings: fixed sampler settings for every checkpoint.
        every: analyse checkpoints at multiples of this many steps (plus the first and last).
        steps: explicit checkpoint steps (overrides ``every``).
        subset: restrict the loss to one training subset (see :func:`resolve_subset`).
        device: where to sample.
        recompute: ignore the cache.
        on_step: called with ``(step, result)`` after each new estimate, and with
            ``(step, None)`` for a step taken from the cache.

    Returns:
        One row per selected step, sorted by step.
    """
    s = settings or LLCSettings()
    name, rows_idx, _ = resolve_subset(run, subset)
    key = _cache_key(run, name, s)
    p_json, p_rows, p_traces = _cache_paths(run, key)
    wanted = select_steps(run.checkpoint_steps, every=every, steps=steps)
    cached_rows, _ = (
        (pd.DataFrame({"step": []}), None) if recompute else read_cache(run, s, subset=subset)
    )
    done = {int(r["step"]) for r in cached_rows.to_dict("records") if _has_check(r, s)}
    from groklab._version import __version__

    meta: dict[str, Any] = {
        "kind": "llc-over-checkpoints",
        "groklab_version": __version__,
        "run_config_hash": run.manifest.get("config_hash"),
        "subset": name,
        "subset_rows": "training rows" if rows_idx is None else f"train/{name} training rows",
        "settings": s.to_dict(),
        "key": key,
    }
    for step in wanted:
        if step in done:
            if on_step is not None:
                on_step(step, None)
            continue
        res = estimate_llc_at(run, step, s, subset=subset, device=device)
        meta.update({"n": res.n, "nbeta": res.nbeta, "n_params": res.n_params})
        _merge_into_cache(p_json, p_rows, p_traces, step, res, meta)
        if on_step is not None:
            on_step(step, res)
    rows, _ = read_cache(run, s, subset=subset)
    if not len(rows):
        return pd.DataFrame({"step": []})
    rows = rows[rows["step"].isin(wanted)]
    return rows.sort_values("step").reset_index(drop=True)


def _merge_into_cache(
    p_json: Path, p_rows: Path, p_traces: Path, step: int, res: LLCResult, meta: dict[str, Any]
) -> None:
    """Add one step's result to the cache files, under a lock, merged with what is on disk
    now — so several processes may fill one cache (e.g. disjoint ``--steps``) at once."""
    import fcntl

    from groklab.store import atomic_write_text

    p_rows.parent.mkdir(parents=True, exist_ok=True)
    with open(p_rows.parent / f".{p_rows.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = pd.read_parquet(p_rows) if p_rows.exists() else pd.DataFrame({"step": []})
        traces = pd.read_parquet(p_traces) if p_traces.exists() else None
        new_row = pd.DataFrame([_row(step, res)])
        rows = new_row if not len(rows) else pd.concat([rows[rows["step"] != step], new_row])
        new_tr = _trace_frame(step, res.trace)
        traces = new_tr if traces is None else pd.concat([traces[traces["step"] != step], new_tr])
        _write_parquet(p_rows, rows.sort_values("step").reset_index(drop=True))
        _write_parquet(p_traces, traces.reset_index(drop=True))
        atomic_write_text(p_json, json.dumps(meta, indent=2, sort_keys=True))


def landmarks(df: pd.DataFrame, *, tol: float = 0.1, scale: str = "auto") -> dict[str, Any]:
    """Peak and levelling-off of an LLC curve (rows with ``step`` and ``llc``).

    The peak is the step of the largest estimate. The final level is the median of the last
    10% of the steps (at least 3). The curve has levelled off at the first step after the
    peak from which every later estimate stays within ``tol`` of the drop (peak − final
    level) of the final level.

    ``scale`` says where the drop is measured: ``"linear"`` in LLC units, ``"log"`` in
    log(LLC), ``"auto"`` (default) log when the peak and every estimate after it are positive,
    else linear. Through grokking the LLC at a fixed γ falls by orders of magnitude (628 → 0.24
    on the canonical run at γ = 1,000), so 10% of the linear drop is still 250× the final level;
    on the log scale the band is a factor of the same share of the whole fall (``tol`` 0.1 of a
    2,600× fall is a factor of 2.2). How large that fall is depends on γ: after grokking the
    estimates are γ-sensitive (see :class:`GammaCheck`): the level is γ's, not the
    landscape's. Returns the scale used as ``level_scale``.
    """
    if scale not in ("auto", "log", "linear"):
        raise ConfigError(f"landmarks: scale={scale!r} is not allowed; use auto, log or linear")
    d = df.dropna(subset=["llc"]).sort_values("step")
    if d.empty:
        return {
            "peak_step": None,
            "peak_llc": None,
            "level_step": None,
            "final_llc": None,
            "level_scale": None,
        }
    steps = d["step"].to_numpy()
    v = d["llc"].to_numpy(dtype=float)
    i_peak = int(np.argmax(v))
    k = max(3, len(v) // 10)
    final = float(np.median(v[-k:]))
    positive = bool((v[i_peak:] > 0).all()) and final > 0
    if scale == "log" and not positive:
        raise ConfigError("landmarks: scale='log' needs positive estimates from the peak on")
    use_log = scale == "log" or (scale == "auto" and positive)
    if use_log:  # estimates before the peak may be <= 0; they are never in the band
        fv, ffinal = np.log(np.where(v > 0, v, np.nan)), math.log(final)
    else:
        fv, ffinal = v, final
    drop = fv[i_peak] - ffinal
    level_step = None
    if drop > 0:
        within = np.abs(fv - ffinal) <= tol * drop
        # first index after the peak from which all later points are within the band
        ok_from = len(v)
        for i in range(len(v) - 1, i_peak, -1):
            if not within[i]:
                break
            ok_from = i
        if ok_from < len(v):
            level_step = int(steps[ok_from])
    return {
        "peak_step": int(steps[i_peak]),
        "peak_llc": float(v[i_peak]),
        "level_step": level_step,
        "final_llc": final,
        "level_scale": "log" if use_log else "linear",
    }


# --------------------------------------------------------------------------- calibration


def judge(res: LLCResult) -> tuple[bool, list[str]]:
    """Whether a trace is usable, by the calibration rule; the reasons if not.

    The chain-averaged excess loss over ``L(w*)`` (burn-in included) is cut into 10 blocks
    of equal length; ``E`` is the estimate's excess loss (``llc / nbeta``) and ``s`` the
    spread (standard deviation) of the block means over the second half of the draws, so
    that single noisy draws do not count as spikes:

    * **diverged**: any chain diverged (see :class:`LLCResult`);
    * **dips below L(w*)**: ``E <= 0``, or a block mean below ``-0.1 E - 2 s``;
    * **early spike**: a block before the middle of the draws with a mean above
      ``1.5 E + 2 s`` (the trace overshoots its final level and comes back down);
    * **not flat**: the second half of the draws gives an estimate differing by more than
      10% from the first half's, and by more than 2 standard errors (over chains).
    """
    reasons = []
    if res.diverged or not math.isfinite(res.llc):
        reasons.append("diverged")
        return False, reasons
    keep = [c for c in range(res.trace.shape[0]) if c not in res.diverged]
    excess = res.trace[keep].mean(axis=0) - res.init_loss  # [steps]
    n_blocks = min(10, len(excess))
    blocks = np.array_split(excess, n_blocks)
    means = np.array([b.mean() for b in blocks])
    ends = np.cumsum([len(b) for b in blocks])  # exclusive end step of each block
    b, d = res.settings.burnin, res.settings.draws
    mid = b + d // 2
    late = means[ends - np.array([len(x) for x in blocks]) >= mid]
    s = float(late.std(ddof=1)) if len(late) > 1 else 0.0
    e = res.llc / res.nbeta
    if e <= 0 or means.min() < -0.1 * abs(e) - 2 * s:
        reasons.append("dips below L(w*)")
    early = means[ends <= mid]
    if e > 0 and len(early) and early.max() > 1.5 * e + 2 * s:
        reasons.append("early spike")
    r = res.convergence_ratio
    if not math.isfinite(r) or (not 0.9 <= r <= 1.1 and res.convergence_z > 2):
        reasons.append("not flat")
    return not reasons, reasons


@dataclass(frozen=True, eq=False)
class Calibration:
    """A sweep of settings on one checkpoint and the recommendation.

    Attributes:
        step: the checkpoint.
        subset: the subset's canonical name.
        results: one estimate per setting, in sweep order.
        ok: whether each passed :func:`judge`.
        reasons: why each failed.
        recommended: index into ``results`` of the recommended setting (``None`` if none
            passed).
    """

    step: int
    subset: str
    results: list[LLCResult]
    ok: list[bool]
    reasons: list[list[str]]
    recommended: int | None
    seconds: float = 0.0
    rule: str = field(
        default=(
            "keep settings whose traces pass judge() (no divergence, no dip below L(w*), no "
            "early spike above 1.5x the final level, second/first-half estimate within 10% or "
            "within 2 standard errors); "
            "among them take the largest epsilon (fastest mixing), then the smallest gamma "
            "(least pull towards w*), then the nbeta closest to n/log n"
        )
    )

    @property
    def recommendation(self) -> LLCSettings | None:
        return None if self.recommended is None else self.results[self.recommended].settings

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "llc-calibration",
            "step": self.step,
            "subset": self.subset,
            "rule": self.rule,
            "recommended": self.recommended,
            "recommendation": None
            if self.recommendation is None
            else self.recommendation.to_dict(),
            "seconds": self.seconds,
            "sweep": [
                {**r.to_dict(), "ok": ok, "reasons": why}
                for r, ok, why in zip(self.results, self.ok, self.reasons, strict=True)
            ],
        }


def calibrate(
    run: Run,
    step: int,
    *,
    epsilons: Sequence[float] = (3e-5, 1e-4, 3e-4, 1e-3),
    gammas: Sequence[float] = (30.0, 100.0, 300.0, 1000.0),
    nbetas: Sequence[float | str] = ("n/log n",),
    base: LLCSettings | None = None,
    subset: str | None = None,
    device: str | torch.device = "cpu",
    max_chains_per_batch: int = 32,
    save: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Sweep ``epsilon x gamma x nbeta`` on checkpoint ``step`` and recommend settings.

    Settings are judged by :func:`judge`; the recommendation follows ``Calibration.rule``.
    All settings' chains run together as batched computations of up to
    ``max_chains_per_batch`` chains. With ``save``, the sweep (without traces) and the
    recommendation go to ``<run>/analysis/llc/calibration-step<S>.json`` and
    ``calibration.json``, and the traces to ``calibration-step<S>-traces.npz``.
    """
    b = base or LLCSettings()
    grid = [
        replace(b, epsilon=float(e), gamma=float(g), nbeta=nb)
        for nb in nbetas
        for e in epsilons
        for g in gammas
    ]
    if not grid:
        raise ConfigError("llc calibrate: the sweep is empty; give at least one epsilon and gamma")
    rl = run_loss(run, step, subset=subset, device=device)
    flat = _Flat(rl.params)
    l0 = rl.init_loss
    nbs = [resolve_nbeta(s.nbeta, n=rl.n, batch_size=s.batch_size) for s in grid]
    c = b.chains
    per_batch = max(1, max_chains_per_batch // c)
    traces: list[np.ndarray] = []
    t0 = time.perf_counter()
    steps = b.burnin + b.draws
    for i in range(0, len(grid), per_batch):
        part = grid[i : i + per_batch]
        k = len(part)
        tr = _run_chains(
            rl.loss_fn,
            flat,
            n=rl.n,
            eps=torch.tensor([s.epsilon for s in part], dtype=torch.float64).repeat_interleave(c),
            gamma=torch.tensor([s.gamma for s in part], dtype=torch.float64).repeat_interleave(c),
            nbeta=torch.tensor(nbs[i : i + k], dtype=torch.float64).repeat_interleave(c),
            steps=steps,
            batch_size=b.batch_size,
            seed=b.seed + i,
            batched=rl.batched,
        )
        traces.extend(tr.cpu().numpy().reshape(k, c, steps))
        if progress is not None:
            progress(i + k, len(grid))
    seconds = time.perf_counter() - t0
    results = [
        _summarise(
            tr,
            init_loss=l0,
            nbeta=nb,
            n=rl.n,
            n_params=flat.n_params,
            settings=s,
            max_loss=s.max_loss if s.max_loss is not None else rl.max_loss,
            seconds=seconds / len(grid),
        )
        for tr, nb, s in zip(traces, nbs, grid, strict=True)
    ]
    verdicts = [judge(r) for r in results]
    ok = [v[0] for v in verdicts]
    passing = [i for i, good in enumerate(ok) if good]
    n_default = resolve_nbeta("n/log n", n=rl.n, batch_size=b.batch_size)
    recommended = (
        min(
            passing,
            key=lambda i: (
                -grid[i].epsilon,
                grid[i].gamma,
                abs(math.log(nbs[i] / n_default)),
            ),
        )
        if passing
        else None
    )
    cal = Calibration(
        step=step,
        subset=rl.subset,
        results=results,
        ok=ok,
        reasons=[v[1] for v in verdicts],
        recommended=recommended,
        seconds=seconds,
    )
    if save:
        from groklab.store import atomic_write_bytes, atomic_write_text

        d = run.path / LLC_DIR
        blob = json.dumps(cal.to_dict(), indent=2, sort_keys=True)
        atomic_write_text(d / f"calibration-step{step}.json", blob)
        atomic_write_text(d / CALIBRATION_FILE, blob)
        buf = io.BytesIO()
        np.savez_compressed(buf, traces=np.stack([r.trace for r in results]))
        atomic_write_bytes(d / f"calibration-step{step}-traces.npz", buf.getvalue())
    return cal


def load_calibration(run: Run) -> tuple[LLCSettings, dict[str, Any]] | None:
    """The latest saved calibration's recommended settings (and its record), if any."""
    p = run.path / LLC_DIR / CALIBRATION_FILE
    if not p.exists():
        return None
    try:
        rec = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        raise ConfigError(
            f"{p}: unreadable calibration file; rerun `groklab llc calibrate`"
        ) from None
    if not rec.get("recommendation"):
        return None
    return LLCSettings.from_dict(rec["recommendation"]), rec
