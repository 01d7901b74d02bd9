"""The executor: running many runs on local worker processes or on a Ray cluster.

:func:`run_many` runs a list of (config, directory) items: a run that needs no work is
answered without starting a worker, the rest go as jobs to a local process pool (each worker
pinned to the thread policy's count and exiting with its parent) or to Ray tasks; a job is one
run or, with ``stack``, a stack of same-shape runs trained together (:mod:`.stack`). Ray tasks
train in their node's scratch directory and deliver each run to its directory here
(:mod:`groklab.sweep.delivery`: no shared filesystem needed, a lost node's runs resume on
another). A failure is recorded and the other runs go on. A live progress display shows what
each worker is doing.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from groklab.config import RunConfig, load_config
from groklab.errors import ConfigError, GroklabError
from groklab.store import CONFIG, METRICS, read_manifest
from groklab.sweep.analyses import resolve_analysis
from groklab.sweep.delivery import RAY_RETRIES, adopt_partial, claim, run_files_dir
from groklab.sweep.spec import DONE_STATUSES
from groklab.sweep.stack import (
    _BYTES_PER_PARAM,
    _RUN_BASE_BYTES,
    TYPICAL_GPU_BYTES,
    _check_budget,
    _job_entry,
    _job_results,
    plan_jobs,
)
from groklab.sweep.worker import _already_done


def _init_worker(threads: int, parent_pid: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid: int, *, poll_s: float = 1.0) -> None:
    """Start a daemon thread that ends this worker as soon as the sweep that started it is gone.

    A sweep killed with SIGKILL cannot shut its pool down, and a worker blocked on the task
    queue never sees EOF (it holds both ends of that pipe itself), so without this it would
    sleep forever holding its memory, the resource tracker and its run's lock. The parent
    holds the write end of the spawn pipe until the end (``parent_process().sentinel`` turns
    readable when it dies); the reparenting check (``os.getppid()``) covers starts without
    that sentinel. ``os._exit`` skips cleanup on purpose: run files are written atomically
    and a killed run resumes from its last state.
    """
    import multiprocessing.connection as mpc

    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)

    def watch() -> None:
        while True:
            if sentinel is not None:
                gone = bool(mpc.wait([sentinel], timeout=poll_s))
            else:  # pragma: no cover - every spawn start has the sentinel
                time.sleep(poll_s)
                gone = False
            if gone or os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="groklab-exit-with-parent", daemon=True).start()


def _parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s)
    except ValueError:
        return None


class _Display:
    """Live overall progress: runs done/total, running (with their step), failed, skipped.

    A poll thread reads the run directories (manifest + metrics; a run being delivered from
    a Ray node: its ``.partial``), so it works the same for every backend.
    """

    def __init__(self, enabled: bool, outs: list[Path], labels: list[str], title: str) -> None:
        self.enabled = enabled
        self.outs, self.labels = outs, labels
        self.done = self.failed = self.skipped = 0
        self.finished: set[int] = set()
        self.launch = datetime.now(timezone.utc).replace(microsecond=0)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        )
        self.total = self.bar.add_task(f"[bold]{title}", total=len(outs), info="")
        self.sub: dict[int, Any] = {}
        self.bar.start()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def record(self, i: int, res: dict[str, Any]) -> None:
        with self._lock:
            self.finished.add(i)
            self.done += 1
            if res["status"] not in DONE_STATUSES:
                self.failed += 1
            elif res.get("action") == "skipped":
                self.skipped += 1
        if self.enabled:
            if res["status"] not in DONE_STATUSES:
                from rich.text import Text

                line = Text("failed ", style="red")
                line.append(f"{self.labels[i]}: {res['error']}")
                self.bar.console.print(line, highlight=False)
            self._refresh()

    def _running(self) -> dict[int, tuple[int, int]]:
        found = {}
        for i, out in enumerate(self.outs):
            if i in self.finished:
                continue
            p = run_files_dir(out)
            m = read_manifest(p)
            started = _parse_time(m.get("started_at"))
            if m.get("status") != "running" or started is None or started < self.launch:
                continue
            step = 0
            with contextlib.suppress(Exception):
                step = int(pd.read_parquet(p / METRICS, columns=["step"])["step"].iloc[-1])
            total = 0
            with contextlib.suppress(Exception):
                total = load_config(p / CONFIG).train.steps
            found[i] = (step, total)
        return found

    def _refresh(self) -> None:
        running = self._running()
        with self._lock:
            info = f"{len(running)} running · {self.failed} failed · {self.skipped} skipped"
            self.bar.update(self.total, completed=self.done, info=info)
            for i in list(self.sub):
                if i not in running:
                    self.bar.remove_task(self.sub.pop(i))
            for i, (step, total) in running.items():
                if i not in self.sub:
                    self.sub[i] = self.bar.add_task(
                        f"  {self.labels[i]}", total=total or None, info=""
                    )
                self.bar.update(self.sub[i], completed=step, info="(step at last checkpoint)")

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                self._refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self.thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._refresh()
        self.bar.stop()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "backend='ray' needs Ray; install it with: pip install 'groklab[ray]'"
        ) from None
    return ray


def _run_local(
    jobs: list[tuple[RunConfig, str]],
    analyses: tuple[str, ...],
    options: dict[str, dict[str, Any]],
    workers: int,
    on_done: Callable[[int, dict], None],
    threads: int | None = None,
    groups: list[list[int]] | None = None,
) -> None:
    # A job trains one run, or a stack of runs (groups: the run indices of each job).
    groups = groups if groups is not None else [[i] for i in range(len(jobs))]
    if workers <= 1:
        # In this process: no start-up cost; the caller's torch threads unless told.
        for g in groups:
            fn, args = _job_entry(jobs, g)
            for i, res in _job_results(g, fn(*args, analyses, options, threads)):
                on_done(i, res)
        return
    if threads is None:
        from groklab.train.threads import default_threads

        # the cores the thread policy would give one run, shared out (one core left free)
        threads = max(1, default_threads() // workers)
    ctx = multiprocessing.get_context("spawn")
    todo = list(range(len(groups)))
    # A worker killed from outside (OOM killer) breaks the whole pool; the jobs it took down
    # go to a fresh pool (each resumes from its last state). Give up after three pools.
    for attempt in range(3):
        broken: list[int] = []
        with ProcessPoolExecutor(
            max_workers=min(workers, len(todo)),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(threads, os.getpid()),
        ) as pool:
            futs = {}
            for j in todo:
                fn, args = _job_entry(jobs, groups[j])
                futs[pool.submit(fn, *args, analyses, options, threads)] = j
            for fut in as_completed(futs):
                j = futs[fut]
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    broken.append(j)
                    continue
                for i, r in _job_results(groups[j], res):
                    on_done(i, r)
        if not broken:
            return
        todo = sorted(broken)
        if attempt == 2:
            for i in (i for j in todo for i in groups[j]):
                on_done(
                    i,
                    {
                        "out": jobs[i][1],
                        "status": "failed",
                        "error": "its worker process died three times (killed from outside?)",
                        "action": None,
                    },
                )


def gpus_per_run_for(n_params: int) -> float:
    """The fraction of a GPU one run asks Ray for, from its parameter count.

    Rule: ``(0.5 GiB + 64 B × n_params) / 16 GiB``, rounded up to a multiple of 1/16 and clamped
    to [1/16, 1] — 0.5 GiB for the CUDA context, data and activations, 64 bytes per parameter
    (fp32 weights, gradients and two Adam moments, times 4 headroom), against a typical 16 GiB
    card. So up to 16 runs of at most ~8M parameters share one GPU (every shipped study's
    model is far smaller), and a run of ~260M parameters or more gets a whole one.
    """
    need = (_RUN_BASE_BYTES + _BYTES_PER_PARAM * max(0, int(n_params))) / TYPICAL_GPU_BYTES
    return min(1.0, max(1, math.ceil(need * 16 - 1e-9)) / 16)


def _n_params(config: RunConfig) -> int:
    from groklab.models import build_model
    from groklab.tasks import build_task

    model = build_model(config.model, build_task(config.data), seed=config.train.seed)
    return sum(p.numel() for p in model.parameters())


def resolve_ray_device(device: str, cluster_gpus: float) -> str:
    """``auto`` on a Ray cluster: ``cuda`` when the cluster reports GPU resources, else ``cpu``;
    any other device unchanged. Resolved once in the driver so every worker agrees."""
    if device != "auto":
        return device
    return "cuda" if cluster_gpus > 0 else "cpu"


def _ray_resources(config: RunConfig, gpus_per_run: float | None, threads: int, k: int = 1) -> dict:
    """The Ray resource request of one job of ``k`` runs (a stack when ``k > 1``):
    ``num_cpus`` = its torch threads, and for a CUDA device also ``num_gpus`` =
    ``min(1, k × gpus_per_run)`` (``gpus_per_run`` None: :func:`gpus_per_run_for` of the model's
    parameter count). ``auto`` is resolved before (:func:`resolve_ray_device`); left as is, it
    asks for CPUs only."""
    res: dict[str, float] = {"num_cpus": threads}
    if config.train.device.startswith("cuda"):
        per_run = gpus_per_run if gpus_per_run is not None else gpus_per_run_for(_n_params(config))
        res["num_gpus"] = min(1.0, k * per_run)
    return res


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """The running Ray instance, or one started here (at ``address``: None = a new local one)
    and shut down on leaving."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    import logging

    try:  # a failed start still shuts down the processes it launched
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        yield ray
    finally:
        ray.shutdown()


