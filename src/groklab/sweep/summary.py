"""Sweep summaries: per-run rows and per-point aggregates over seeds, as parquet and a table.

:func:`summarize_runs` reads each run's manifest and metrics into one row (memorisation and
grokking steps, final losses, the scalar results of its analyses), :func:`aggregate_summary`
groups the rows by grid point over seeds (runs that never grokked are counted, and medians are
censored, not dropped), :func:`summarize_sweep` does both for a sweep directory and writes the
parquet tables, and :func:`format_summary` renders the points as a rich table.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from groklab.config import RunConfig
from groklab.errors import GroklabError
from groklab.store import CONFIG
from groklab.sweep.analyses import _analysis_marker
from groklab.sweep.delivery import run_files_dir
from groklab.sweep.spec import DONE_STATUSES, POINTS_FILE, SUMMARY_FILE
from groklab.sweep.sweepfile import _read_sweep


def _step_below(metrics: pd.DataFrame, column: str, threshold: float) -> int | None:
    if column not in metrics:
        return None
    hit = metrics.loc[metrics[column] < threshold, "step"]
    return int(hit.iloc[0]) if len(hit) else None


def _value_cell(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return json.dumps(list(v))
    return v


def _foreign(manifest: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Whether the directory holds some other run than the sweep asked for."""
    have, want = manifest.get("config_hash"), entry.get("config_hash")
    return have is not None and want is not None and have != want


def _read_run(out: Path) -> tuple[dict[str, Any], RunConfig | None, pd.DataFrame]:
    """Manifest, config and metrics of a sweep's run directory, checked as every reader checks
    them (:class:`groklab.run.Run`). Before training: ``({}, None, empty)``.

    Raises:
        GroklabError: a file of the run is damaged (named, with the way to recover).
    """
    from groklab.run import load_run

    if not (out / CONFIG).exists():
        return {}, None, pd.DataFrame()
    run = load_run(out)
    return run.manifest, run.config, run.metrics


def _run_row(entry: dict[str, Any], sweep_dir: Path) -> dict[str, Any]:
    from groklab.run import first_step_at

    # a run still being delivered from a Ray node: what its .partial holds so far
    out = run_files_dir(sweep_dir / entry["name"])
    seed_keys = set(entry.get("seed_keys", []))
    row: dict[str, Any] = {
        "run": entry["name"],
        "group": entry.get("group", entry["name"]),
        "source": entry.get("source", "grid"),
        "seed": entry.get("seed"),
    }
    for k, v in entry.get("overrides", []):
        if k not in seed_keys:
            row[k] = _value_cell(v)
    try:
        manifest, cfg, metrics = _read_run(out)
    except GroklabError as e:  # a damaged run is a failed row; the others go on
        row["status"] = "failed"
        row["error"] = str(e)
        return row
    status = manifest.get("status") or ("pending" if cfg is None else "running")
    row["status"] = status
    row["error"] = manifest.get("error")
    if _foreign(manifest, entry):
        row["status"] = "failed"
        row["error"] = f"{out} holds a different run (config hash differs)"
        return row
    if cfg is not None and len(cfg.data.operations) > 1:
        shares = cfg.data.shares or tuple(1 / len(cfg.data.operations) for _ in cfg.data.operations)
        for op, s in zip(cfg.data.operations, shares, strict=True):
            row[f"share:{op}"] = float(s)
    if metrics.empty:
        return row
    row["final_step"] = int(metrics["step"].iloc[-1])
    row["memorisation_step"] = first_step_at(metrics, "train/acc")
    row["grokking_step"] = first_step_at(metrics, "test/acc")
    for c in metrics.columns:
        if c.startswith("test/") and c.endswith("/acc") and c != "test/acc":
            row[f"grokking_step:{c[: -len('/acc')]}"] = first_step_at(metrics, c)
    # The paper's data-fraction numbers are the first epoch with test loss < 1.
    row["test_loss_below_1_step"] = _step_below(metrics, "test/loss", 1.0)
    last = metrics.iloc[-1]
    for c in metrics.columns:
        if c.endswith("/acc") or c in ("train/loss", "test/loss"):
            row[f"final:{c}"] = float(last[c])
    for name in entry.get("analyses", []):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            res = json.loads(_analysis_marker(out, name).read_text()).get("result")
            if isinstance(res, dict):
                for k, v in res.items():
                    if isinstance(v, bool | int | float | str) or v is None:
                        row[f"{name}:{k}"] = v
    return row


