"""Answer-class logits over an operation's grid, and the restricted/excluded losses."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from groklab.analysis import fourier as fr


# --------------------------------------------------------------------------- pure measures
def _answer_logits(logits: torch.Tensor, grid: fr.OperationGrid) -> torch.Tensor:
    """``[rows, n]`` the logits of the answer classes in index order, float64."""
    return logits[..., grid.residues].double()


def split_metrics(
    logits: torch.Tensor, grid: fr.OperationGrid, rows: torch.Tensor
) -> tuple[float, float]:
    """Cross-entropy and accuracy of answer-class logits ``[n·n, n]`` on the masked rows."""
    if not bool(rows.any()):
        return math.nan, math.nan
    lg, y = logits[rows].double(), grid.target[rows]
    loss = F.cross_entropy(lg, y).item()
    acc = (lg.argmax(dim=1) == y).double().mean().item()
    return loss, acc


def restricted_logits(
    logits: torch.Tensor, grid: fr.OperationGrid, freqs: Sequence[int]
) -> torch.Tensor:
    """The logits projected onto ``1, cos(w_k s), sin(w_k s)`` for ``k`` in ``freqs``.

    Keeping the constant is the mean correction: every class keeps its mean logit over the
    grid, so only the input-dependent part is restricted to the generalising directions.
    """
    funcs = fr.sum_functions(grid.n, list(freqs), constant=True)
    c = fr.project_on_sum(fr.sum_profile(logits, grid), fr.sum_counts(grid), funcs)
    return funcs[grid.target] @ c


def excluded_logits(
    logits: torch.Tensor, grid: fr.OperationGrid, freqs: Sequence[int]
) -> torch.Tensor:
    """The logits with their ``cos(w_k s), sin(w_k s)`` components removed for ``k`` in ``freqs``."""
    funcs = fr.sum_functions(grid.n, list(freqs))
    c = fr.project_on_sum(fr.sum_profile(logits, grid), fr.sum_counts(grid), funcs)
    return logits.double() - funcs[grid.target] @ c


def restricted_loss(
    logits: torch.Tensor,
    grid: fr.OperationGrid,
    freqs: Sequence[int],
    *,
    rows: torch.Tensor | None = None,
) -> float:
    """Loss of :func:`restricted_logits` on ``rows`` (default: the test rows)."""
    rows = grid.test if rows is None else rows
    return split_metrics(restricted_logits(logits, grid, freqs), grid, rows)[0]


def excluded_loss(
    logits: torch.Tensor,
    grid: fr.OperationGrid,
    freqs: Sequence[int],
    *,
    rows: torch.Tensor | None = None,
) -> float:
    """Loss of :func:`excluded_logits` on ``rows`` (default: the training rows)."""
    rows = grid.train if rows is None else rows
    return split_metrics(excluded_logits(logits, grid, freqs), grid, rows)[0]


# --------------------------------------------------------------------------- model plumbing
def neuron_hook_name(model: torch.nn.Module) -> str | None:
    """The hook point of the last MLP's neuron activations (``None`` without an MLP)."""
    names = [n for n in model.hook_names if n.endswith("mlp.hook_post")]
    if not names:
        names = [n for n in model.hook_names if n.startswith("layers.") and n.endswith("hook_post")]
    return names[-1] if names else None


def grid_logits(
    model: torch.nn.Module,
    grids: Sequence[fr.OperationGrid],
    *,
    hook: str | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """One forward pass over every grid's rows → answer-class logits per grid (and activations).

    Returns:
        ``[n·n, n]`` float64 logits per grid, and (with ``hook``) the hook's activation at the
        answer position ``[n·n, d]`` per grid.
    """
    tokens = torch.cat([g.tokens for g in grids])
    with torch.no_grad():
        if hook is None:
            logits, acts = model(tokens, n_scored=1), None
        else:
            logits, cache = model.run_with_cache(tokens, names=[hook], n_scored=1)
            acts = cache[hook]
            acts = (
                acts[:, -1]
                if acts.dim() == 3
                else acts.reshape(len(tokens), -1, acts.shape[-1])[:, -1]
            )
    logits = logits[:, -1]
    out, acts_out, start = [], [] if acts is not None else None, 0
    for g in grids:
        stop = start + len(g.tokens)
        out.append(_answer_logits(logits[start:stop], g))
        if acts_out is not None:
            acts_out.append(acts[start:stop].double())
        start = stop
    return out, acts_out
