"""The ready-made studies: shipped sweep specs (``*.toml`` here) and the data of their figures.

Each study is a sweep spec with ``study = "<name>"``. After the sweep, :func:`study_data` reads
what that study's figures draw from the sweep directory (the sweep summary, per-run metrics,
cached analysis outputs): figure name → the keyword arguments of its figure function in
:mod:`groklab.report.figures` (:data:`groklab.report.static.STUDY_FIGURES` pairs them), and
``groklab sweep`` draws them into ``<sweep>/figures/<name>.png``. Nothing here trains,
re-analyses or draws.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "PAPER_TEST_LOSS_BELOW_1",
    "STUDY_DATA",
    "study_data",
]

# Nanda et al. 2023: first epoch with test loss < 1, by training fraction.
PAPER_TEST_LOSS_BELOW_1 = {0.95: 123, 0.5: 744, 0.4: 2615, 0.3: 7583, 0.28: 14465, 0.25: 21419}


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
        figs["per_op_test_loss"] = {"curves": curves, "ops": ("add", "mul")}
    llc = {}
    for _, r in first.iterrows():
        t = _llc_table(sweep_dir / r["run"])
        if t is not None and len(t):
            # estimates whose chains all diverged are NaN: left out
            llc[float(r["share:add"])] = t.dropna(subset=["llc"])
    if llc:
        figs["llc_curves"] = {"curves": llc, "column": "llc", "label": "addition share"}
    if "share:add" in points and len(points):
        figs["grok_step_vs_share"] = {
            "points": points,
            "x": "share:add",
            "columns": {f"grokking_step:test/{op}": f"test {op} ≥ 99%" for op in ("add", "mul")},
            "title": "Grokking step per operation versus the addition share",
        }
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
        "steps_vs_fraction": {
            "points": points,
            "x": "data.train_fraction",
            "columns": {
                "test_loss_below_1_step": "test loss < 1",
                "grokking_step": "test acc ≥ 99%",
            },
            "reference": PAPER_TEST_LOSS_BELOW_1,
            "reference_label": "paper: test loss < 1",
            "bracket": bracket,
            "title": "Steps to generalise versus training fraction",
        }
    }


def _weight_decay(sweep_dir: Path, runs: pd.DataFrame, points: pd.DataFrame) -> dict[str, Any]:
    if "optim.weight_decay" not in points:
        return {}
    return {
        "steps_vs_weight_decay": {
            "points": points,
            "x": "optim.weight_decay",
            "columns": {
                "grokking_step": "test acc ≥ 99%",
                "memorisation_step": "train acc ≥ 99%",
            },
            "log_x": True,
            "title": "Steps to grok versus weight decay",
        }
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
    if not curves:
        return {}
    return {"loss_spikes": {"curves": curves, "spikes": spikes, "column": "train/loss"}}


def _omnigrok_phase(sweep_dir: Path, runs: pd.DataFrame, points: pd.DataFrame) -> dict[str, Any]:
    """The phase diagram of the sweep's runs, and the curves of every α at the middle
    training size."""
    from groklab.analysis.omnigrok import sweep_phase_table
    from groklab.run import load_run

    table = sweep_phase_table(sweep_dir)
    if table.empty:
        return {}
    sizes = sorted(table["train_size"].unique())
    mid = sizes[len(sizes) // 2]
    sel = table[table["train_size"] == mid].sort_values("alpha")
    curves = {
        f"α={a:g}": load_run(r).metrics for a, r in zip(sel["alpha"], sel["run"], strict=True)
    }
    return {
        "phase_diagram": {"results": table, "title": "phases by α and training size"},
        "curves": {"runs": curves, "title": f"training size {mid}"},
    }


STUDY_DATA: dict[str, Callable[[Path, pd.DataFrame, pd.DataFrame], dict[str, Any]]] = {
    "multi-op-ratio": _multi_op,
    "data-fraction": _data_fraction,
    "weight-decay": _weight_decay,
    "precision": _precision,
    "omnigrok-phase": _omnigrok_phase,
}


def study_data(sweep_dir: str | Path) -> dict[str, dict[str, Any]]:
    """What the figures of the sweep's study draw: figure name → the keyword arguments of its
    figure function (empty for a sweep that is no study, or has no finished run).

    Raises:
        ConfigError: ``sweep_dir`` is not a sweep directory (no readable ``sweep.json``).
    """
    from groklab.errors import ConfigError
    from groklab.sweep import summarize_sweep

    sweep_dir = Path(sweep_dir)
    try:
        info = json.loads((sweep_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{sweep_dir}: not a sweep directory (no readable sweep.json)") from None
    study = info.get("study")
    if study not in STUDY_DATA:
        return {}
    runs, points = summarize_sweep(sweep_dir, write=False)
    if runs.empty:
        return {}
    if "final_step" in runs and len(points):
        last = runs.groupby("group", sort=False)["final_step"].max()
        points = points.assign(final_step=points["group"].map(last))
    return STUDY_DATA[study](sweep_dir, runs, points)
