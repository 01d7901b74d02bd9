"""One run of a sweep, inside a worker process: train, resume or skip it, then its analyses.

:func:`_run_one` is the worker entry point (pickled by reference for spawned processes and
Ray, so it must stay importable here): it trains a run or resumes or skips it according to
what its directory holds, runs the spec's analyses once per (run, config, options), caching
each in ``analysis/sweep-<name>.json``, and returns a plain result dict; a failure is recorded
in it, never raised. :func:`_already_done` answers a run that needs no work without a worker.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from groklab.config import RunConfig, config_hash, config_to_dict, load_config
from groklab.errors import GroklabError, RunDamagedError
from groklab.store import CONFIG, atomic_write_text, different_run_error, read_manifest
from groklab.sweep.analyses import _analysis_marker, _jsonable, resolve_analysis
from groklab.sweep.spec import DONE_STATUSES


def _check_same_run(cfg: RunConfig, out: Path) -> None:
    """Refuse a run directory whose config.toml is damaged or holds a different run.

    Raises:
        RunDamagedError: the config.toml cannot be read.
        RunExistsError: it holds a different config (the first difference is named).
    """
    try:
        old = config_to_dict(load_config(out / CONFIG))
    except GroklabError as e:
        raise RunDamagedError(
            f"{str(e).removesuffix('.')}; the run's config.toml is damaged: restore it, or "
            "delete the run directory to train the run again"
        ) from None
    new = config_to_dict(cfg)
    if old != new:
        raise different_run_error(out, old, new)


def _execute(cfg: RunConfig, out: Path, *, on_save: Callable[[Path], None] | None = None) -> str:
    """Train, resume or skip one run. Returns the action taken."""
    from groklab.train.loop import run_training

    if (out / CONFIG).is_file():
        _check_same_run(cfg, out)
        if read_manifest(out).get("status") in DONE_STATUSES:
            from groklab.run import load_run

            load_run(out)  # a finished run counts only if its files are sound
            return "skipped"
        run_training(cfg, out, resume=True, progress=False, on_save=on_save)
        return "resumed"
    run_training(cfg, out, progress=False, on_save=on_save)
    return "started"


def _run_analyses(
    out: Path, names: Sequence[str], options: dict[str, dict[str, Any]], chash: str
) -> dict[str, Any]:
    """Run each analysis once per (run, config, options); results cached in
    ``analysis/sweep-<name>.json`` so a re-launched sweep does not redo them."""
    results: dict[str, Any] = {}
    for name in names:
        opts = _jsonable(options.get(name, {}))
        marker = _analysis_marker(out, name)
        with contextlib.suppress(OSError, ValueError):
            cached = json.loads(marker.read_text())
            if (
                cached.get("config_hash") == chash
                and cached.get("options") == opts
                and cached.get("status") == "ok"
            ):
                results[name] = cached.get("result")
                continue
        fn = resolve_analysis(name)
        result = _jsonable(fn(out, **options.get(name, {})))
        record = {"status": "ok", "config_hash": chash, "options": opts, "result": result}
        atomic_write_text(marker, json.dumps(record, indent=1))
        results[name] = result
    return results


def _error_line(e: BaseException) -> str:
    """A failure as the result's one-line error: a GroklabError's own text; anything else
    with its type and where it was raised."""
    if isinstance(e, GroklabError):
        return str(e)
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def _finish_result(
    res: dict[str, Any],
    cfg: RunConfig,
    path: Path,
    analyses: Sequence[str],
    options: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """After training: the run's analyses when it finished (an analysis failure fails the
    run, not the sweep), and a run that did not finish marked failed with a reason."""
    if res["status"] in DONE_STATUSES and analyses:
        try:
            res["analyses"] = _run_analyses(path, analyses, options, config_hash(cfg))
        except Exception as e:
            res["status"] = "failed"
            res["error"] = f"analysis: {type(e).__name__}: {e}".splitlines()[0]
    if res["status"] not in DONE_STATUSES and res["error"] is None:
        res["error"] = f"run ended with status {res['status']!r}"
        res["status"] = "failed"
    return res


def _ray_gpu_ids() -> list[str] | None:
    """On a Ray worker, the GPUs Ray gave this task; None elsewhere."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return [str(g) for g in ray.get_gpu_ids()]
    except Exception:
        return None


def _run_one(
    cfg: RunConfig,
    out: str,
    analyses: Sequence[str],
    options: dict[str, dict[str, Any]],
    threads: int | None,
    *,
    on_save: Callable[[Path], None] | None = None,
) -> dict:
    """Worker entry point (must stay importable for spawn and Ray). ``on_save``: passed to
    :func:`~groklab.train.loop.run_training` (see :mod:`groklab.sweep.delivery`)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    path = Path(out)
    res: dict[str, Any] = {"out": str(path), "status": "failed", "error": None, "action": None}
    t0 = time.perf_counter()
    try:
        res["action"] = _execute(cfg, path, on_save=on_save)
        res["status"] = read_manifest(path).get("status", "failed")
    except Exception as e:
        res["error"] = _error_line(e)
    _finish_result(res, cfg, path, analyses, options)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    gpu_ids = _ray_gpu_ids()
    if gpu_ids is not None:
        res["gpu_ids"] = gpu_ids
    return res


def _already_done(
    cfg: RunConfig, out: Path, analyses: Sequence[str], options: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """The result of a run that needs no work at all (finished, same config, analyses cached),
    so a re-launched sweep does not even start a worker for it; else None."""
    m = read_manifest(out)
    if m.get("status") not in DONE_STATUSES:
        return None
    try:
        if config_to_dict(load_config(out / CONFIG)) != config_to_dict(cfg):
            return None
    except GroklabError:
        return None
    chash = config_hash(cfg)
    results: dict[str, Any] = {}
    for name in analyses:
        try:
            cached = json.loads(_analysis_marker(out, name).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(cached, dict):
            return None
        if (
            cached.get("status") != "ok"
            or cached.get("config_hash") != chash
            or cached.get("options") != _jsonable(options.get(name, {}))
        ):
            return None
        results[name] = cached.get("result")
    from groklab.run import load_run

    try:
        load_run(out)  # a finished run counts only if its files are sound
    except GroklabError:
        return None  # the worker reports the damage
    res = {"out": str(out), "status": m["status"], "error": None, "action": "skipped"}
    if analyses:
        res["analyses"] = results
    res["seconds"] = 0.0
    return res
