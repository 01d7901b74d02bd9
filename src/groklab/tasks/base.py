"""The Task interface: everything the trainer and the analysis may know about a task."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["EvalSubset", "Task", "tensor_hash"]


@dataclass(frozen=True, eq=False)
class EvalSubset:
    """A named slice of a split scored on its own (``test/add``, ``digit_3``, ...).

    Attributes:
        split: ``train`` or ``test``.
        rows: row indices into that split; ``None`` = every row.
        position: index into the scored positions; ``None`` = every scored position.
    """

    split: str
    rows: torch.Tensor | None = None
    position: int | None = None


@dataclass(frozen=True, eq=False)
class Task:
    """A supervised sequence task with fixed splits (and optionally an infinite sampler).

    Inputs are token sequences ``x: [batch, n_ctx]`` (long); the model is scored on the last
    ``n_scored`` positions against ``y: [batch, n_scored]`` (long class indices).

    Attributes:
        name: task family name.
        vocab: name of each input token (``len(vocab) == d_vocab``).
        d_vocab: input vocabulary size.
        d_vocab_out: number of output classes.
        n_ctx: sequence length.
        n_scored: number of scored positions (the last ones).
        train_x, train_y, test_x, test_y: the fixed splits.
        subsets: extra named evaluation subsets beyond ``train`` and ``test``.
        split_hash: hash of the split, recorded in the manifest.
        info: task facts the analysis may need (modulus, operations, op per row, ...).
        sampler: ``sampler(generator, batch_size) -> (x, y)`` for infinite-data training.
    """

    name: str
    vocab: tuple[str, ...]
    d_vocab: int
    d_vocab_out: int
    n_ctx: int
    n_scored: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    subsets: dict[str, EvalSubset] = field(default_factory=dict)
    split_hash: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    sampler: Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_x.shape[0])


def tensor_hash(*tensors: torch.Tensor) -> str:
    """Short sha256 over the shapes, dtypes and bytes of tensors (identity of a split).

    Shapes are hashed too: ``train_x`` and ``test_x`` of one shuffled permutation cut at two
    different points have the same bytes end to end, yet are different splits.
    """
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
