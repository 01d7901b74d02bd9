"""Delivering runs from a node's scratch disk to the driver's directory (Ray, no shared disk).

On the Ray backend a task never writes to the driver's path. :func:`delivered_run` gives it a
scratch run directory on its own node,
``<GROKLAB_SCRATCH or <tmp>/groklab-scratch>/<ray node id>/<sweep id>/<run>``, filled with
the last state the :class:`Receiver` holds for the run (so a retried task resumes where the
lost one last saved), and a save hook (:meth:`Delivery.on_save`, for
:func:`~groklab.train.loop.run_training`'s ``on_save``) that sends the files each save added or
changed. :meth:`Delivery.finish` sends the rest and moves a finished run into place.

The :class:`Receiver` runs as a Ray actor pinned to the driver's node
(:func:`start_receiver`) and is the only writer under the driver's directory: every file goes
into ``<run>.partial/`` (each atomically, the training state last), and the final delivery
renames ``<run>.partial`` to ``<run>`` — one rename, so ``<run>`` only ever holds a whole run
and a lost node leaves at most a ``.partial`` that the next attempt continues. Each attempt of
a task gets a token from :meth:`Receiver.begin`; files from an older attempt of the same run
(a node cut off but still running) are refused.

:func:`claim` prepares a run directory on the driver before its task starts (a run there that
needs more work moves to ``<run>.partial``); :func:`adopt_partial` hands a ``.partial`` back to
the local backend, which writes in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from groklab.config import RunConfig
from groklab.errors import ConfigError, GroklabError, RunExistsError, RunLockedError
from groklab.store import CONFIG, STATE, atomic_write_bytes, lock_holder
from groklab.sweep.spec import DONE_STATUSES
from groklab.sweep.worker import _check_same_run, _run_one

#: The suffix of a run directory that is still being delivered.
PARTIAL_SUFFIX = ".partial"
#: The environment variable naming a node's scratch root.
SCRATCH_ENV = "GROKLAB_SCRATCH"
#: How often Ray restarts a task whose worker or node died (each attempt resumes).
RAY_RETRIES = 3


def partial_dir(out: str | Path) -> Path:
    """Where run ``out`` is delivered to before it is moved into place: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def run_files_dir(out: str | Path) -> Path:
    """The directory holding what is known of run ``out``: ``out`` itself, or its
    ``.partial`` when only that exists (a run still being delivered, or cut short)."""
    out = Path(out)
    part = partial_dir(out)
    return part if not out.exists() and part.is_dir() else out


