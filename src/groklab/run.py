"""Reading a saved run: :func:`load_run` → :class:`Run`."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from groklab.config import RunConfig, config_hash, load_config
from groklab.errors import CheckpointError, ConfigError, RunDamagedError, RunNotFoundError
from groklab.models import HookedModule, build_model
from groklab.store import (
    CKPT_DIR,
    CONFIG,
    IMPORTED_SPLIT,
    MANIFEST,
    METRICS,
    METRICS_RECOVERY,
    check_checkpoint_file,
    checkpoint_name,
    list_checkpoint_steps,
    load_checkpoint,
    load_manifest,
    load_metrics,
    writer_alive,
)
from groklab.tasks import Task, build_task, tensor_hash

__all__ = ["Run", "first_step_at", "load_run", "select_steps", "summarize_metrics"]


def first_step_at(metrics: pd.DataFrame, column: str, threshold: float = 0.99) -> int | None:
    """The first logged step where ``column >= threshold``; ``None`` if never.

    The one rule for "the step a metric first reaches a threshold" (memorisation, grokking,
    Omnigrok's fit and generalisation steps, a search's grokking step, a bisection's metric).
    ``>=``: reaching the threshold counts. A missing value (NaN, e.g. an accuracy on an empty
    split, or a row logged before the column existed) never counts. "First" is the smallest
    such step, so the rows need not be sorted. No such column, or no rows: ``None``.
    """
    if column not in metrics or "step" not in metrics or metrics.empty:
        return None
    values = pd.to_numeric(metrics[column], errors="coerce")
    hit = metrics.loc[values >= threshold, "step"]  # NaN >= x is False
    return int(hit.min()) if len(hit) else None


def select_steps(
    available: Sequence[int], *, every: int | None = None, steps: Iterable[int] | None = None
) -> list[int]:
    """The checkpoint steps an analysis reads: ``--every`` and ``--steps`` of every command.

    Args:
        available: the saved checkpoint steps.
        every: the checkpoints at steps that are multiples of ``every`` (``--every N``), plus
            the first and the last checkpoint; ``None`` or 1: all of them.
        steps: exactly these checkpoint steps (``--steps``); overrides ``every``.

    Raises:
        ConfigError: a step in ``steps`` has no checkpoint; ``every`` < 1; or ``every`` is
            below the usual spacing of the saved checkpoints (``--every`` counts steps, not
            checkpoints: a smaller ``every`` selects every checkpoint or an unintended few,
            so it is refused with the value that takes every N-th checkpoint).
    """
    avail = sorted({int(s) for s in available})
    if steps is not None:
        want = sorted({int(s) for s in steps})
        have = set(avail)
        missing = [s for s in want if s not in have]
        if missing:
            hint = f"{avail[0]}..{avail[-1]} ({len(avail)} saved)" if avail else "none saved"
            raise ConfigError(f"--steps: no checkpoint at step {missing[0]}; available: {hint}")
        return want
    if every is not None and every < 1:
        raise ConfigError(f"--every={every} is not allowed; use a positive number of steps")
    if every is None or every == 1:
        return avail
    spacing = _usual_spacing(avail)
    if spacing is not None and every < spacing:
        raise ConfigError(
            f"--every={every} is not allowed: --every N takes the checkpoints at multiples of N "
            f"steps, and these are saved every {spacing} steps; for one checkpoint in {every} "
            f"give --every {every * spacing}"
        )
    out = {s for s in avail if s % every == 0}
    if avail:
        out |= {avail[0], avail[-1]}
    return sorted(out)


def _usual_spacing(steps: Sequence[int]) -> int | None:
    """The most common gap between consecutive checkpoint steps (the largest of equally common
    ones); log-spaced early checkpoints and an off-grid final one do not set it."""
    gaps = Counter(b - a for a, b in pairwise(steps))
    if not gaps:
        return None
    top = max(gaps.values())
    return max(g for g, n in gaps.items() if n == top)


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

    Every read is checked against the run's other files: ``config.toml`` against the config
    hash in ``manifest.json``, the metrics' steps against the run's schedule and final step,
    the checkpoints against the final step of a completed run. A damaged or missing file
    raises :class:`~groklab.errors.RunDamagedError` naming the file and how to recover.

    Attributes:
        path: the run directory.
        config: its :class:`RunConfig`.
    """

    def __init__(self, path: str | Path, *, for_resume: bool = False) -> None:
        self.path = Path(path)
        # On resume a damaged manifest is rebuilt by the writer: read it leniently then.
        self._lenient_manifest = for_resume
        if not (self.path / CONFIG).is_file():
            raise RunNotFoundError(f"{self.path}: not a groklab run directory (no {CONFIG})")
        cfg_path = self.path / CONFIG
        try:
            self.config: RunConfig = load_config(cfg_path)
        except ConfigError as e:
            why = str(e).removeprefix(f"{cfg_path}: ")
            raise RunDamagedError(
                f"{cfg_path}: damaged ({why}); restore the run's config.toml from a copy"
            ) from None
        recorded = self.manifest.get("config_hash")
        # The recorded hash is of the text written to config.toml: an untouched file matches
        # it even if a later groklab writes the same config differently (new fields).
        if recorded is not None and recorded not in (
            _text_hash(cfg_path),
            config_hash(self.config),
        ):
            raise RunDamagedError(
                f"{cfg_path}: does not match the run (config hash {config_hash(self.config)}, "
                f"{MANIFEST} records {recorded}): it was edited after the run was trained; "
                "restore the original (train an edited config into a new directory)"
            )
        if not for_resume:  # resume rebuilds or refuses on its own terms
            self.check()

    def check(self) -> None:
        """Read and cross-check the metrics and checkpoints now (opening a run does this).

        Raises:
            RunDamagedError: naming the damaged file and how to recover.
        """
        self.metrics  # noqa: B018 - reading is the check
        self.checkpoint_steps  # noqa: B018

    def check_checkpoints(self, steps: list[int]) -> None:
        """Check the files of the checkpoints at ``steps`` (headers and sizes only, cheap), so
        that a reader going over them fails before it computes or writes anything.

        Raises:
            CheckpointError: one is missing, truncated or corrupt (named).
        """
        for step in steps:
            path = self.path / CKPT_DIR / checkpoint_name(step)
            if not path.exists():
                raise CheckpointError(f"{path}: no checkpoint at step {step}")
            check_checkpoint_file(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r})"

    @property
    def manifest(self) -> dict[str, Any]:
        if self._lenient_manifest:
            try:
                return load_manifest(self.path)
            except RunDamagedError:
                return {}
        return load_manifest(self.path)

    @property
    def status(self) -> str:
        return self.manifest.get("status", "unknown")

    @property
    def _trained_here(self) -> bool:  # reads the manifest
        """A run trained by groklab (an imported run's metrics are its loss history)."""
        return "imported_from" not in self.manifest

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per evaluated step (empty before the first evaluation).

        Raises:
            RunDamagedError: ``metrics.parquet`` is damaged, missing while checkpoints exist,
                lacks evaluated steps, or ends before the final step of a completed run.
        """
        p = self.path / METRICS
        df = load_metrics(self.path)
        m = self.manifest
        if not m or not self._trained_here:  # nothing to check against
            return df if df is not None else pd.DataFrame({"step": []})
        final = _final_step(m)
        if df is None or df.empty:
            # (a live run writes a checkpoint just before its metrics: not damage)
            later = [s for s in list_checkpoint_steps(self.path) if s > 0]
            live = m.get("status") == "running" and writer_alive(self.path) is not False
            if final is not None or (later and not live):
                upto = final if final is not None else later[-1]
                what = "missing" if df is None else "empty"
                raise RunDamagedError(
                    f"{p}: {what}, but the run has trained to step {upto}; {METRICS_RECOVERY}"
                )
            return df if df is not None else pd.DataFrame({"step": []})
        steps = [int(s) for s in df["step"]]
        if steps[0] != 0:  # every run is evaluated at step 0
            raise RunDamagedError(
                f"{p}: damaged (starts at step {steps[0]}: the rows of steps 0..{steps[0] - 1} "
                f"are missing); {METRICS_RECOVERY}"
            )
        if final is not None and steps[-1] != int(final):
            raise RunDamagedError(
                f"{p}: damaged (ends at step {steps[-1]}, but the run completed at step "
                f"{final} per {MANIFEST}); {METRICS_RECOVERY}"
            )
        return df

    @property
    def checkpoint_steps(self) -> list[int]:
        """Steps with a saved checkpoint.

        Raises:
            RunDamagedError: the final checkpoint of a completed run is missing.
        """
        steps = list_checkpoint_steps(self.path)
        final = _final_step(self.manifest)
        if final is not None and final not in steps:
            path = self.path / CKPT_DIR / checkpoint_name(final)
            raise RunDamagedError(
                f"{path}: missing (the final checkpoint of this completed run); restore it "
                f"from a copy, or run `groklab train --resume {self.path}`, which rebuilds it "
                "from the run's saved state"
            )
        return steps

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


def _text_hash(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _final_step(manifest: dict[str, Any]) -> int | None:
    """The last step of a completed run, per its manifest (``None`` otherwise)."""
    final = manifest.get("final_step")
    if manifest.get("status") != "completed" or isinstance(final, bool):
        return None
    return final if isinstance(final, int) else None


def load_run(path: str | Path, *, for_resume: bool = False) -> Run:
    """Open a saved run for reading (checked: see :class:`Run`).

    With ``for_resume`` a damaged ``manifest.json`` is read as empty (resuming rebuilds it).
    """
    return Run(path, for_resume=for_resume)
