"""Interrupting a training run part-way, as Ctrl-C would, for the resume and writer tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

from groklab.train import loop


@contextlib.contextmanager
def ctrl_c_at(step: int) -> Iterator[None]:
    """Inside the block, the training loop raises KeyboardInterrupt when it reaches ``step``
    (at the step's learning-rate lookup, before any work of that step); restored on leaving."""
    real = loop.lr_at

    def lr_at(t: int, cfg: object) -> float:
        if t == step:
            raise KeyboardInterrupt
        return real(t, cfg)

    with mock.patch.object(loop, "lr_at", lr_at):
        yield
