"""Running a whole sweep, and reporting where one stands.

:func:`run_sweep` checks the sweep directory, writes the sweep file, runs every point with the
executor, then the bisection (if any) and the summary tables, and returns a
:class:`SweepResult`; the engine draws no figures (``groklab sweep`` draws a study's figures
after the run). :func:`sweep_status` tabulates each run of a sweep directory: its status,
whether a live process holds it, and its progress.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from groklab.config import load_config
from groklab.errors import ConfigError, GroklabError, RunDamagedError, RunExistsError
from groklab.store import CONFIG, METRICS, read_manifest, writer_alive
from groklab.sweep.bisection import bisect_sweep
from groklab.sweep.delivery import run_files_dir
from groklab.sweep.executor import run_spec_runs
from groklab.sweep.spec import DONE_STATUSES, SWEEP_FILE, SweepRun, SweepSpec, expand
from groklab.sweep.summary import _foreign, _read_run, summarize_sweep
from groklab.sweep.sweepfile import (
    _check_same_sweep,
    _entry_to_run,
    _merge_runs,
    _read_sweep,
    _write_sweep_file,
)


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns."""

    sweep_dir: Path
    results: list[dict[str, Any]]
    runs: pd.DataFrame
    points: pd.DataFrame
    bisect: dict[str, Any] | None = None

    @property
    def n_failed(self) -> int:
        return sum(r["status"] not in DONE_STATUSES for r in self.results)


def run_sweep(
    spec: SweepSpec,
    sweep_dir: str | Path,
    *,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    progress: bool = True,
    only: Sequence[str] = (),
    console: Any = None,
    threads: int | None = None,
    gpus_per_run: float | None = None,
) -> SweepResult:
    """Run every point of ``spec`` into ``sweep_dir``, then the bisection (if any) and the
    summary tables.

    Args:
        spec: the parsed spec.
        sweep_dir: the sweep directory (one run directory per point inside).
        workers, backend, address, progress, threads, gpus_per_run: see :func:`run_many`.
            With the Ray backend, one Ray session serves the whole sweep (grid and
            bisection); the device of each run is checked on its worker, not here (the
            driver may have no GPU while the cluster does), and a base ``train.device`` of
            ``auto`` is resolved once here (:func:`resolve_ray_device`: ``cuda`` when the
            cluster reports GPUs, else ``cpu``) so every worker agrees.
        only: glob patterns on run names; when given, only matching runs are trained.
        console: a rich Console for messages (None = quiet).
    """
    kwargs = {
        "spec": spec,
        "sweep_dir": sweep_dir,
        "workers": workers,
        "backend": backend,
        "address": address,
        "progress": progress,
        "only": only,
        "console": console,
        "threads": threads,
        "gpus_per_run": gpus_per_run,
    }
    from groklab.sweep.executor import _check_gpus_per_run

    _check_gpus_per_run(gpus_per_run)  # before anything is created
    if backend == "ray":
        from dataclasses import replace

        from groklab.sweep.executor import ray_session, resolve_ray_device

        with ray_session(address) as ray:
            tc = spec.base.train
            device = resolve_ray_device(tc.device, ray.cluster_resources().get("GPU", 0))
            spec = replace(spec, base=replace(spec.base, train=replace(tc, device=device)))
            return _run_sweep(**{**kwargs, "spec": spec})
    return _run_sweep(**kwargs)


