"""The run directory: layout, atomic writes, the writer lock, checkpoints and metrics.

Layout::

    <run>/config.toml                     the exact resolved config, written before step 0
    <run>/manifest.json                   versions, device, seeds, split hash, status, timings
    <run>/metrics.parquet                 one row per evaluated step
    <run>/checkpoints/step_000100.safetensors   weights at that step
    <run>/state.safetensors               latest full training state (weights, optimiser,
                                          filters, RNG) for --resume
    <run>/analysis/                       cached analysis outputs
    <run>/.lock                           held (flock) by the one process writing the run

Every file is written to a temporary name in the same folder, flushed, fsynced and renamed
into place, so a killed process never leaves a half-written file under a real name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from groklab.config import RunConfig, config_to_dict, load_config, save_config
from groklab.errors import (
    CheckpointError,
    RunDamagedError,
    RunExistsError,
    RunLockedError,
    RunNotFoundError,
)

__all__ = [
    "RunStore",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_checkpoint_file",
    "checkpoint_name",
    "list_checkpoint_steps",
    "load_checkpoint",
    "load_manifest",
    "load_metrics",
    "read_manifest",
]

CONFIG = "config.toml"
MANIFEST = "manifest.json"
METRICS = "metrics.parquet"
STATE = "state.safetensors"
CKPT_DIR = "checkpoints"
FORMAT = "groklab-run-1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}.safetensors"


def list_checkpoint_steps(run_dir: Path) -> list[int]:
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    steps = []
    for f in d.glob("step_*.safetensors"):
        with contextlib.suppress(ValueError):
            steps.append(int(f.stem.split("_", 1)[1]))
    return sorted(steps)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a one-line CheckpointError if unreadable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror})") from None
    try:
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
    except (SafetensorError, ValueError, json.JSONDecodeError, OverflowError):
        raise CheckpointError(
            f"{path}: corrupt or not a safetensors checkpoint (expected a groklab checkpoint)"
        ) from None
    meta = header.get("__metadata__", {}) or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a groklab checkpoint (format {meta.get('format')!r}, "
            f"expected {FORMAT!r}); use `groklab import` for foreign checkpoints"
        )
    return tensors, meta


def check_checkpoint_file(path: Path) -> None:
    """Check a checkpoint's header and size without loading its tensors (cheap).

    Raises:
        CheckpointError: the file is truncated, corrupt or not a groklab checkpoint.
    """
    path = Path(path)
    bad = CheckpointError(
        f"{path}: corrupt or not a safetensors checkpoint (expected a groklab checkpoint)"
    )
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n <= 0 or 8 + n > size:
                raise bad
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad from None
    if not isinstance(header, dict):
        raise bad
    try:
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (TypeError, KeyError, IndexError, ValueError):
        raise bad from None
    if 8 + n + end != size:
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({size} bytes, its header describes "
            f"{8 + n + end}); restore it from a copy"
        )
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a groklab checkpoint (format "
            f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}); "
            "use `groklab import` for foreign checkpoints"
        )


def writer_alive(run_dir: Path) -> bool | None:
    """Whether some process on this machine holds the run's writer lock (None: unknown).

    Read from /proc/locks, so asking never takes the lock.
    """
    lock = Path(run_dir) / ".lock"
    try:
        st = lock.stat()
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(line.split()[5] == dev for line in text.splitlines() if len(line.split()) > 5)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest, or ``{}`` when it is missing or unreadable (writers rebuild it; readers
    use :func:`load_manifest`, which says which file is damaged)."""
    try:
        return load_manifest(run_dir)
    except RunDamagedError:
        return {}


