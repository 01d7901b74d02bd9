"""Stacking, an option of the executor: fresh runs of one shape trained as one job.

Runs whose configs differ only in :data:`groklab.train.ensemble.VARYING_FIELDS` (seeds, split
and subset seeds, the checkpoint they start from, the name) can train as one batched
computation (:func:`groklab.train.ensemble.train_many`): one forward per layer for all of
them instead of one per run. :func:`plan_jobs` groups the runs of a sweep into such stacks,
cuts each into chunks that fit a memory budget, and leaves every other run a job of its own;
:func:`_run_stack` is the worker entry point of a stack (a local worker process, this process,
or one Ray task), returning one result dict per run like :func:`~groklab.sweep.worker._run_one`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from groklab.config import RunConfig, config_to_dict
from groklab.errors import ConfigError
from groklab.store import read_manifest
from groklab.sweep.worker import _error_line, _finish_result, _ray_gpu_ids, _run_one

#: The GPU memory a run is measured against (a typical 16 GiB card): the default stacking
#: budget on CUDA, and the card :func:`groklab.sweep.executor.gpus_per_run_for` divides.
TYPICAL_GPU_BYTES = 16 * 2**30
#: The default stacking budget on CPU: 2 GiB per job, which a laptop or a shared node can give
#: every worker process.
CPU_STACK_BYTES = 2 * 2**30
#: What every job holds besides its runs: the CUDA context (or torch's own), activations.
_RUN_BASE_BYTES = 2**29
#: Bytes per parameter: fp32 weights, gradients and two Adam moments (16 B), times 4 headroom
#: for activations and stacked seeds.
_BYTES_PER_PARAM = 64


def _shape_key(cfg: RunConfig) -> str:
    """The config without the fields stacked runs may differ in (one key per stackable group)."""
    from groklab.train.ensemble import VARYING_FIELDS

    d = config_to_dict(cfg)
    for key in VARYING_FIELDS:
        section, _, leaf = key.rpartition(".")
        (d.get(section, {}) if section else d).pop(leaf, None)
    return json.dumps(d, sort_keys=True, default=str)


def _is_fresh(out: Path) -> bool:
    """No run has been started in ``out`` (missing, or empty but for a stale lock)."""
    return not out.exists() or all(e.name == ".lock" for e in out.iterdir())


def run_bytes(config: RunConfig) -> int:
    """The memory one run adds to a stack: 64 B per parameter plus the bytes of its splits."""
    from groklab.models import build_model
    from groklab.tasks import build_task

    task = build_task(config.data)
    model = build_model(config.model, task, seed=config.train.seed)
    n_params = sum(p.numel() for p in model.parameters())
    splits = (task.train_x, task.train_y, task.test_x, task.test_y)
    return _BYTES_PER_PARAM * n_params + sum(t.numel() * t.element_size() for t in splits)


def default_stack_budget(device: str) -> int:
    """The stacking budget of a run on ``device``: one typical GPU
    (:data:`TYPICAL_GPU_BYTES`) on CUDA (``auto`` where this machine has CUDA), else
    :data:`CPU_STACK_BYTES`."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return TYPICAL_GPU_BYTES if device.startswith("cuda") else CPU_STACK_BYTES


