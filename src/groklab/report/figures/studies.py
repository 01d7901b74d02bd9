"""Figures of the shipped studies: per-operation losses, steps versus a swept value, loss
spikes, and the omnigrok phase diagram with its curves.

Each draws tables a study's data function (:func:`groklab.studies.study_data`) read from the
sweep directory: per-run metrics, the per-point summary, cached spikes and phases. The LLC
curves of the multi-op-ratio study are :func:`~groklab.report.figures.sweeps.llc_by_ratio`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from groklab.analysis.omnigrok import PHASE_COLOURS, PHASES
from groklab.errors import ConfigError
from groklab.report.figures.common import (
    _CYCLE,
    _TEST,
    _TRAIN,
    DEFAULT_MAX_POINTS,
    SMOOTH_DECADES,
    _f32,
    _layout,
    smooth,
    thin_indices,
)

_OP_COLOURS = {"add": _TRAIN, "mul": "#e9a03b", "sub": "#2a9d8f", "div": _TEST}


def per_op_loss(
    curves: Mapping[str, pd.DataFrame],
    *,
    ops: Sequence[str] = ("add", "mul"),
    decades: float = SMOOTH_DECADES,
    max_points: int = DEFAULT_MAX_POINTS,
) -> go.Figure:
    """Per-operation test loss of each run, one panel per run: raw (faint) and rolling mean.

    Args:
        curves: panel title → metrics (``step``, ``test/<op>/loss``).
        ops: the operations to draw.
        decades: width of the rolling-average window in decades of steps (:func:`smooth`).
        max_points: most points per trace.
    """
    names = list(curves)
    n_cols = min(3, max(1, len(names)))
    n_rows = max(1, -(-len(names) // n_cols))
    fig = make_subplots(
        rows=n_rows, cols=n_cols, subplot_titles=names or ["no runs"], horizontal_spacing=0.07
    )
    for i, name in enumerate(names):
        r, c = divmod(i, n_cols)
        m = curves[name]
        steps = m["step"].to_numpy(dtype=float)
        for j, op in enumerate(ops):
            col = f"test/{op}/loss"
            if col not in m:
                continue
            y = m[col].to_numpy(dtype=float)
            ok = np.isfinite(y) & (y > 0) & (steps > 0)
            s, y = steps[ok], y[ok]
            if not len(s):
                continue
            sm = np.exp(smooth(s, np.log(y), decades=decades))
            idx = thin_indices(s, max_points)
            colour = _OP_COLOURS.get(op, _CYCLE[j % len(_CYCLE)])
            for ys, width, opacity, label in ((y, 1, 0.3, "raw"), (sm, 2.2, 1.0, "mean")):
                fig.add_trace(
                    go.Scatter(
                        x=s[idx],
                        y=_f32(ys[idx]),
                        mode="lines",
                        name=f"test {op}",
                        legendgroup=op,
                        showlegend=i == 0 and label == "mean",
                        opacity=opacity,
                        line={"color": colour, "width": width},
                        hovertemplate=f"{name}: test {op} ({label})<br>step %{{x}}"
                        "<br>%{y:.4g}<extra></extra>",
                    ),
                    row=r + 1,
                    col=c + 1,
                )
    _layout(
        fig,
        title="Per-operation test loss (faint: logged, bold: rolling mean)",
        height=120 + 300 * n_rows,
        legend=True,
    )
    fig.update_xaxes(type="log", title="step")
    fig.update_yaxes(type="log", exponentformat="power")
    fig.update_yaxes(title="test loss", col=1)
    return fig


def steps_vs_variable(
    points: pd.DataFrame,
    x: str,
    *,
    columns: Mapping[str, str],
    reference: Mapping[float, float] | None = None,
    reference_label: str = "paper",
    log_x: bool = False,
    bracket: tuple[float, float] | None = None,
    title: str = "",
) -> go.Figure:
    """Steps to reach each milestone (mean ± sd over seeds) versus a swept value.

    A point where some seeds never got there also gets an open triangle at the mean's lower
    bound (``<col>:mean_lb``, those seeds counted at the budget).

    Args:
        points: the sweep's per-point summary (``<col>:mean``, ``<col>:std``,
            ``<col>:n_reached``, ``<col>:mean_lb``, ``n``).
        x: the swept column.
        columns: step column → legend label.
        reference: published numbers (x → step), drawn as crosses.
        reference_label: legend label of the reference.
        log_x: log x axis.
        bracket: an interval ``(lo, hi)`` of x to shade (a bisection's result).
        title: figure title.
    """
    pts = points.dropna(subset=[x]).copy()
    pts[x] = pd.to_numeric(pts[x])
    pts = pts.sort_values(x).reset_index(drop=True)
    fig = go.Figure()
    xs = pts[x].to_numpy(dtype=float)
    for i, (col, label) in enumerate(columns.items()):
        if f"{col}:mean" not in pts:
            continue
        colour = (_TRAIN, _TEST, _CYCLE[0], _CYCLE[2])[i % 4]
        mean = pts[f"{col}:mean"].to_numpy(dtype=float)
        sd = np.nan_to_num(pts[f"{col}:std"].to_numpy(dtype=float)) if f"{col}:std" in pts else 0
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=_f32(mean),
                mode="lines+markers",
                name=label,
                line={"color": colour, "width": 2},
                error_y={"type": "data", "array": _f32(sd), "visible": True},
                hovertemplate=f"{x} %{{x}}<br>{label}: %{{y:,.0f}}<extra></extra>",
            )
        )
        if f"{col}:n_reached" in pts and f"{col}:mean_lb" in pts:
            never = (pts[f"{col}:n_reached"] < pts["n"]) & (pts["n"] > 0)
            if never.any():
                fig.add_trace(
                    go.Scatter(
                        x=xs[never.to_numpy()],
                        y=_f32(pts.loc[never, f"{col}:mean_lb"]),
                        mode="markers",
                        name=f"{label}: some runs never (lower bound)",
                        marker={
                            "symbol": "triangle-up-open",
                            "size": 12,
                            "color": colour,
                            "line": {"width": 2},
                        },
                        hovertemplate=f"{x} %{{x}}<br>at least %{{y:,.0f}}<extra></extra>",
                    )
                )
    if reference:
        rx, ry = zip(*sorted(reference.items()), strict=True)
        fig.add_trace(
            go.Scatter(
                x=list(rx),
                y=list(ry),
                mode="lines+markers",
                name=reference_label,
                marker={"symbol": "x", "size": 9, "color": "#111"},
                line={"dash": "dash", "color": "#111", "width": 1},
                opacity=0.6,
            )
        )
    if bracket is not None:
        lo, hi = bracket
        fig.add_vrect(x0=lo, x1=hi, fillcolor="rgba(209,73,91,0.15)", line_width=0, layer="below")
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=f"critical value (bisection) {lo:g}–{hi:g}",
                marker={"symbol": "square", "size": 12, "color": "rgba(209,73,91,0.4)"},
            )
        )
    _layout(fig, title=title or f"steps versus {x}", hovermode="closest")
    fig.update_xaxes(type="log" if log_x else None, title=x)
    fig.update_yaxes(type="log", title="step", exponentformat="power")
    return fig


def loss_spikes(
    curves: Mapping[str, pd.DataFrame],
    spikes: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    column: str = "train/loss",
    max_points: int = DEFAULT_MAX_POINTS,
) -> go.Figure:
    """A loss curve per run (one panel each) with its detected spikes marked at their peaks.

    Args:
        curves: run label → metrics (``step`` and ``column``).
        spikes: run label → the spikes found in ``column`` (dicts with ``peak``, the step).
        column: the loss column drawn.
        max_points: most points per trace (the spike peaks are kept).
    """
    names = list(curves)
    titles = [f"{n}: {len(spikes.get(n, []))} spike(s)" for n in names]
    fig = make_subplots(
        rows=max(1, len(names)),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08 if len(names) > 1 else 0.0,
        subplot_titles=titles or ["no runs"],
    )
    for r, name in enumerate(names, start=1):
        m = curves[name].sort_values("step")
        steps = m["step"].to_numpy(dtype=float)
        y = m[column].to_numpy(dtype=float)
        peaks = [int(s["peak"]) for s in spikes.get(name, [])]
        keep = np.flatnonzero(np.isin(steps, peaks))
        idx = thin_indices(steps, max_points, keep=keep)
        fig.add_trace(
            go.Scatter(
                x=steps[idx],
                y=_f32(y[idx]),
                mode="lines",
                name=column,
                legendgroup="loss",
                showlegend=r == 1,
                line={"color": _TRAIN, "width": 1.2},
                hovertemplate=f"{name}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>",
            ),
            row=r,
            col=1,
        )
        if len(keep):
            fig.add_trace(
                go.Scatter(
                    x=steps[keep],
                    y=_f32(y[keep]),
                    mode="markers",
                    name="spike peaks",
                    legendgroup="spikes",
                    showlegend="spike peaks" not in {t.name for t in fig.data},
                    marker={"symbol": "triangle-down", "size": 11, "color": _TEST},
                    hovertemplate=f"{name}: spike<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>",
                ),
                row=r,
                col=1,
            )
        fig.update_yaxes(type="log", exponentformat="power", row=r, col=1)
    fig.update_xaxes(title="step", row=max(1, len(names)), col=1)
    _layout(fig, title=f"{column} with detected spikes", height=160 + 220 * max(1, len(names)))
    return fig


def phase_diagram(
    results: pd.DataFrame | Sequence[Mapping[str, Any]],
    *,
    x: str = "train_size",
    y: str = "alpha",
    title: str | None = None,
) -> go.Figure:
    """The omnigrok phase diagram: one coloured cell per ``(x, y)``, labelled with its phase,
    test accuracy and (grokking cells) ``t_fit → t_gen``.

    Args:
        results: a :func:`groklab.analysis.omnigrok.phase_table` (or rows with ``x``, ``y``,
            ``phase`` and optionally ``final_test_acc``, ``t_fit``, ``t_gen``).
        x, y: the columns on the axes (values in sorted order, evenly spaced).
        title: figure title.

    Raises:
        ConfigError: a column is missing or a phase is unknown.
    """
    df = pd.DataFrame(results)
    for col in (x, y, "phase"):
        if col not in df:
            raise ConfigError(f"results: column {col!r} missing")
    bad = sorted(set(df["phase"]) - set(PHASES))
    if bad:
        raise ConfigError(f"results: phase {bad[0]!r} is unknown; allowed: {', '.join(PHASES)}")
    xs, ys = sorted(df[x].unique()), sorted(df[y].unique())
    z = np.full((len(ys), len(xs)), np.nan)
    text = [["" for _ in xs] for _ in ys]
    for _, row in df.iterrows():
        i, j = xs.index(row[x]), ys.index(row[y])
        z[j, i] = PHASES.index(row["phase"])
        label = row["phase"]
        if pd.notna(row.get("final_test_acc")):
            label += f"<br>{row['final_test_acc']:.0%}"
        if row["phase"] == "grokking" and pd.notna(row.get("t_fit")) and pd.notna(row.get("t_gen")):
            label += f"<br>{int(row['t_fit'])}→{int(row['t_gen'])}"
        text[j][i] = label
    n = len(PHASES)
    scale = []
    for k, p in enumerate(PHASES):  # one flat colour band per phase index
        scale += [(k / n, PHASE_COLOURS[p]), ((k + 1) / n, PHASE_COLOURS[p])]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"{v:g}" for v in xs],
            y=[f"{v:g}" for v in ys],
            text=text,
            texttemplate="%{text}",
            textfont={"size": 11},
            colorscale=scale,
            zmin=-0.5,
            zmax=n - 0.5,
            showscale=False,
            xgap=2,
            ygap=2,
            hovertemplate=f"{x} %{{x}}<br>{y} %{{y}}<br>%{{text}}<extra></extra>",
        )
    )
    for p in PHASES:  # the legend: one square per phase
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=p,
                marker={"symbol": "square", "size": 12, "color": PHASE_COLOURS[p]},
            )
        )
    names = {"train_size": "training set size", "alpha": "init scale α"}
    _layout(fig, title=title or "Phases", height=200 + 60 * len(ys), legend=True)
    fig.update_xaxes(type="category", title=names.get(x, x))
    fig.update_yaxes(type="category", title=names.get(y, y))
    return fig


def omnigrok_curves(
    runs: Mapping[str, pd.DataFrame],
    *,
    title: str | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> go.Figure:
    """Train/test accuracy and total weight norm against step (log axis), one colour per run.

    Args:
        runs: label → metrics (``step``, ``train/acc``, ``test/acc``, ``wnorm/total``).
        title: figure title.
        max_points: most points per trace.
    """
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.1,
        subplot_titles=("accuracy (dashed: train, solid: test)", "total weight norm"),
    )
    for k, (label, m) in enumerate(runs.items()):
        colour = _CYCLE[k % len(_CYCLE)]
        steps = m["step"].clip(lower=1).to_numpy(dtype=float)  # log axis: step 0 drawn at 1
        idx = thin_indices(steps, max_points)
        panels = [("train/acc", 1, "dash", False), ("test/acc", 1, "solid", True)]
        if "wnorm/total" in m:
            panels.append(("wnorm/total", 2, "solid", False))
        for col, c, dash, legend in panels:
            if col not in m:
                continue
            fig.add_trace(
                go.Scatter(
                    x=steps[idx],
                    y=_f32(m[col].to_numpy(dtype=float)[idx]),
                    mode="lines",
                    name=label,
                    legendgroup=label,
                    showlegend=legend,
                    line={"color": colour, "dash": dash, "width": 1.8},
                    hovertemplate=f"{label}: {col}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>",
                ),
                row=1,
                col=c,
            )
    _layout(fig, title=title or "Accuracy and weight norm", legend=True)
    fig.update_xaxes(type="log", title="step")
    fig.update_yaxes(title="accuracy", range=[-0.02, 1.02], row=1, col=1)
    fig.update_yaxes(title="‖W‖", row=1, col=2)
    return fig
