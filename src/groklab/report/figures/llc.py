"""Figures of the local learning coefficient (LLC) of a run.

The LLC over training with its spread over chains and the test loss, the health of every
estimate (convergence ratio, share of draws below ``L(w*)``, diverged chains, sensitivity to
gamma), and the SGLD loss traces of every chain at a few checkpoints with the burn-in shaded.
They draw the LLC cache's tables; :mod:`groklab.analysis.llc` makes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

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
    _mode,
    thin_indices,
)

if TYPE_CHECKING:  # pragma: no cover
    from groklab.analysis.llc import Calibration


def _series(llc: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if "series" in llc:
        return [(str(k), g.sort_values("step")) for k, g in llc.groupby("series", sort=False)]
    return [("total", llc.sort_values("step"))]


def llc_curve(
    llc: pd.DataFrame,
    *,
    test_loss: pd.DataFrame | None = None,
    loss_columns: Sequence[str] | None = None,
    bands: Sequence[Band] = (),
    marks: Mapping[str, int | None] | None = None,
    title: str | None = None,
    log_x: bool = False,
    max_points: int = DEFAULT_MAX_POINTS,
) -> go.Figure:
    """The local learning coefficient over training, its spread over chains, and test loss.

    Args:
        llc: one row per analysed checkpoint: ``step``, ``llc`` (mean over chains), optional
            ``llc_std`` and ``series`` (the data it was measured on: ``total``, ``add``, ...,
            one curve each).
        test_loss: ``step`` and loss columns, drawn on a second (log) axis.
        loss_columns: the columns of ``test_loss`` to draw (default: every ``test…/loss``).
        bands: training phases ``(name, start, end)``.
        marks: labelled vertical lines (phase boundaries, the LLC peak, ...).
        title: figure title (default: says what is drawn).
        log_x: logarithmic step axis.
        max_points: most points per loss trace.
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
        cols = (
            [c for c in loss_columns if c in test_loss]
            if loss_columns is not None
            else [c for c in test_loss.columns if c.startswith("test") and c.endswith("/loss")]
        )
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
            type="log",
            title="test loss" if loss_columns is None else "loss",
            secondary_y=True,
            showgrid=False,
            exponentformat="power",
        )
    x_max = float(llc["step"].max()) if len(llc) else 0.0
    _add_bands(fig, bands, x_max)
    _mark_steps(fig, marks or {}, log_x=log_x)
    _layout(
        fig,
        title=title or "Local learning coefficient (mean ± sd over chains) and test loss",
        hovermode="closest",
    )
    fig.update_yaxes(title="LLC", secondary_y=False)
    fig.update_xaxes(title="step", type="log" if log_x else None)
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


def llc_calibration(cal: Calibration, *, max_points: int = 400) -> go.Figure:
    """The SGLD loss traces of every setting of an LLC calibration, one panel per setting.

    Rows: ε (one block of rows per nβ); columns: γ. Each panel shows every chain (diverged
    chains dotted), their mean (black), ``L(w*)`` (red, dashed) and the burn-in (grey); its
    title gives the LLC and the verdict (rejected settings in red with the reason), and the
    recommended setting is framed in green.

    Args:
        cal: a :class:`groklab.analysis.llc.Calibration`.
        max_points: most points per chain.
    """
    res = cal.results
    eps = sorted({r.settings.epsilon for r in res})
    gam = sorted({r.settings.gamma for r in res})
    nbs = sorted({r.nbeta for r in res})
    n_rows, n_cols = max(1, len(eps) * len(nbs)), max(1, len(gam))
    where, titles = {}, [""] * (n_rows * n_cols)
    for i, r in enumerate(res):
        row = nbs.index(r.nbeta) * len(eps) + eps.index(r.settings.epsilon)
        col = gam.index(r.settings.gamma)
        where[i] = (row + 1, col + 1)
        verdict = "OK" if cal.ok[i] else ", ".join(cal.reasons[i])
        llc = f"{r.llc:.4g}" if math.isfinite(r.llc) else "—"
        colour = "#111" if cal.ok[i] else "#b22222"
        titles[row * n_cols + col] = (
            f"<span style='color:{colour}'>ε={r.settings.epsilon:g} γ={r.settings.gamma:g} "
            f"nβ={r.nbeta:.3g}<br>LLC {llc}: {verdict}</span>"
        )
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=titles,
        horizontal_spacing=0.06,
        vertical_spacing=min(0.12, 0.5 / n_rows),
    )
    for i, r in enumerate(res):
        row, col = where[i]
        tr = np.asarray(r.trace, dtype=float)  # [chains, SGLD steps]
        t = np.arange(tr.shape[1], dtype=float)
        idx = thin_indices(t + 1, max_points)
        for c in range(tr.shape[0]):
            bad = c in r.diverged
            fig.add_trace(
                go.Scatter(
                    x=t[idx],
                    y=_f32(tr[c][idx]),
                    mode="lines",
                    name=f"chain {c}",
                    legendgroup=f"chain {c}",
                    showlegend=i == 0,
                    opacity=0.35 if bad else 0.8,
                    line={
                        "color": _CYCLE[c % len(_CYCLE)],
                        "width": 1,
                        "dash": "dot" if bad else "solid",
                    },
                    hovertemplate=f"chain {c}<br>SGLD step %{{x}}<br>loss %{{y:.4g}}"
                    "<extra></extra>",
                ),
                row=row,
                col=col,
            )
        kept = [c for c in range(tr.shape[0]) if c not in r.diverged]
        if kept:
            fig.add_trace(
                go.Scatter(
                    x=t[idx],
                    y=_f32(tr[kept].mean(axis=0)[idx]),
                    mode="lines",
                    name="mean",
                    legendgroup="mean",
                    showlegend=i == 0,
                    line={"color": "#111", "width": 1.6},
                ),
                row=row,
                col=col,
            )
        fig.add_hline(
            y=float(r.init_loss),
            line={"dash": "dash", "color": _TEST, "width": 1},
            row=row,
            col=col,
        )
        if r.settings.burnin:
            fig.add_vrect(
                x0=0,
                x1=r.settings.burnin,
                fillcolor="rgba(120,120,120,0.15)",
                line_width=0,
                layer="below",
                row=row,
                col=col,
            )
        if i == cal.recommended:
            k = (row - 1) * n_cols + col
            ax = "" if k == 1 else str(k)
            fig.add_shape(
                type="rect",
                xref=f"x{ax} domain",
                yref=f"y{ax} domain",
                x0=0,
                x1=1,
                y0=0,
                y1=1,
                line={"color": "green", "width": 3},
            )
    fig.update_annotations(font_size=10)
    _layout(
        fig,
        title=f"LLC calibration at step {cal.step} ({cal.subset}); grey: burn-in, red: L(w*), "
        "green frame: recommended",
        height=140 + 230 * n_rows,
        legend=True,
    )
    return fig


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"
