"""Training phases read off the progress measures: memorisation, circuit formation, cleanup.

Nanda et al. (2023) split a grokking run into three phases: *memorisation* (train loss falls,
the weights grow, excluded loss tracks train loss), *circuit formation* (train and test loss
flat, the weights shrink slowly, excluded loss rises above train loss as the Fourier circuit
takes over the training data), and *cleanup* (weight decay removes the memorising components:
the weights drop sharply and test loss falls — grokking). :func:`find_phases` places the
boundaries by a rule on two of the measures, the sum of squared weights ``W(t)``
(``sumsq/total``) and the test loss ``L(t)``:

1. **Memorisation ends / circuit formation starts** at the checkpoint where ``W`` is largest
   (up to the grokking step): the step at which the pull towards low training loss and the
   pull of weight decay balance (the paper's description of that boundary).
2. **Cleanup** is the sharp fall of the test loss. With ``r_i = (ln L_{i−1} − ln L_i) /
   (t_i − t_{i−1})`` the decline rate of the log test loss over the interval ending at
   checkpoint ``i``, take the interval after the peak of ``W`` and up to the first checkpoint
   at or after the grokking step with the largest ``r``, and extend it both ways over the
   contiguous intervals whose rate is at least ``half`` (default 0.5) of that maximum — the
   full width at half maximum of the decline-rate peak. Cleanup starts at the beginning of the
   first of those intervals and ends at the end of the last; circuit formation ends where
   cleanup starts. Cleanup is only looked for in a run that grokked; in a mixed run ``L`` is
   the mean of the operations' test losses and "grokked" means every operation did.
3. **The grokking step** is the first evaluated step with test accuracy ≥ ``acc`` (default
   0.99), from the run's ``metrics.parquet`` when given (it is evaluated more often than
   checkpoints are saved), else from the progress table; per operation for mixed runs.

The excluded-loss / train-loss ratio at the start of circuit formation and at the last
analysed checkpoint before the grokking step is recorded per operation: it measures how much
of the training performance already comes from the Fourier circuit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from groklab.errors import ConfigError
from groklab.run import first_step_at

__all__ = ["Phases", "find_phases", "grokking_step"]

RULE = (
    "memorisation ends at the peak of the sum of squared weights; cleanup is the full width at "
    "half maximum of the steepest fall of log test loss between that peak and grokking; "
    "grokking = first step with test accuracy >= 99%"
)


@dataclass(frozen=True)
class Phases:
    """Phase boundaries of a run (steps; ``None`` where a phase was not reached).

    Attributes:
        memorisation: ``(start, end)``.
        circuit_formation: ``(start, end)``; ``end`` is ``None`` while it lasts to the end.
        cleanup: ``(start, end)`` or ``None`` if the run did not grok.
        grokking_step: first step with test accuracy ≥ the threshold (all operations).
        grokking_step_by_op: the same per operation.
        excluded_ratio_at_formation: ``excluded_loss / train_loss`` per operation at the start
            of circuit formation.
        excluded_ratio_before_grokking: the same at the last checkpoint before grokking.
        rule: the rule used, in words.
    """

    memorisation: tuple[int, int]
    circuit_formation: tuple[int, int | None]
    cleanup: tuple[int, int] | None
    grokking_step: int | None
    grokking_step_by_op: dict[str, int | None] = field(default_factory=dict)
    excluded_ratio_at_formation: dict[str, float] = field(default_factory=dict)
    excluded_ratio_before_grokking: dict[str, float] = field(default_factory=dict)
    rule: str = RULE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Phases:
        d = dict(d)
        for k in ("memorisation", "circuit_formation", "cleanup"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def grokking_step(
    table: pd.DataFrame,
    op: str,
    *,
    metrics: pd.DataFrame | None = None,
    single_op: bool = True,
    acc: float = 0.99,
) -> int | None:
    """First step with test accuracy ≥ ``acc`` for ``op`` (from ``metrics`` when it has it)."""
    if metrics is not None and len(metrics):
        col = "test/acc" if single_op else f"test/{op}/acc"
        if col in metrics:
            return first_step_at(metrics, col, acc)
    return first_step_at(table, f"{op}/test_acc", acc)


def find_phases(
    table: pd.DataFrame,
    ops: list[str],
    *,
    metrics: pd.DataFrame | None = None,
    half: float = 0.5,
    acc: float = 0.99,
) -> Phases:
    """Place the phase boundaries by the rule in the module docstring.

    Args:
        table: the progress table (:func:`groklab.analysis.progress.progress_measures`).
        ops: the operations in it.
        metrics: the run's ``metrics.parquet`` (for the grokking step), optional.
        half: the fraction of the peak test-loss decline rate that bounds cleanup.
        acc: the test accuracy that counts as grokked.

    Raises:
        ConfigError: the table is empty or lacks ``sumsq/total``.
    """
    need = ["sumsq/total", *(f"{op}/test_loss" for op in ops)]
    if table.empty or any(c not in table for c in need):
        raise ConfigError(f"progress table is empty or lacks one of the columns {', '.join(need)}")
    if not 0 < half < 1:
        raise ConfigError(f"half={half} is not allowed; must be in (0, 1)")
    t = table.sort_values("step").reset_index(drop=True)
    steps = [int(s) for s in t["step"]]
    w = [float(x) for x in t["sumsq/total"]]

    by_op = {
        op: grokking_step(t, op, metrics=metrics, single_op=len(ops) == 1, acc=acc) for op in ops
    }
    grok = None if any(v is None for v in by_op.values()) else max(by_op.values())  # type: ignore[type-var]

    # 1. memorisation ends at the peak of W (up to the grokking step).
    upto = [i for i, s in enumerate(steps) if grok is None or s <= grok] or [0]
    i_peak = max(upto, key=lambda i: w[i])
    t1 = steps[i_peak]

    # 2. cleanup = FWHM of the steepest fall of log test loss between the W peak and grokking.
    test_cols = [f"{op}/test_loss" for op in ops]
    loss = [float(x) for x in t[test_cols].mean(axis=1)]
    cleanup = None
    if grok is not None:
        rates = {
            i: (math.log(loss[i - 1]) - math.log(loss[i])) / (steps[i] - steps[i - 1])
            for i in range(i_peak + 1, len(steps))
            if loss[i - 1] > 0 and loss[i] > 0
        }
        after = [i for i in rates if steps[i] >= grok]
        search = [i for i in rates if not after or i <= min(after)]
        if search and max(rates[i] for i in search) > 0:
            i_max = max(search, key=rates.__getitem__)
            cut = half * rates[i_max]
            lo = hi = i_max
            while lo - 1 in rates and rates[lo - 1] >= cut:
                lo -= 1
            while hi + 1 in rates and rates[hi + 1] >= cut:
                hi += 1
            cleanup = (steps[lo - 1], steps[hi])
    formation_end = cleanup[0] if cleanup else None

    at_formation, before_grok = {}, {}
    for op in ops:
        ex, tr = f"{op}/excluded_loss", f"{op}/train_loss"
        if ex not in t:
            continue
        ratio = t[ex] / t[tr]
        at_formation[op] = float(ratio.iloc[i_peak])
        g = by_op.get(op)
        if g is not None:
            before = [i for i, s in enumerate(steps) if s < g]
            if before:
                before_grok[op] = float(ratio.iloc[before[-1]])

    return Phases(
        memorisation=(steps[0], t1),
        circuit_formation=(t1, formation_end),
        cleanup=cleanup,
        grokking_step=grok,
        grokking_step_by_op=by_op,
        excluded_ratio_at_formation=at_formation,
        excluded_ratio_before_grokking=before_grok,
    )
