"""Static figure files (PNG by default) of the commands: the report's own figure objects.

``groklab analyze``, ``groklab llc`` and ``groklab sweep`` write figure files; they take the
figures from the single definition in :mod:`groklab.report.figures` (the same functions, and
for a run's circuit and progress measures the same assembly, as the HTML report) and export
them with :func:`save_figures`. The functions here gather figures from analysis outputs and
write nothing, except :func:`save_figures` and :func:`draw_study_figures`.

**Static export: plotly through kaleido, no second renderer.** A static file is the plotly
figure exported by kaleido 1.x, which drives a local Chrome or Chromium. All the figures of
one command go to :func:`~groklab.report.html.write_static` in one call, so the browser
starts once per batch rather than once per figure (``benchmarks/bench_static.py`` times both). Without kaleido or a
browser the export fails with one line, a :class:`~groklab.report.html.StaticExportError`
that names what to install. There is no matplotlib fallback: a generic plotly → matplotlib
converter would have to re-implement plotly's subplots, heatmaps, shapes and annotations and
would still not draw the figures the report shows, and a second per-figure implementation is
exactly what this module replaces. The HTML report needs no browser to write and holds every
figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from groklab.report import figures as F
from groklab.report.collect.run import circuit_from_snapshot
from groklab.report.collect.sections import circuit_figures, progress_figures

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import plotly.graph_objects as go

    from groklab.analysis.progress import Snapshot

__all__ = [
    "ANALYSIS_FIGURE_NAMES",
    "STUDY_FIGURES",
    "analysis_figures",
    "draw_study_figures",
    "save_figures",
    "study_figures",
]

# circuit figure kind → file stem of `groklab analyze` (``<stem>_<op>`` with several ops)
ANALYSIS_FIGURE_NAMES = {
    "fourier": "fourier_norms",
    "neurons": "neuron_clusters",
    "fourier-2d": "fourier_2d",
    "embedding": "embedding_pcs",
}

# figure name (the file stem) of a study → the figure function that draws its data
STUDY_FIGURES = {
    "per_op_test_loss": F.per_op_loss,
    "llc_curves": F.llc_by_ratio,
    "grok_step_vs_share": F.steps_vs_variable,
    "steps_vs_fraction": F.steps_vs_variable,
    "steps_vs_weight_decay": F.steps_vs_variable,
    "loss_spikes": F.loss_spikes,
    "phase_diagram": F.phase_diagram,
    "curves": F.omnigrok_curves,
}


def save_figures(
    figs: Mapping[str, go.Figure], folder: str | Path, *, formats: Sequence[str] = ("png",)
) -> list[Path]:
    """Write each figure as ``<folder>/<name>.<format>`` (one browser session for all).

    Raises:
        StaticExportError: kaleido or Chrome/Chromium is missing (one line with the fix).
    """
    from groklab.report.html import write_static

    return write_static(figs, Path(folder), formats=formats)


def analysis_figures(
    snapshots: Mapping[str, Snapshot],
    table: pd.DataFrame | None,
    phases: Any = None,
    *,
    max_points: int = F.DEFAULT_MAX_POINTS,
) -> dict[str, go.Figure]:
    """Every figure of ``groklab analyze``: ``fourier_norms``, ``neuron_clusters``,
    ``fourier_2d``, ``embedding_pcs`` and ``progress`` (``<name>_<op>`` with several
    operations) — the run report's circuit and progress figures.

    Args:
        snapshots: operation → final-checkpoint :class:`~groklab.analysis.progress.Snapshot`.
        table: the progress table over checkpoints (``None``: no progress figure).
        phases: the run's :class:`~groklab.analysis.phases.Phases` (bands, grokking step).
        max_points: most points per curve.
    """
    circuits = {op: circuit_from_snapshot(s.to_dict()) for op, s in snapshots.items()}
    many = len(snapshots) > 1
    figs: dict[str, go.Figure] = {}
    by_kind = circuit_figures(circuits)
    for op in snapshots:
        sfx = f"_{op}" if many else ""
        for kind, stem in ANALYSIS_FIGURE_NAMES.items():
            if op in by_kind[kind]:
                figs[f"{stem}{sfx}"] = by_kind[kind][op]
    if table is not None and len(table):
        prog = progress_figures(
            table,
            list(snapshots),
            phases=phases,
            grokking_step=getattr(phases, "grokking_step", None),
            max_points=max_points,
        )
        for op, fig in prog.items():
            figs[f"progress_{op}" if op else "progress"] = fig
    return figs


def study_figures(sweep_dir: str | Path) -> dict[str, go.Figure]:
    """The figures of the sweep's study (none for a sweep that is no study), drawn from
    :func:`groklab.studies.study_data`."""
    from groklab.studies import study_data

    return {name: STUDY_FIGURES[name](**kw) for name, kw in study_data(sweep_dir).items()}


def draw_study_figures(sweep_dir: str | Path, *, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write the figures of the sweep's study as ``<sweep>/figures/<name>.png``.

    Raises:
        StaticExportError: kaleido or Chrome/Chromium is missing (one line with the fix).
    """
    figs = study_figures(sweep_dir)
    return save_figures(figs, Path(sweep_dir) / "figures", formats=formats) if figs else []
