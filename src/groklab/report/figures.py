"""Report figures: one plotly function per figure.

Every function here draws analysis *outputs* — metrics tables, progress tables, arrays of
Fourier norms, LLC tables — and nothing else: no training, no checkpoint loading, no
analysis. :mod:`groklab.report.collect` gathers those outputs from a run or sweep directory;
:mod:`groklab.report.html` puts the figures into one HTML file and exports them as PNG/SVG.

Long curves are thinned to at most ``max_points`` points per trace (a mix of evenly spaced
and log-spaced steps, so both log and linear step axes keep their shape); rolling averages
are computed on the full curve before thinning, and marked events (spikes, phase changes)
are drawn at their exact steps, so thinning never hides them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

try:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
except ModuleNotFoundError as e:  # pragma: no cover - exercised only without the extra
    raise ModuleNotFoundError(
        "reports need plotly: pip install 'groklab[plot]'", name=e.name
    ) from None

__all__ = [
    "DEFAULT_MAX_POINTS",
    "Band",
    "PhaseMark",
    "accuracy_curves",
    "embedding_pcs",
    "fourier_2d",
    "fourier_norms",
    "grokking_vs_variable",
    "llc_by_ratio",
    "llc_curve",
    "llc_diagnostics",
    "llc_traces",
    "loss_curves",
    "neuron_clusters",
    "overlaid_curves",
    "progress_measures",
    "ratio_colour",
    "thin_indices",
    "weight_norms",
]

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


# --------------------------------------------------------------------------- helpers
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


# --------------------------------------------------------------------------- run figures
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


def progress_measures(
    progress: pd.DataFrame,
    *,
    loss_columns: Sequence[str],
    weight_column: str | None = None,
    bands: Sequence[Band] = (),
    grokking_step: int | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> go.Figure:
    """Progress measures over checkpoints with the training phases as shaded bands.

    Top: the losses (train, test, restricted, excluded, ...) on a log axis; bottom, when
    ``weight_column`` is given: the sum of squared weights. Linear step axis, as in
    Nanda et al. (2023), so the phases' lengths compare by eye.

    Args:
        progress: one row per analysed checkpoint, a ``step`` column and the named columns.
        loss_columns: the columns to draw in the top panel (legend = column name).
        weight_column: the column for the bottom panel (e.g. ``sumsq/total``).
        bands: phases ``(name, start, end)``; ``end=None`` runs to the last step.
        grokking_step: drawn as a dashed vertical line.
        max_points: most points per trace.
    """
    rows = 2 if weight_column else 1
    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        row_heights=[0.68, 0.32] if rows == 2 else [1.0],
    )
    steps = progress["step"].to_numpy(dtype=float)
    idx = thin_indices(steps, max_points)
    for i, c in enumerate(loss_columns):
        if c not in progress:
            continue
        colour = (
            _TRAIN
            if c.startswith("train") or c.endswith("train_loss")
            else _TEST
            if c.startswith("test") or c.endswith("test_loss")
            else _CYCLE[i % len(_CYCLE)]
        )
        fig.add_trace(
            go.Scatter(
                x=steps[idx],
                y=_f32(progress[c].to_numpy(float)[idx]),
                mode="lines",
                name=c,
                line={"color": colour, "width": 2},
                hovertemplate=f"{c}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    if weight_column and weight_column in progress:
        fig.add_trace(
            go.Scatter(
                x=steps[idx],
                y=_f32(progress[weight_column].to_numpy(float)[idx]),
                mode="lines",
                name=weight_column,
                line={"color": "#111", "width": 2},
                hovertemplate=f"{weight_column}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>",
            ),
            row=2,
            col=1,
        )
        fig.update_yaxes(title="Σ w²", row=2, col=1)
    x_max = float(steps.max()) if len(steps) else 0.0
    _add_bands(fig, bands, x_max, row="all", col=1)
    _mark_steps(fig, {"grokked": grokking_step}, log_x=False)
    _layout(fig, title="Progress measures and phases", height=620, hovermode="x unified")
    fig.update_yaxes(type="log", title="loss", exponentformat="power", row=1, col=1)
    fig.update_xaxes(title="step", row=rows, col=1)
    return fig


def fourier_norms(
    norms: Mapping[str, np.ndarray],
    *,
    labels: Sequence[str],
    key_frequencies: Sequence[int] = (),
) -> go.Figure:
    """Norm of each matrix along each Fourier basis vector, one bar panel per matrix.

    Args:
        norms: matrix name (e.g. ``"W_E"``, ``"W_L"``) → norms, shape [n_basis], in the
            order of ``labels``.
        labels: basis labels, e.g. ``["const", "cos 1", "sin 1", ...]``.
        key_frequencies: frequencies whose cos/sin bars are highlighted.
    """
    names = list(norms)
    fig = make_subplots(
        rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.1, subplot_titles=names
    )
    keys = {int(k) for k in key_frequencies}

    def is_key(label: str) -> bool:
        parts = label.split()
        return len(parts) == 2 and parts[1].isdigit() and int(parts[1]) in keys

    colours = ["#d1495b" if is_key(lb) else "#8aa1b8" for lb in labels]
    for r, name in enumerate(names, start=1):
        v = np.asarray(norms[name], dtype=float)
        fig.add_trace(
            go.Bar(
                x=list(labels),
                y=_f32(v),
                name=name,
                marker_color=colours,
                showlegend=False,
                hovertemplate=f"{name}<br>%{{x}}<br>norm %{{y:.4g}}<extra></extra>",
            ),
            row=r,
            col=1,
        )
        fig.update_yaxes(title="norm", row=r, col=1)
    title = "Fourier norms"
    if keys:
        title += f" (key frequencies {', '.join(str(k) for k in sorted(keys))} in red)"
    _layout(fig, title=title, height=220 + 200 * len(names), bargap=0.15)
    fig.update_xaxes(tickangle=-90, tickfont_size=9, row=len(names), col=1)
    return fig


def neuron_clusters(
    *,
    freq: Sequence[int] | np.ndarray,
    share: Sequence[float] | np.ndarray,
    clustered: Sequence[bool] | np.ndarray,
    fractions: np.ndarray | None = None,
    frequencies: Sequence[int] | None = None,
    threshold: float = 0.85,
) -> go.Figure:
    """Which frequency explains each MLP neuron, and how many neurons each cluster has.

    Left: with ``fractions``, a heatmap of every neuron's share per frequency, neurons sorted
    by cluster; without, each neuron as a dot at (its best frequency, its share), clustered
    neurons coloured. Right: neurons per cluster, and the unclustered ones.

    Args:
        freq: each neuron's best frequency, shape [n_neurons].
        share: the share of the neuron's centred activation norm in that frequency.
        clustered: whether the share reaches ``threshold``.
        fractions: optional [n_neurons, n_freq] share in every frequency.
        frequencies: the frequency of each column of ``fractions`` (default 1..n_freq).
        threshold: the clustering threshold (drawn as a line).
    """
    freq = np.asarray(freq, dtype=int)
    share = np.asarray(share, dtype=float)
    clustered = np.asarray(clustered, dtype=bool)
    n = len(freq)
    clusters = sorted({int(f) for f in freq[clustered]})
    counts = [int(((freq == c) & clustered).sum()) for c in clusters]
    n_none = int((~clustered).sum())
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.7, 0.3],
        horizontal_spacing=0.1,
        subplot_titles=(
            "share of each neuron's norm per frequency"
            if fractions is not None
            else "each neuron's best frequency and its share",
            "neurons per cluster",
        ),
    )
    if fractions is not None:
        fr_ = np.asarray(fractions, dtype=float)
        cols = list(frequencies) if frequencies is not None else list(range(1, fr_.shape[1] + 1))
        # clustered first, grouped by frequency, strongest first within a group
        order = np.lexsort((-share, freq, ~clustered))
        fig.add_trace(
            go.Heatmap(
                z=_f32(fr_[order]),
                x=cols,
                y=np.arange(n),
                customdata=np.repeat(order[:, None], fr_.shape[1], axis=1),
                colorscale="Blues",
                zmin=0,
                zmax=1,
                colorbar={"title": "share", "x": 0.64, "len": 0.9},
                hovertemplate="neuron %{customdata}<br>frequency %{x}<br>share %{z:.3f}"
                "<extra></extra>",
            ),
            row=1,
            col=1,
        )
        fig.update_yaxes(title="neuron (sorted by cluster)", autorange="reversed", row=1, col=1)
    else:
        # deterministic jitter so neurons of one frequency do not sit on one vertical line
        jitter = (np.arange(n) * 0.6180339887 % 1.0 - 0.5) * 0.5
        for flag, colour, name in ((True, "#2a9d8f", "clustered"), (False, "#b0b0b0", "not")):
            sel = clustered == flag
            fig.add_trace(
                go.Scatter(
                    x=_f32(freq[sel] + jitter[sel]),
                    y=_f32(share[sel]),
                    mode="markers",
                    name=name,
                    showlegend=False,
                    customdata=np.stack([np.flatnonzero(sel), freq[sel]], axis=1),
                    marker={"color": colour, "size": 5, "opacity": 0.75},
                    hovertemplate="neuron %{customdata[0]}<br>frequency %{customdata[1]}"
                    "<br>share %{y:.3f}<extra></extra>",
                ),
                row=1,
                col=1,
            )
        fig.add_hline(y=threshold, line={"dash": "dash", "color": "#555", "width": 1}, row=1, col=1)
        fig.update_yaxes(title="share of neuron norm", range=[0, 1.02], row=1, col=1)
    fig.add_trace(
        go.Bar(
            x=[f"k={c}" for c in clusters] + ["none"],
            y=[*counts, n_none],
            marker_color=["#2a9d8f"] * len(clusters) + ["#b0b0b0"],
            showlegend=False,
            hovertemplate="%{x}: %{y} neurons<extra></extra>",
        ),
        row=1,
        col=2,
    )
    frac = 1 - n_none / max(1, n)
    _layout(
        fig,
        title=f"Neuron clusters: {frac:.0%} of {n} neurons have ≥ {threshold:.0%} of their "
        "norm in one frequency",
        height=520,
    )
    fig.update_xaxes(title="frequency", row=1, col=1)
    return fig


def fourier_2d(
    maps: Mapping[str, np.ndarray],
    *,
    labels: Sequence[str] | None = None,
) -> go.Figure:
    """Norms of 2D Fourier components over the (a, b) input grid, one heatmap per map.

    Args:
        maps: title (e.g. ``"neuron activations"``, ``"logits"``) → array [n_basis, n_basis]
            of component norms (rows: basis over a, columns: basis over b).
        labels: basis labels for both axes (default: indices).
    """
    names = list(maps)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.08)
    for c, name in enumerate(names, start=1):
        z = np.asarray(maps[name], dtype=float)
        ax = list(labels) if labels is not None and len(labels) == z.shape[0] else None
        fig.add_trace(
            go.Heatmap(
                z=_f32(z),
                x=ax,
                y=ax,
                colorscale="Viridis",
                showscale=c == len(names),
                hovertemplate=f"{name}<br>a: %{{y}}<br>b: %{{x}}<br>norm %{{z:.3g}}<extra></extra>",
            ),
            row=1,
            col=c,
        )
        fig.update_yaxes(autorange="reversed", title="a" if c == 1 else None, row=1, col=c)
        fig.update_xaxes(title="b", row=1, col=c)
    _layout(fig, title="2D Fourier components over the input grid", height=520)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig


def embedding_pcs(
    coords: Mapping[str, np.ndarray],
    *,
    tokens: Sequence[int] | None = None,
) -> go.Figure:
    """2D projections of the token embeddings, one panel each, coloured by token position.

    A grokked modular-addition network places the tokens on circles: in the plane of a key
    frequency's cos/sin directions (and often in the top principal components) token ``a``
    sits at angle ``2πka/p``.

    Args:
        coords: panel title (e.g. ``"PC 1 vs PC 2"``, ``"frequency 14"``) → coordinates
            [n_tokens, 2], rows in the order of the Fourier index (for multiplication: the
            discrete log).
        tokens: the token (residue) of each row, for the hover text (default 0..n−1).
    """
    names = list(coords)
    n_cols = min(3, max(1, len(names)))
    n_rows = -(-len(names) // n_cols)
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=names,
        horizontal_spacing=0.07,
        vertical_spacing=0.12 if n_rows > 1 else 0.0,
    )
    for i, name in enumerate(names):
        r, c = divmod(i, n_cols)
        r, c = r + 1, c + 1
        xy = np.asarray(coords[name], dtype=float)
        idx = np.arange(len(xy))
        tok = idx if tokens is None else np.asarray(tokens)
        fig.add_trace(
            go.Scatter(
                x=_f32(xy[:, 0]),
                y=_f32(xy[:, 1]),
                mode="markers",
                customdata=np.stack([tok, idx], axis=1),
                marker={
                    "color": idx,
                    "colorscale": "HSV",
                    "size": 7,
                    "showscale": i == len(names) - 1,
                    "colorbar": {"title": "index"},
                    "line": {"width": 0.5, "color": "#333"},
                },
                showlegend=False,
                hovertemplate="token %{customdata[0]} (index %{customdata[1]})"
                "<br>(%{x:.3g}, %{y:.3g})<extra></extra>",
            ),
            row=r,
            col=c,
        )
        fig.update_yaxes(scaleanchor=f"x{i + 1 if i else ''}", scaleratio=1, row=r, col=c)
    _layout(fig, title="Token embeddings in 2D", height=120 + 380 * n_rows)
    return fig


def _mode(n: int) -> str:
    # a marker per point is one SVG element each: only for curves short enough to read them
    return "lines+markers" if n <= 150 else "lines"


def _series(llc: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if "series" in llc:
        return [(str(k), g.sort_values("step")) for k, g in llc.groupby("series", sort=False)]
    return [("total", llc.sort_values("step"))]


def llc_curve(
    llc: pd.DataFrame,
    *,
    test_loss: pd.DataFrame | None = None,
    bands: Sequence[Band] = (),
    max_points: int = DEFAULT_MAX_POINTS,
) -> go.Figure:
    """The local learning coefficient over training, its spread over chains, and test loss.

    Args:
        llc: one row per analysed checkpoint: ``step``, ``llc`` (mean over chains), optional
            ``llc_std`` and ``series`` (the data it was measured on: ``total``, ``add``, ...,
            one curve each).
        test_loss: ``step`` and the ``test…/loss`` columns, drawn on a second (log) axis.
        bands: training phases ``(name, start, end)``.
        max_points: most points per test-loss trace.
    """
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for i, (name, g) in enumerate(_series(llc)):
        colour = _TRAIN if i == 0 else _CYCLE[i % len(_CYCLE)]
        x = g["step"].to_numpy(float)
        m = g["llc"].to_numpy(float)
        if "llc_std" in g:
            sd = np.nan_to_num(g["llc_std"].to_numpy(float))
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([x, x[::-1]]),
                    y=_f32(np.concatenate([m + sd, (m - sd)[::-1]])),
                    fill="toself",
                    mode="lines",
                    fillcolor=_rgba(colour, 0.18),
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=name,
                ),
                secondary_y=False,
            )
        if "llc_gamma_lo" in g and g["llc_gamma_lo"].notna().any():
            k = g["gamma_check"].dropna()
            k_txt = f"{k.iloc[0]:g}" if len(k) else "k"
            for col, dash, what in (
                ("llc_gamma_lo", "dash", f"γ/{k_txt}"),
                ("llc_gamma_hi", "dot", f"γ·{k_txt}"),
            ):
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=_f32(g[col].to_numpy(float)),
                        mode="lines",
                        name=f"LLC ({name}) at {what}",
                        legendgroup=name,
                        line={"color": colour, "width": 1.1, "dash": dash},
                        hovertemplate=f"step %{{x}}<br>LLC at {what} %{{y:.4g}}<extra>{name}"
                        "</extra>",
                    ),
                    secondary_y=False,
                )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=_f32(m),
                mode=_mode(len(x)),
                name=f"LLC ({name})",
                legendgroup=name,
                marker={"size": 4},
                line={"color": colour, "width": 2.4},
                hovertemplate=f"step %{{x}}<br>LLC %{{y:.4g}}<extra>{name}</extra>",
            ),
            secondary_y=False,
        )
    if test_loss is not None and len(test_loss):
        steps = test_loss["step"].to_numpy(float)
        idx = thin_indices(steps, max_points)
        cols = [c for c in test_loss.columns if c.startswith("test") and c.endswith("/loss")]
        for j, c in enumerate(cols):
            fig.add_trace(
                go.Scatter(
                    x=steps[idx],
                    y=_f32(test_loss[c].to_numpy(float)[idx]),
                    mode="lines",
                    name=c,
                    line={
                        "color": "#8a8f96" if j == 0 else _CYCLE[(j + 3) % len(_CYCLE)],
                        "width": 1.3,
                        "dash": "dot",
                    },
                    hovertemplate=f"{c}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>",
                ),
                secondary_y=True,
            )
        fig.update_yaxes(
            type="log", title="test loss", secondary_y=True, showgrid=False, exponentformat="power"
        )
    x_max = float(llc["step"].max()) if len(llc) else 0.0
    _add_bands(fig, bands, x_max)
    _layout(
        fig,
        title="Local learning coefficient (mean ± sd over chains) and test loss",
        hovermode="closest",
    )
    fig.update_yaxes(title="LLC", secondary_y=False)
    fig.update_xaxes(title="step")
    return fig


def llc_diagnostics(llc: pd.DataFrame) -> go.Figure:
    """Health of every LLC estimate over training, one panel per diagnostic.

    Panels (each drawn when its column exists): ``convergence_ratio`` (estimate from the
    second half of the draws / from the first half; ≈ 1 = converged), ``frac_below_init``
    (share of draws with loss below L(w*); large = w* is not a local minimum for the
    sampler), ``n_diverged`` (chains excluded as diverged), ``gamma_elasticity`` (the γ
    check's ``d log LLC / d log γ``; outside ±0.2 = γ-sensitive, the localisation sets the
    value).
    """
    spec = (
        ("convergence_ratio", "second half / first half"),
        ("frac_below_init", "share of draws below L(w*)"),
        ("n_diverged", "chains diverged (excluded)"),
        ("gamma_elasticity", "d log LLC / d log γ"),
    )
    panels = [
        (c, t) for c, t in spec if c in llc and (c != "gamma_elasticity" or llc[c].notna().any())
    ]
    fig = make_subplots(
        rows=1,
        cols=max(1, len(panels)),
        subplot_titles=[t for _, t in panels] or ["no diagnostics in this table"],
        horizontal_spacing=0.08,
    )
    groups = _series(llc)
    for c, (col, _t) in enumerate(panels, start=1):
        for i, (name, g) in enumerate(groups):
            fig.add_trace(
                go.Scatter(
                    x=g["step"].to_numpy(float),
                    y=_f32(g[col].to_numpy(float)),
                    mode=_mode(len(g)),
                    name=name,
                    legendgroup=name,
                    showlegend=c == 1,
                    marker={"size": 4},
                    line={"color": _TRAIN if i == 0 else _CYCLE[i % len(_CYCLE)], "width": 1.6},
                    hovertemplate=f"{name}<br>step %{{x}}<br>{col} %{{y:.3g}}<extra></extra>",
                ),
                row=1,
                col=c,
            )
        if col == "convergence_ratio":
            fig.add_hline(y=1, line={"dash": "dash", "color": "#555", "width": 1}, row=1, col=c)
        if col == "gamma_elasticity":
            for y in (-0.2, 0.2):  # GAMMA_SENSITIVE of groklab.analysis.llc
                fig.add_hline(y=y, line={"dash": "dash", "color": "#555", "width": 1}, row=1, col=c)
        fig.update_xaxes(title="step", row=1, col=c)
    _layout(fig, title="LLC diagnostics", height=420)
    return fig


def llc_traces(
    traces: pd.DataFrame,
    *,
    steps: Sequence[int],
    burnin: int | None = None,
    init_loss: pd.DataFrame | None = None,
    max_points: int = 400,
) -> go.Figure:
    """SGLD loss traces of every chain at a few checkpoints (burn-in shaded).

    Args:
        traces: long table ``step, chain, t, loss`` (the LLC cache's traces).
        steps: the checkpoints to show, one panel each.
        burnin: SGLD steps discarded before the draws (shaded).
        init_loss: table with ``step`` and ``init_loss`` (L(w*)), drawn as a dashed line.
        max_points: most points per chain.
    """
    steps = [s for s in steps if (traces["step"] == s).any()]
    fig = make_subplots(
        rows=1,
        cols=max(1, len(steps)),
        subplot_titles=[f"checkpoint {s:,}" for s in steps] or ["no traces"],
        horizontal_spacing=0.08,
    )
    for c, s in enumerate(steps, start=1):
        g = traces[traces["step"] == s]
        for chain, gc in g.groupby("chain", sort=True):
            gc = gc.sort_values("t")
            t = gc["t"].to_numpy(float)
            idx = thin_indices(t + 1, max_points)
            fig.add_trace(
                go.Scatter(
                    x=t[idx],
                    y=_f32(gc["loss"].to_numpy(float)[idx]),
                    mode="lines",
                    name=f"chain {chain}",
                    legendgroup=f"chain {chain}",
                    showlegend=c == 1,
                    line={"color": _CYCLE[int(chain) % len(_CYCLE)], "width": 1.2},
                    hovertemplate=f"chain {chain}<br>SGLD step %{{x}}<br>loss %{{y:.4g}}"
                    "<extra></extra>",
                ),
                row=1,
                col=c,
            )
        if burnin:
            fig.add_vrect(
                x0=0,
                x1=burnin,
                fillcolor="rgba(120,120,120,0.12)",
                line_width=0,
                layer="below",
                row=1,
                col=c,
            )
        if init_loss is not None and "init_loss" in init_loss:
            v = init_loss.loc[init_loss["step"] == s, "init_loss"]
            if len(v) and np.isfinite(float(v.iloc[0])):
                fig.add_hline(
                    y=float(v.iloc[0]),
                    line={"dash": "dash", "color": "#111", "width": 1},
                    row=1,
                    col=c,
                )
        fig.update_xaxes(title="SGLD step", row=1, col=c)
    fig.update_yaxes(title="minibatch loss", row=1, col=1)
    _layout(fig, title="SGLD loss traces (shaded: burn-in; dashed: L(w*))", height=440)
    return fig


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


# --------------------------------------------------------------------------- sweep figures
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