def runs_per_stack(per_run_bytes: int, budget_bytes: int) -> int:
    """How many runs of ``per_run_bytes`` one job of ``budget_bytes`` holds (at least 1)."""
    return max(1, (budget_bytes - _RUN_BASE_BYTES) // max(1, per_run_bytes))


def _check_budget(budget_bytes: int | None) -> None:
    if budget_bytes is not None and budget_bytes <= 0:
        raise ConfigError(
            f"stack_budget_bytes={budget_bytes} is not allowed; must be a positive byte count"
        )


def _chunks(idx: list[int], fit: int) -> list[list[int]]:
    """``idx`` cut into ``ceil(len / fit)`` chunks of as even sizes as can be (in order)."""
    n = math.ceil(len(idx) / fit)
    size, extra = divmod(len(idx), n)
    out, start = [], 0
    for c in range(n):
        end = start + size + (c < extra)
        out.append(idx[start:end])
        start = end
    return out


def plan_jobs(
    configs: Sequence[RunConfig],
    outs: Sequence[str | Path],
    *,
    budget_bytes: int | None = None,
) -> list[list[int]]:
    """Group runs into the executor's jobs: stacks of fresh same-shape runs, the rest alone.

    Fresh runs (:func:`_is_fresh`) whose configs differ only in
    :data:`~groklab.train.ensemble.VARYING_FIELDS` form a stack. **Packing rule**: a job of
    ``k`` stacked runs is estimated at ``0.5 GiB + k × (64 B × parameters + the bytes of one
    run's data splits)`` — 0.5 GiB for the CUDA context (or torch's own) and activations, 64
    bytes per parameter for fp32 weights, gradients and two Adam moments with 4× headroom (the
    estimate :func:`~groklab.sweep.executor.gpus_per_run_for` uses per run) — so one job holds
    ``fit = max(1, (budget - 0.5 GiB) // per-run bytes)`` runs, and a stack of ``k`` is cut into
    ``ceil(k / fit)`` chunks of as even sizes as can be. The budget defaults to one typical GPU
    (16 GiB, :data:`TYPICAL_GPU_BYTES`) for CUDA runs and to 2 GiB
    (:data:`CPU_STACK_BYTES`) for CPU runs (:func:`default_stack_budget`). On Ray a CUDA stack
    of ``k`` asks for ``min(1, k × gpus_per_run)`` GPUs.

    Partly trained runs (they resume alone, from their own state), runs already in a
    directory and stacks of one are jobs of one run.

    Args:
        configs: one config per run.
        outs: one run directory per config.
        budget_bytes: the memory one job may use (None: by device, see above).

    Returns:
        The jobs, each a list of indices into ``configs``, in the order of their first run.

    Raises:
        ConfigError: ``budget_bytes`` is not positive.
    """
    _check_budget(budget_bytes)
    groups: dict[str, list[int]] = {}
    jobs: list[list[int]] = []
    for i, (cfg, out) in enumerate(zip(configs, outs, strict=True)):
        if not _is_fresh(Path(out)):
            jobs.append([i])
            continue
        key = _shape_key(cfg)
        if key not in groups:
            groups[key] = []
            jobs.append(groups[key])  # filled in place; cut into chunks below
        groups[key].append(i)
    planned: list[list[int]] = []
    for job in jobs:
        if len(job) < 2:
            planned.append(job)
            continue
        cfg = configs[job[0]]
        budget = budget_bytes or default_stack_budget(cfg.train.device)
        planned.extend(_chunks(job, runs_per_stack(run_bytes(cfg), budget)))
    return planned


def _run_stack(
    configs: Sequence[RunConfig],
    outs: Sequence[str],
    analyses: Sequence[str],
    options: dict[str, dict[str, Any]],
    threads: int | None,
    *,
    on_save: Callable[[Path], None] | None = None,
) -> list[dict[str, Any]]:
    """Worker entry point of a stack (must stay importable for spawn and Ray): train the runs
    with :func:`~groklab.train.ensemble.train_many`, then each run's analyses. A failure of the
    stack fails each of its runs (recorded, never raised); an analysis failure fails its run.
    A stack retried after its process died (a fresh pool, Ray's task retry) finds its runs
    started: each then resumes alone, from its own state (:func:`_run_one`). ``on_save``: called
    with a run's directory after each of its full saves (see :mod:`groklab.sweep.delivery`)."""
    import torch

    from groklab.train import ensemble

    paths = [Path(o) for o in outs]
    if not all(_is_fresh(p) for p in paths):
        runs = zip(configs, outs, strict=True)
        return [_run_one(c, o, analyses, options, threads, on_save=on_save) for c, o in runs]
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    error = None
    try:
        ensemble.train_many(list(configs), paths, progress=False, on_save=on_save)
    except Exception as e:
        error = _error_line(e).splitlines()[0]
    seconds = round((time.perf_counter() - t0) / len(paths), 3)
    gpu_ids = _ray_gpu_ids()  # on a Ray worker: the GPUs Ray gave this stack
    results = []
    for cfg, path in zip(configs, paths, strict=True):
        res: dict[str, Any] = {"out": str(path), "status": "failed", "error": error}
        res["action"] = "started"
        if error is None:
            res["status"] = read_manifest(path).get("status", "failed")
        t1 = time.perf_counter()
        _finish_result(res, cfg, path, analyses, options)
        res["seconds"] = round(seconds + time.perf_counter() - t1, 3)  # its share + analyses
        res["stack"] = len(paths)
        if gpu_ids is not None:
            res["gpu_ids"] = gpu_ids
        results.append(res)
    return results


def _job_entry(
    jobs: Sequence[tuple[RunConfig, str]], group: Sequence[int]
) -> tuple[Any, tuple[Any, ...]]:
    """The worker entry point of one job and its leading arguments: :func:`_run_one` for a
    job of one run, :func:`_run_stack` for a stack."""
    if len(group) == 1:
        return _run_one, tuple(jobs[group[0]])
    return _run_stack, ([jobs[i][0] for i in group], [jobs[i][1] for i in group])


def _job_results(group: Sequence[int], res: dict | list[dict]) -> list[tuple[int, dict]]:
    """(run index, result) for each run of a job, from what its entry point returned."""
    return list(zip(group, res if isinstance(res, list) else [res], strict=True))
