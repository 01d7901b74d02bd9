"""Task families behind one interface. ``build_task(cfg.data)`` returns a :class:`Task`."""

from __future__ import annotations

from collections.abc import Callable

from groklab.config import DataConfig
from groklab.errors import ConfigError
from groklab.tasks.base import EvalSubset, Task, tensor_hash
from groklab.tasks.images import build_digits, build_mnist
from groklab.tasks.modular import build_modular

__all__ = ["TASK_BUILDERS", "EvalSubset", "Task", "build_task", "tensor_hash"]

TASK_BUILDERS: dict[str, Callable[[DataConfig], Task]] = {
    "modular": build_modular,
    "digits": build_digits,
    "mnist": build_mnist,
}


def build_task(cfg: DataConfig) -> Task:
    """Build the task a data config describes (deterministic in ``cfg``)."""
    try:
        builder = TASK_BUILDERS[cfg.task]
    except KeyError:
        raise ConfigError(
            f"data.task={cfg.task!r} is not allowed; allowed: {', '.join(TASK_BUILDERS)}"
        ) from None
    return builder(cfg)