def _check_gpus_per_run(gpus_per_run: float | None) -> None:
    if gpus_per_run is not None and not 0 < gpus_per_run <= 1:
        raise ConfigError(f"gpus_per_run={gpus_per_run} is not allowed; must be in (0, 1]")


def _failed(out: str, error: str) -> dict[str, Any]:
    return {"out": out, "status": "failed", "error": error, "action": None}


def _run_ray(
    jobs: list[tuple[RunConfig, str]],
    analyses: tuple[str, ...],
    options: dict[str, dict[str, Any]],
    workers: int,
    address: str | None,
    on_done: Callable[[int, dict], None],
    *,
    gpus_per_run: float | None = None,
    threads: int | None = None,
    groups: list[list[int]] | None = None,
) -> None:
    """Each job (one run, or a stack: ``groups`` holds the run indices of each job) as a Ray
    task that trains in its node's scratch directory and delivers each run's files through a
    receiver actor on this node (:mod:`groklab.sweep.delivery`); a task whose worker or node
    dies is retried and resumes from what was delivered."""
    from groklab.sweep.delivery import (
        _run_delivered,
        _run_stack_delivered,
        run_keys,
        start_receiver,
        sweep_id,
    )

    threads = threads or 1
    # A job trains one run, or a stack of runs as one Ray task (groups: run indices per job).
    groups = groups if groups is not None else [[i] for i in range(len(jobs))]
    keys = run_keys([out for _, out in jobs])
    sid = sweep_id([out for _, out in jobs])
    with ray_session(address) as ray:
        receiver = start_receiver(ray, {k: out for k, (_, out) in zip(keys, jobs, strict=True)})
        try:
            remotes: dict[Any, Any] = {}
            resources: dict[tuple, dict] = {}
            queue: list[list[int]] = []
            for group in groups:
                ok = []
                for i in group:
                    cfg, out = jobs[i]
                    try:
                        claim(cfg, Path(out))
                    except GroklabError as e:
                        on_done(i, _failed(out, str(e)))
                    else:
                        ok.append(i)
                if ok:
                    queue.append(ok)
            cap = workers if workers and workers > 0 else len(queue)
            pending: dict[Any, list[int]] = {}
            while queue or pending:
                while queue and len(pending) < cap:
                    group = queue.pop(0)
                    fn = _run_delivered if len(group) == 1 else _run_stack_delivered
                    if fn not in remotes:
                        remotes[fn] = ray.remote(fn)
                    cfg, k = jobs[group[0]][0], len(group)
                    key = (cfg.data, cfg.model, cfg.train.device, k)
                    if key not in resources:
                        resources[key] = _ray_resources(cfg, gpus_per_run, threads, k)
                    if k == 1:
                        lead: tuple[Any, ...] = (cfg, keys[group[0]])
                    else:
                        lead = ([jobs[i][0] for i in group], [keys[i] for i in group])
                    ref = (
                        remotes[fn]
                        .options(max_retries=RAY_RETRIES, retry_exceptions=False, **resources[key])
                        .remote(*lead, sid, receiver, analyses, options, threads)
                    )
                    pending[ref] = group
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    group = pending.pop(ref)
                    try:
                        got = ray.get(ref)
                        done = [dict(r) for r in (got if isinstance(got, list) else [got])]
                    except Exception as e:  # a worker crash or lost node, after Ray's retries
                        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                        done = [
                            _failed(jobs[i][1], f"ray: {type(e).__name__}: {first}") for i in group
                        ]
                    for i, res in zip(group, done, strict=True):
                        out = jobs[i][1]
                        scratch = res.get("scratch")
                        if scratch and res.get("error"):  # name the run as the user knows it
                            res["error"] = str(res["error"]).replace(scratch, out)
                        res["out"] = out
                        on_done(i, res)
        finally:
            with contextlib.suppress(Exception):
                ray.kill(receiver)


