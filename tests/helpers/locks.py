"""A second process that holds a run's writer lock, for tests of what other writers are told."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# flock the file, say so, then hold it until stdin closes
_HOLD = (
    "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR);"
    "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"
)


@contextlib.contextmanager
def lock_held_by_another_process(run_dir: Path) -> Iterator[subprocess.Popen]:
    """Hold ``run_dir/.lock`` in a child process for the duration; yields the child."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(Path(run_dir) / ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.communicate("", timeout=30)
