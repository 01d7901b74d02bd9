"""The run adapter: a saved run's training loss as a function of its parameters.

:func:`run_loss` loads the model at a checkpoint and builds the run's own training loss
(``train.loss`` at ``train.loss_dtype``, on the scored positions) over its training rows, or
over the training rows of one subset (:func:`resolve_subset`), batched over chains through the
transformer's stacked forward when it has one. :func:`estimate_llc_at` is
:func:`~groklab.analysis.llc.sampler.estimate_llc` on that loss, with the run's divergence
bound (:func:`default_max_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.func import functional_call

from groklab.analysis.llc.result import LLCResult
from groklab.analysis.llc.sampler import LossFn, _Flat, _init_loss, estimate_llc
from groklab.analysis.llc.settings import LLCSettings
from groklab.errors import ConfigError

if TYPE_CHECKING:
    from groklab.run import Run


@dataclass(frozen=True)
class _RunLoss:
    """The training loss of a run's model as a function of its parameters."""

    loss_fn: LossFn
    params: dict[str, torch.Tensor]
    n: int
    max_loss: float
    subset: str
    batched: bool
    init_loss: float


def resolve_subset(run: Run, subset: str | None) -> tuple[str, torch.Tensor | None, int | None]:
    """Canonical name, training rows and scored position of ``subset``.

    ``None``/``total`` = every training row. ``add``, ``train/add`` and ``test/add`` all
    select the *training* rows of addition (the LLC is about the training loss). Any other
    training subset of the task (``train/<name>``) is accepted by name too.
    """
    if subset in (None, "", "total", "train"):
        return "total", None, None
    task = run.task
    name = subset
    for prefix in ("train/", "test/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    sub = task.subsets.get(f"train/{name}")
    if sub is not None and sub.split == "train":
        return name, sub.rows, sub.position
    ops = list(task.info.get("operations", []))
    if ops == [name]:  # a single-operation task: the subset is the whole training set
        return name, None, None
    allowed = [
        "total",
        *sorted(
            {k.split("/", 1)[1] for k, v in task.subsets.items() if v.split == "train"}
            | ({ops[0]} if len(ops) == 1 else set())
        ),
    ]
    raise ConfigError(
        f"--subset={subset!r} is not a training subset of {run.path}; allowed: "
        f"{', '.join(allowed)} (also as train/<name> or test/<name>)"
    )


def default_max_loss(init_loss: float, d_vocab_out: int) -> float:
    """Loss bound for a run's chains: ``L(w*)`` plus the loss of a uniform guess.

    A chain whose training loss has risen by more than chance level has left the
    neighbourhood of ``w*``; its draws say nothing about the local geometry.
    """
    return init_loss + max(math.log(d_vocab_out), 1.0)


def run_loss(
    run: Run, step: int, *, subset: str | None = None, device: str | torch.device = "cpu"
) -> _RunLoss:
    """The run's training loss at checkpoint ``step`` as a function of the parameters.

    The loss is the run's own (``train.loss`` with ``train.loss_dtype`` log-softmax) on the
    scored positions of the training rows (restricted to ``subset``'s training rows).
    """
    from groklab.train.losses import token_losses

    name, rows, position = resolve_subset(run, subset)
    task = run.task
    model = run.model_at(step, device=device)
    x, y = task.train_x.to(device), task.train_y.to(device)
    if rows is not None:
        x, y = x[rows.to(device)], y[rows.to(device)]
    if x.shape[0] == 0:
        raise ConfigError(f"--subset={subset!r} has no training rows in {run.path}")
    kind = run.config.train.loss
    dtype = torch.float64 if run.config.train.loss_dtype == "float64" else torch.float32
    n_scored = task.n_scored
    params = {k: v.detach() for k, v in model.named_parameters()}

    def token_mean(tok: torch.Tensor) -> torch.Tensor:
        # tok: [..., batch, n_scored] → mean over the scored rows (and position) → [...]
        if position is not None:
            return tok[..., position].mean(dim=-1)
        return tok.mean(dim=(-2, -1))

    stacked = _stacked_forward(model)
    if stacked is not None:
        # Batched weights: all chains through the model's own stacked forward, no vmap.
        def batched_fn(p: dict[str, torch.Tensor], idx: torch.Tensor | None) -> torch.Tensor:
            k = p["embed.W_E"].shape[0]
            xb = x if idx is None else x[idx]  # [batch, pos] shared, or [chain, m, pos]
            yb = y.expand(k, *y.shape) if idx is None else y[idx]  # [chain, batch, n_scored]
            logits = stacked(model.cfg, p, xb, n_out=n_scored)  # [chain, batch, n_scored, V]
            return token_mean(token_losses(logits, yb, kind=kind, dtype=dtype))

        loss_fn, batched = batched_fn, True
    else:

        def single_fn(p: dict[str, torch.Tensor], idx: torch.Tensor | None) -> torch.Tensor:
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            logits = functional_call(model, p, (xb,), {"n_scored": n_scored})
            return token_mean(token_losses(logits, yb, kind=kind, dtype=dtype))

        loss_fn, batched = single_fn, False
    l0 = _init_loss(loss_fn, _Flat(params), batched)
    return _RunLoss(
        loss_fn,
        params,
        int(x.shape[0]),
        default_max_loss(l0, task.d_vocab_out),
        name,
        batched,
        l0,
    )


def _stacked_forward(model: torch.nn.Module) -> Callable[..., torch.Tensor] | None:
    """The transformer's forward over a stack of weights, if the model has one."""
    from groklab.models import transformer

    fn = getattr(transformer, "stacked_forward", None)
    if fn is None or not isinstance(model, transformer.Transformer):
        return None
    return fn


def estimate_llc_at(
    run: Run,
    step: int,
    settings: LLCSettings | None = None,
    *,
    subset: str | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> LLCResult:
    """LLC of ``run``'s training loss at checkpoint ``step`` (see :func:`estimate_llc`)."""
    rl = run_loss(run, step, subset=subset, device=device)
    return estimate_llc(
        rl.loss_fn,
        rl.params,
        n=rl.n,
        settings=settings,
        init_loss=rl.init_loss,
        max_loss=rl.max_loss,
        batched=rl.batched,
        progress=progress,
    )