def run_many(
    configs: list[RunConfig],
    outs: list[Path],
    *,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    progress: bool = True,
    analyses: Sequence[str] = (),
    analysis_options: dict[str, dict[str, Any]] | None = None,
    labels: Sequence[str] | None = None,
    title: str = "sweep",
    threads: int | None = None,
    gpus_per_run: float | None = None,
    stack: bool = False,
    stack_budget_bytes: int | None = None,
) -> list[dict]:
    """Train each config into its run directory, ``workers`` jobs at a time.

    A run whose manifest says completed (or diverged) with the same config is skipped; a run
    with a saved state is resumed; otherwise it starts. A failure in one run (including a
    directory that holds a different run) is recorded and does not stop the others.

    A job is one run, or with ``stack`` a stack of fresh runs that differ only in their seeds
    (:data:`groklab.train.ensemble.VARYING_FIELDS`), trained as one batched computation
    (:func:`groklab.train.ensemble.train_many`) in one worker process, in this process or in
    one Ray task, cut into chunks that fit ``stack_budget_bytes`` (the packing rule:
    :func:`groklab.sweep.stack.plan_jobs`). Stacked runs equal the runs trained alone to float
    tolerance, not bit for bit. Partly trained runs resume alone, and a failure of a stack fails
    the runs of that stack only.

    The local backend writes each run in place. The Ray backend never lets a task write to
    ``outs``: each run (alone or in a stack) trains in its node's scratch directory and is
    delivered to ``<out>`` through a receiver actor on this node, via ``<out>.partial`` (see
    :mod:`groklab.sweep.delivery`); a task whose worker or node dies is retried and resumes
    from what was delivered. A ``<out>.partial`` left by an interrupted sweep is continued by
    either backend.

    Args:
        configs: one config per run.
        outs: one run directory per config.
        workers: local backend: worker processes (1 = in this process). Ray backend: the most
            jobs in flight at once (0 = as many as the cluster schedules, one CPU each).
        backend: ``local`` or ``ray``.
        address: Ray cluster address (``auto``, ``ray://host:10001``); None = the running
            Ray instance, or a new local one.
        progress: show a live overall progress display.
        analyses: analysis names (see :data:`ANALYSES`) run after each finished run.
        analysis_options: keyword options per analysis name.
        labels: display names of the runs (default: the directory names).
        title: display title.
        threads: torch threads of each run. Local backend: None = in this process, the
            caller's setting; in workers, ``default_threads() // workers``, at least 1 — see
            :mod:`groklab.train.threads`. Ray backend: also the CPUs each run asks Ray for
            (None = 1).
        gpus_per_run: Ray backend: the fraction of a GPU a CUDA run asks for, in (0, 1]
            (None: from the model's size, see :func:`gpus_per_run_for`). A run whose device
            is not CUDA asks for ``threads`` CPUs only. A CUDA stack of ``k`` runs asks for
            ``min(1, k × gpus_per_run)``.
        stack: train fresh runs of one shape as stacks (see above).
        stack_budget_bytes: the memory one stack may use (None: 16 GiB, one typical GPU, for
            CUDA runs; 2 GiB for CPU runs).

    Returns:
        One dict per run, in input order: ``out``, ``status`` (completed, diverged or failed),
        ``error`` (None or one line), ``action`` (started, resumed, skipped or None),
        ``seconds``, ``analyses`` (name → result) when any ran, on Ray ``gpu_ids`` (the GPUs
        Ray gave the run), ``node_id`` and ``scratch`` (the node and the scratch directory it
        trained in), and for a stacked run ``stack`` (the number of runs in its stack;
        ``seconds`` is its share of the stack's time plus its analyses).
    """
    if len(configs) != len(outs):
        raise ConfigError(f"run_many: {len(configs)} configs but {len(outs)} out dirs")
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend={backend!r} is not allowed; allowed: local, ray")
    if backend == "local" and workers < 1:
        raise ConfigError(f"workers={workers} is not allowed; must be >= 1 for the local backend")
    outs_abs = [Path(o).resolve() for o in outs]
    if len(set(outs_abs)) != len(outs_abs):
        raise ConfigError("run_many: two runs share one out dir")
    analyses = tuple(analyses)
    for a in analyses:
        resolve_analysis(a)
    options = {k: dict(v) for k, v in (analysis_options or {}).items()}
    _check_gpus_per_run(gpus_per_run)
    if backend == "ray":
        _import_ray()
    _check_budget(stack_budget_bytes)
    jobs = [(c, str(o)) for c, o in zip(configs, outs_abs, strict=True)]
    results: list[dict | None] = [None] * len(jobs)
    display = _Display(progress, outs_abs, list(labels or [o.name for o in outs_abs]), title)

    def on_done(i: int, res: dict) -> None:
        results[i] = res
        display.record(i, res)

    todo = []
    for i, (cfg, out) in enumerate(jobs):
        if backend == "local":  # writes in place: take over a run an interrupted Ray sweep left
            adopt_partial(Path(out))
        done = _already_done(cfg, Path(out), analyses, options)
        if done is not None:
            on_done(i, done)
        else:
            todo.append(i)
    try:
        if todo:

            def on_todo_done(j: int, res: dict) -> None:
                on_done(todo[j], res)

            sub = [jobs[i] for i in todo]
            groups = None
            if stack:
                cfgs, paths = [c for c, _ in sub], [o for _, o in sub]
                groups = plan_jobs(cfgs, paths, budget_bytes=stack_budget_bytes)
            if backend == "local":
                _run_local(sub, analyses, options, workers, on_todo_done, threads, groups)
            else:
                _run_ray(
                    sub,
                    analyses,
                    options,
                    workers,
                    address,
                    on_todo_done,
                    gpus_per_run=gpus_per_run,
                    threads=threads,
                    groups=groups,
                )
    finally:
        display.close()
    return [r for r in results if r is not None]


def run_spec_runs(
    spec: Any,
    runs: Sequence[Any],
    sweep_dir: Path,
    *,
    title: str,
    labels: Sequence[str] | None = None,
    **how: Any,
) -> list[dict]:
    r""":func:`run_many` of a spec's runs (``SweepRun``\ s) into ``sweep_dir/<name>``, with the
    spec's analyses and its ``stack`` setting; ``how``: the executor's keywords (workers,
    backend, address, progress, threads, gpus_per_run)."""
    return run_many(
        [r.config for r in runs],
        [sweep_dir / r.name for r in runs],
        analyses=spec.analyses,
        analysis_options=spec.analysis_options,
        stack=spec.stack,
        labels=labels,
        title=title,
        **how,
    )
