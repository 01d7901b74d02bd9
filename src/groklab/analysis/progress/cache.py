"""``groklab analyze``: progress, snapshots and phases of a run, cached in ``<run>/analysis/``."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from groklab.analysis import fourier as fr
from groklab.analysis.progress.measures import Progress, progress_measures
from groklab.analysis.progress.snapshot import Snapshot, circuit_snapshot
from groklab.errors import ConfigError
from groklab.run import select_steps

#: Bumped whenever a measure's definition changes, so cached results are recomputed.
ANALYSIS_VERSION = 2


# --------------------------------------------------------------------------- cached analysis
@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything ``groklab analyze`` computes for a run.

    Attributes:
        progress: the progress measures over the checkpoints.
        snapshots: the circuit at the final checkpoint, per operation.
        phases: the training phases.
        cached: whether the progress measures came from the cache.
        paths: the cache files read or written.
    """

    progress: Progress
    snapshots: dict[str, Snapshot]
    phases: Any
    cached: bool
    paths: list[Path]


def _ckpt_stat(run: Any, step: int) -> list[int]:
    from groklab.store import CKPT_DIR, checkpoint_name

    st = (Path(run.path) / CKPT_DIR / checkpoint_name(step)).stat()
    return [step, st.st_size, st.st_mtime_ns]


def _key(payload: dict[str, Any]) -> str:
    blob = json.dumps({"version": ANALYSIS_VERSION, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    from groklab.store import atomic_write_text

    # NaN (e.g. a loss on an empty split) is written as JSON's common NaN extension.
    atomic_write_text(path, json.dumps(obj, indent=1))


def analyze_run(
    run: Any,
    *,
    every: int = 1,
    key_freqs: Sequence[int] | dict[str, Sequence[int]] | None = None,
    ops: Sequence[str] | None = None,
    generators: dict[str, int] | None = None,
    force: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> Analysis:
    """Progress measures, final-checkpoint snapshots and phases of a run, cached in
    ``<run>/analysis/``.

    Cache files are named by a hash of what produced them — the analysis version, the config
    hash, the analysed checkpoints (step, size, modification time) and the options — so a
    result is recomputed only when missing or stale (new checkpoints, a resumed run, other
    options, a changed analysis) or with ``force``.
    """
    from groklab.analysis.phases import find_phases
    from groklab.config import config_hash
    from groklab.store import atomic_write_bytes

    task_kind = run.config.data.task
    if task_kind != "modular":
        raise ConfigError(
            f"{run.path}: data.task={task_kind!r}; the Fourier circuit, progress measures and "
            "phases of `groklab analyze` need a modular task (data.task='modular')"
        )
    available = run.checkpoint_steps
    if not available:
        raise ConfigError(f"{run.path}: no checkpoints to analyse")
    chosen = select_steps(available, every=every)
    if hasattr(run, "check_checkpoints"):
        run.check_checkpoints(chosen)
    ops = list(ops or run.task.info.get("operations", []))
    generators = dict(generators or {})
    options = {
        "every": every,
        "key_freqs": key_freqs
        if not isinstance(key_freqs, dict)
        else dict(sorted(key_freqs.items())),
        "ops": ops,
        "generators": dict(sorted(generators.items())),
        "key_freq_rule": {"min_gap": fr.KEY_FREQ_MIN_GAP, "max": fr.KEY_FREQ_MAX},
    }
    folder = Path(run.path) / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    key = _key(
        {
            "config": config_hash(run.config),
            "checkpoints": [_ckpt_stat(run, s) for s in chosen],
            "options": options,
        }
    )
    table_path, meta_path = folder / f"progress-{key}.parquet", folder / f"progress-{key}.json"
    cached = not force and table_path.exists() and meta_path.exists()
    if cached:
        try:
            meta = json.loads(meta_path.read_text())
            progress = Progress(
                table=pd.read_parquet(table_path),
                key_freqs={k: list(v) for k, v in meta["key_freqs"].items()},
                ops=meta["ops"],
                generators=meta["generators"],
                steps=meta["steps"],
                seconds=meta["seconds"],
            )
        except Exception:  # a damaged cache is recomputed (and rewritten) like a stale one
            cached = False
    if not cached:
        progress = progress_measures(
            run,
            steps=chosen,
            key_freqs=key_freqs,
            ops=ops,
            generators=generators,
            callback=callback,
        )
        buf = io.BytesIO()
        progress.table.to_parquet(buf, index=False)
        atomic_write_bytes(table_path, buf.getvalue())
        meta = {
            "key": key,
            "analysis_version": ANALYSIS_VERSION,
            "key_freqs": progress.key_freqs,
            "ops": progress.ops,
            "generators": progress.generators,
            "steps": progress.steps,
            "seconds": progress.seconds,
            "options": options,
        }
        _write_json(meta_path, meta)
    paths = [table_path, meta_path]

    snapshots = {}
    final = available[-1]
    for op in ops:
        skey = _key(
            {
                "config": config_hash(run.config),
                "checkpoint": _ckpt_stat(run, final),
                "op": op,
                "key_freqs": progress.key_freqs[op],
                "generator": progress.generators.get(op),
                "cluster_threshold": fr.CLUSTER_THRESHOLD,
            }
        )
        spath = folder / f"snapshot-{op}-step{final}-{skey}.json"
        snap = None
        if not force and spath.exists():
            try:
                snap = Snapshot.from_dict(json.loads(spath.read_text()))
            except Exception:  # damaged cache: recompute
                snap = None
        if snap is not None:
            snapshots[op] = snap
        else:
            snapshots[op] = circuit_snapshot(
                run,
                final,
                op=op,
                key_freqs=progress.key_freqs[op],
                generator=progress.generators.get(op),
            )
            _write_json(spath, snapshots[op].to_dict())
        paths.append(spath)

    phases = find_phases(progress.table, ops, metrics=run.metrics)
    _write_json(folder / "phases.json", phases.to_dict())
    paths.append(folder / "phases.json")
    return Analysis(
        progress=progress, snapshots=snapshots, phases=phases, cached=cached, paths=paths
    )
