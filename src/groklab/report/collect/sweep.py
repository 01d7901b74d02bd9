"""Read a sweep directory into a :class:`SweepData` and turn it into the sweep report's sections.

The sweep's summary tables come from :mod:`groklab.sweep` (read, never recomputed); each run's
metrics become an overlaid curve and its cached total LLC, where there is one, an LLC-by-variable
point. :func:`sweep_sections` draws the grokking-step-against-variable figures, the overlaid
curves and the sortable table of runs, and names the commands that fill what is missing.
"""

from __future__ import annotations

import contextlib
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from groklab.errors import GroklabError
from groklab.report import figures as F
from groklab.report.collect.common import _card, _q
from groklab.report.collect.run import RunData, _load_llc
from groklab.report.html import Markup, ReportError, Section, sortable_table


@dataclass
class SweepData:
    """What the sweep report draws."""

    path: Path
    display_path: str
    info: dict[str, Any]
    runs: pd.DataFrame
    points: pd.DataFrame
    curves: dict[str, pd.DataFrame]
    groups: dict[str, str]
    llc: dict[str, pd.DataFrame]
    variables: list[str]
    budget: int | None = None


def load_sweep_data(sweep_dir: Path | str, *, display_path: str | None = None) -> SweepData:
    """Read a sweep directory: its summary tables, each run's metrics and cached LLC."""
    try:
        from groklab import sweep as sw
    except ModuleNotFoundError:
        raise ReportError(f"{sweep_dir}: sweep reports need groklab.sweep") from None
    path = Path(sweep_dir)
    info = sw._read_sweep(path)
    runs, points = sw.summarize_sweep(path, write=False)
    seed_keys = set(info.get("seed_keys", []))
    variables: list[str] = []
    for e in info.get("runs", []):
        for k, _ in e.get("overrides", []):
            if k not in seed_keys and k not in variables:
                variables.append(k)
    variables = [v for v in variables if v in runs and runs[v].nunique(dropna=False) > 1]
    curves, groups, llc_curves = {}, {}, {}
    budgets = []
    for e in info.get("runs", []):
        rd = path / e["name"]
        if (rd / "config.toml").is_file():
            from groklab.config import load_config

            with contextlib.suppress(Exception):  # an unreadable config shows as a bad row
                budgets.append(load_config(rd / "config.toml").train.steps)
        try:  # a damaged run shows as a failed row of the summary, with no curve
            metrics = sw._read_run(rd)[2]
        except GroklabError:
            metrics = pd.DataFrame()
        if len(metrics):
            curves[e["name"]] = metrics
            groups[e["name"]] = e.get("group", e["name"])
        llc_df = _run_llc_total(rd)
        if llc_df is not None:
            llc_curves[e["name"]] = llc_df
    return SweepData(
        path,
        display_path or str(sweep_dir),
        info,
        runs,
        points,
        curves,
        groups,
        llc_curves,
        variables,
        _budget(budgets, runs),
    )


def _budget(config_steps: list[int], runs: pd.DataFrame) -> int | None:
    """The longest training budget: configured steps, or the longest run if it went further."""
    done = [int(v) for v in runs.get("final_step", pd.Series(dtype=float)).dropna()]
    both = config_steps + done
    return max(both) if both else None


def _run_llc_total(run_dir: Path) -> pd.DataFrame | None:
    if not (run_dir / "analysis" / "llc").is_dir():
        return None
    try:
        from groklab.run import load_run

        d = RunData(run_dir, str(run_dir), "", "", None, {}, {}, pd.DataFrame())
        _load_llc(load_run(run_dir), d)
    except Exception:
        return None
    if d.llc is None:
        return None
    tot = d.llc[d.llc["series"] == "total"]
    return tot if len(tot) else None


def _numeric(s: pd.Series) -> pd.Series:
    out = pd.to_numeric(s, errors="coerce")
    return out if out.notna().all() else s.astype(str)


