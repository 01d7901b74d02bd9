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
import errno
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
    StorageError,
)

__all__ = [
    "RunStore",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_checkpoint_file",
    "check_folder_target",
    "check_new_run_dir",
    "checkpoint_name",
    "file_mode",
    "list_checkpoint_steps",
    "load_checkpoint",
    "load_manifest",
    "load_metrics",
    "lock_holder",
    "read_manifest",
    "resolve_target",
    "storage_error",
]

CONFIG = "config.toml"
MANIFEST = "manifest.json"
METRICS = "metrics.parquet"
STATE = "state.safetensors"
CKPT_DIR = "checkpoints"
# An imported run's train/test rows into the row-major p × p pairs (``groklab import``).
IMPORTED_SPLIT = "imported_split.safetensors"
FORMAT = "groklab-run-1"


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def storage_error(path: Path, e: OSError) -> StorageError | OSError:
    """A full disk or quota while writing ``path`` as a one-line :class:`StorageError`; any
    other OSError unchanged."""
    if e.errno in _DISK_FULL:
        return StorageError(
            f"{path}: cannot write ({e.strerror or os.strerror(e.errno)}); files saved before "
            "are unchanged; free some space and run the command again"
        )
    return e


def file_mode() -> int:
    """The mode a new file gets under the process umask (``0o666 & ~umask``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    The file gets the user's umask (not ``mkstemp``'s 0600). A full disk raises a one-line
    :class:`~groklab.errors.StorageError` and leaves the file already at ``path`` as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise storage_error(path, e) from None
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            raise storage_error(path, e) from None
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


def _lock_holders(run_dir: Path) -> list[int] | None:
    """Pids holding ``run_dir``'s writer lock (``[]``: free; None: unknown, e.g. no /proc).

    Read from /proc/locks, so asking never takes the lock (which could make a starting writer
    fail its own non-blocking lock) and never writes to the directory. Lines of processes
    waiting for a lock (``->``) are skipped: a waiter implies a holder line of its own.
    """
    try:
        st = (Path(run_dir) / ".lock").stat()
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] != "->" and parts[5] == dev:
            with contextlib.suppress(ValueError):
                pids.append(int(parts[4]))
    return pids


def writer_alive(run_dir: Path) -> bool | None:
    """Whether some process on this machine holds the run's writer lock (None: unknown)."""
    pids = _lock_holders(run_dir)
    return None if pids is None else bool(pids)


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


def different_run_error(
    where: str | Path, old: dict[str, Any] | None, new: dict[str, Any]
) -> RunExistsError:
    """The one error for "this directory holds a different run": it names the first config
    field that differs (``old``: the directory's config as a dict, ``None`` when unreadable;
    ``new``: the config being written)."""
    diff = _first_difference(old, new) if old is not None else "unreadable config"
    return RunExistsError(f"{where}: already holds a different run ({diff}); choose another --out")


def resolve_target(path: str | Path) -> Path:
    """The absolute directory a writer of ``path`` would write: ``..`` and symlinks resolved
    the way creating it would resolve them (``typo/../run`` is ``./run``)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the process holding ``run_dir``'s writer lock, or None (free or unknown)."""
    pids = _lock_holders(run_dir)
    return pids[0] if pids else None


def _locked_error(path: Path) -> RunLockedError:
    pid = lock_holder(path)
    who = f"another process (pid {pid})" if pid is not None else "another process"
    return RunLockedError(
        f"{path}: the run is being written by {who}, which holds {path / '.lock'}; wait for "
        "it to finish or stop it "
        "(a stopped run continues with `groklab train --resume DIR`)"
    )


def check_new_run_dir(path: str | Path, config: RunConfig) -> Path:
    """The writer rule for a new run: resolve ``path`` and refuse a directory that holds a run
    (live, completed, same or different), a file, or unrelated files. Creates nothing.

    Returns:
        The resolved directory to create the run in.

    Raises:
        RunLockedError: another process is writing a run there (with its pid when known).
        RunExistsError: anything else already there; the message says what to do instead.
    """
    given = Path(path)
    path = resolve_target(given)
    where = str(given) if given.is_absolute() or str(given) == str(path) else f"{given} ({path})"
    if path.exists() and not path.is_dir():
        raise RunExistsError(f"{where}: exists and is not a directory; choose another --out")
    if not path.is_dir():
        return path
    if lock_holder(path) is not None:
        raise _locked_error(path)
    entries = [e for e in path.iterdir() if e.name != ".lock"]
    if (path / CONFIG).exists():
        try:
            old = config_to_dict(load_config(path / CONFIG))
        except Exception:
            old = None
        new = config_to_dict(config)
        if old == new:
            if read_manifest(path).get("status") == "completed":
                raise RunExistsError(
                    f"{where}: already holds this run, completed; nothing is overwritten; "
                    "choose another --out to train it again"
                )
            raise RunExistsError(
                f"{where}: already holds this run; continue it with "
                f"`groklab train --resume {path}` or choose another --out"
            )
        raise different_run_error(where, old, new)
    if entries:
        raise RunExistsError(
            f"{where}: directory is not empty and holds no groklab run; "
            "choose an empty or new --out"
        )
    return path


def check_folder_target(path: str | Path, *, what: str) -> Path:
    """The writer rule for a folder of runs (a sweep, a D_crit search): resolve ``path`` and
    refuse a file or a directory that holds a run itself. Creates nothing.

    Returns:
        The resolved folder.

    Raises:
        RunExistsError: ``path`` is a file or a run directory.
    """
    given = Path(path)
    path = resolve_target(given)
    where = str(given) if given.is_absolute() or str(given) == str(path) else f"{given} ({path})"
    if path.exists() and not path.is_dir():
        raise RunExistsError(f"{where}: exists and is not a directory; choose another --out")
    if (path / CONFIG).exists() or (path / MANIFEST).exists():
        raise RunExistsError(
            f"{where}: holds a run, not a {what}; nothing is overwritten; choose another --out"
        )
    return path


class RunStore:
    """Writer handle on one run directory; holds an exclusive lock while open."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = Path(path)
        self._lock_fd = lock_fd

    # ----------------------------------------------------------------- opening
    @staticmethod
    def _lock(path: Path) -> int:
        try:
            fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise storage_error(path / ".lock", e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _locked_error(path) from None
        return fd

    @classmethod
    def create(cls, path: str | Path, config: RunConfig) -> RunStore:
        """Open a new run directory for ``config`` (see :func:`check_new_run_dir`).

        Raises:
            RunExistsError: the directory holds a run (same or different config) or
                unrelated files. Nothing in it is touched.
            RunLockedError: another process writes there.
            StorageError: the disk is full.
        """
        path = check_new_run_dir(path, config)
        new = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(path, e) from None
        store = cls(path, cls._lock(path))
        try:
            atomic_write_text(path / CONFIG, save_config(config))
        except BaseException:
            store.close()
            if new:  # leave no half-made run behind (e.g. the disk was full)
                with contextlib.suppress(OSError):
                    (path / ".lock").unlink()
                    path.rmdir()
            raise
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
