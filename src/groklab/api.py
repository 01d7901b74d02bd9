"""The top-level Python API."""

from __future__ import annotations

from pathlib import Path

from groklab.config import RunConfig
from groklab.run import Run
from groklab.train.loop import run_training

__all__ = ["train"]


def train(
    config: RunConfig,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
) -> Run:
    """Train ``config`` and return the finished :class:`Run`.

    Args:
        config: the run's config.
        out: run directory (default ``runs/<config.name>``).
        resume: continue the run already in ``out`` from its latest state.
        progress: show a live progress bar.
    """
    path = Path(out) if out is not None else Path("runs") / config.name
    return Run(run_training(config, path, resume=resume, progress=progress))
