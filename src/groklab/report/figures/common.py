"""What every report figure shares: the colours, the layout, thinning and smoothing of long curves.

Long curves are thinned to at most ``max_points`` points per trace by :func:`thin_indices` (a
mix of evenly spaced and log-spaced steps, so both log and linear step axes keep their shape);
:func:`smooth` is the rolling average over a fixed span of log-steps, computed on the full curve
before thinning. The private helpers draw the pieces several figures use: the house layout,
shaded phase bands, marked steps and a raw-plus-smoothed curve pair.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

DEFAULT_MAX_POINTS = 1200
SMOOTH_DECADES = 0.05

# (name, start step, end step or None = to the end of the run)
Band = tuple[str, float, float | None]
# (curve name, onset, midpoint, end) of a detected phase change of one curve
PhaseMark = tuple[str, float, float, float]

_TRAIN = "#1f5fa8"
_TEST = "#d1495b"
_CYCLE = (
    "#2a9d8f",
    "#e9a03b",
    "#8e5ea2",
    "#6c8f32",
    "#c2569b",
    "#3c8dbc",
    "#a0522d",
    "#5b6770",
)
_BAND_COLOURS = {
    "memorisation": "rgba(233,160,59,0.16)",
    "circuit formation": "rgba(42,157,143,0.14)",
    "cleanup": "rgba(142,94,162,0.16)",
}
_HEIGHT = 480


def thin_indices(
    steps: np.ndarray, max_points: int, *, keep: np.ndarray | None = None
) -> np.ndarray:
    """Row indices that keep a curve's shape on linear and log step axes.

    Half the budget goes to evenly spaced rows, half to the rows nearest log-spaced steps;
    the first and last rows and the rows in ``keep`` (e.g. spikes) are always kept.

    Args:
        steps: increasing step values, shape [n].
        max_points: the most indices to return besides ``keep`` (at least 2).
        keep: indices that must survive.

    Returns:
        Sorted unique indices into ``steps`` (all of them when ``n <= max_points``).
    """
    steps = np.asarray(steps, dtype=float)
    n = len(steps)
    if n <= max_points:
        return np.arange(n)
    half = max(1, max_points // 2)
    even = np.linspace(0, n - 1, half).round().astype(int)
    pos = steps[steps > 0]
    if len(pos):
        targets = np.geomspace(pos[0], steps[-1], half)
        logs = np.clip(np.searchsorted(steps, targets), 0, n - 1)
    else:
        logs = np.zeros(0, dtype=int)
    idx = np.unique(np.concatenate([even, logs, [0, n - 1]]))
    if len(idx) > max_points:  # few duplicates: trim evenly
        idx = idx[np.unique(np.linspace(0, len(idx) - 1, max_points).round().astype(int))]
    if keep is not None and len(keep):
        idx = np.unique(np.concatenate([idx, np.asarray(keep, dtype=int)]))
    return idx


def smooth(steps: np.ndarray, y: np.ndarray, *, decades: float = SMOOTH_DECADES) -> np.ndarray:
    """Rolling mean over a window of ``decades`` of steps centred on each point (log-step).

    On a log step axis a fixed number of rows spans decades early and a sliver late; a
    window of fixed width in log10(step) smooths every part of the drawn curve alike:
    early points (few rows in their window) stay as logged, late noisy stretches average
    over many rows. Step 0 is its own window.

    Args:
        steps: increasing steps [n].
        y: values [n] (NaN-free).
        decades: the window's full width in decades of steps.
    """
    steps = np.asarray(steps, dtype=float)
    y = np.asarray(y, dtype=float)
    half = 10 ** (decades / 2)
    lo = np.searchsorted(steps, steps / half, side="left")
    hi = np.searchsorted(steps, steps * half, side="right")
    cs = np.concatenate([[0.0], np.cumsum(y)])
    return (cs[hi] - cs[lo]) / np.maximum(hi - lo, 1)


def _colour(name: str, i: int) -> str:
    if name in ("train", "train/loss", "train/acc"):
        return _TRAIN
    if name in ("test", "test/loss", "test/acc"):
        return _TEST
    return _CYCLE[i % len(_CYCLE)]


def _f32(a: Any) -> np.ndarray:
    # float32 halves the embedded data; 7 significant digits are more than a figure shows
    return np.asarray(a, dtype=np.float32)


def _layout(
    fig: go.Figure, *, title: str, height: int = _HEIGHT, legend: bool = False, **kw: Any
) -> go.Figure:
    shown = [t for t in fig.data if t.showlegend is not False and t.name]
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"},
        template="plotly_white",
        height=height,
        # the legend sits under the x axis, in the figure's own margin, so it never covers
        # a panel title however many rows it takes
        margin={"l": 64, "r": 24, "t": 56, "b": 112},
        legend={
            "orientation": "h",
            "yref": "container",
            "y": 0.01,
            "yanchor": "bottom",
            "x": 0,
            "xanchor": "left",
        },
        font={"family": "Inter, Helvetica, Arial, sans-serif", "size": 13},
        **kw,
    )
    if len(shown) < 2 and not legend:  # no legend to make room for
        fig.update_layout(margin={"b": 64}, showlegend=bool(shown) and len(fig.data) > 1)
    return fig


def _metric_names(metrics: pd.DataFrame, suffix: str) -> list[str]:
    """Curve names with a column ``<name>/<suffix>``: train, test, then the subsets."""
    names = [c[: -len(suffix) - 1] for c in metrics.columns if c.endswith("/" + suffix)]
    order = {"train": 0, "test": 1}
    return sorted(names, key=lambda n: (order.get(n, 2), n))


def _add_bands(fig: go.Figure, bands: Sequence[Band] | None, x_max: float, **where: Any) -> None:
    """Shaded phase bands (linear step axes); their names go in the legend."""
    for name, start, end in bands or ():
        if start is None:
            continue
        stop = x_max if end is None else end
        if stop <= start:
            continue
        label = name.replace("_", " ")
        colour = _BAND_COLOURS.get(label.lower(), "rgba(120,120,120,0.12)")
        fig.add_vrect(x0=start, x1=stop, fillcolor=colour, line_width=0, layer="below", **where)
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=f"{label} {start:,.0f}–{stop:,.0f}",
                marker={
                    "symbol": "square",
                    "size": 12,
                    "color": re.sub(r"[\d.]+\)$", "0.55)", colour),
                },
                legendgroup="phases",
                hoverinfo="skip",
            )
        )


def _mark_steps(fig: go.Figure, marks: Mapping[str, int | None], *, log_x: bool) -> None:
    """Dashed vertical lines at labelled steps (e.g. memorised, grokked)."""
    for label, step in marks.items():
        if not step or (log_x and step <= 0):
            continue
        fig.add_shape(
            type="line",
            x0=step,
            x1=step,
            y0=0,
            y1=1,
            xref="x",
            yref="paper",
            line={"dash": "dash", "color": "#555", "width": 1},
        )
        # annotations on a log axis are placed in log10 units (shapes in data units)
        fig.add_annotation(
            x=float(np.log10(step)) if log_x else step,
            y=0.02,
            xref="x",
            yref="paper",
            text=f"{label} {step:,}",
            showarrow=False,
            xanchor="left",
            font={"size": 11, "color": "#444"},
            bgcolor="rgba(255,255,255,0.7)",
        )


def _curve_pair(
    fig: go.Figure,
    steps: np.ndarray,
    y: pd.Series | np.ndarray,
    *,
    name: str,
    colour: str,
    decades: float,
    max_points: int,
    positive: bool,
) -> None:
    """A raw curve (thin, translucent) and its rolling average (bold), thinned.

    The rows furthest from the rolling average (spikes) survive thinning.
    """
    yv = np.asarray(y, dtype=float)
    mask = np.isfinite(yv) & (steps > 0)
    if positive:
        mask &= yv > 0
    s, yv = steps[mask], yv[mask]
    if len(s) == 0:
        return
    # losses span decades: average their logs, or the spikes would be all the mean shows
    sm = (
        np.exp(smooth(s, np.log(yv), decades=decades))
        if positive
        else smooth(s, yv, decades=decades)
    )
    dev = np.abs(np.log(yv) - np.log(sm)) if positive else np.abs(yv - sm)
    n_keep = min(len(s), max(1, max_points // 20))
    keep = np.argpartition(-dev, n_keep - 1)[:n_keep] if len(s) > max_points else None
    idx = thin_indices(s, max_points, keep=keep)
    fig.add_trace(
        go.Scatter(
            x=s[idx],
            y=_f32(yv[idx]),
            mode="lines",
            name=f"{name} (raw)",
            legendgroup=name,
            showlegend=False,
            line={"color": colour, "width": 1},
            opacity=0.35,
            hovertemplate=f"{name}<br>step %{{x}}<br>%{{y:.4g}}<extra>logged</extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=s[idx],
            y=_f32(sm[idx]),
            mode="lines",
            name=name,
            legendgroup=name,
            line={"color": colour, "width": 2.2},
            hovertemplate=f"{name}<br>step %{{x}}<br>%{{y:.4g}}<extra>rolling mean</extra>",
        )
    )


def _mode(n: int) -> str:
    # a marker per point is one SVG element each: only for curves short enough to read them
    return "lines+markers" if n <= 150 else "lines"