_STEP_PREFIXES = ("memorisation_step", "grokking_step", "test_loss_below_1_step")


def _step_columns(df: pd.DataFrame) -> list[str]:
    """Per-run step columns: ``grokking_step``, ``grokking_step:test/add``, ..."""
    return [
        c
        for c in df.columns
        if c in _STEP_PREFIXES
        or (c.split(":")[0] in _STEP_PREFIXES and c.count(":") == 1 and "/" in c)
    ]


def _normalise(df: pd.DataFrame, int_cols: Sequence[str]) -> pd.DataFrame:
    """Nullable ints for step/count columns; strings for object columns of mixed types (so
    the table always writes to parquet)."""
    for c in df.columns:
        if c in int_cols:
            df[c] = pd.to_numeric(df[c], errors="coerce").round().astype("Int64")
        elif df[c].dtype == object:
            kinds = {type(v) for v in df[c] if v is not None and not pd.isna(v)}
            if len(kinds) > 1 or (kinds and not kinds <= {str}):
                df[c] = df[c].map(lambda v: None if v is None or pd.isna(v) else str(v))
    return df


def summarize_runs(entries: list[dict[str, Any]], sweep_dir: Path) -> pd.DataFrame:
    """One row per run (in ``entries`` order): status, overrides, steps, final metrics."""
    rows = [_run_row(e, Path(sweep_dir)) for e in entries]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return _normalise(df, [*_step_columns(df), "final_step", "seed"])


def _censored_median(vals: list[float]) -> float:
    """Median with never-reached runs as +inf (NaN when at least half never reached)."""
    import numpy as np

    if not vals:
        return float("nan")
    med = float(np.median(np.array(vals, dtype=float)))
    return med if math.isfinite(med) else float("nan")


def aggregate_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per grid point (``group``): over the finished seeds, for every step column, how many
    reached it, mean and std over those that did, the censored median (never = +inf), and a
    lower bound on the mean counting never-reached runs at their last step; mean and std of
    the final accuracies."""
    if runs.empty:
        return pd.DataFrame()
    step_cols = _step_columns(runs)
    final_cols = [c for c in runs.columns if c.startswith("final:")]
    skip = {
        "run",
        "group",
        "source",
        "seed",
        "status",
        "error",
        "final_step",
        *step_cols,
        *final_cols,
    }
    skip |= {c for c in runs.columns if ":" in c and not c.startswith("share:")}
    keep_cols = [c for c in runs.columns if c not in skip]
    out = []
    for group, g in runs.groupby("group", sort=False):
        fin = g[g["status"].isin(DONE_STATUSES)]
        row: dict[str, Any] = {"group": group}
        for c in keep_cols:
            row[c] = g[c].iloc[0]
        row["n_runs"] = len(g)
        row["n"] = len(fin)
        row["n_failed"] = int((g["status"] == "failed").sum())
        for c in step_cols:
            reached = [float(v) for v in fin[c] if not pd.isna(v)]
            censored = [float(v) if not pd.isna(v) else math.inf for v in fin[c]]
            bound = [
                float(v) if not pd.isna(v) else float(fs)
                for v, fs in zip(fin[c], fin["final_step"], strict=True)
                if not (pd.isna(v) and pd.isna(fs))
            ]
            row[f"{c}:n_reached"] = len(reached)
            row[f"{c}:mean"] = sum(reached) / len(reached) if reached else float("nan")
            row[f"{c}:std"] = float(pd.Series(reached).std()) if len(reached) > 1 else float("nan")
            row[f"{c}:median"] = _censored_median(censored)
            row[f"{c}:mean_lb"] = sum(bound) / len(bound) if bound else float("nan")
        for c in final_cols:
            vals = pd.to_numeric(fin[c], errors="coerce").dropna()
            row[f"{c}:mean"] = float(vals.mean()) if len(vals) else float("nan")
            row[f"{c}:std"] = float(vals.std()) if len(vals) > 1 else float("nan")
        out.append(row)
    df = pd.DataFrame(out)
    counts = [c for c in df.columns if c.endswith(":n_reached")] + ["n_runs", "n", "n_failed"]
    return _normalise(df, counts)


def summarize_sweep(
    sweep_dir: str | Path, *, write: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-run and per-point summary tables of a sweep directory (written as parquet).

    Returns:
        ``(runs, points)``: see :func:`summarize_runs` and :func:`aggregate_summary`.
    """
    sweep_dir = Path(sweep_dir)
    info = _read_sweep(sweep_dir)
    entries = [
        {**e, "seed_keys": info.get("seed_keys", []), "analyses": info.get("analyses", [])}
        for e in info["runs"]
    ]
    runs = summarize_runs(entries, sweep_dir)
    points = aggregate_summary(runs)
    if write:
        import io

        for df, name in ((runs, SUMMARY_FILE), (points, POINTS_FILE)):
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            from groklab.store import atomic_write_bytes

            atomic_write_bytes(sweep_dir / name, buf.getvalue())
    return runs, points