def _run_sweep(
    spec: SweepSpec,
    sweep_dir: str | Path,
    *,
    workers: int,
    backend: str,
    address: str | None,
    progress: bool,
    only: Sequence[str],
    console: Any,
    threads: int | None,
    gpus_per_run: float | None,
) -> SweepResult:
    from groklab.store import check_folder_target, storage_error
    from groklab.train.loop import check_device

    given = Path(sweep_dir)
    sweep_dir = check_folder_target(given, what="sweep")
    if (sweep_dir / SWEEP_FILE).exists():
        with contextlib.suppress(ConfigError, RunDamagedError):  # a damaged one is rewritten
            other = _read_sweep(sweep_dir).get("name")
            if other is not None and other != spec.name:
                raise RunExistsError(
                    f"{given}: holds the sweep {other!r}, not {spec.name!r}; nothing is "
                    "overwritten; choose another --out"
                )
    runs = expand(spec)
    if only:
        runs = [r for r in runs if any(fnmatch.fnmatchcase(r.name, pat) for pat in only)]
        if not runs:
            raise ConfigError(f"--only {' '.join(only)} matches no run of this sweep")
    if backend == "local":  # on Ray, each worker checks its own node
        for device in sorted({r.config.train.device for r in runs}):
            check_device(device)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(sweep_dir, e) from None
    prior: list[SweepRun] = []
    old = None
    with contextlib.suppress(GroklabError):  # no sweep file yet, or a damaged one (rewritten)
        old = _read_sweep(sweep_dir)
    if old is not None:
        _check_same_sweep(sweep_dir, old, expand(spec))
        with contextlib.suppress(GroklabError, KeyError, TypeError, ValueError):
            # keep earlier bisection runs listed (their directories are still there)
            prior_names = {e["name"] for e in old["runs"] if e.get("source") == "bisect"}
            prior = [_entry_to_run(e, spec) for e in old["runs"] if e["name"] in prior_names]
    # sweep.json lists every run of the spec, also when --only trains a few of them
    _write_sweep_file(sweep_dir, spec, _merge_runs(expand(spec), prior))
    results = run_spec_runs(
        spec,
        runs,
        sweep_dir,
        title=spec.name,
        labels=[r.name for r in runs],
        workers=workers,
        backend=backend,
        address=address,
        progress=progress,
        threads=threads,
        gpus_per_run=gpus_per_run,
    )
    bis = None
    if spec.bisect is not None and not only:
        bis, brs = bisect_sweep(
            spec,
            sweep_dir,
            known=runs,
            workers=workers,
            backend=backend,
            address=address,
            progress=progress,
            console=console,
            threads=threads,
            gpus_per_run=gpus_per_run,
        )
        _write_sweep_file(sweep_dir, spec, _merge_runs(runs, brs))
    runs_df, points = summarize_sweep(sweep_dir)
    return SweepResult(sweep_dir, results, runs_df, points, bis)


def sweep_status(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per run: name, status (pending, running, stopped, completed, diverged,
    failed), last logged step, steps, grokking step, error. A run that a Ray task is still
    delivering shows what its ``<run>.partial`` holds (its last save)."""
    sweep_dir = Path(sweep_dir)
    info = _read_sweep(sweep_dir)
    rows = []
    for e in info["runs"]:
        # a run still being delivered from a Ray node: what its .partial holds so far
        out = run_files_dir(sweep_dir / e["name"])
        m = read_manifest(out)
        status = m.get("status")
        if status is None:
            status = "pending" if not (out / CONFIG).exists() else "running"
        if (status == "running" and writer_alive(out) is False) or status == "interrupted":
            status = "stopped"
        if _foreign(m, e):
            status = "failed"
            m = {"error": f"{out} holds a different run (config hash differs)"}
        else:
            try:
                _read_run(out)
            except GroklabError as err:  # damaged: failed, with the file and the way out
                status = "failed"
                m = {"error": str(err)}
        step = None
        with contextlib.suppress(Exception):
            step = int(pd.read_parquet(out / METRICS, columns=["step"])["step"].iloc[-1])
        steps = None
        with contextlib.suppress(Exception):
            steps = load_config(out / CONFIG).train.steps
        rows.append(
            {
                "run": e["name"],
                "source": e.get("source", "grid"),
                "status": status,
                "step": step,
                "steps": steps,
                "grokking_step": m.get("grokking_step"),
                "error": m.get("error"),
            }
        )
    return pd.DataFrame(rows)
