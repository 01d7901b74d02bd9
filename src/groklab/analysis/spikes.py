"""Loss spikes (the "slingshot"): count and date them in a loss curve.

The rule, on ``x = log10(loss)`` at the logged steps:

1. **baseline** ``b(t)``: the median of ``x`` over the last ``window`` logged points before
   ``t`` that were not inside a spike (so a spike does not raise its own baseline);
2. a spike **starts** at the first point where ``x(t) - b(t) >= rise`` (the loss jumped at
   least ``10**rise`` times above its recent level) and no spike is in progress; no spike can
   start before ``window`` points have been seen;
3. its **peak** is the largest ``x`` until it ends; its **height** is ``x(peak) - b`` in
   decades;
4. it **ends** at the first point after the peak where ``x <= b + rise / 2`` (back within half
   the threshold of the pre-spike baseline); a spike still up at the end of the curve has no end.

Using the median of a trailing window (not the running minimum) keeps quantisation noise near
the float32 floor (loss ≈ 1e-7, where one step of a float32 log-probability is that large)
from counting as spikes, while the slingshot jumps of several decades always do. The steady
decline of ordinary training never triggers the rule, since every point lies below its
trailing median.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from groklab.errors import ConfigError

__all__ = ["Spike", "analyze_run", "detect_spikes", "spikes_table"]

_FLOOR = 1e-300  # log of an exact zero loss would be -inf


@dataclass(frozen=True)
class Spike:
    """One loss spike (steps are logged steps of the curve).

    Attributes:
        start: first step at least ``rise`` decades above the baseline.
        peak: step of the highest loss in the spike.
        end: first step after the peak back within ``rise / 2`` decades of the baseline
            (``None``: not back by the end of the curve).
        baseline_loss: the pre-spike baseline (``10 ** b``).
        peak_loss: the loss at the peak.
        height: decades from the baseline to the peak.
    """

    start: int
    peak: int
    end: int | None
    baseline_loss: float
    peak_loss: float
    height: float


def detect_spikes(
    steps: Sequence[int] | np.ndarray,
    loss: Sequence[float] | np.ndarray,
    *,
    window: int = 20,
    rise: float = 1.0,
) -> list[Spike]:
    """Loss spikes of a curve by the rule in the module docstring.

    Args:
        steps: logged steps, increasing.
        loss: the loss at those steps (non-negative; NaN points are skipped).
        window: trailing points in the baseline median.
        rise: decades above the baseline that start a spike.

    Returns:
        The spikes in order of their start.

    Raises:
        ConfigError: mismatched lengths, ``window < 1`` or ``rise <= 0``.
    """
    s = np.asarray(steps, dtype=np.int64)
    v = np.asarray(loss, dtype=np.float64)
    if s.shape != v.shape or s.ndim != 1:
        raise ConfigError(f"spikes: steps {s.shape} and loss {v.shape} must be equal 1-D")
    if window < 1:
        raise ConfigError(f"spikes: window={window} is not allowed; must be >= 1")
    if not rise > 0:
        raise ConfigError(f"spikes: rise={rise} is not allowed; must be > 0 decades")
    keep = np.isfinite(v)
    s, v = s[keep], v[keep]
    x = np.log10(np.maximum(v, _FLOOR))

    spikes: list[Spike] = []
    recent: deque[float] = deque(maxlen=window)
    start = peak_i = -1
    base = 0.0
    for i, xi in enumerate(x):
        if start < 0:
            if len(recent) == window:
                b = float(np.median(np.fromiter(recent, dtype=np.float64)))
                if xi - b >= rise:
                    start, peak_i, base = i, i, b
                    continue
            recent.append(float(xi))
            continue
        if xi > x[peak_i]:
            peak_i = i
        elif xi <= base + rise / 2:
            spikes.append(_spike(s, x, start, peak_i, i, base))
            start = -1
            recent.append(float(xi))
    if start >= 0:
        spikes.append(_spike(s, x, start, peak_i, None, base))
    return spikes


def _spike(s: np.ndarray, x: np.ndarray, start: int, peak: int, end: int | None, b: float) -> Spike:
    return Spike(
        start=int(s[start]),
        peak=int(s[peak]),
        end=None if end is None else int(s[end]),
        baseline_loss=float(10**b),
        peak_loss=float(10 ** x[peak]),
        height=float(x[peak] - b),
    )


def spikes_table(spikes: Sequence[Spike]) -> pd.DataFrame:
    """One row per spike (columns: the :class:`Spike` fields)."""
    cols = [f for f in Spike.__dataclass_fields__]
    return pd.DataFrame([asdict(sp) for sp in spikes], columns=cols)


def analyze_run(
    run_dir: str | Path,
    *,
    columns: Sequence[str] = ("train/loss", "test/loss"),
    window: int = 20,
    rise: float = 1.0,
) -> dict[str, Any]:
    """Spikes in a saved run's loss curves; written to ``<run>/analysis/spikes.json``.

    Args:
        run_dir: the run directory.
        columns: metrics columns to scan (the first is the headline count).
        window, rise: the rule's parameters (see :func:`detect_spikes`).

    Returns:
        ``n`` (spikes in the first column), ``first_step`` (start of the first one),
        ``max_height`` (decades), ``n_<column>`` per column, and ``spikes`` (every spike of
        every column, as dicts).
    """
    from groklab.store import METRICS, atomic_write_text

    run_dir = Path(run_dir)
    p = run_dir / METRICS
    if not p.exists():
        raise ConfigError(f"{run_dir}: no {METRICS} to scan for spikes")
    from groklab.run import load_run
    from groklab.store import CONFIG, load_metrics

    # checked like every read: a damaged file is named (cross-checked when it is a run)
    m = load_run(run_dir).metrics if (run_dir / CONFIG).exists() else load_metrics(run_dir)
    missing = [c for c in columns if c not in m]
    if missing:
        raise ConfigError(f"spikes: {run_dir} has no metrics column {missing[0]!r}")
    out: dict[str, Any] = {"rule": {"window": window, "rise": rise}, "spikes": {}}
    for c in columns:
        found = detect_spikes(m["step"].to_numpy(), m[c].to_numpy(), window=window, rise=rise)
        out["spikes"][c] = [asdict(sp) for sp in found]
        out[f"n_{c.replace('/', '_')}"] = len(found)
    head = out["spikes"][columns[0]]
    out["n"] = len(head)
    out["first_step"] = head[0]["start"] if head else None
    out["max_height"] = max((sp["height"] for sp in head), default=None)
    if out["max_height"] is not None and not math.isfinite(out["max_height"]):
        out["max_height"] = None
    atomic_write_text(run_dir / "analysis" / "spikes.json", json.dumps(out, indent=1))
    return out
