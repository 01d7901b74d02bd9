"""Figures of the local learning coefficient (LLC) of a run.

The LLC over training with its spread over chains and the test loss, the health of every
estimate (convergence ratio, share of draws below ``L(w*)``, diverged chains, sensitivity to
gamma), and the SGLD loss traces of every chain at a few checkpoints with the burn-in shaded.
They draw the LLC cache's tables; :mod:`groklab.analysis.llc` makes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from groklab.report.figures.common import (
    _CYCLE,
    _TRAIN,
    DEFAULT_MAX_POINTS,
    Band,
    _add_bands,
    _f32,
    _layout,
    _mode,
    thin_indices,
)


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
