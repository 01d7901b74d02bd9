"""Scoring train, test and every named subset of a stack of models, without host transfers."""

from __future__ import annotations

import torch

from groklab.config import RunConfig
from groklab.tasks import Task
from groklab.train.data import _Data
from groklab.train.losses import token_losses
from groklab.train.stack import _Stack

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


class _Evaluator:
    """Scores train, test and every named subset of every model; no host transfer."""

    def __init__(self, stack: _Stack, data: _Data, task: Task, cfg: RunConfig) -> None:
        self.stack, self.data, self.task = stack, data, task
        self.kind, self.dtype = cfg.train.loss, _DTYPES[cfg.train.loss_dtype]
        self.chunk = max(16384 // stack.k, 512)

    def _per_token(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses, correct = [], []
        for i in range(0, x.shape[1], self.chunk):
            logits = self.stack.logits(x[:, i : i + self.chunk], self.task.n_scored)
            yy = y[:, i : i + self.chunk]
            losses.append(token_losses(logits, yy, kind=self.kind, dtype=self.dtype))
            correct.append((logits.argmax(-1) == yy).to(self.dtype))
        if not losses:
            empty = torch.empty(
                self.stack.k, 0, self.task.n_scored, dtype=self.dtype, device=x.device
            )
            return empty, empty
        return torch.cat(losses, dim=1), torch.cat(correct, dim=1)

    @torch.no_grad()
    def __call__(
        self, train_tok: tuple[torch.Tensor, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        """Every metric as a ``[K]`` tensor (NaN where a subset is empty)."""
        d = self.data
        per_split = {
            "train": train_tok if train_tok is not None else self._per_token(d.train_x, d.train_y),
            "test": self._per_token(d.test_x, d.test_y),
        }
        k_ = self.stack.k
        nan = torch.full((k_,), float("nan"), dtype=self.dtype, device=d.train_x.device)

        def mean(v: torch.Tensor) -> torch.Tensor:  # [K, ...] → [K]
            return v.flatten(1).mean(1) if v[0].numel() else nan

        out: dict[str, torch.Tensor] = {}
        for split, (loss, corr) in per_split.items():
            out[f"{split}/loss"], out[f"{split}/acc"] = mean(loss), mean(corr)
        for name, (split, rows, pos) in d.subsets.items():
            loss, corr = per_split[split]
            if pos is not None:
                loss, corr = loss[:, :, pos], corr[:, :, pos]
            if rows is None:
                out[f"{name}/loss"], out[f"{name}/acc"] = mean(loss), mean(corr)
                continue
            for key, v in ((f"{name}/loss", loss), (f"{name}/acc", corr)):
                out[key] = torch.stack(
                    [v[k][r].mean() if r.numel() else nan[0] for k, r in enumerate(rows)]
                )
        return out
