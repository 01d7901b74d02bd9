"""The checkpoint schedule: every ``checkpoint_every`` steps, the last, and log-spaced early ones."""

from __future__ import annotations

import math


def _log_checkpoints(steps: int, every: int, n_log: int) -> set[int]:
    out: set[int] = set()
    if n_log > 0 and every > 1:
        hi = math.log(every)
        for i in range(n_log):
            out.add(round(math.exp(hi * (i + 1) / (n_log + 1))))
    return {s for s in out if 0 <= s <= steps}


def is_checkpoint_step(t: int, steps: int, every: int, log_steps: set[int]) -> bool:
    """Whether step ``t`` is in :func:`checkpoint_schedule` (without building it)."""
    return 0 <= t <= steps and (t % every == 0 or t == steps or t in log_steps)


def checkpoint_schedule(steps: int, every: int, n_log: int) -> set[int]:
    """Steps to checkpoint: 0, every ``every``, the last, plus ``n_log`` log-spaced early ones.

    Builds the whole set; the loop asks :func:`is_checkpoint_step` instead, which costs
    nothing however long the run.
    """
    return set(range(0, steps + 1, every)) | {steps} | _log_checkpoints(steps, every, n_log)
