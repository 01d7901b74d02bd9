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

:func:`induction_scores` measures, for every head, the attention from each repeated token to
the token right after that token's previous occurrence (1 = a perfect induction head).
"""

from __future__ import annotations

from typing import Any

import torch

from groklab.config import DataConfig
from groklab.tasks.base import EvalSubset, Task, tensor_hash

__all__ = [
    "build_repeat_subseq",
    "induction_scores",
    "induction_scores_from_patterns",
    "sample_repeat_subseq",
]

_DEFAULTS = {"vocab_size": 128, "seq_len": 85, "repeat_len": 16, "test_size": 2000}


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
    vocab = cfg.vocab_size or _DEFAULTS["vocab_size"]
    length = cfg.seq_len or _DEFAULTS["seq_len"]
    repeat = cfg.repeat_len or _DEFAULTS["repeat_len"]
    n_test = cfg.test_size or _DEFAULTS["test_size"]
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


def induction_scores_from_patterns(
    pattern: torch.Tensor, source: torch.Tensor, *, repeat_start: int, repeat_len: int
) -> dict[str, torch.Tensor]:
    """Induction and previous-token scores of every head from its attention pattern.

    Args:
        pattern: ``[batch, head, q_pos, k_pos]`` attention probabilities over all positions.
        source: ``[batch]`` start ``s`` of each row's copied stretch.
        repeat_start: position of the first repeated token (``L - R``).
        repeat_len: ``R``.

    Returns:
        ``induction [head]``: mean attention from query ``repeat_start + j`` to key
        ``s + j + 1`` (the token after the query token's previous occurrence), over rows and
        ``j = 0 .. R-2``; ``prev_token [head]``: mean attention from those queries to the
        position right before them.
    """
    b, _, n_q, _ = pattern.shape
    j = torch.arange(repeat_len - 1)
    q = repeat_start + j  # [j]
    k = source[:, None] + j + 1  # [batch, j]
    rows = torch.arange(b)[:, None]
    if q.max() >= n_q:
        raise ValueError(f"pattern has {n_q} query positions; need {int(q.max()) + 1}")
    # Gather pattern[b, h, q_j, k_bj] for every head: move heads last for advanced indexing.
    per_head = pattern.permute(0, 2, 3, 1)  # [batch, q_pos, k_pos, head]
    induction = per_head[rows, q[None, :], k].mean(dim=(0, 1))
    prev = per_head[rows, q[None, :], (q - 1)[None, :]].mean(dim=(0, 1))
    return {"induction": induction, "prev_token": prev}


@torch.no_grad()
def induction_scores(
    model: Any, task: Task, *, split: str = "test", rows: int = 256
) -> dict[str, torch.Tensor]:
    """Induction and previous-token scores ``[n_layers, n_heads]`` of a transformer.

    Runs the first ``rows`` sequences of ``split`` through ``model`` (e.g.
    ``load_run(path).model_at(step)``) with ``run_with_cache`` on
    ``blocks.{l}.attn.hook_pattern`` and scores each head with
    :func:`induction_scores_from_patterns`. In a trained 2-layer model the best layer-1 head
    scores near 1 (an induction head) and a layer-0 head has a high previous-token score.
    """
    if task.name != "repeat-subseq":
        raise ValueError(f"induction scores need the repeat-subseq task, not {task.name!r}")
    x = getattr(task, f"{split}_x")[:rows]
    source = task.info[f"{split}_source"][:rows]
    n_layers = len(model.blocks)
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)]
    dev = next(model.parameters()).device
    _, cache = model.run_with_cache(x.to(dev), names=names)  # every query position
    out: dict[str, list[torch.Tensor]] = {"induction": [], "prev_token": []}
    for name in names:
        s = induction_scores_from_patterns(
            cache[name].cpu().double(),
            source,
            repeat_start=task.info["repeat_start"],
            repeat_len=task.info["repeat_len"],
        )
        for key in out:
            out[key].append(s[key])
    return {key: torch.stack(v) for key, v in out.items()}
