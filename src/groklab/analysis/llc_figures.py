"""Figures of LLC results (matplotlib, static PNG): traces, calibration grids, LLC over training.

Each function draws analysis outputs only (a :class:`~groklab.analysis.llc.LLCResult`, a
:class:`~groklab.analysis.llc.Calibration`, the rows of
:func:`~groklab.analysis.llc.llc_over_checkpoints`) and writes one PNG. Figures are built on
``matplotlib.figure.Figure`` with the Agg canvas, so no global pyplot state is touched.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from groklab.errors import GroklabError

if TYPE_CHECKING:
    from groklab.analysis.llc import Calibration, LLCResult

__all__ = ["plot_calibration", "plot_llc_over_training", "plot_traces"]


def _figure(**kwargs: Any) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise GroklabError(
            "LLC figures need matplotlib; install it with: pip install 'groklab[plot]'"
        ) from None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    from groklab.store import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _draw_trace(ax: Any, res: LLCResult, *, legend: bool = False) -> None:
    tr = res.trace
    steps = np.arange(tr.shape[1])
    b = res.settings.burnin
    for c in range(tr.shape[0]):
        bad = c in res.diverged
        ax.plot(
            steps,
            tr[c],
            lw=0.7,
            alpha=0.35 if bad else 0.8,
            ls=":" if bad else "-",
            label=f"chain {c}" + (" (diverged)" if bad else ""),
        )
    kept = [c for c in range(tr.shape[0]) if c not in res.diverged]
    if kept:
        ax.plot(steps, tr[kept].mean(axis=0), color="black", lw=1.4, label="mean")
    ax.axhline(res.init_loss, color="red", ls="--", lw=1, label="L(w*)")
    if b:
        ax.axvspan(0, b, color="grey", alpha=0.15, lw=0)
    finite = tr[kept][np.isfinite(tr[kept])] if kept else np.array([])
    if finite.size:
        lo, hi = np.percentile(finite, [0.5, 99.5])
        lo = min(lo, res.init_loss)
        pad = 0.08 * (hi - lo) if hi > lo else abs(hi) * 0.1 + 1e-12
        ax.set_ylim(lo - pad, hi + pad)
    if legend:
        ax.legend(fontsize=7, loc="best")


def plot_traces(res: LLCResult, path: str | Path, *, title: str | None = None) -> Path:
    """Loss trace of every chain (burn-in shaded) with ``L(w*)``; writes ``path`` (PNG)."""
    fig = _figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    _draw_trace(ax, res, legend=True)
    ax.set_xlabel("SGLD step (grey: burn-in, discarded)")
    ax.set_ylabel("minibatch training loss")
    s = res.settings
    ax.set_title(
        title
        or f"LLC {res.llc:.4g} ± {res.llc_std:.2g}  (ε={s.epsilon:g}, γ={s.gamma:g}, "
        f"nβ={res.nbeta:.4g})",
        fontsize=10,
    )
    return _save(fig, path)


def plot_calibration(cal: Calibration, path: str | Path) -> Path:
    """A grid of trace panels, one per swept setting (rows ε, columns γ, one block per nβ);
    rejected settings are titled with the reason, the recommended one framed in green."""
    res = cal.results
    eps = sorted({r.settings.epsilon for r in res})
    gam = sorted({r.settings.gamma for r in res})
    nbs = sorted({r.nbeta for r in res})
    n_rows, n_cols = len(eps) * len(nbs), len(gam)
    fig = _figure(figsize=(3.2 * n_cols + 0.5, 2.4 * n_rows + 0.8))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, r in enumerate(res):
        row = nbs.index(r.nbeta) * len(eps) + eps.index(r.settings.epsilon)
        ax = axes[row][gam.index(r.settings.gamma)]
        _draw_trace(ax, r)
        verdict = "OK" if cal.ok[i] else ", ".join(cal.reasons[i])
        llc = f"{r.llc:.4g}" if math.isfinite(r.llc) else "—"
        ax.set_title(
            f"ε={r.settings.epsilon:g} γ={r.settings.gamma:g} nβ={r.nbeta:.3g}\n"
            f"LLC {llc}: {verdict}",
            fontsize=7.5,
            color="black" if cal.ok[i] else "firebrick",
        )
        ax.tick_params(labelsize=6)
        if i == cal.recommended:
            for side in ax.spines.values():
                side.set_color("green")
                side.set_linewidth(2.5)
    fig.suptitle(
        f"LLC calibration at step {cal.step} ({cal.subset}); grey = burn-in, red = L(w*), "
        "green frame = recommended",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, path)


def _draw_gamma_check(
    ax: Any, d: pd.DataFrame, x: np.ndarray, y: np.ndarray, *, color: str, label: str
) -> None:
    """The γ check's side estimates (thin dashed, at γ/k and γ·k) and rings around the
    γ-sensitive estimates, when the rows carry the check."""
    if "llc_gamma_lo" not in d or not d["llc_gamma_lo"].notna().any():
        return
    k = d["gamma_check"].dropna()
    k_txt = f"{k.iloc[0]:g}" if len(k) else "k"
    for col, ls, what in (
        ("llc_gamma_lo", "--", f"γ/{k_txt}"),
        ("llc_gamma_hi", ":", f"γ·{k_txt}"),
    ):
        ax.plot(
            x,
            d[col].to_numpy(dtype=float),
            color=color,
            lw=0.9,
            ls=ls,
            alpha=0.8,
            label=f"LLC ({label}) at {what}",
        )
    flag = d["gamma_sensitive"].to_numpy(dtype=float) > 0
    if flag.any():
        ax.plot(
            x[flag],
            y[flag],
            "o",
            mfc="none",
            mec="darkorange",
            ms=8,
            mew=1.3,
            label="γ-sensitive (|d log LLC/d log γ| > 0.2)",
        )


def plot_llc_over_training(
    curves: Mapping[str, pd.DataFrame],
    metrics: pd.DataFrame,
    path: str | Path,
    *,
    loss_columns: Sequence[str] = ("test/loss",),
    marks: Mapping[str, int | None] | None = None,
    title: str | None = None,
    logx: bool = False,
) -> Path:
    """LLC over training (mean ± chain spread per curve) with loss curves on a second axis.

    When the rows carry the γ check, each curve's side estimates at ``γ/k`` and ``γ·k`` are
    drawn thin (dashed, dotted) and the γ-sensitive estimates ringed in orange: where the
    three curves part, the localisation sets the value.

    Args:
        curves: label → rows of :func:`~groklab.analysis.llc.llc_over_checkpoints`.
        metrics: the run's metrics (``step`` and the ``loss_columns``).
        path: PNG to write.
        loss_columns: metrics drawn on the right axis (log scale).
        marks: label → step: vertical lines (phase boundaries, LLC peak, ...).
        title: figure title.
        logx: logarithmic step axis (``step + 1``).
    """
    fig = _figure(figsize=(9, 4.8))
    ax = fig.add_subplot()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for (label, df), color in zip(curves.items(), colors * 4, strict=False):
        d = df.sort_values("step")
        x = d["step"].to_numpy() + (1 if logx else 0)
        y = d["llc"].to_numpy(dtype=float)
        sd = d["llc_std"].to_numpy(dtype=float)
        ax.plot(x, y, color=color, lw=1.6, marker="o", ms=2.5, label=f"LLC ({label})")
        ax.fill_between(x, y - sd, y + sd, color=color, alpha=0.2, lw=0)
        _draw_gamma_check(ax, d, x, y, color=color, label=label)
        bad = d["n_diverged"].to_numpy() > 0 if "n_diverged" in d else np.zeros(len(d), bool)
        if bad.any():
            ax.plot(x[bad], y[bad], "x", color="red", ms=6, label="chains diverged (excluded)")
    ax.set_xlabel("training step")
    ax.set_ylabel("local learning coefficient")
    if logx:
        ax.set_xscale("log")
    ax2 = ax.twinx()
    styles = ["-", "--", ":", "-."]
    for col, ls in zip(loss_columns, styles * 4, strict=False):
        if col in metrics:
            m = metrics.dropna(subset=[col])
            ax2.plot(
                m["step"].to_numpy() + (1 if logx else 0),
                m[col].to_numpy(),
                color="grey",
                ls=ls,
                lw=1.1,
                label=col,
            )
    ax2.set_yscale("log")
    ax2.set_ylabel("loss (log scale)")
    for i, (label, step) in enumerate((marks or {}).items()):
        if step is None:
            continue
        ax.axvline(step + (1 if logx else 0), color=f"C{(i + 5) % 10}", ls=":", lw=1.2, label=label)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7.5, loc="upper right")
    ax.set_title(title or "Local learning coefficient over training", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
