"""Train on a random subset of a task's own training split (ungrokking, semi-grokking).

``data.train_subset = N`` keeps ``N`` rows of the train split, drawn by a generator seeded with
``data.subset_seed``; the test split is untouched. The kept rows are the first ``N`` of one
seeded permutation, so for one seed a smaller subset is always inside a larger one.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from groklab.errors import ConfigError
from groklab.tasks.base import EvalSubset, Task, tensor_hash

__all__ = ["subset_rows", "take_train_subset"]


def subset_rows(n_train: int, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of the ``size`` training rows kept by ``train_subset``."""
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return perm[:size].sort().values


def take_train_subset(task: Task, size: int, *, seed: int = 0) -> Task:
    """``task`` with only ``size`` of its training rows (see the module docstring).

    Train-split subsets are re-indexed to the kept rows, and per-row ``info`` tensors of the
    train split (keys starting with ``train_``) are cut the same way.

    Raises:
        ConfigError: the task trains on fresh samples, or ``size`` exceeds its train split.
    """
    if task.sampler is not None:
        raise ConfigError(
            f"data.train_subset needs a fixed training set, but task {task.name!r} trains on "
            "fresh samples; set data.train_size"
        )
    if size > task.n_train:
        raise ConfigError(
            f"data.train_subset={size} is larger than the training split ({task.n_train} rows)"
        )
    keep = subset_rows(task.n_train, size, seed)
    new_index = torch.full((task.n_train,), -1, dtype=torch.long)
    new_index[keep] = torch.arange(size)
    subsets: dict[str, EvalSubset] = {}
    for name, s in task.subsets.items():
        if s.split != "train":
            subsets[name] = s
            continue
        rows = new_index if s.rows is None else new_index[s.rows]
        subsets[name] = replace(s, rows=rows[rows >= 0])
    info = {
        key: (
            val[keep]
            if key.startswith("train_") and torch.is_tensor(val) and len(val) == task.n_train
            else val
        )
        for key, val in task.info.items()
    }
    info["train_subset_of"] = task.n_train
    train_x, train_y = task.train_x[keep], task.train_y[keep]
    return replace(
        task,
        train_x=train_x,
        train_y=train_y,
        subsets=subsets,
        info=info,
        split_hash=tensor_hash(train_x, task.test_x),
    )
