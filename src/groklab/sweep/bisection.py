"""Bisection: searching a spec's ``[bisect]`` key for the critical value of generalisation.

:func:`bisect_sweep` narrows ``[lo, hi]`` round by round, training interior points (all seeds
each) with the executor and calling a value generalising when every seed's metric crosses the
threshold within the budget; the history and estimate are written to ``bisect.json``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from groklab.store import METRICS, atomic_write_text
from groklab.sweep.analyses import _jsonable
from groklab.sweep.executor import run_many
from groklab.sweep.spec import BISECT_FILE, BisectSpec, SweepRun, SweepSpec, _set_native, run_name
from groklab.sweep.sweepfile import _merge_runs, _write_sweep_file


def _generalised(out: Path, b: BisectSpec) -> bool:
    from groklab.run import first_step_at

    p = out / METRICS
    if not p.exists():
        return False
    return first_step_at(pd.read_parquet(p), b.metric, b.threshold) is not None


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

    Each round trains ``max(1, workers // seeds)`` interior points (all seeds each) and keeps
    the bracket [largest value that did not generalise, smallest that did]; a point
    generalises when a majority of its seeds reach the threshold within the step budget.
    Runs are ordinary sweep runs (skipped when already done), so a killed search resumes.

    Returns:
        ``(result, runs)``: the result dict (also written to ``bisect.json``) and every run
        trained by the search.
    """
    b = spec.bisect
    assert b is not None
    seeds = list(spec.seeds) if spec.seeds is not None else [None]
    all_runs: list[SweepRun] = []
    history: list[dict[str, Any]] = []

    def value(x: float) -> float | int:
        return round(x) if b.integer else round(float(x), 6)

    def evaluate(values: list[float | int]) -> dict[float | int, bool]:
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
        run_many(
            [r.config for r in runs],
            [sweep_dir / r.name for r in runs],
            workers=workers,
            backend=backend,
            address=address,
            progress=progress,
            analyses=spec.analyses,
            analysis_options=spec.analysis_options,
            threads=threads,
            gpus_per_run=gpus_per_run,
            stack=spec.stack,
            title=f"bisect {b.key} ∈ {values}",
        )
        verdict = {}
        for v in values:
            outs = [sweep_dir / r.name for r in runs if r.overrides[0][1] == v]
            ok = sum(_generalised(o, b) for o in outs)
            verdict[v] = 2 * ok > len(outs)
            history.append(
                {"value": v, "generalised": verdict[v], "n_generalised": ok, "n": len(outs)}
            )
            if console is not None:
                console.print(
                    f"bisect: {b.key}={v}: {ok}/{len(outs)} seeds reach {b.metric} ≥ {b.threshold}",
                    highlight=False,
                )
        return verdict

    lo, hi = value(b.lo), value(b.hi)
    ends = evaluate([lo, hi])
    result: dict[str, Any] = {"key": b.key, "metric": b.metric, "threshold": b.threshold}
    if ends[lo] or not ends[hi]:
        result.update(
            {
                "lo": None if ends[lo] else lo,
                "hi": hi if ends[hi] else None,
                "estimate": None,
                "note": (
                    f"{b.key}={lo} already generalises: the critical value is below it"
                    if ends[lo]
                    else f"{b.key}={hi} does not generalise within the budget: the critical "
                    "value is above it (or needs more steps)"
                ),
            }
        )
    else:
        per_round = (
            max(1, workers // max(len(seeds), 1)) if backend == "local" else max(1, workers or 1)
        )
        for _ in range(b.max_rounds):
            if hi - lo <= b.tol:
                break
            cand = sorted(
                {value(lo + (hi - lo) * (j + 1) / (per_round + 1)) for j in range(per_round)}
            )
            cand = [c for c in cand if lo < c < hi]
            if not cand:
                break
            verdict = evaluate(cand)
            ok = [c for c in cand if verdict[c]]
            if ok:
                hi = min(ok)
            fails = [c for c in cand if not verdict[c] and c < hi]
            if fails:
                lo = max(fails)
        result.update({"lo": lo, "hi": hi, "estimate": value((lo + hi) / 2)})
    result["history"] = history
    atomic_write_text(sweep_dir / BISECT_FILE, json.dumps(_jsonable(result), indent=1))
    return result, all_runs
