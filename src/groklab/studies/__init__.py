"""The ready-made studies: shipped sweep specs (``*.toml`` here) and their figures.

Each study is a sweep spec with ``study = "<name>"``; after the sweep, :func:`draw_study_figures`
writes that study's figures to ``<sweep>/figures/*.png``. Every figure function is a pure
function of tables (the sweep summary, per-run metrics, cached analysis outputs) and returns a
matplotlib Figure; nothing here trains or re-analyses.

=================  =============================================================================
study              figures
=================  =============================================================================
multi-op-ratio     per-operation test loss per share (raw and rolling average); LLC over
                   checkpoints, uneven shares red → even blue; grokking step per operation
                   versus the addition share
data-fraction      steps to grok and to test loss < 1 versus training fraction, beside the
                   paper's numbers; the bisection bracket
weight-decay       steps to grok versus weight decay
precision          train loss per run (float32 / float64) with the detected spikes marked
omnigrok-phase     the phase diagram (init scale × training size) and the test curves of every
                   init scale at the middle training size
=================  =============================================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "PAPER_TEST_LOSS_BELOW_1",
    "STUDY_FIGURES",
    "draw_study_figures",
    "fig_grok_vs_share",
    "fig_llc_curves",
    "fig_op_curves",
    "fig_precision",
    "fig_steps_vs",
    "rolling",
    "unevenness",
]

# Nanda et al. 2023: first epoch with test loss < 1, by training fraction.
PAPER_TEST_LOSS_BELOW_1 = {0.95: 123, 0.5: 744, 0.4: 2615, 0.3: 7583, 0.28: 14465, 0.25: 21419}


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "study figures need matplotlib; install it with: pip install 'groklab[plot]'"
        ) from None
    return plt


def rolling(values: pd.Series, window: int) -> pd.Series:
    """Centred rolling mean (the multi-op post shows its spiky curves this way)."""
    return values.rolling(window, center=True, min_periods=1).mean()


def unevenness(share: float) -> float:
    """How uneven a two-operation mix is: 0 at 50/50, 1 at 100/0."""
    return abs(share - 0.5) * 2


# ----------------------------------------------------------------------------- figures


def fig_op_curves(
    curves: dict[str, pd.DataFrame], *, ops: tuple[str, ...] = ("add", "mul"), window: int = 0
) -> Any:
    """Per-operation test loss of each run: raw (faint) and rolling average (bold).

    Args:
        curves: panel title → metrics (``step``, ``test/<op>/loss``).
        ops: operations to draw.
        window: rolling-average points (0 = 1/25 of the curve, at least 3).
    """
    plt = _plt()
    n = len(curves)
    cols = min(n, 3) or 1
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colours = {"add": "tab:blue", "mul": "tab:orange", "sub": "tab:green", "div": "tab:red"}
    for ax, (title, m) in zip(axes.flat, curves.items(), strict=False):
        w = window or max(3, len(m) // 25)
        for op in ops:
            col = f"test/{op}/loss"
            if col not in m:
                continue
            c = colours.get(op)
            ax.plot(m["step"], m[col], color=c, alpha=0.25, lw=0.7)
            ax.plot(m["step"], rolling(m[col], w), color=c, lw=1.8, label=f"test {op}")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].set_ylabel("test loss (faint: raw, bold: rolling mean)")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Per-operation test loss")
    fig.tight_layout()
    return fig


def fig_llc_curves(llc: dict[str, pd.DataFrame], shares: dict[str, float]) -> Any:
    """LLC over checkpoints of every run, coloured from uneven (red) to even (blue) share.

    Args:
        llc: label → LLC table (``step``, ``llc``, optional ``llc_std``).
        shares: label → addition share.
    """
    plt = _plt()
    from matplotlib import cm, colors

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    u_max = max((unevenness(s) for s in shares.values()), default=1.0) or 1.0
    cmap = plt.get_cmap("coolwarm")
    for label, df in sorted(llc.items(), key=lambda kv: -unevenness(shares[kv[0]])):
        # estimates whose chains all diverged are NaN: leave them out, mark the ones kept
        d = df.dropna(subset=["llc"]).sort_values("step")
        c = cmap(unevenness(shares[label]) / u_max)
        ax.plot(d["step"], d["llc"], "o-", ms=3, color=c, lw=1.6, label=f"{label}")
    ax.set_xlabel("step")
    ax.set_ylabel("estimated LLC")
    ax.set_title("LLC over training (red: uneven add/mul mix, blue: even)")
    ax.grid(alpha=0.3)
    sm = cm.ScalarMappable(cmap=cmap, norm=colors.Normalize(0, u_max))
    fig.colorbar(sm, ax=ax, label="unevenness |share_add - 0.5| x 2")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _censored_plot(ax: Any, x: Any, pts: pd.DataFrame, col: str, label: str, colour: str) -> None:
    mean, std = pts[f"{col}:mean"], pts[f"{col}:std"].fillna(0)
    k, n = pts[f"{col}:n_reached"], pts["n"]
    ax.errorbar(x, mean, yerr=std, fmt="o-", color=colour, capsize=3, label=label)
    never = (k < n) & (n > 0)
    if never.any():
        ax.scatter(
            x[never],
            pts.loc[never, f"{col}:mean_lb"],
            marker="^",
            facecolors="none",
            edgecolors=colour,
            s=60,
            label=f"{label}: some runs never (lower bound)",
        )


def fig_grok_vs_share(points: pd.DataFrame, *, ops: tuple[str, ...] = ("add", "mul")) -> Any:
    """Grokking step (test accuracy ≥ 99%) per operation versus the addition share."""
    plt = _plt()
    pts = points.sort_values("share:add").reset_index(drop=True)
    x = pts["share:add"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for op, c in zip(ops, ("tab:blue", "tab:orange", "tab:green"), strict=False):
        col = f"grokking_step:test/{op}"
        if f"{col}:mean" in pts:
            _censored_plot(ax, x, pts, col, f"test {op} ≥ 99%", c)
    ax.set_xlabel("addition share of the training problems")
    ax.set_ylabel("step (mean ± sd over seeds)")
    ax.set_title("Grokking step per operation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_steps_vs(
    points: pd.DataFrame,
    x: str,
    *,
    columns: dict[str, str],
    reference: dict[float, float] | None = None,
    reference_label: str = "paper",
    logx: bool = False,
    bracket: tuple[float, float] | None = None,
    title: str = "",
) -> Any:
    """Steps to reach each milestone versus a swept value.

    Args:
        points: the per-point summary.
        x: the swept column.
        columns: step column → legend label.
        reference: published numbers (x → step) drawn as crosses.
        reference_label: legend label of the reference.
        logx: log x axis.
        bracket: a (lo, hi) interval to shade (the bisection result).
        title: figure title.
    """
    plt = _plt()
    pts = points.dropna(subset=[x]).copy()
    pts[x] = pd.to_numeric(pts[x])
    pts = pts.sort_values(x).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (col, label), c in zip(
        columns.items(), ("tab:blue", "tab:green", "tab:purple"), strict=False
    ):
        if f"{col}:mean" in pts:
            _censored_plot(ax, pts[x], pts, col, label, c)
    if reference:
        rx, ry = zip(*sorted(reference.items()), strict=True)
        ax.plot(rx, ry, "x--", color="black", alpha=0.6, label=reference_label)
    if bracket is not None:
        ax.axvspan(*bracket, color="tab:red", alpha=0.15, label="critical value (bisection)")
    ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_precision(
    curves: dict[str, pd.DataFrame],
    spikes: dict[str, list[dict[str, Any]]],
    *,
    column: str = "train/loss",
) -> Any:
    """Loss curve of each run with its detected spikes marked (one panel per run)."""
    plt = _plt()
    n = len(curves)
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.4 * n), squeeze=False, sharex=True)
    for ax, (label, m) in zip(axes[:, 0], curves.items(), strict=True):
        ax.plot(m["step"], m[column], lw=0.7, color="tab:blue")
        sp = spikes.get(label, [])
        if sp:
            s = pd.DataFrame(sp)
            peak = m.set_index("step")[column].reindex(s["peak"])
            ax.scatter(s["peak"], peak, marker="v", color="tab:red", zorder=3)
        ax.set_yscale("log")
        ax.set_title(f"{label}: {len(sp)} spike(s)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"{column} with detected spikes (red)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- studies


def _metrics(sweep_dir: Path, run: str, columns: list[str] | None = None) -> pd.DataFrame | None:
    from groklab.errors import GroklabError
    from groklab.store import load_metrics

    try:  # a damaged run is a failed row of the summary; its curve is left out
        m = load_metrics(sweep_dir / run)
    except GroklabError:
        return None
    if m is None:
        return None
    return m if columns is None else m[[c for c in columns if c in m]]


def _one_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """The first finished run of each group (for per-run curves)."""
    done = runs[runs["status"].isin(("completed", "diverged"))]
    return done.groupby("group", sort=False).head(1)


def _llc_table(run_dir: Path) -> pd.DataFrame | None:
    """The run's cached total-loss LLC curve: the one the sweep's llc analysis recorded, else
    the newest ``analysis/llc/llc-total-*.parquet``."""
    d = run_dir / "analysis" / "llc"
    key = None
    marker = run_dir / "analysis" / "sweep-llc.json"
    if marker.exists():
        key = (json.loads(marker.read_text()).get("result") or {}).get("settings_key")
    cands = [d / f"llc-total-{key}.parquet"] if key else []
    cands += sorted(
        (p for p in d.glob("llc-total-*.parquet") if not p.name.endswith("-traces.parquet")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for p in cands:
        if p.exists():
            return pd.read_parquet(p)
    return None


def _multi_op(sweep_dir: Path, runs: pd.DataFrame, points: pd.DataFrame) -> dict[str, Any]:
    figs: dict[str, Any] = {}
    first = _one_seed(runs)
    if "share:add" not in runs:
        return figs
    first = first.sort_values("share:add")
    curves = {}
    for _, r in first.iterrows():
        m = _metrics(sweep_dir, r["run"])
        if m is not None:
            curves[f"add share {r['share:add']:.2f}"] = m
    if curves:
        figs["per_op_test_loss"] = fig_op_curves(curves)
    llc, shares = {}, {}
    for _, r in first.iterrows():
        t = _llc_table(sweep_dir / r["run"])
        if t is not None and len(t):
            label = f"add {r['share:add']:.2f}"
            llc[label], shares[label] = t, float(r["share:add"])
    if llc:
        figs["llc_curves"] = fig_llc_curves(llc, shares)
    if "share:add" in points and len(points):
        figs["grok_step_vs_share"] = fig_grok_vs_share(points)
    return figs


def _data_fraction(sweep_dir: Path, runs: pd.DataFrame, points: pd.DataFrame) -> dict[str, Any]:
    bracket = None
    p = sweep_dir / "bisect.json"
    if p.exists():
        b = json.loads(p.read_text())
        if b.get("lo") is not None and b.get("hi") is not None:
            bracket = (float(b["lo"]), float(b["hi"]))
    if "data.train_fraction" not in points:
        return {}
    return {
        "steps_vs_fraction": fig_steps_vs(
            points,
            "data.train_fraction",
            columns={
                "test_loss_below_1_step": "test loss < 1",
                "grokking_step": "test acc ≥ 99%",
            },
            reference=PAPER_TEST_LOSS_BELOW_1,
            reference_label="paper: test loss < 1",
            bracket=bracket,
            title="Steps to generalise versus training fraction",
        )
    }


def _weight_decay(sweep_dir: Path, runs: pd.DataFrame, points: pd.DataFrame) -> dict[str, Any]:
    if "optim.weight_decay" not in points:
        return {}
    return {
        "steps_vs_weight_decay": fig_steps_vs(
            points,
            "optim.weight_decay",
            columns={
                "grokking_step": "test acc ≥ 99%",
                "memorisation_step": "train acc ≥ 99%",
            },
            logx=True,
            title="Steps to grok versus weight decay",
        )
    }


def _precision(sweep_dir: Path, runs: pd.DataFrame, points: pd.DataFrame) -> dict[str, Any]:
    curves, spikes = {}, {}
    done = runs[runs["status"].isin(("completed", "diverged"))]
    for _, r in done.iterrows():
        m = _metrics(sweep_dir, r["run"], ["step", "train/loss"])
        if m is None:
            continue
        curves[r["run"]] = m
        p = sweep_dir / r["run"] / "analysis" / "spikes.json"
        if p.exists():
            spikes[r["run"]] = json.loads(p.read_text())["spikes"].get("train/loss", [])
    return {"loss_spikes": fig_precision(curves, spikes)} if curves else {}


def _omnigrok_phase(sweep_dir: Path, runs: pd.DataFrame, points: pd.DataFrame) -> dict[str, Any]:
    # imported here: the omnigrok module pulls in its own plotting helpers
    from groklab.analysis.omnigrok import study_figures

    return study_figures(sweep_dir, runs, points)


STUDY_FIGURES: dict[str, Callable[[Path, pd.DataFrame, pd.DataFrame], dict[str, Any]]] = {
    "multi-op-ratio": _multi_op,
    "data-fraction": _data_fraction,
    "weight-decay": _weight_decay,
    "precision": _precision,
    "omnigrok-phase": _omnigrok_phase,
}


def draw_study_figures(sweep_dir: str | Path) -> list[Path]:
    """Draw the figures of the sweep's study into ``<sweep>/figures/*.png``.

    Raises:
        ImportError: matplotlib is not installed (with the install hint).
    """
    from groklab.store import atomic_write_bytes
    from groklab.sweep import summarize_sweep

    sweep_dir = Path(sweep_dir)
    info = json.loads((sweep_dir / "sweep.json").read_text())
    study = info.get("study")
    if study not in STUDY_FIGURES:
        return []
    plt = _plt()
    runs, points = summarize_sweep(sweep_dir, write=False)
    if runs.empty:
        return []
    if "final_step" in runs and len(points):
        last = runs.groupby("group", sort=False)["final_step"].max()
        points = points.assign(final_step=points["group"].map(last))
    figs = STUDY_FIGURES[study](sweep_dir, runs, points)
    out = []
    import io

    for name, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        path = sweep_dir / "figures" / f"{name}.png"
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    return out
