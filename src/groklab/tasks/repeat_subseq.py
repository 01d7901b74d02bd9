"""Predict a repeated random subsequence (Nanda et al. 2023's induction task).

A sequence of ``L = data.seq_len`` (85) tokens drawn uniformly from ``V = data.vocab_size``
(128) values, whose last ``R = data.repeat_len`` (16) tokens repeat an earlier stretch::

    r_0 r_1 .. r_(L-R-1) | r_s r_(s+1) .. r_(s+R-1)        s uniform in 0 .. L - 2R

Every token is independent of the tokens before it except the repeat, so the only learnable
signal is "find where the current token appeared before and copy the token after it": an
induction circuit, which a 2-layer attention-only transformer builds in a phase change.

The model predicts each repeated token after the first one from the token before it: the input
is the sequence without its last token (``L - 1`` tokens) and the ``R - 1`` scored positions are
the last ones, so ``train/loss`` and ``test/loss`` *are* the loss on the repeated tokens (the
first token of the repeat cannot be predicted and is not scored); the named subset
``test/repeated`` is that same loss under its own name, for reports that look for the
component. ``info["train_source"]`` / ``info["test_source"]`` hold each row's ``s``.

With ``data.train_size`` unset every batch is fresh (infinite data; the train split is a fixed
sample for train metrics); ``data.train_size = 512`` is the paper's grokking variant. The test
split has ``data.test_size`` (2,000) sequences.

:func:`groklab.analysis.induction.induction_scores` measures, for every head, the attention from each repeated token to
the token right after that token's previous occurrence (1 = a perfect induction head).
"""

from __future__ import annotations

import torch

from groklab.config import DataConfig, task_value
from groklab.tasks.base import EvalSubset, Task, tensor_hash

__all__ = [
    "build_repeat_subseq",
    "sample_repeat_subseq",
]



def sample_repeat_subseq(
    gen: torch.Generator, rows: int, *, vocab: int, length: int, repeat: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rows`` sequences: inputs ``[rows, L-1]``, targets ``[rows, R-1]``, sources ``[rows]``."""
    prefix = length - repeat
    seq = torch.randint(0, vocab, (rows, length), generator=gen)
    src = torch.randint(0, prefix - repeat + 1, (rows,), generator=gen)
    idx = src[:, None] + torch.arange(repeat)  # [rows, repeat] positions of the copied stretch
    seq[:, prefix:] = seq.gather(1, idx)
    return seq[:, :-1], seq[:, prefix + 1 :], src


def build_repeat_subseq(cfg: DataConfig) -> Task:
    """Build the repeated-subsequence task of ``cfg`` (see the module docstring)."""
    vocab = task_value(cfg, "vocab_size")
    length = task_value(cfg, "seq_len")
    repeat = task_value(cfg, "repeat_len")
    n_test = task_value(cfg, "test_size")
    infinite = cfg.train_size is None
    kw = {"vocab": vocab, "length": length, "repeat": repeat}
    gen = torch.Generator().manual_seed(cfg.split_seed)
    train_x, train_y, train_src = sample_repeat_subseq(
        gen, n_test if infinite else cfg.train_size, **kw
    )
    test_x, test_y, test_src = sample_repeat_subseq(gen, n_test, **kw)

    def sampler(g: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = sample_repeat_subseq(g, batch, **kw)
        return x, y

    return Task(
        name="repeat-subseq",
        vocab=tuple(str(v) for v in range(vocab)),
        d_vocab=vocab,
        d_vocab_out=vocab,
        n_ctx=length - 1,
        n_scored=repeat - 1,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        subsets={"test/repeated": EvalSubset("test")},
        split_hash=tensor_hash(train_x, test_x),
        info={
            "vocab_size": vocab,
            "seq_len": length,
            "repeat_len": repeat,
            "repeat_start": length - repeat,
            "train_source": train_src,
            "test_source": test_src,
            "infinite": infinite,
        },
        sampler=sampler if infinite else None,
    )
