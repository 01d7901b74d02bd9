"""Local sweep workers end with the sweep: a sweep killed with SIGKILL leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from groklab import sweep as sw
from groklab.store import read_manifest, writer_alive

SPEC = """
name = "orphans"
seeds = [0, 1]

[base.data]
p = 11
train_fraction = 0.5

[base.model]
d_model = 16
n_heads = 2
d_head = 8
d_mlp = 32

[base.train]
steps = 1000000
eval_every = 1000
checkpoint_every = 1000000
device = "cpu"
"""


def _children(pid: int) -> dict[int, str]:
    """Live processes whose parent is ``pid`` → their command line (a /proc scan)."""
    out: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (d / "stat").read_text()
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")"
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return out


def _alive(pid: int) -> bool:
    """Running or asleep; a zombie (dead, not yet reaped by its new parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find children")
def test_workers_exit_when_the_sweep_is_killed(tmp_path: Path) -> None:
    spec = tmp_path / "orphans.toml"
    spec.write_text(SPEC)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "groklab.cli", "sweep", str(spec), "--out", str(out)]
    cmd += ["-w", "2", "--threads", "2", "-q", "--no-figures"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own session, so that whatever is left can be cleaned up below if the test fails
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL)
    run_dirs = [out / r.name for r in sw.expand(sw.load_spec(spec))]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # both workers are training (each holds its run's lock)
            if all(read_manifest(d).get("status") == "running" for d in run_dirs):
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the two runs never started")
        assert all(
            read_manifest(d)["torch_threads"] == 2 for d in run_dirs
        )  # --threads reached them
        children = _children(proc.pid)
        workers = [p for p, c in children.items() if "multiprocessing" in c]
        assert len(workers) >= 2, children  # two workers (and the resource tracker)
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, as a kill -9 of the sweep does
        proc.wait()
        gone = time.time() + 10  # a worker polls its parent every second
        while any(_alive(p) for p in children) and time.time() < gone:
            time.sleep(0.05)
        left = {p: c for p, c in children.items() if _alive(p)}
        assert not left, f"left behind after the sweep was killed: {left}"
        # nothing holds the runs any more, so a relaunch can resume them at once
        assert not any(writer_alive(d) for d in run_dirs)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
