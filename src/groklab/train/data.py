"""The stacked task tensors on the training device and the stateless batch schedule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from groklab.config import RunConfig
from groklab.errors import ConfigError
from groklab.tasks import Task


@dataclass
class _Data:
    """Task tensors of every model on the training device, stacked ``[K, ...]``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    # name → (split, row indices of each model or None, scored position or None)
    subsets: dict[str, tuple[str, list[torch.Tensor] | None, int | None]]

    @classmethod
    def of(cls, tasks: Sequence[Task], device: torch.device) -> _Data:
        first = tasks[0]
        for t in tasks[1:]:
            for name in ("train_x", "train_y", "test_x", "test_y"):
                a, b = getattr(first, name), getattr(t, name)
                if a.shape != b.shape or a.dtype != b.dtype:
                    raise ConfigError(
                        f"data: the stacked runs need splits of one shape; {name} is "
                        f"{tuple(a.shape)} in the first and {tuple(b.shape)} in another run"
                    )
            if set(t.subsets) != set(first.subsets):
                raise ConfigError("data: the stacked runs need the same evaluation subsets")

        def stack(name: str) -> torch.Tensor:
            return torch.stack([getattr(t, name) for t in tasks]).to(device)

        subsets: dict[str, tuple[str, list[torch.Tensor] | None, int | None]] = {}
        for name, s in first.subsets.items():
            rows = None
            if s.rows is not None:
                rows = [t.subsets[name].rows.to(device) for t in tasks]
            subsets[name] = (s.split, rows, s.position)
        return cls(stack("train_x"), stack("train_y"), stack("test_x"), stack("test_y"), subsets)

    def select(self, keep: torch.Tensor) -> _Data:
        """The data of the models ``keep`` (indices)."""
        idx = keep.tolist()
        subsets = {
            name: (split, None if rows is None else [rows[i] for i in idx], pos)
            for name, (split, rows, pos) in self.subsets.items()
        }
        return _Data(
            *(
                getattr(self, n).index_select(0, keep)
                for n in ("train_x", "train_y", "test_x", "test_y")
            ),
            subsets,
        )


class _Batches:
    """Stateless batch schedule: the batch of model k at step t depends only on (seed_k, t)."""

    def __init__(self, tasks: Sequence[Task], data: _Data, cfgs: Sequence[RunConfig]) -> None:
        self.tasks, self.data = list(tasks), data
        self.seeds = [c.train.seed for c in cfgs]
        task = tasks[0]
        n = task.n_train
        b = cfgs[0].train.batch_size
        self.full = task.sampler is None and (b is None or b >= n)
        self.b = b or n
        self.per_epoch = max(n // self.b, 1)
        self._epoch, self._perm = -1, None

    def _gen(self, seed: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed((seed * 1_000_003 + salt) % (2**63))

    def get(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``[K, batch, ...]`` and targets ``[K, batch, n_scored]`` of step ``t``."""
        d = self.data
        dev = d.train_x.device
        if self.full:
            return d.train_x, d.train_y
        if self.tasks[0].sampler is not None:
            xs, ys = zip(
                *(
                    task.sampler(self._gen(seed, t), self.b)
                    for task, seed in zip(self.tasks, self.seeds, strict=True)
                ),
                strict=True,
            )
            return torch.stack(xs).to(dev), torch.stack(ys).to(dev)
        epoch, i = divmod(t, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            n = self.tasks[0].n_train
            perm = [torch.randperm(n, generator=self._gen(s, epoch)) for s in self.seeds]
            self._perm = torch.stack(perm).to(dev)  # [K, n]
        idx = self._perm[:, i * self.b : (i + 1) * self.b]  # [K, batch]
        return _take(d.train_x, idx), _take(d.train_y, idx)


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx [K, batch]`` of each model's ``x [K, n, ...]``."""
    model = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[model, idx]
