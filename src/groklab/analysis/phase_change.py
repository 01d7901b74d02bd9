"""Phase changes in any metric curve: where a (per-component) loss drops, and how sharply.

A phase change is a drop of the loss from a plateau to a lower level within a short stretch of
training, measured in log-step (phase changes look like steps on a log-step axis; slow
power-law decline does not). The rule, applied to one curve ``(step, value)``:

1. **Resample.** Keep finite values at steps > 0; put the points in bins of
   ``1 / bins_per_decade`` decades of step and take each bin's median at the bins' mean
   ``x = log10(step)``; then a running median over 3 bins. (Early, sparse evaluations are
   bins of one point; late, dense ones are averaged: the noise is even across the axis.)
2. **Steep bins.** A bin is steep when the curve falls faster than ``steep`` times its recent
   level per decade of steps: ``dy/dx < -steep · max(y over the previous lookback
   decades)`` (central differences; ``lookback`` 0.5). With the default ``steep = 1`` a
   logistic drop in log-step is caught when it spans less than about one decade from 10% to
   90%; the long tail of a slower decline is not.
3. **Drops.** Runs of steep bins are candidate drops; a run that starts within
   ``min_plateau`` decades of the previous one is merged into it. A drop needs a plateau:
   at least ``min_plateau`` decades of curve before it (so the fall from the random
   initialisation at the very start is not a phase change).
4. **Levels.** ``plateau`` = median over the ``min_plateau`` decades before the drop;
   ``final`` = the lowest (smoothed) level within ``2 · min_plateau`` decades after the steep
   stretch (and before the next drop). ``drop = plateau - final``; drops smaller than ``min_rel_drop · plateau``
   (default: the loss must at least halve) are discarded.
5. **Steps.** ``onset`` = where the curve first falls ``onset_frac`` (10%) of the drop below
   the plateau, ``midpoint`` = half of it, ``end`` = ``end_frac`` (90%); each found by walking
   from the steep stretch outwards and interpolating linearly in log-step between bins.

:func:`detect_phase_changes` returns every drop of a curve, :func:`main_phase_change` the
largest, and :func:`phase_change_table` the largest drop of every loss column of a run's
metrics (what ``groklab show`` prints and reports use).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "PhaseChange",
    "detect_phase_changes",
    "main_phase_change",
    "phase_change_table",
    "spearman",
]


@dataclass(frozen=True)
class PhaseChange:
    """One drop of a curve: its steps and levels.

    Attributes:
        onset: step where the curve has fallen ``onset_frac`` of the drop below the plateau.
        midpoint: step where it has fallen half of the drop.
        end: step where it has fallen ``end_frac`` of the drop.
        plateau: level before the drop.
        final: level after the drop.
    """

    onset: float
    midpoint: float
    end: float
    plateau: float
    final: float

    @property
    def drop(self) -> float:
        return self.plateau - self.final

    @property
    def width_decades(self) -> float:
        """``log10(end / onset)``: how many decades of steps the drop takes."""
        return float(np.log10(self.end / self.onset))

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "drop": self.drop, "width_decades": self.width_decades}


def _rolling_median3(y: np.ndarray) -> np.ndarray:
    if len(y) < 3:
        return y.copy()
    out = y.copy()
    out[1:-1] = np.median(np.stack([y[:-2], y[1:-1], y[2:]]), axis=0)
    return out


def _resample(steps: np.ndarray, values: np.ndarray, per_decade: float):
    x = np.log10(steps)
    idx = np.floor((x - x[0]) * per_decade + 1e-9).astype(int)
    xs, ys = [], []
    for b in np.unique(idx):
        sel = idx == b
        xs.append(x[sel].mean())
        ys.append(np.median(values[sel]))
    return np.asarray(xs), _rolling_median3(np.asarray(ys))


def _crossing(x: np.ndarray, y: np.ndarray, i: int, thr: float) -> float:
    """x where the segment from bin i-1 (y > thr) to bin i (y <= thr) crosses ``thr``."""
    if i <= 0:
        return float(x[0])
    y0, y1 = y[i - 1], y[i]
    t = 0.0 if y0 == y1 else (y0 - thr) / (y0 - y1)
    return float(x[i - 1] + min(max(t, 0.0), 1.0) * (x[i] - x[i - 1]))


def detect_phase_changes(
    steps: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    *,
    bins_per_decade: float = 16.0,
    steep: float = 1.0,
    min_plateau: float = 0.25,
    lookback: float = 0.5,
    min_rel_drop: float = 0.5,
    onset_frac: float = 0.1,
    end_frac: float = 0.9,
) -> list[PhaseChange]:
    """Every phase change (drop) of one curve, in order of onset (rule: module docstring).

    Args:
        steps: training steps of the evaluations.
        values: the metric at those steps (a loss: lower is better).
        bins_per_decade: resolution of the log-step resampling.
        steep: a bin is steep when the curve falls faster than this times its recent level
            per decade of steps.
        min_plateau: decades of curve needed before a drop (and the span of the plateau and
            final levels).
        lookback: decades over which the "recent level" of the steepness test is taken.
        min_rel_drop: smallest drop kept, as a share of the plateau level.
        onset_frac, end_frac: share of the drop that defines ``onset`` and ``end``.
    """
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(s) & np.isfinite(v) & (s > 0)
    s, v = s[keep], v[keep]
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    if len(s) < 4:
        return []
    x, y = _resample(s, v, bins_per_decade)
    m = len(x)
    if m < 4:
        return []
    slope = np.gradient(y, x)
    # The recent level includes the curve's (interpolated) value a full lookback back, so
    # sparse early evaluations do not shorten the lookback.
    back = np.interp(x - lookback, x, y, left=y[0])
    recent = np.array(
        [max(y[(x >= x[j] - lookback) & (x <= x[j])].max(), back[j]) for j in range(m)]
    )
    is_steep = slope < -steep * np.maximum(recent, 0.0)

    runs: list[list[int]] = []  # [first bin, last bin] of each run of steep bins
    for j in np.flatnonzero(is_steep):
        if runs and j == runs[-1][1] + 1:
            runs[-1][1] = j
        elif runs and x[j] - min_plateau < x[runs[-1][1]]:
            runs[-1][1] = j  # starts on the heels of the previous run: one drop
        else:
            runs.append([j, j])

    found: list[PhaseChange] = []
    for k, (a, b) in enumerate(runs):
        if x[a] - min_plateau < x[0] - 1e-9:
            continue  # no plateau seen before it: the initial fall, not a phase change
        before = (x >= x[a] - min_plateau) & (x < x[a])
        if not before.any():
            continue
        plateau = float(np.median(y[before]))
        nxt = x[runs[k + 1][0]] if k + 1 < len(runs) else np.inf
        after = (x > x[b]) & (x <= min(x[b] + 2 * min_plateau, nxt))
        final = float(min(y[after].min(), y[b])) if after.any() else float(y[b])
        drop = plateau - final
        if plateau <= 0 or drop < min_rel_drop * plateau:
            continue
        thr_on = plateau - onset_frac * drop
        thr_mid = plateau - 0.5 * drop
        thr_end = plateau - end_frac * drop
        # onset: walk left from the steep stretch to the last bin still above the threshold
        i = a
        while i > 0 and y[i - 1] <= thr_on:
            i -= 1
        i_on = i if y[i] <= thr_on else min(i + 1, m - 1)
        x_on = _crossing(x, y, i_on, thr_on)
        # midpoint and end: walk right from the onset
        i_mid = next((j for j in range(i_on, m) if y[j] <= thr_mid), m - 1)
        i_end = next((j for j in range(i_mid, m) if y[j] <= thr_end), m - 1)
        x_mid = max(_crossing(x, y, i_mid, thr_mid), x_on)
        x_end = max(_crossing(x, y, i_end, thr_end), x_mid)
        found.append(
            PhaseChange(
                onset=float(10**x_on),
                midpoint=float(10**x_mid),
                end=float(10**x_end),
                plateau=plateau,
                final=final,
            )
        )
    return found


def main_phase_change(
    steps: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, **kwargs: Any
) -> PhaseChange | None:
    """The largest drop of a curve (``None`` if it has none); keywords as
    :func:`detect_phase_changes`."""
    found = detect_phase_changes(steps, values, **kwargs)
    return max(found, key=lambda p: p.drop) if found else None


def phase_change_table(metrics: Any, columns: Iterable[str] | None = None, **kwargs: Any):
    """The largest phase change of every loss column of a run's metrics.

    Args:
        metrics: a run's metrics DataFrame (``run.metrics``), with a ``step`` column.
        columns: columns to scan; default every column ending in ``/loss``.
        **kwargs: passed to :func:`detect_phase_changes`.

    Returns:
        A pandas DataFrame indexed by column with ``onset, midpoint, end, plateau, final,
        drop, width_decades, n_drops`` (NaN steps and ``n_drops`` 0 where none was found).
    """
    import pandas as pd

    if columns is None:
        columns = [c for c in metrics.columns if c.endswith("/loss")]
    rows = {}
    empty = dict.fromkeys(
        ("onset", "midpoint", "end", "plateau", "final", "drop", "width_decades"), np.nan
    )
    for c in columns:
        found = detect_phase_changes(metrics["step"].to_numpy(), metrics[c].to_numpy(), **kwargs)
        best = max(found, key=lambda p: p.drop) if found else None
        rows[c] = {**(best.as_dict() if best else empty), "n_drops": len(found)}
    cols = ["onset", "midpoint", "end", "plateau", "final", "drop", "width_decades", "n_drops"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols)


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of two equally long sequences (ties get their mean rank;
    pairs with a NaN are dropped). NaN when fewer than 3 pairs remain or a side is constant."""
    import pandas as pd

    df = pd.DataFrame({"a": np.asarray(a, dtype=float), "b": np.asarray(b, dtype=float)}).dropna()
    if len(df) < 3:
        return float("nan")
    ra, rb = df["a"].rank().to_numpy(), df["b"].rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
