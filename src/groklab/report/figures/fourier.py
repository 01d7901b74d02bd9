"""Figures of a run's Fourier circuit and progress measures.

The progress measures over checkpoints (with the memorisation / circuit-formation / cleanup
bands), the norm of each matrix along each Fourier basis vector (key frequencies marked), the
MLP neurons clustered by the frequency that explains them, the 2D Fourier components over the
(a, b) input grid, and 2D projections of the token embeddings. Each draws arrays an analysis
module computed and cached; none computes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from groklab.report.figures.common import (
    _CYCLE,
    _TEST,
    _TRAIN,
    DEFAULT_MAX_POINTS,
    Band,
    _add_bands,
    _f32,
    _layout,
    _mark_steps,
    thin_indices,
)


def progress_measures(
    progress: pd.DataFrame,
    *,
    loss_columns: Sequence[str],
    weight_column: str | None = None,
    bands: Sequence[Band] = (),
    grokking_step: int | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    freq_columns: Mapping[str, str] | None = None,
    fraction_columns: Mapping[str, str] | None = None,
) -> go.Figure:
    """Progress measures over checkpoints with the training phases as shaded bands.

    Panels: the losses (train, test, restricted, excluded, ...) on a log axis; when
    ``weight_column`` is given, the sum of squared weights; when ``freq_columns`` is given,
    the excluded loss per key frequency (beside the first loss column, the train loss); when
    ``fraction_columns`` is given, measures in [0, 1] (Gini of the Fourier norms, the logit
    fit's variance explained, test accuracy). With the last two the panels form a 2 × 2 grid
    (losses, per-frequency | weights, fractions). Linear step axis, as in Nanda et al. (2023),
    so the phases' lengths compare by eye.

    Args:
        progress: one row per analysed checkpoint, a ``step`` column and the named columns.
        loss_columns: the columns to draw in the losses panel (legend = column name).
        weight_column: the column of the weights panel (e.g. ``sumsq/total``).
        bands: phases ``(name, start, end)``; ``end=None`` runs to the last step.
        grokking_step: drawn as a dashed vertical line.
        max_points: most points per trace.
        freq_columns: legend label → column of the excluded loss without that frequency.
        fraction_columns: legend label → column of a measure in [0, 1].
    """
    freq = {k: c for k, c in (freq_columns or {}).items() if c in progress}
    frac = {k: c for k, c in (fraction_columns or {}).items() if c in progress}
    grid = bool(freq or frac)
    has_w = bool(weight_column and weight_column in progress)
    if grid:
        fig = make_subplots(
            rows=2,
            cols=2,
            shared_xaxes=True,
            vertical_spacing=0.1,
            horizontal_spacing=0.08,
            subplot_titles=(
                "losses",
                "excluded loss per key frequency (train)",
                "sum of squared weights",
                "sparsity and fit",
            ),
        )
        at = {"loss": (1, 1), "freq": (1, 2), "w": (2, 1), "frac": (2, 2)}
    else:
        rows = 2 if weight_column else 1
        fig = make_subplots(
            rows=rows,
            cols=1,
            shared_xaxes=True,
            vertical_spacing=0.06,
            row_heights=[0.68, 0.32] if rows == 2 else [1.0],
        )
        at = {"loss": (1, 1), "w": (2, 1)}
    steps = progress["step"].to_numpy(dtype=float)
    idx = thin_indices(steps, max_points)

    def line(panel: str, col: str, name: str, colour: str, width: float = 2, **kw: Any) -> None:
        r, c = at[panel]
        fig.add_trace(
            go.Scatter(
                x=steps[idx],
                y=_f32(progress[col].to_numpy(float)[idx]),
                mode="lines",
                name=name,
                line={"color": colour, "width": width, **kw},
                hovertemplate=f"{name}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>",
            ),
            row=r,
            col=c,
        )

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
        line("loss", c, c, colour)
    if has_w:
        line("w", weight_column, weight_column, "#111")
        fig.update_yaxes(title="Σ w²", row=at["w"][0], col=at["w"][1])
    if freq:
        first = next((c for c in loss_columns if c in progress), None)
        if first is not None:
            line("freq", first, f"{first} (reference)", "#111", 1.5)
        for j, (label, c) in enumerate(freq.items()):
            line("freq", c, label, _CYCLE[j % len(_CYCLE)], 1)
        fig.update_yaxes(type="log", exponentformat="power", row=1, col=2)
    for j, (label, c) in enumerate(frac.items()):
        line("frac", c, label, _CYCLE[(j + 3) % len(_CYCLE)], 1.5)
    if frac:
        fig.update_yaxes(range=[-0.02, 1.02], row=2, col=2)
    x_max = float(steps.max()) if len(steps) else 0.0
    _add_bands(fig, bands, x_max, row="all", col="all" if grid else 1)
    _mark_steps(fig, {"grokked": grokking_step}, log_x=False)
    _layout(
        fig,
        title="Progress measures and phases",
        height=720 if grid else 620,
        hovermode="x unified",
    )
    fig.update_yaxes(type="log", title="loss", exponentformat="power", row=1, col=1)
    fig.update_xaxes(title="step", row=2 if (grid or weight_column) else 1)
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
