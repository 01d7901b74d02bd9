"""Bisection: the one search for the critical value of generalisation.

:func:`bisect_search` owns the bracket logic and nothing else: it asks an ``evaluate(values)``
callback which values generalise (the caller trains the runs and judges them) and narrows
``[lo, hi]`` round by round, on a linear or a log scale. :func:`seed_meets` and
:func:`value_generalises` are the one verdict rule: a seed meets the criterion when its metric
reaches the threshold (``reached``: at some evaluated step; ``final``: at the last one), and a
value generalises when at least ``quorum`` of its seeds (default: a strict majority) do.

:func:`bisect_sweep` searches a spec's ``[bisect]`` key with them (runs trained by the
executor; the history and estimate written to ``bisect.json``); :func:`groklab.dcrit.find_dcrit`
searches the training-set size with them on a log scale.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from groklab.errors import ConfigError
from groklab.store import METRICS, atomic_write_text
from groklab.sweep.analyses import _jsonable
from groklab.sweep.executor import run_spec_runs
from groklab.sweep.spec import (
    BISECT_FILE,
    CRITERIA,
    SCALES,
    BisectSpec,
    SweepRun,
    SweepSpec,
    _set_native,
    run_name,
)
from groklab.sweep.sweepfile import _merge_runs, _write_sweep_file

Value = float | int

# --------------------------------------------------------------------------- the verdict


def seed_meets(
    metrics: pd.DataFrame, metric: str, threshold: float, *, criterion: str = "reached"
) -> bool:
    """Whether one run's ``metric`` meets ``threshold`` under ``criterion``.

    ``reached``: ``metric >= threshold`` at some evaluated step
    (:func:`groklab.run.first_step_at`); ``final``: at the last logged row (a NaN there, as in
    a diverged run, does not meet it). A run without the column or without rows does not.
    """
    from groklab.run import first_step_at

    if criterion not in CRITERIA:
        raise ConfigError(f"criterion={criterion!r} is not allowed; allowed: {', '.join(CRITERIA)}")
    if metric not in metrics or metrics.empty:
        return False
    if criterion == "reached":
        return first_step_at(metrics, metric, threshold) is not None
    final = float(metrics[metric].iloc[-1])
    return math.isfinite(final) and final >= threshold


def value_generalises(n_met: int, n: int, *, quorum: int | None = None) -> bool:
    """Whether a value whose ``n_met`` of ``n`` seeds meet the criterion generalises.

    It does when at least ``quorum`` seeds meet it; the default ``None`` is a strict majority
    (``n // 2 + 1``: 1 of 1, 2 of 2, 2 of 3, 3 of 4), so a tie does not generalise.
    """
    need = n // 2 + 1 if quorum is None else quorum
    if n < 1 or not 1 <= need <= n:
        raise ConfigError(
            f"quorum={quorum!r} is not allowed with {n} seeds; need 1 <= quorum <= {n}"
        )
    return n_met >= need


# --------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class SearchRound:
    """One batch of evaluated values (the two ends first) and the bracket after it.

    ``lo`` is ``None`` when ``lo`` already generalised, ``hi`` is ``None`` when ``hi`` did not
    (see :class:`Bracket`).
    """

    values: tuple[Value, ...]
    generalised: tuple[bool, ...]
    lo: Value | None
    hi: Value | None


@dataclass(frozen=True)
class Bracket:
    """The result of :func:`bisect_search`: ``lo < critical value <= hi``.

    Attributes:
        lo: the largest value that did not generalise below ``hi``; ``None`` when even the
            initial ``lo`` generalised (then ``hi`` is that ``lo``: the critical value is at
            or below it).
        hi: the smallest value that generalised; ``None`` when even the initial ``hi`` did not
            (then ``lo`` is that ``hi``: the critical value is above it, or needs more steps).
        scale: ``linear`` or ``log``.
        rounds: every round in order, the two ends first.
        stop: why the search stopped: ``below`` / ``above`` (the critical value lies outside
            the initial bracket), ``tolerance`` (the bracket is narrow enough), ``exhausted``
            (no value of the grid left strictly inside, e.g. two adjacent integers) or
            ``max_rounds``; ``running`` in the snapshots passed to ``on_round`` mid-search.
    """

    lo: Value | None
    hi: Value | None
    scale: str
    rounds: tuple[SearchRound, ...]
    stop: str

    @property
    def estimate(self) -> float | None:
        """The middle of the bracket on its scale (geometric mean on ``log``); ``None`` when
        the critical value lies outside the initial bracket."""
        if self.lo is None or self.hi is None:
            return None
        if self.scale == "log":
            return math.sqrt(self.lo * self.hi)
        return (self.lo + self.hi) / 2

    @property
    def evaluated(self) -> dict[Value, bool]:
        """Every evaluated value and its verdict."""
        return {v: g for r in self.rounds for v, g in zip(r.values, r.generalised, strict=True)}


def _round_value(x: float, *, integer: bool, scale: str) -> Value:
    """A value as the search evaluates it (see :func:`bisect_search`)."""
    if integer:
        return round(x)
    return round(float(x), 6) if scale == "linear" else float(f"{x:.6g}")


def _narrow(lo: Value, hi: Value, tol: float | None, rel_tol: float | None) -> bool:
    return (tol is not None and hi - lo <= tol) or (rel_tol is not None and hi / lo <= 1 + rel_tol)


def bisect_search(
    evaluate: Callable[[list[Value]], Mapping[Value, bool]],
    *,
    lo: Value,
    hi: Value,
    scale: str = "linear",
    integer: bool = False,
    tol: float | None = None,
    rel_tol: float | None = None,
    max_rounds: int = 8,
    points_per_round: int = 1,
    on_round: Callable[[Bracket], None] | None = None,
) -> Bracket:
    """Narrow ``[lo, hi]`` to the critical value at which ``evaluate`` turns to generalising.

    Both ends are evaluated first (expected: ``lo`` does not generalise, ``hi`` does). If
    ``lo`` already generalises or ``hi`` does not, the search ends there (see
    :class:`Bracket`). Otherwise each round evaluates ``points_per_round`` values spaced evenly
    strictly inside the bracket on ``scale`` (``linear``: arithmetic; ``log``: geometric) and
    moves the bracket to the smallest value that generalised and the largest smaller value that
    did not. It stops before a round when the bracket is narrow enough (``hi - lo <= tol``
    or ``hi / lo <= 1 + rel_tol``, whichever is given; either one suffices when both are), when
    no value is left strictly inside (with neither tolerance, only this and ``max_rounds`` stop
    it), or after ``max_rounds`` rounds.

    Values are rounded before they are evaluated: to integers with ``integer``, else to 6
    decimals on ``linear`` and 6 significant digits on ``log`` (short, stable run names).

    Args:
        evaluate: ``evaluate(values) -> {value: generalised}`` for a batch of values (trained
            together by the caller, judged e.g. with :func:`value_generalises`).
        lo, hi: the initial bracket, ``lo < hi`` (``lo > 0`` on ``log``).
        scale: ``linear`` or ``log``.
        integer: values are integers (e.g. a training-set size).
        tol: stop once ``hi - lo <= tol``.
        rel_tol: stop once ``hi / lo <= 1 + rel_tol``.
        max_rounds: at most this many rounds after the two ends.
        points_per_round: values evaluated per round (more = fewer rounds with free workers).
        on_round: called with the bracket so far after the ends and after every round.

    Returns:
        The :class:`Bracket`.
    """
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed; allowed: {', '.join(SCALES)}")
    for name, t in (("tol", tol), ("rel_tol", rel_tol)):
        if t is not None and not t > 0:
            raise ConfigError(f"{name}={t!r} is not allowed; must be > 0")
    if max_rounds < 0 or points_per_round < 1:
        raise ConfigError(
            f"max_rounds={max_rounds}, points_per_round={points_per_round}: need max_rounds >= 0 "
            "and points_per_round >= 1"
        )

    def value(x: float) -> Value:
        return _round_value(x, integer=integer, scale=scale)

    lo, hi = value(lo), value(hi)
    if not lo < hi or (scale == "log" and not lo > 0):
        extra = " and lo > 0 on a log scale" if scale == "log" else ""
        raise ConfigError(f"lo={lo!r}, hi={hi!r} is not a bracket; need lo < hi{extra}")
    rounds: list[SearchRound] = []

    def judge(values: list[Value]) -> dict[Value, bool]:
        verdict = evaluate(list(values))
        missing = [v for v in values if v not in verdict]
        if missing:
            raise ValueError(f"evaluate returned no verdict for {missing[0]!r}")
        return {v: bool(verdict[v]) for v in values}

    def snapshot(cur_lo: Value | None, cur_hi: Value | None, stop: str) -> Bracket:
        return Bracket(cur_lo, cur_hi, scale, tuple(rounds), stop)

    ends = judge([lo, hi])
    if ends[lo]:
        cur_lo, cur_hi, stop = None, lo, "below"
    elif not ends[hi]:
        cur_lo, cur_hi, stop = hi, None, "above"
    else:
        cur_lo, cur_hi, stop = lo, hi, "running"
    rounds.append(SearchRound((lo, hi), (ends[lo], ends[hi]), cur_lo, cur_hi))
    if on_round is not None:
        on_round(snapshot(cur_lo, cur_hi, stop))
    if cur_lo is None or cur_hi is None:
        return snapshot(cur_lo, cur_hi, stop)

    k = points_per_round
    for _ in range(max_rounds):
        if _narrow(cur_lo, cur_hi, tol, rel_tol):
            stop = "tolerance"
            break
        if scale == "log":
            ratio = cur_hi / cur_lo
            grid = (cur_lo * ratio ** ((j + 1) / (k + 1)) for j in range(k))
        else:
            grid = (cur_lo + (cur_hi - cur_lo) * (j + 1) / (k + 1) for j in range(k))
        cand = sorted(v for v in {value(x) for x in grid} if cur_lo < v < cur_hi)
        if not cand:
            stop = "exhausted"
            break
        verdict = judge(cand)
        ok = [c for c in cand if verdict[c]]
        if ok:
            cur_hi = min(ok)
        fails = [c for c in cand if not verdict[c] and c < cur_hi]
        if fails:
            cur_lo = max(fails)
        rounds.append(SearchRound(tuple(cand), tuple(verdict[c] for c in cand), cur_lo, cur_hi))
        if on_round is not None:
            on_round(snapshot(cur_lo, cur_hi, "running"))
    else:
        # the last round may have made the bracket narrow enough: say so
        stop = "tolerance" if _narrow(cur_lo, cur_hi, tol, rel_tol) else "max_rounds"
    return snapshot(cur_lo, cur_hi, stop)


# --------------------------------------------------------------------------- [bisect] specs


def _generalised(out: Path, b: BisectSpec) -> bool:
    """Whether the run in ``out`` meets the spec's criterion (no metrics yet: it does not)."""
    p = out / METRICS
    if not p.exists():
        return False
    return seed_meets(pd.read_parquet(p), b.metric, b.threshold, criterion=b.criterion)


def bisect_sweep(
    spec: SweepSpec,
    sweep_dir: Path,
    *,
    known: list[SweepRun],
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    progress: bool = True,
    console: Any = None,
    threads: int | None = None,
    gpus_per_run: float | None = None,
) -> tuple[dict[str, Any], list[SweepRun]]:
    """Search ``spec.bisect.key`` for the critical value between memorising and generalising.

    :func:`bisect_search` on the spec's ``scale`` with its ``tol`` / ``rel_tol`` and
    ``max_rounds``; each round trains ``max(1, workers // seeds)`` values (all seeds each;
    with Ray, ``workers`` values). A seed meets the criterion when ``metric >= threshold``
    (``criterion = "reached"``: at some evaluated step within the budget; ``"final"``: at the
    last step), and a value generalises when a strict majority of its seeds do
    (:func:`value_generalises`). Runs are ordinary sweep runs (skipped when already done), so
    a killed search resumes.

    Returns:
        ``(result, runs)``: the result dict (also written to ``bisect.json``) and every run
        trained by the search.
    """
    b = spec.bisect
    assert b is not None
    seeds = list(spec.seeds) if spec.seeds is not None else [None]
    all_runs: list[SweepRun] = []
    history: list[dict[str, Any]] = []

    def evaluate(values: list[Value]) -> dict[Value, bool]:
        runs = []
        for v in values:
            cfg = _set_native(spec.base, b.key, v)
            for s in seeds:
                c = cfg
                ovs: tuple[tuple[str, Any], ...] = ((b.key, v),)
                if s is not None:
                    for k in spec.seed_keys:
                        c = _set_native(c, k, s)
                    ovs += tuple((k, s) for k in spec.seed_keys)
                name = run_name([(b.key, v)], s)
                runs.append(
                    SweepRun(name, run_name([(b.key, v)]), ovs, s, replace(c, name=name), "bisect")
                )
        new = [r for r in runs if r.name not in {k.name for k in known + all_runs}]
        all_runs.extend(new)
        _write_sweep_file(sweep_dir, spec, _merge_runs(known, all_runs))
        run_spec_runs(
            spec,
            runs,
            sweep_dir,
            title=f"bisect {b.key} ∈ {values}",
            workers=workers,
            backend=backend,
            address=address,
            progress=progress,
            threads=threads,
            gpus_per_run=gpus_per_run,
        )
        verdict = {}
        for v in values:
            outs = [sweep_dir / r.name for r in runs if r.overrides[0][1] == v]
            ok = sum(_generalised(o, b) for o in outs)
            verdict[v] = value_generalises(ok, len(outs))
            history.append(
                {"value": v, "generalised": verdict[v], "n_generalised": ok, "n": len(outs)}
            )
            if console is not None:
                when = "reach" if b.criterion == "reached" else "end with"
                console.print(
                    f"bisect: {b.key}={v}: {ok}/{len(outs)} seeds {when} {b.metric} ≥ "
                    f"{b.threshold}",
                    highlight=False,
                )
        return verdict

    per_round = (
        max(1, workers // max(len(seeds), 1)) if backend == "local" else max(1, workers or 1)
    )
    found = bisect_search(
        evaluate,
        lo=b.lo,
        hi=b.hi,
        scale=b.scale,
        integer=b.integer,
        tol=b.tol,
        rel_tol=b.rel_tol,
        max_rounds=b.max_rounds,
        points_per_round=per_round,
    )
    result: dict[str, Any] = {
        "key": b.key,
        "metric": b.metric,
        "threshold": b.threshold,
        "criterion": b.criterion,
        "scale": b.scale,
        "lo": found.lo,
        "hi": found.hi,
        "estimate": None,
    }
    if found.stop == "below":
        result["note"] = f"{b.key}={found.hi} already generalises: the critical value is below it"
    elif found.stop == "above":
        result["note"] = (
            f"{b.key}={found.lo} does not generalise within the budget: the critical value is "
            "above it (or needs more steps)"
        )
    else:
        result["estimate"] = _round_value(found.estimate, integer=b.integer, scale=b.scale)
    result["history"] = history
    atomic_write_text(sweep_dir / BISECT_FILE, json.dumps(_jsonable(result), indent=1))
    return result, all_runs
