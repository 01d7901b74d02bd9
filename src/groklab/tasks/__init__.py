"""Task families behind one interface. ``build_task(cfg.data)`` returns a :class:`Task`."""

from __future__ import annotations

from collections.abc import Callable

from groklab.config import DataConfig
from groklab.errors import ConfigError
from groklab.tasks.base import EvalSubset, Task, tensor_hash
from groklab.tasks.digit_add import build_digit_add
from groklab.tasks.images import build_digits, build_mnist
from groklab.tasks.max_element import build_max_element
from groklab.tasks.modular import build_modular
from groklab.tasks.repeat_subseq import build_repeat_subseq
from groklab.tasks.sparse_parity import build_sparse_parity
from groklab.tasks.subset import take_train_subset

__all__ = ["TASK_BUILDERS", "EvalSubset", "Task", "build_task", "tensor_hash"]

TASK_BUILDERS: dict[str, Callable[[DataConfig], Task]] = {
    "modular": build_modular,
    "digits": build_digits,
    "mnist": build_mnist,
    "digit-add": build_digit_add,
    "repeat-subseq": build_repeat_subseq,
    "max-element": build_max_element,
    "sparse-parity": build_sparse_parity,
}


def build_task(cfg: DataConfig) -> Task:
    """Build the task a data config describes (deterministic in ``cfg``)."""
    try:
        builder = TASK_BUILDERS[cfg.task]
    except KeyError:
        raise ConfigError(
            f"data.task={cfg.task!r} is not allowed; allowed: {', '.join(TASK_BUILDERS)}"
        ) from None
    task = builder(cfg)
    if cfg.train_subset is not None:  # ungrokking: a seeded subset of the task's own train split
        task = take_train_subset(task, cfg.train_subset, seed=cfg.subset_seed or 0)
    return task
