"""Calibration: judging sampler traces and choosing the settings for a run.

:func:`judge` applies the calibration rule to one estimate (no divergence, no dip below
``L(w*)``, no early spike, a flat second half). :func:`calibrate` sweeps ``epsilon x gamma x
nbeta`` on one checkpoint, with all settings' chains in shared batched computations, judges
every trace and recommends settings by the rule in :class:`Calibration`; the sweep and the
recommendation are saved under the run's ``analysis/llc/``, where :func:`load_calibration`
finds the latest one.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from groklab.analysis.llc.cache import CALIBRATION_FILE, LLC_DIR
from groklab.analysis.llc.result import LLCResult, _summarise
from groklab.analysis.llc.runs import run_loss
from groklab.analysis.llc.sampler import _Flat, _run_chains
from groklab.analysis.llc.settings import LLCSettings, resolve_nbeta
from groklab.errors import ConfigError

if TYPE_CHECKING:
    from groklab.run import Run


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
