"""Reading a saved run: :func:`load_run` → :class:`Run`."""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from groklab.config import RunConfig, config_hash, load_config
from groklab.errors import CheckpointError, RunNotFoundError
from groklab.models import HookedModule, build_model
from groklab.store import (
    CKPT_DIR,
    CONFIG,
    IMPORTED_SPLIT,
    METRICS,
    checkpoint_name,
    list_checkpoint_steps,
    load_checkpoint,
    read_manifest,
)
from groklab.tasks import Task, build_task, tensor_hash

__all__ = ["Run", "first_step_at", "load_run", "summarize_metrics"]


def first_step_at(metrics: pd.DataFrame, column: str, threshold: float = 0.99) -> int | None:
    """First logged step where ``column >= threshold`` (``None`` if never)."""
    if column not in metrics:
        return None
    hit = metrics.loc[metrics[column] >= threshold, "step"]
    return int(hit.iloc[0]) if len(hit) else None


def summarize_metrics(metrics: pd.DataFrame) -> dict[str, Any]:
    """Memorisation step (train acc >= 99%), grokking step (test acc >= 99%, also per test
    subset), and the final value of every loss/accuracy column."""
    if metrics.empty:
        return {"memorisation_step": None, "grokking_step": None, "final": {}}
    out: dict[str, Any] = {
        "memorisation_step": first_step_at(metrics, "train/acc"),
        "grokking_step": first_step_at(metrics, "test/acc"),
    }
    per_subset = {
        c[: -len("/acc")]: first_step_at(metrics, c)
        for c in metrics.columns
        if c.startswith("test/") and c.endswith("/acc") and c != "test/acc"
    }
    if per_subset:
        out["grokking_step_by_subset"] = per_subset
    last = metrics.iloc[-1]
    out["final_step"] = int(last["step"])
    out["final"] = {
        c: float(last[c]) for c in metrics.columns if c.endswith("/loss") or c.endswith("/acc")
    }
    return out


class Run:
    """A run directory opened for reading.

    Attributes:
        path: the run directory.
        config: its :class:`RunConfig`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / CONFIG).is_file():
            raise RunNotFoundError(f"{self.path}: not a groklab run directory (no {CONFIG})")
        self.config: RunConfig = load_config(self.path / CONFIG)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r})"

    @property
    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)

    @property
    def status(self) -> str:
        return self.manifest.get("status", "unknown")

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per evaluated step (empty before the first evaluation)."""
        p = self.path / METRICS
        return pd.read_parquet(p) if p.exists() else pd.DataFrame({"step": []})

    @property
    def checkpoint_steps(self) -> list[int]:
        return list_checkpoint_steps(self.path)

    @property
    def has_imported_split(self) -> bool:
        """The run was imported with the publisher's train/test split (``groklab import``)."""
        return (self.path / IMPORTED_SPLIT).is_file()

    @cached_property
    def task(self) -> Task:
        """The task with the split this run's model was trained on.

        That is the config's split, except for an imported run that records the publisher's
        split (``imported_split.safetensors``): then train/test are those rows. Every reader
        of a run — progress measures, LLC, reports — takes its rows from here.
        """
        task = build_task(self.config.data)
        return (
            _with_imported_split(task, self.path / IMPORTED_SPLIT)
            if self.has_imported_split
            else task
        )

    def summary(self) -> dict[str, Any]:
        return summarize_metrics(self.metrics)

    def weights_at(self, step: int) -> dict[str, torch.Tensor]:
        """Raw weights saved at ``step``."""
        path = self.path / CKPT_DIR / checkpoint_name(step)
        if not path.exists():
            steps = self.checkpoint_steps
            hint = f"{steps[0]}..{steps[-1]} ({len(steps)} saved)" if steps else "none saved"
            raise CheckpointError(f"{path}: no checkpoint at step {step}; available: {hint}")
        tensors, meta = load_checkpoint(path)
        if meta.get("config_hash") not in (None, config_hash(self.config)):
            raise CheckpointError(f"{path}: checkpoint of a different run (config hash differs)")
        return tensors

    def model_at(self, step: int, *, device: str | torch.device = "cpu") -> HookedModule:
        """The model with the weights saved at ``step``, in eval mode."""
        model = build_model(self.config.model, self.task, seed=self.config.train.seed)
        tensors = self.weights_at(step)
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise CheckpointError(
                f"{self.path / CKPT_DIR / checkpoint_name(step)}: does not match this run's "
                f"model ({first})"
            ) from None
        return model.to(device).eval()


def _with_imported_split(task: Task, path: Path) -> Task:
    """``task`` with train/test replaced by the rows stored at ``path``."""
    from safetensors.torch import load as st_load

    from groklab.tasks.modular import problems

    hint = "re-import the run with `groklab import`"
    try:
        rows = st_load(path.read_bytes())
        tr, te = rows["train_rows"].long(), rows["test_rows"].long()
    except Exception:
        raise CheckpointError(f"{path}: corrupt imported split; {hint}") from None
    ops, p = task.info.get("operations", []), int(task.info.get("p", 0))
    if task.name != "modular" or len(ops) != 1:
        raise CheckpointError(f"{path}: an imported split needs a single-operation modular run")
    a, b, c = problems(ops[0], p)
    n = len(a)
    if (
        tr.dim() != 1
        or te.dim() != 1
        or any(r.numel() and (r.min() < 0 or r.max() >= n) for r in (tr, te))
    ):
        raise CheckpointError(f"{path}: rows outside the {n} problems mod {p}; {hint}")
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # [problem, a b =]
    info = dict(task.info)
    info["train_op"] = torch.zeros(len(tr), dtype=torch.long)
    info["test_op"] = torch.zeros(len(te), dtype=torch.long)
    return dataclasses.replace(
        task,
        train_x=x[tr],
        train_y=c[tr].unsqueeze(1),
        test_x=x[te],
        test_y=c[te].unsqueeze(1),
        split_hash=tensor_hash(x[tr], x[te]),
        info=info,
    )


def load_run(path: str | Path) -> Run:
    """Open a saved run for reading."""
    return Run(path)
