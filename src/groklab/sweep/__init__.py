"""Sweeps: families of runs from one spec, on local worker processes or a Ray cluster.

A sweep spec (TOML) names a base config, a grid and/or an explicit list of overrides, seeds,
and the analyses to run after each run::

    name = "weight-decay"
    preset = "nanda2023"                 # or a [base] table of config sections (or both)
    set = ["train.checkpoint_every=1000"]
    seeds = [0, 1, 2]                    # sets every key in seed_keys (default train.seed)
    analyses = ["spikes"]
    stack = false                        # true: the seeds of a point train as one stack

    [grid]                               # cartesian product of the axes, in this order
    "optim.weight_decay" = [1.0, 0.3, 0.1]

    [[points]]                           # explicit override sets (x the grid when both)
    label = "add=0.30"                   # optional: the run-name part for this point
    "data.shares" = [0.30, 0.70]

    [bisect]                             # optional: search for a critical value
    key = "data.train_fraction"          # (or data.train_size)
    lo = 0.1                             # expected not to generalise within the budget
    hi = 0.4                             # expected to generalise
    tol = 0.02                           # stop once hi - lo <= tol (rel_tol: hi/lo <= 1+rel_tol)
    scale = "linear"                     # or "log": points spaced evenly in log (lo > 0)
    criterion = "reached"                # at some evaluated step; "final": at the last one

Every point becomes one run directory under the sweep directory, named from its overrides
(``optim.weight_decay=0.3__seed=1``). :func:`run_many` is the executor: a completed run with
the same config is skipped, a killed run resumes from its latest full state, a failure is
recorded and the other runs go on; with ``stack`` (the spec's ``stack = true``), fresh runs
that differ only in their seeds train together as one job (:mod:`.stack`).
:func:`summarize_sweep` tabulates the grokking and memorisation steps per run and, per grid
point, over seeds (runs that never grokked are counted, not dropped).

The package holds one module per concern, in import order: :mod:`.analyses` (the analyses
registry), :mod:`.spec` (specs, expansion, run names), :mod:`.worker` (one run in a worker),
:mod:`.stack` (stacks of runs as one job, packed to a memory budget), :mod:`.executor`
(local processes and Ray), :mod:`.sweepfile` (``sweep.json``),
:mod:`.summary` (summary tables), :mod:`.bisection` (the one search for a critical value,
also used by :func:`groklab.dcrit.find_dcrit`) and
:mod:`.orchestrate` (:func:`run_sweep` and :func:`sweep_status`). This module re-exports the
public names and the few private ones other parts of groklab use; to monkeypatch a name in a
test, patch the submodule that looks it up.
"""

from __future__ import annotations

from groklab.sweep.analyses import _REQUIRES as _REQUIRES
from groklab.sweep.analyses import ANALYSES, resolve_analysis
from groklab.sweep.bisection import (
    Bracket,
    SearchRound,
    bisect_search,
    bisect_sweep,
    seed_meets,
    value_generalises,
)
from groklab.sweep.executor import _cores as _cores
from groklab.sweep.executor import run_many
from groklab.sweep.orchestrate import SweepResult as SweepResult
from groklab.sweep.orchestrate import run_sweep, sweep_status
from groklab.sweep.spec import BISECT_FILE as BISECT_FILE
from groklab.sweep.spec import DONE_STATUSES as DONE_STATUSES
from groklab.sweep.spec import POINTS_FILE as POINTS_FILE
from groklab.sweep.spec import SEED_KEYS as SEED_KEYS
from groklab.sweep.spec import SUMMARY_FILE as SUMMARY_FILE
from groklab.sweep.spec import SWEEP_FILE as SWEEP_FILE
from groklab.sweep.spec import (
    BisectSpec,
    SweepPoint,
    SweepRun,
    SweepSpec,
    expand,
    list_studies,
    load_spec,
    parse_spec,
    run_name,
    study_spec_path,
)
from groklab.sweep.summary import _read_run as _read_run
from groklab.sweep.summary import (
    aggregate_summary,
    format_summary,
    summarize_runs,
    summarize_sweep,
    summary_columns,
)
from groklab.sweep.sweepfile import _check_same_sweep as _check_same_sweep
from groklab.sweep.sweepfile import _read_sweep as _read_sweep

__all__ = [
    "ANALYSES",
    "BisectSpec",
    "Bracket",
    "SearchRound",
    "SweepPoint",
    "SweepRun",
    "SweepSpec",
    "aggregate_summary",
    "bisect_search",
    "bisect_sweep",
    "expand",
    "format_summary",
    "list_studies",
    "load_spec",
    "parse_spec",
    "resolve_analysis",
    "run_many",
    "run_name",
    "run_sweep",
    "seed_meets",
    "study_spec_path",
    "summarize_runs",
    "summarize_sweep",
    "summary_columns",
    "sweep_status",
    "value_generalises",
]