def load_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest (``{}`` when there is none yet: a run that has not started).

    Raises:
        RunDamagedError: the file is unreadable, not JSON or not a JSON object.
    """
    p = Path(run_dir) / MANIFEST
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise RunDamagedError(f"{p}: cannot read the manifest ({e.strerror})") from None
    why = None
    if not data.strip():
        why = "empty"
    else:
        try:
            d = json.loads(data.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            why = "not JSON"
        else:
            if not isinstance(d, dict):
                why = "not a JSON object"
    if why is not None:
        raise RunDamagedError(
            f"{p}: damaged ({why}); `groklab train --resume {Path(run_dir)}` rebuilds it from "
            "the run's saved state"
        )
    return d


def load_metrics(run_dir: Path) -> pd.DataFrame | None:
    """The run's metrics table (``None`` when there is no metrics file).

    Raises:
        RunDamagedError: the file is empty, truncated or not a metrics table.
    """
    p = Path(run_dir) / METRICS
    if not p.exists():
        return None
    try:
        df = pd.read_parquet(p)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        why = "empty" if p.is_file() and p.stat().st_size == 0 else "not a readable parquet file"
        if isinstance(e, PermissionError):
            why = "cannot read it (permission denied)"
        raise RunDamagedError(f"{p}: damaged ({why}); {METRICS_RECOVERY}") from None
    why = None
    if "step" not in df.columns and df.empty:
        return pd.DataFrame({"step": []})  # a run stopped before its first evaluation
    if "step" not in df.columns:
        why = "no step column"
    elif len(df):
        steps = pd.to_numeric(df["step"], errors="coerce")
        if steps.isna().any() or (steps.diff().dropna() <= 0).any():
            why = "its steps are not increasing"
    if why is not None:
        raise RunDamagedError(f"{p}: damaged ({why}); {METRICS_RECOVERY}")
    return df


METRICS_RECOVERY = (
    "the metrics cannot be rebuilt from the checkpoints: restore the file from a copy, or "
    "train the run again into a new directory"
)


def _first_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str | None:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        key = f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _first_difference(va, vb, key + ".")
            if d:
                return d
        elif va != vb:
            return f"{key}: {va!r} there, {vb!r} here"
    return None


class RunStore:
    """Writer handle on one run directory; holds an exclusive lock while open."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = Path(path)
        self._lock_fd = lock_fd

    # ----------------------------------------------------------------- opening
    @staticmethod
    def _lock(path: Path) -> int:
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"{path}: another process is writing this run (lock {path / '.lock'} is held)"
            ) from None
        return fd

    @classmethod
    def create(cls, path: str | Path, config: RunConfig) -> RunStore:
        """Open a new run directory for ``config``; refuses one holding anything else.

        Raises:
            RunExistsError: the directory holds a run (same or different config) or
                unrelated files. Nothing in it is touched.
            RunLockedError: another process writes there.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunExistsError(f"{path}: exists and is not a directory")
        if path.is_dir():
            entries = [e for e in path.iterdir() if e.name != ".lock"]
            if (path / CONFIG).exists():
                try:
                    old = config_to_dict(load_config(path / CONFIG))
                except Exception:
                    old = None
                new = config_to_dict(config)
                if old == new:
                    raise RunExistsError(
                        f"{path}: already holds this run; continue it with "
                        f"`groklab train --resume {path}` or choose another --out"
                    )
                diff = _first_difference(old, new) if old is not None else "unreadable config"
                raise RunExistsError(
                    f"{path}: already holds a different run ({diff}); choose another --out"
                )
            if entries:
                raise RunExistsError(
                    f"{path}: directory is not empty and holds no groklab run; "
                    "choose an empty or new --out"
                )
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path, cls._lock(path))
        atomic_write_text(path / CONFIG, save_config(config))
        return store

    @classmethod
    def open_existing(cls, path: str | Path) -> tuple[RunStore, RunConfig]:
        """Open an existing run for writing (resume). Returns the store and its config."""
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise RunNotFoundError(f"{path}: not a groklab run directory (no {CONFIG})")
        cfg = load_config(path / CONFIG)
        return cls(path, cls._lock(path)), cfg

    def close(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- writing
    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))

    def write_metrics(self, rows: list[dict[str, float]]) -> None:
        df = pd.DataFrame(rows)
        import io

        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(self.path / METRICS, buf.getvalue())

    def write_checkpoint(self, step: int, weights: dict[str, torch.Tensor], meta: dict) -> None:
        data = _pack(weights, {**meta, "kind": "weights", "step": str(step)})
        atomic_write_bytes(self.path / CKPT_DIR / checkpoint_name(step), data)

    def write_state(self, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        data = _pack(tensors, {**meta, "kind": "state", "step": str(step)})
        atomic_write_bytes(self.path / STATE, data)

    def read_metrics(self) -> list[dict[str, float]]:
        """The saved metrics rows (``[]`` without a metrics file); RunDamagedError if damaged."""
        df = load_metrics(self.path)
        return [] if df is None else df.to_dict("records")

    def iter_checkpoints(self) -> Iterator[int]:
        yield from list_checkpoint_steps(self.path)


def _pack(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return st_save(clean, metadata={"format": FORMAT, **{k: str(v) for k, v in meta.items()}})