def _fmt_step(mean: float, std: float, k: int, n: int, median: float) -> str:
    if n == 0:
        return "-"
    if k == 0:
        return f"0/{n} (never)"
    s = f"{k}/{n}  {mean:,.0f}"
    if not math.isnan(std):
        s += f" ± {std:,.0f}"
    if k < n:
        s += f"  (median {'> budget' if math.isnan(median) else f'{median:,.0f}'})"
    return s


def format_summary(
    points: pd.DataFrame, *, title: str = "sweep summary", extra: Sequence[str] = ()
) -> Any:
    """A rich Table of the per-point summary (what ``groklab sweep`` prints).

    Args:
        points: :func:`aggregate_summary` output.
        title: table title.
        extra: more step columns to show (e.g. ``test_loss_below_1_step``).
    """
    from rich.table import Table

    t = Table(
        title=title,
        title_justify="left",
        caption=(
            "memorised: train acc ≥ 99%, grokked: test acc ≥ 99%; k/n runs reached it, "
            "mean ± sd over those, (median with never = ∞)"
        ),
        caption_justify="left",
    )
    longest = max((len(str(g)) for g in points["group"]), default=5)
    t.add_column("point", min_width=min(longest, 48), overflow="fold")
    t.add_column("runs", justify="right")
    subset_cols = sorted(
        {
            c.rsplit(":", 1)[0]
            for c in points.columns
            if c.startswith("grokking_step:") and c.count(":") == 2
        }
    )
    cols = {"memorisation_step": "memorised", "grokking_step": "grokked"}
    cols.update({c: f"{c.split(':', 1)[1]} grokked" for c in subset_cols})
    labels = {"test_loss_below_1_step": "test loss < 1"}
    cols.update({c: labels.get(c, c) for c in extra})
    for label in cols.values():
        t.add_column(label)
    t.add_column("final test acc", justify="right")
    for _, r in points.iterrows():
        n = int(r["n"])
        cells = [str(r["group"]), f"{n}/{int(r['n_runs'])}"]
        for c in cols:
            if f"{c}:mean" not in r:
                cells.append("-")
                continue
            cells.append(
                _fmt_step(
                    r[f"{c}:mean"], r[f"{c}:std"], int(r[f"{c}:n_reached"]), n, r[f"{c}:median"]
                )
            )
        acc = r.get("final:test/acc:mean", float("nan"))
        cells.append("-" if pd.isna(acc) else f"{acc:.2%}")
        t.add_row(*cells)
    return t


def summary_columns(study: str | None) -> tuple[str, ...]:
    """Extra step columns worth printing for a study."""
    return ("test_loss_below_1_step",) if study == "data-fraction" else ()
