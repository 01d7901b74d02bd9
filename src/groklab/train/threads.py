"""How many CPU threads torch trains with when it is not told.

PyTorch splits each CPU op across its intra-op threads and waits at the end of the op for the
slowest one. When the threads fill every core and one other busy process shares the machine,
one thread keeps losing its core, and every op (hundreds per training step) waits a scheduler
slice for it: on a 2-core machine a canonical step at 2 threads slowed 5–30× beside a single
busy process, where one thread slows at most about 2× (it shares a core). Leaving one core
free lets the OS put a competitor there instead, at the cost of one core's share on an idle
machine (``benchmarks/bench_threads.py`` measures both sides).

The policy, :func:`default_threads`: ``OMP_NUM_THREADS`` when the user set it; else every usable
core but one, at most one per physical core, at least one. The ``groklab train`` and
``groklab sweep`` commands apply it (``--threads N`` overrides it); the Python API leaves
torch's own setting alone.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_threads", "usable_cores"]


def usable_cores() -> int:
    """Logical CPUs this process may run on (its affinity mask, e.g. a container's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _physical_cores() -> int | None:
    """Distinct physical cores among the usable CPUs (Linux sysfs), or None if unknown."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        return None
    sibling_sets = set()
    for cpu in cpus:
        f = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            sibling_sets.add(f.read_text().strip())
        except OSError:
            return None
    return len(sibling_sets) or None


def default_threads() -> int:
    """Torch threads for training when none are given (see the module docstring)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    n = usable_cores() - 1
    phys = _physical_cores()
    if phys is not None:
        n = min(n, phys)
    return max(1, n)
