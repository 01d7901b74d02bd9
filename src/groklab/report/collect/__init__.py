"""Gather what a report shows: read a run's (or a sweep's) saved outputs into report sections.

This is the only place that touches run directories. It reads the config, manifest and
metrics, calls the analysis modules' *cached-result* loaders (never a computation over
checkpoints: that is ``groklab analyze`` / ``groklab llc``), runs the cheap curve detectors
(loss spikes, phase changes) on the metrics table, and hands plain tables and arrays to the
figure functions. A section whose data is missing says so and names the command that makes it.

Modules, one concern each: :mod:`~groklab.report.collect.run` (read a run directory into
:class:`RunData`), :mod:`~groklab.report.collect.sections` (the run report's sections),
:mod:`~groklab.report.collect.sweep` (read a sweep directory into :class:`SweepData` and its
sections) and :mod:`~groklab.report.collect.common` (helpers both halves use).
"""

from __future__ import annotations

from groklab.report.collect.run import Circuit, RunData, circuit_from_snapshot, load_run_data
from groklab.report.collect.sections import run_sections
from groklab.report.collect.sweep import SweepData, load_sweep_data, sweep_sections

__all__ = [
    "Circuit",
    "RunData",
    "SweepData",
    "circuit_from_snapshot",
    "load_run_data",
    "load_sweep_data",
    "run_sections",
    "sweep_sections",
]
