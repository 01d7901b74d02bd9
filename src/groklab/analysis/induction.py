"""Induction heads: how much each attention head of a transformer copies like one.

For the ``repeat-subseq`` task (:mod:`groklab.tasks.repeat_subseq`): the attention from each
repeated token to the token right after that token's previous occurrence (1 = a perfect
induction head), and the attention to the position right before (a previous-token head).
"""

from __future__ import annotations

from typing import Any

import torch

from groklab.tasks.base import Task

__all__ = ["induction_scores", "induction_scores_from_patterns"]


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
