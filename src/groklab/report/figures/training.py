"""Training-curve figures of one run: loss, accuracy and weight norms against step.

Each draws the run's metrics table (train and test, and per-subset columns where the task has
them) as thinned curves with a rolling mean, and marks on top what the detectors found: the
memorised/grokked steps, loss spikes and the onset, midpoint and end of each phase change, at
their exact steps so that thinning never hides them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from groklab.report.figures.common import (
    _CYCLE,
    DEFAULT_MAX_POINTS,
    SMOOTH_DECADES,
    PhaseMark,
    _colour,
    _curve_pair,
    _f32,
    _layout,
    _mark_steps,
    _metric_names,
    thin_indices,
)


def loss_curves(
    metrics: pd.DataFrame,
    *,
    spikes: pd.DataFrame | None = None,
    phase_changes: Sequence[PhaseMark] = (),
    decades: float = SMOOTH_DECADES,
    max_points: int = DEFAULT_MAX_POINTS,
) -> go.Figure:
    """Train, test and every named subset's loss on log–log axes, raw and rolling average.

    Args:
        metrics: the run's metrics table (``step`` and ``<name>/loss`` columns).
        spikes: detected loss spikes (slingshots), columns ``step`` and optionally
            ``column`` (the loss column, default ``train/loss``) and ``value``; drawn as
            markers at their exact steps.
        phase_changes: detected phase changes ``(curve, onset, midpoint, end)``; each is
            a marker at its midpoint with the onset–end range in the hover text.
        decades: width of the rolling-average window in decades of steps (see
            :func:`smooth`).
        max_points: most points per trace.
    """
    steps = metrics["step"].to_numpy(dtype=float)
    fig = go.Figure()
    names = _metric_names(metrics, "loss")
    for i, name in enumerate(names):
        _curve_pair(
            fig,
            steps,
            metrics[f"{name}/loss"],
            name=name,
            colour=_colour(name, i),
            decades=decades,
            max_points=max_points,
            positive=True,
        )
    if spikes is not None and len(spikes):
        col = spikes["column"] if "column" in spikes else pd.Series(["train/loss"] * len(spikes))
        xs, ys, texts = [], [], []
        by_step = metrics.set_index("step")
        for step, c, (_, row) in zip(spikes["step"], col, spikes.iterrows(), strict=True):
            if "value" in spikes and pd.notna(row.get("value")):
                v = float(row["value"])
            elif c in by_step and step in by_step.index:
                v = float(by_step.loc[step, c])
            else:
                continue
            if v > 0 and step > 0:
                xs.append(step)
                ys.append(v)
                texts.append(c)
        if xs:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=_f32(ys),
                    mode="markers",
                    name=f"spikes ({len(xs)})",
                    marker={"symbol": "triangle-down", "size": 11, "color": "#111"},
                    text=texts,
                    hovertemplate="loss spike in %{text}<br>step %{x}<br>%{y:.4g}<extra></extra>",
                )
            )
    _add_phase_marks(fig, metrics, phase_changes, suffix="loss")
    _layout(fig, title="Loss", hovermode="closest")
    fig.update_xaxes(type="log", title="step")
    fig.update_yaxes(type="log", title="loss", exponentformat="power")
    return fig


def _add_phase_marks(
    fig: go.Figure, metrics: pd.DataFrame, marks: Sequence[PhaseMark], *, suffix: str
) -> None:
    xs, ys, texts = [], [], []
    for curve, onset, mid, end in marks:
        col = curve if curve in metrics else f"{curve}/{suffix}"
        if col not in metrics or not np.isfinite(mid) or mid <= 0:
            continue
        y = np.interp(mid, metrics["step"].to_numpy(float), metrics[col].to_numpy(float))
        if not (np.isfinite(y) and y > 0):
            continue
        xs.append(mid)
        ys.append(y)
        texts.append(f"{col}: onset {onset:.4g}, midpoint {mid:.4g}, end {end:.4g}")
    if xs:
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=_f32(ys),
                mode="markers",
                name="phase changes",
                marker={"symbol": "diamond-open", "size": 11, "color": "#111", "line_width": 2},
                text=texts,
                hovertemplate="%{text}<extra></extra>",
            )
        )


def accuracy_curves(
    metrics: pd.DataFrame,
    *,
    marks: Mapping[str, int | None] | None = None,
    decades: float = SMOOTH_DECADES,
    max_points: int = DEFAULT_MAX_POINTS,
) -> go.Figure:
    """Train, test and every named subset's accuracy over log steps, raw and rolling average.

    Args:
        metrics: the run's metrics table (``step`` and ``<name>/acc`` columns).
        marks: labelled vertical lines, e.g. ``{"memorised": 100, "grokked": 1050}``.
        decades: width of the rolling-average window in decades of steps.
        max_points: most points per trace.
    """
    steps = metrics["step"].to_numpy(dtype=float)
    fig = go.Figure()
    for i, name in enumerate(_metric_names(metrics, "acc")):
        _curve_pair(
            fig,
            steps,
            metrics[f"{name}/acc"],
            name=name,
            colour=_colour(name, i),
            decades=decades,
            max_points=max_points,
            positive=False,
        )
    _mark_steps(fig, marks or {}, log_x=True)
    _layout(fig, title="Accuracy", hovermode="closest")
    fig.update_xaxes(type="log", title="step")
    fig.update_yaxes(title="accuracy", range=[-0.02, 1.02], tickformat=".0%")
    return fig


def weight_norms(metrics: pd.DataFrame, *, max_points: int = DEFAULT_MAX_POINTS) -> go.Figure:
    """The L2 norm of every weight matrix (``wnorm/<param>``) and the total, over log steps."""
    cols = [c for c in metrics.columns if c.startswith("wnorm/")]
    steps = metrics["step"].to_numpy(dtype=float)
    mask = steps > 0
    idx = thin_indices(steps[mask], max_points)
    fig = go.Figure()
    others = [c for c in cols if c != "wnorm/total"]
    for i, c in enumerate(others):
        name = c[len("wnorm/") :]
        fig.add_trace(
            go.Scatter(
                x=steps[mask][idx],
                y=_f32(metrics[c].to_numpy(float)[mask][idx]),
                mode="lines",
                name=name,
                line={"color": _CYCLE[i % len(_CYCLE)], "width": 1.6},
                hovertemplate=f"{name}<br>step %{{x}}<br>‖W‖ %{{y:.4g}}<extra></extra>",
            )
        )
    if "wnorm/total" in cols:
        fig.add_trace(
            go.Scatter(
                x=steps[mask][idx],
                y=_f32(metrics["wnorm/total"].to_numpy(float)[mask][idx]),
                mode="lines",
                name="total",
                line={"color": "#111", "width": 3},
                hovertemplate="total<br>step %{x}<br>‖W‖ %{y:.4g}<extra></extra>",
            )
        )
    _layout(fig, title="Weight norms per matrix", hovermode="closest")
    fig.update_layout(
        margin={"b": 60},
        legend={
            "yref": "paper",
            "orientation": "v",
            "x": 1.02,
            "xanchor": "left",
            "y": 1,
            "yanchor": "top",
            "font_size": 11,
        },
    )
    fig.update_xaxes(type="log", title="step")
    fig.update_yaxes(type="log", title="L2 norm")
    return fig