def scratch_root() -> Path:
    """This node's scratch root: ``$GROKLAB_SCRATCH``, else ``<tmp>/groklab-scratch``."""
    env = os.environ.get(SCRATCH_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / "groklab-scratch"


def sweep_id(outs: Sequence[str | Path]) -> str:
    """A short id of a set of runs (the driver's host and the runs' folders), naming the
    scratch folder of their tasks."""
    h = hashlib.sha256(socket.gethostname().encode())
    for d in sorted({str(Path(o).parent) for o in outs}):
        h.update(b"\0" + d.encode())
    return h.hexdigest()[:12]


def run_keys(outs: Sequence[str | Path]) -> list[str]:
    """One key per run: its directory name (prefixed by its index when two names clash)."""
    names = [Path(o).name for o in outs]
    if len(set(names)) == len(names):
        return names
    return [f"{i:04d}-{n}" for i, n in enumerate(names)]


def _skipped(rel: str) -> bool:
    # the writer lock and temporary files of atomic writes stay where they are
    return PurePosixPath(rel).name.startswith(".")


def _safe_rel(rel: str) -> Path:
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(x in ("", ".", "..") for x in p.parts):
        raise ConfigError(f"delivery: {rel!r} is not a path inside a run directory")
    return Path(*p.parts)


def _read_tree(root: Path) -> dict[str, bytes]:
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not _skipped(rel):
            with contextlib.suppress(FileNotFoundError):
                files[rel] = p.read_bytes()
    return files


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` under ``root``, each atomically, the training state last: a copy cut
    short holds the older state beside newer metrics and checkpoints, and resumes from it."""
    for rel in sorted(files, key=lambda r: (r == STATE, r)):
        atomic_write_bytes(root / _safe_rel(rel), files[rel])


class Receiver:
    """The one writer of delivered runs, on the driver's node (a Ray actor there).

    Args:
        targets: run key → the run's directory on the driver's disk.
    """

    def __init__(self, targets: dict[str, str]) -> None:
        self._targets = {k: Path(v) for k, v in targets.items()}
        self._tokens: dict[str, str] = {}
        self._results: dict[str, dict[str, Any]] = {}

    def _target(self, key: str) -> Path:
        try:
            return self._targets[key]
        except KeyError:
            raise ConfigError(f"delivery: no run {key!r} in this sweep") from None

    def begin(self, key: str) -> tuple[str, dict[str, bytes], dict[str, Any] | None]:
        """Start an attempt of run ``key``: its token (older attempts' tokens stop counting),
        the files delivered so far (``<run>.partial``), and the result of an earlier attempt
        that already delivered the run (then there is nothing left to do), else None."""
        target = self._target(key)
        token = uuid.uuid4().hex
        self._tokens[key] = token
        if key in self._results:
            return token, {}, self._results[key]
        part = partial_dir(target)
        return token, _read_tree(part) if part.is_dir() else {}, None

    def put(self, key: str, token: str, files: dict[str, bytes]) -> bool:
        """Write ``files`` (path in the run → bytes) into ``<run>.partial``; False (nothing
        written) when ``token`` is not the latest attempt's or the run is delivered."""
        if self._tokens.get(key) != token or key in self._results:
            return False
        if files:  # a run that failed before writing anything leaves no .partial
            _write_tree(partial_dir(self._target(key)), files)
        return True

    def finish(self, key: str, token: str, files: dict[str, bytes], result: dict[str, Any]) -> bool:
        """The final delivery: :meth:`put` ``files``, then rename ``<run>.partial`` to
        ``<run>`` and remember ``result`` for a later attempt. False as for :meth:`put`."""
        if not self.put(key, token, files):
            return False
        target = self._target(key)
        os.rename(partial_dir(target), target)  # one rename: <run> is whole or absent
        with contextlib.suppress(OSError):  # make the rename durable
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._results[key] = result
        return True


class _Receiving(Protocol):
    def begin(self, key: str) -> tuple[str, dict[str, bytes], dict[str, Any] | None]: ...
    def put(self, key: str, token: str, files: dict[str, bytes]) -> bool: ...
    def finish(
        self, key: str, token: str, files: dict[str, bytes], result: dict[str, Any]
    ) -> bool: ...


class RemoteReceiver:
    """A :class:`Receiver` actor handle with the receiver's own (blocking) methods."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def begin(self, key: str) -> tuple[str, dict[str, bytes], dict[str, Any] | None]:
        import ray

        return ray.get(self.handle.begin.remote(key))

    def put(self, key: str, token: str, files: dict[str, bytes]) -> bool:
        import ray

        return ray.get(self.handle.put.remote(key, token, files))

    def finish(self, key: str, token: str, files: dict[str, bytes], result: dict[str, Any]) -> bool:
        import ray

        return ray.get(self.handle.finish.remote(key, token, files, result))


def start_receiver(ray: Any, targets: dict[str, str]) -> Any:
    """A :class:`Receiver` actor on this (the driver's) node, asking for no CPU."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(Receiver).options(
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    )
    return actor.remote(targets)


class _Superseded(GroklabError):
    pass


class Delivery:
    """One task attempt's side of a delivered run (made by :func:`delivered_run`).

    Attributes:
        path: the scratch run directory to train in.
        prior: the result of an earlier attempt that delivered the run already, or None.
    """

    def __init__(
        self,
        receiver: _Receiving,
        key: str,
        path: Path,
        token: str,
        prior: dict[str, Any] | None,
    ) -> None:
        self.path, self.prior = path, prior
        self._receiver, self._key, self._token = receiver, key, token
        self._sent: dict[str, tuple[int, int, int]] = {}
        self._sent.update(self._changed(read=False)[1])  # what was fetched need not go back

    def _changed(
        self, *, read: bool = True
    ) -> tuple[dict[str, bytes], dict[str, tuple[int, int, int]]]:
        files, sigs = {}, {}
        for p in sorted(self.path.rglob("*")):
            rel = p.relative_to(self.path).as_posix()
            if _skipped(rel) or not p.is_file():
                continue
            try:  # stat and read one open file: every write replaces the file (new inode)
                with open(p, "rb") as f:
                    st = os.fstat(f.fileno())
                    sig = (st.st_ino, st.st_size, st.st_mtime_ns)
                    if self._sent.get(rel) == sig:
                        continue
                    sigs[rel] = sig
                    if read:
                        files[rel] = f.read()
            except FileNotFoundError:
                continue
        return files, sigs

    def send(self) -> None:
        """Send the files added or changed since the last send to ``<run>.partial``.

        Raises:
            GroklabError: a newer attempt of this run has started (this one must stop).
        """
        files, sigs = self._changed()
        if files and not self._receiver.put(self._key, self._token, files):
            raise _Superseded(f"delivery of {self._key}: a newer attempt of this run took over")
        self._sent.update(sigs)

    def on_save(self, run_dir: Path) -> None:
        """The save hook for :func:`~groklab.train.loop.run_training`: :meth:`send`."""
        self.send()

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Send what is left; a run whose ``result`` is finished (completed or diverged, its
        analyses done) is moved into place. Returns ``result``, failed when the delivery
        failed (then the run stays in ``<run>.partial`` and the next attempt continues it)."""
        try:
            files, sigs = self._changed()
            if result.get("status") in DONE_STATUSES:
                ok = self._receiver.finish(self._key, self._token, files, result)
            else:
                ok = self._receiver.put(self._key, self._token, files)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[-1]
            return {**result, "status": "failed", "error": f"delivery: {type(e).__name__}: {first}"}
        if not ok:
            return {**result, "status": "failed", "error": "delivery: a newer attempt took over"}
        self._sent.update(sigs)
        return result


def node_id() -> str:
    """The Ray node id of this process (``local`` outside Ray)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())
    return "local"


@contextlib.contextmanager
def delivered_run(receiver: _Receiving, key: str, sweep: str) -> Iterator[Delivery]:
    """A scratch run directory for run ``key`` on this node, filled with what the receiver
    holds of it; the scratch directory is removed on leaving (the receiver keeps the run).

    Use ``d.path`` as the run directory, ``d.on_save`` as the training save hook and
    ``d.finish(result)`` at the end; when ``d.prior`` is not None the run was delivered by an
    earlier attempt and that is its result.
    """
    path = scratch_root() / node_id() / sweep / key
    # left by an earlier attempt on this node: the receiver's copy is the one to continue
    shutil.rmtree(path, ignore_errors=True)
    token, files, prior = receiver.begin(key)
    path.mkdir(parents=True, exist_ok=True)
    try:
        _write_tree(path, files)
        yield Delivery(receiver, key, path, token, prior)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def dispatch(deliveries: Iterable[Delivery]) -> Callable[[Path], None]:
    """One save hook for runs trained together (a stack): each save goes to its own run's
    :class:`Delivery`."""
    by_path = {Path(d.path).resolve(): d for d in deliveries}
    return lambda run_dir: by_path[Path(run_dir).resolve()].on_save(run_dir)


def _run_delivered(
    cfg: RunConfig,
    key: str,
    sweep: str,
    receiver: Any,
    analyses: Sequence[str],
    options: dict[str, dict[str, Any]],
    threads: int | None,
) -> dict[str, Any]:
    """Ray task entry point: one run trained in scratch and delivered through ``receiver``
    (an actor handle). The result names the scratch directory (``scratch``) and ``node_id``."""
    with delivered_run(RemoteReceiver(receiver), key, sweep) as d:
        if d.prior is not None:
            return d.prior
        res = _run_one(cfg, str(d.path), analyses, options, threads, on_save=d.on_save)
        return d.finish({**res, "scratch": str(d.path), "node_id": node_id()})


def _run_stack_delivered(
    configs: Sequence[RunConfig],
    keys: Sequence[str],
    sweep: str,
    receiver: Any,
    analyses: Sequence[str],
    options: dict[str, dict[str, Any]],
    threads: int | None,
) -> list[dict[str, Any]]:
    """Ray task entry point of a stack (:mod:`groklab.sweep.stack`): each run gets its scratch
    directory and delivery as in :func:`_run_delivered`; the runs not delivered yet train
    together (:func:`~groklab.sweep.stack._run_stack`, which resumes them one by one when a
    retried attempt finds them started), each save going to its own run's delivery."""
    from groklab.sweep.stack import _run_stack

    remote = RemoteReceiver(receiver)
    with contextlib.ExitStack() as es:
        ds = [es.enter_context(delivered_run(remote, k, sweep)) for k in keys]
        todo = [i for i, d in enumerate(ds) if d.prior is None]
        results: list[dict[str, Any] | None] = [d.prior for d in ds]
        if todo:
            done = _run_stack(
                [configs[i] for i in todo],
                [str(ds[i].path) for i in todo],
                analyses,
                options,
                threads,
                on_save=dispatch(ds[i] for i in todo),
            )
            for i, res in zip(todo, done, strict=True):
                d = ds[i]
                results[i] = d.finish({**res, "scratch": str(d.path), "node_id": node_id()})
        return [r for r in results if r is not None]


def claim(cfg: RunConfig, out: Path) -> None:
    """Make the driver's run directory ``out`` ready for delivery: a run there that needs more
    work (a resume, its analyses) moves to ``<out>.partial`` for its task to continue.

    Raises:
        RunExistsError: ``out`` is a file, holds unrelated files, or both ``out`` and its
            ``.partial`` hold the run. ConfigError / RunDamagedError: ``out`` holds a
            different run or a damaged config. RunLockedError: a local process writes it.
    """
    part = partial_dir(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise RunExistsError(f"{out}: exists and is not a directory; choose another --out")
    if lock_holder(out) is not None:
        raise RunLockedError(
            f"{out}: the run is being written by another process (pid "
            f"{lock_holder(out)}); wait for it to finish or stop it"
        )
    if (out / CONFIG).exists():
        _check_same_run(cfg, out)
        if part.exists():
            raise RunExistsError(
                f"{out}: the run is there and also in {part.name}; delete the copy not to keep "
                "and launch again"
            )
        os.rename(out, part)
    elif any(e.name != ".lock" for e in out.iterdir()):
        raise RunExistsError(
            f"{out}: directory is not empty and holds no groklab run; choose an empty or new --out"
        )
    else:
        shutil.rmtree(out)  # an empty directory (or a stale lock file): the run lands here


def adopt_partial(out: Path) -> None:
    """For the local backend, which writes in place: a run left in ``<out>.partial`` (by an
    interrupted Ray sweep) moves to ``out`` when ``out`` does not exist."""
    part = partial_dir(out)
    if not out.exists() and part.is_dir():
        os.rename(part, out)