def sweep_sections(d: SweepData) -> list[Section]:
    """The sweep report's sections."""
    runs = d.runs
    secs = []
    n_done = int(runs["status"].isin(["completed", "diverged"]).sum()) if len(runs) else 0
    desc = d.info.get("description") or ""
    cards = "".join(
        [
            _card("runs", f"{len(runs)}"),
            _card("finished", f"{n_done}"),
            _card("failed", f"{int((runs['status'] == 'failed').sum()) if len(runs) else 0}"),
            _card("grid points", f"{runs['group'].nunique() if len(runs) else 0}"),
            _card(
                "grokked",
                f"{int(runs['grokking_step'].notna().sum())}" if "grokking_step" in runs else "—",
            ),
        ]
    )
    hide = {"group", "source", "error"}
    cols = [c for c in runs.columns if c not in hide]
    table = sortable_table(
        cols,
        ([_plain(r[c]) for c in cols] for _, r in runs.iterrows()),
        table_id="sweep-runs",
    )
    failed = (
        runs[(runs["status"] == "failed") & runs["error"].notna()]
        if len(runs) and "error" in runs
        else runs.iloc[:0]
    )
    errors = "".join(
        f"<li><code>{html.escape(str(r['run']))}</code>: {html.escape(str(r['error']))}</li>"
        for _, r in failed.iterrows()
    )
    body = (
        (f'<p class="caption">{html.escape(desc)}</p>' if desc else "")
        + f'<div class="cards">{cards}</div>'
        + (f'<p class="caption">failed runs:</p><ul class="failed">{errors}</ul>' if errors else "")
        + table
    )
    secs.append(
        Section(
            "summary",
            "Summary table",
            html=Markup(body),
            caption="One row per run; click a column to sort. Steps are blank where "
            "the run never reached the threshold.",
        )
    )
    # grokking step vs each swept variable
    step_cols = [c for c in runs.columns if c.startswith("grokking_step:")]
    figs = {}
    budget = d.budget
    share_cols = [c for c in runs.columns if c.startswith("share:")]
    # operation shares are swept as a list (data.shares); plot against the first op's share
    xs = [v for v in d.variables if not (v == "data.shares" and share_cols)]
    if share_cols and share_cols[0] not in xs and runs[share_cols[0]].nunique() > 1:
        xs.append(share_cols[0])
    # only finished runs say whether a run grokked; running/pending ones are left out
    done = runs[runs["status"].isin(["completed", "diverged"])] if len(runs) else runs
    for v in xs:
        t = done.copy()
        t[v] = _numeric(t[v])
        if step_cols:
            long = t.melt(
                id_vars=[v],
                value_vars=["grokking_step", *step_cols],
                var_name="curve",
                value_name="step_reached",
            )
            long["curve"] = (
                long["curve"]
                .str.replace("grokking_step:", "", regex=False)
                .replace("grokking_step", "test")
            )
            long["step_reached"] = pd.to_numeric(long["step_reached"], errors="coerce")
            fig = F.grokking_vs_variable(
                long, variable=v, value="step_reached", budget=budget, group="curve"
            )
        else:
            t["grokking_step"] = pd.to_numeric(t.get("grokking_step"), errors="coerce")
            fig = F.grokking_vs_variable(t, variable=v, budget=budget)
        figs[f"grokking-vs-{_slug(v)}"] = fig
    if figs:
        secs.append(
            Section(
                "grokking",
                "Grokking step vs the swept variable",
                figures=figs,
                caption="Finished runs only: every seed is a dot; the line is the mean ± sd "
                "over the seeds that reached the step; open circles at the budget = never "
                "reached it."
                + (
                    f" {len(runs) - len(done)} runs not finished yet are left out."
                    if len(runs) > len(done)
                    else ""
                ),
            )
        )
    else:
        secs.append(
            Section(
                "grokking",
                "Grokking step vs the swept variable",
                absent="the sweep has no swept variable besides the seed",
            )
        )
    # overlaid curves
    if d.curves:
        palette = {}
        group_names = list(dict.fromkeys(d.groups[n] for n in d.curves))
        for i, gname in enumerate(group_names):
            palette[gname] = F._CYCLE[i % len(F._CYCLE)]
        colours = {n: palette[d.groups[n]] for n in d.curves}
        subsets = {
            c
            for df in d.curves.values()
            for c in df.columns
            if c.startswith("test/") and c.endswith("/acc") and c != "test/acc"
        }
        cols = ["test/acc", *sorted(subsets)]
        figs = {}
        for c in cols:
            figs[f"curves-{_slug(c)}"] = F.overlaid_curves(
                d.curves, column=c, colours=colours, title=f"{c} per run (colour = grid point)"
            )
        figs["curves-test-loss"] = F.overlaid_curves(
            d.curves,
            column="test/loss",
            colours=colours,
            log_y=True,
            title="test/loss per run (colour = grid point)",
        )
        secs.append(
            Section(
                "curves",
                "Curves per grid point",
                figures=figs,
                caption="One line per run, coloured by grid point (seeds share a colour).",
            )
        )
    else:
        secs.append(
            Section(
                "curves",
                "Curves per grid point",
                absent="no run has metrics yet",
                command=f"groklab sweep {_q(d.display_path)}",
            )
        )
    # LLC by ratio
    if d.llc and share_cols:
        by_ratio: dict[float, list[pd.DataFrame]] = {}
        share = share_cols[0]
        r_of = dict(zip(runs["run"], pd.to_numeric(runs[share], errors="coerce"), strict=True))
        for name, df in d.llc.items():
            r = r_of.get(name)
            if r is not None and not math.isnan(r):
                by_ratio.setdefault(float(r), []).append(df[["step", "llc"]])
        mean = {
            r: pd.concat(v).groupby("step", as_index=False)["llc"].mean()
            for r, v in by_ratio.items()
        }
        secs.append(
            Section(
                "llc-ratio",
                "LLC by operation ratio",
                figures={
                    "llc-by-ratio": F.llc_by_ratio(
                        mean, column="llc", label=share.replace("share:", "") + " share"
                    )
                },
                caption="Mean over seeds of each ratio's LLC curve; red = uneven, blue = even mix.",
            )
        )
    elif share_cols:
        secs.append(
            Section(
                "llc-ratio",
                "LLC by operation ratio",
                absent="no run of this sweep has cached LLC estimates",
                command='groklab llc RUN (for each run), or add "llc" to the spec\'s analyses',
            )
        )
    return secs


def _plain(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in s.lower()).strip("-")
