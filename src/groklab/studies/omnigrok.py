"""The omnigrok-phase grid from Python: train (or reuse) every α × training-size cell.

The same grid as the ``omnigrok-phase`` study (``groklab sweep omnigrok-phase``). It trains,
so it lives with the studies, above the sweep engine that runs the cells; the classification
is the analysis in :mod:`groklab.analysis.omnigrok`, and the phase diagram of the table it
returns is :func:`groklab.report.figures.phase_diagram`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from groklab.analysis.omnigrok import PhaseRule, phase_table
from groklab.errors import GroklabError
from groklab.sweep import run_many

if TYPE_CHECKING:  # pragma: no cover
    from groklab.config import RunConfig

__all__ = ["omnigrok_phase_diagram"]


def omnigrok_phase_diagram(
    base: RunConfig,
    *,
    alphas: Sequence[float],
    train_sizes: Sequence[int],
    out: str | Path,
    rule: PhaseRule | None = None,
    workers: int = 1,
    progress: bool = False,
) -> pd.DataFrame:
    """Train (or reuse) every α × training-size cell of ``base`` and classify each run.

    The same grid as the ``omnigrok-phase`` study (``groklab sweep omnigrok-phase``), for use
    from Python: cell ``(α, n)`` is ``base`` with ``model.init_scale = α`` and
    ``data.train_size = n``, trained into ``out/alpha<α>-n<n>`` by
    :func:`groklab.sweep.run_many` (a completed run is reused, an unfinished one resumed).
    Writes ``out/phase_table.csv``; draw the diagram with
    :func:`groklab.report.figures.phase_diagram` (``groklab sweep omnigrok-phase`` writes it).

    Returns:
        The :func:`phase_table` of all cells.

    Raises:
        GroklabError: a run failed (the first failure's one-line error).
    """
    from groklab.run import load_run

    out = Path(out)
    configs, outs = [], []
    for alpha in alphas:
        for n in train_sizes:
            name = f"alpha{alpha:g}-n{n}"
            configs.append(
                replace(
                    base,
                    name=name,
                    data=replace(base.data, train_size=int(n)),
                    model=replace(base.model, init_scale=float(alpha)),
                )
            )
            outs.append(out / name)
    results = run_many(configs, outs, workers=workers, progress=progress, title=base.name)
    failed = [r for r in results if r["status"] != "completed"]
    if failed:
        raise GroklabError(f"{failed[0]['out']}: {failed[0]['status']}: {failed[0]['error']}")
    table = phase_table([load_run(o) for o in outs], rule)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "phase_table.csv", index=False)
    return table
