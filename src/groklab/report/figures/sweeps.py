"""Figures of a sweep or study: many runs against the variable that sets them apart.

The grokking step (or any per-run value) against the swept variable, every seed a point and the
mean over seeds a line with one standard deviation (runs that never grokked as open markers at
the top); one curve per grid point overlaid on one axis; and the LLC over training for every
operation ratio, coloured from uneven (red) to even (blue) by :func:`ratio_colour`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from groklab.report.figures.common import (
    _CYCLE,
    _TEST,
    _f32,
    _layout,
    _mode,
    smooth,
    thin_indices,
)


def grokking_vs_variable(
    table: pd.DataFrame,
    *,
    variable: str,
    value: str = "grokking_step",
    budget: float | None = None,
    group: str | None = None,
) -> go.Figure:
    """Steps to grok (or any per-run value) versus the swept variable, every seed shown.

    Each run is a point; the mean over seeds of each grid point is a line with ± one
    standard deviation. Runs that never reached the threshold are drawn as open markers
    at the top (at ``budget`` when given, else above the largest value) and left out of
    the mean — counted, not dropped: the hover text says how many.

    Args:
        table: one row per run with columns ``variable`` and ``value`` (NaN/None = never).
        variable: the swept column (numeric or categorical).
        value: the per-run value to draw.
        budget: the training budget in steps (where "never" is drawn).
        group: optional column splitting the runs into several coloured series (e.g. the
            operation for per-operation grokking steps).
    """
    fig = go.Figure()
    groups = (
        [(str(k), g) for k, g in table.groupby(group, sort=True)] if group else [(value, table)]
    )
    vals = pd.to_numeric(table[value], errors="coerce")
    top = budget if budget else (float(vals.max()) * 1.15 if vals.notna().any() else 1.0)
    numeric = pd.api.types.is_numeric_dtype(table[variable])
    for i, (name, g) in enumerate(groups):
        colour = _TEST if i == 0 else _CYCLE[(i - 1) % len(_CYCLE)]
        v = pd.to_numeric(g[value], errors="coerce")
        ok, never = g[v.notna()], g[v.isna()]
        fig.add_trace(
            go.Scatter(
                x=ok[variable],
                y=_f32(v[v.notna()]),
                mode="markers",
                name=f"{name}: runs",
                legendgroup=name,
                marker={"color": colour, "size": 8, "opacity": 0.6},
                hovertemplate=f"{variable} %{{x}}<br>{value} %{{y:,.0f}}<extra>{name}</extra>",
            )
        )
        if len(never):
            fig.add_trace(
                go.Scatter(
                    x=never[variable],
                    y=[top] * len(never),
                    mode="markers",
                    name=f"{name}: never ({len(never)})",
                    legendgroup=name,
                    marker={
                        "color": colour,
                        "size": 11,
                        "symbol": "circle-open",
                        "line": {"width": 2},
                    },
                    hovertemplate=f"{variable} %{{x}}<br>did not reach it<extra>{name}</extra>",
                )
            )
        stats = []
        for x, gg in g.groupby(variable, sort=True):
            vv = pd.to_numeric(gg[value], errors="coerce")
            got = vv.dropna()
            stats.append(
                (
                    x,
                    float(got.mean()) if len(got) else np.nan,
                    float(got.std(ddof=0)) if len(got) > 1 else 0.0,
                    len(got),
                    len(vv),
                )
            )
        if stats:
            xs, mean, sd, n_ok, n_all = zip(*stats, strict=True)
            fig.add_trace(
                go.Scatter(
                    x=list(xs),
                    y=_f32(mean),
                    mode="lines+markers",
                    name=f"{name}: mean ± sd",
                    legendgroup=name,
                    line={"color": colour, "width": 2.4},
                    marker={"size": 10, "symbol": "diamond"},
                    error_y={"type": "data", "array": _f32(sd), "visible": True},
                    customdata=np.stack([n_ok, n_all], axis=1),
                    hovertemplate=(
                        f"{variable} %{{x}}<br>mean %{{y:,.0f}}"
                        "<br>%{customdata[0]} of %{customdata[1]} seeds<extra>"
                        f"{name}</extra>"
                    ),
                )
            )
    if budget:
        fig.add_hline(
            y=budget,
            line={"dash": "dot", "color": "#777"},
            annotation_text="budget (never)",
            annotation_position="top left",
        )
    _layout(fig, title=f"{value.replace('_', ' ')} vs {variable}", hovermode="closest")
    fig.update_xaxes(title=variable, type=None if numeric else "category")
    fig.update_yaxes(title=value.replace("_", " "))
    return fig


def overlaid_curves(
    curves: Mapping[str, pd.DataFrame],
    *,
    column: str,
    colours: Mapping[str, str] | None = None,
    log_x: bool = True,
    log_y: bool = False,
    smoothed: bool = False,
    max_points: int = 600,
    title: str | None = None,
) -> go.Figure:
    """One curve per grid point (or run), overlaid: ``column`` against ``step``.

    Args:
        curves: legend label → table with ``step`` and ``column``.
        column: the metric to draw (e.g. ``test/acc``).
        colours: label → colour (default: a qualitative cycle).
        log_x: log step axis; log_y: log value axis (losses).
        smoothed: draw the rolling average (:func:`smooth`) instead of the logged values.
        max_points: most points per curve.
        title: figure title (default: the column).
    """
    fig = go.Figure()
    for i, (label, df) in enumerate(curves.items()):
        if column not in df:
            continue
        steps = df["step"].to_numpy(float)
        y = df[column].to_numpy(float)
        mask = np.isfinite(y) & ((steps > 0) if log_x else True) & ((y > 0) if log_y else True)
        s, y = steps[mask], y[mask]
        if smoothed and len(s):
            y = np.exp(smooth(s, np.log(y))) if log_y else smooth(s, y)
        idx = thin_indices(s, max_points)
        colour = (colours or {}).get(label, _CYCLE[i % len(_CYCLE)])
        fig.add_trace(
            go.Scatter(
                x=s[idx],
                y=_f32(y[idx]),
                mode="lines",
                name=str(label),
                line={"color": colour, "width": 1.8},
                hovertemplate=f"{label}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>",
            )
        )
    _layout(fig, title=title or column, hovermode="closest")
    fig.update_xaxes(type="log" if log_x else None, title="step")
    fig.update_yaxes(type="log" if log_y else None, title=column)
    if column.endswith("/acc") and not log_y:
        fig.update_yaxes(range=[-0.02, 1.02], tickformat=".0%")
    return fig


def ratio_colour(ratio: float, *, lo: float, hi: float) -> str:
    """Red for the most uneven ratio of ``[lo, hi]`` (furthest from 0.5), blue for the most
    even (nearest 0.5)."""
    span = max(abs(lo - 0.5), abs(hi - 0.5)) or 1.0
    t = min(1.0, abs(ratio - 0.5) / span)  # 0 = even, 1 = uneven
    red, blue = (214, 39, 40), (31, 95, 200)
    r, g, b = (round(bl + (rd - bl) * t) for rd, bl in zip(red, blue, strict=True))
    return f"rgb({r},{g},{b})"


def llc_by_ratio(
    curves: Mapping[float, pd.DataFrame],
    *,
    column: str = "llc_mean",
    label: str = "addition share",
) -> go.Figure:
    """LLC over training for every operation ratio, coloured from uneven (red) to even (blue).

    Args:
        curves: ratio (e.g. the addition share 0.3..0.7) → table with ``step`` and ``column``.
        column: the LLC column.
        label: what the ratio is, for the legend.
    """
    fig = go.Figure()
    ratios = sorted(curves)
    lo, hi = (ratios[0], ratios[-1]) if ratios else (0.0, 1.0)
    # draw the even ratios last so the red (uneven) curves do not hide them
    for r in sorted(ratios, key=lambda r: -abs(r - 0.5)):
        df = curves[r].sort_values("step")
        fig.add_trace(
            go.Scatter(
                x=df["step"].to_numpy(float),
                y=_f32(df[column].to_numpy(float)),
                mode=_mode(len(df)),
                name=f"{label} {r:g}",
                marker={"size": 4},
                line={"color": ratio_colour(r, lo=lo, hi=hi), "width": 2},
                hovertemplate=f"{label} {r:g}<br>step %{{x}}<br>LLC %{{y:.4g}}<extra></extra>",
            )
        )
    _layout(
        fig,
        title="LLC over training by operation ratio (red = uneven, blue = even)",
        hovermode="closest",
        legend=True,
    )
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="LLC")
    return fig
