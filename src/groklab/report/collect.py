"""Gather what a report shows: read a run's (or a sweep's) saved outputs into report sections.

This is the only place that touches run directories. It reads the config, manifest and
metrics, calls the analysis modules' *cached-result* loaders (never a computation over
checkpoints: that is ``groklab analyze`` / ``groklab llc``), runs the cheap curve detectors
(loss spikes, phase changes) on the metrics table, and hands plain tables and arrays to the
figure functions. A section whose data is missing says so and names the command that makes it.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from groklab.errors import GroklabError
from groklab.report import figures as F
from groklab.report.html import Markup, ReportError, Section, code, kv_table, sortable_table

__all__ = [
    "Circuit",
    "RunData",
    "SweepData",
    "circuit_from_snapshot",
    "load_run_data",
    "load_sweep_data",
    "run_sections",
    "sweep_sections",
]


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def _fmt_step(v: Any) -> str:
    return "never" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{int(v):,}"


def _pct(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2%}"


# ============================================================================ run
@dataclass
class Circuit:
    """The reverse-engineered circuit of one operation at one checkpoint (from the analysis
    cache)."""

    op: str
    step: int
    labels: list[str]
    key_freqs: list[int]
    we_norms: np.ndarray
    wl_norms: np.ndarray | None
    neuron_freq: np.ndarray | None
    neuron_share: np.ndarray | None
    neuron_clustered: np.ndarray | None
    neuron_fractions: np.ndarray | None
    clustered_share: float | None
    cluster_threshold: float
    fit_fve: float | None
    neuron_2d: np.ndarray | None
    logit_2d: np.ndarray | None
    pca: np.ndarray | None
    pca_explained: list[float]
    circles: dict[str, np.ndarray]
    residues: list[int] | None = None


@dataclass
class RunData:
    """Everything the run report draws, already loaded (tables, arrays, dicts)."""

    path: Path
    display_path: str
    name: str
    config_toml: str
    config: Any
    manifest: dict[str, Any]
    summary: dict[str, Any]
    metrics: pd.DataFrame
    spikes: pd.DataFrame | None = None
    spike_rule: str | None = None
    phase_changes: pd.DataFrame | None = None
    progress: pd.DataFrame | None = None
    progress_ops: list[str] = field(default_factory=list)
    phases: Any = None
    circuits: dict[str, Circuit] = field(default_factory=dict)
    llc: pd.DataFrame | None = None
    llc_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    llc_traces: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)


def load_run_data(run_dir: Path | str, *, display_path: str | None = None) -> RunData:
    """Read a run directory and its cached analysis outputs (computes nothing expensive)."""
    from groklab.config import save_config
    from groklab.run import load_run

    run = load_run(run_dir)
    metrics = run.metrics
    data = RunData(
        path=run.path,
        display_path=display_path or str(run_dir),
        name=run.config.name,
        config_toml=save_config(run.config),
        config=run.config,
        manifest=run.manifest,
        summary=run.summary(),
        metrics=metrics,
        split=_split_facts(run),
    )
    if len(metrics):
        _load_spikes(data)
        _load_phase_changes(data)
    _load_circuit_analysis(run, data)
    _load_llc(run, data)
    return data


def _split_facts(run: Any) -> dict[str, Any]:
    """Train/test sizes and split hash of the split the run's analyses use (``run.task``).

    The manifest has them for trained runs; an imported run's split is read from the run
    itself, the one place that decides it.
    """
    m = run.manifest
    if run.has_imported_split:
        t = run.task
        return {
            "n_train": t.n_train,
            "n_test": t.n_test,
            "split_hash": t.split_hash,
            "source": "imported",
        }
    return {
        "n_train": m.get("n_train"),
        "n_test": m.get("n_test"),
        "split_hash": m.get("split_hash"),
    }


def _load_spikes(data: RunData) -> None:
    try:
        from groklab.analysis import spikes as sp
    except ModuleNotFoundError:
        return
    rows = []
    m = data.metrics
    for col in [c for c in m.columns if c.endswith("/loss")]:
        for s in sp.detect_spikes(m["step"].to_numpy(), m[col].to_numpy()):
            rows.append(
                {
                    "step": s.peak,
                    "column": col,
                    "value": s.peak_loss,
                    "start": s.start,
                    "end": s.end,
                    "height": s.height,
                }
            )
    data.spikes = pd.DataFrame(rows, columns=["step", "column", "value", "start", "end", "height"])
    data.spike_rule = (
        "a spike starts where log10 loss rises ≥ 1 decade above the median of the previous 20 "
        "logged points; marked at its peak"
    )


def _load_phase_changes(data: RunData) -> None:
    try:
        from groklab.analysis.phase_change import phase_change_table
    except ModuleNotFoundError:
        return
    m = data.metrics
    cols = [c for c in m.columns if c.endswith("/loss") and c != "train/loss"]
    if not cols or len(m) < 8:
        return
    table = phase_change_table(m, cols)
    data.phase_changes = table[table["n_drops"] > 0]


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda q: q.stat().st_mtime) if paths else None


def _load_circuit_analysis(run: Any, data: RunData) -> None:
    """Progress measures, phases and final-checkpoint circuits cached by ``groklab analyze``
    (``<run>/analysis/progress-*.parquet|json``, ``snapshot-<op>-step<S>-*.json``,
    ``phases.json``); the newest of each. Nothing is computed here."""
    folder = Path(run.path) / "analysis"
    if not folder.is_dir():
        return
    meta_path = _newest(
        [q for q in folder.glob("progress-*.json") if q.with_suffix(".parquet").exists()]
    )
    if meta_path is not None:
        try:
            meta = json.loads(meta_path.read_text())
            data.progress = pd.read_parquet(meta_path.with_suffix(".parquet"))
            data.progress_ops = list(meta.get("ops", []))
        except (OSError, ValueError) as e:
            data.notes.append(f"{meta_path.name} unreadable: {e}")
    ops = data.progress_ops or sorted(
        {q.name.split("-")[1] for q in folder.glob("snapshot-*.json")}
    )
    for op in ops:
        snap = _newest(list(folder.glob(f"snapshot-{op}-step*.json")))
        if snap is None:
            continue
        try:
            data.circuits[op] = circuit_from_snapshot(json.loads(snap.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            data.notes.append(f"{snap.name} unreadable: {e}")
    ph = folder / "phases.json"
    if ph.exists():
        try:
            from groklab.analysis.phases import Phases

            data.phases = Phases.from_dict(json.loads(ph.read_text()))
        except (ModuleNotFoundError, OSError, ValueError, TypeError) as e:
            data.notes.append(f"phases.json unreadable: {e}")
    steps = run.checkpoint_steps
    done = (
        [int(data.progress["step"].max())]
        if data.progress is not None and len(data.progress)
        else []
    )
    done += [c.step for c in data.circuits.values()]
    if steps and done and max(done) < steps[-1]:
        data.notes.append(
            f"the analysis covers checkpoints up to step {max(done):,} but the run has "
            f"checkpoints up to {steps[-1]:,}: run `groklab analyze {_q(data.display_path)}` "
            "again"
        )


def circuit_from_snapshot(d: Mapping[str, Any]) -> Circuit:
    """A :class:`Circuit` from a ``groklab.analysis.progress.Snapshot`` (as a dict)."""

    def arr(k: str) -> np.ndarray | None:
        v = d.get(k)
        return None if v is None else np.asarray(v, dtype=float)

    return Circuit(
        op=str(d["op"]),
        step=int(d["step"]),
        labels=list(d["component_labels"]),
        key_freqs=[int(k) for k in d.get("key_freqs", [])],
        we_norms=np.asarray(d["we_component_norms"], dtype=float),
        wl_norms=arr("wl_component_norms"),
        neuron_freq=None if d.get("neuron_freq") is None else np.asarray(d["neuron_freq"], int),
        neuron_share=arr("neuron_share"),
        neuron_clustered=None
        if d.get("neuron_clustered") is None
        else np.asarray(d["neuron_clustered"], bool),
        neuron_fractions=None,
        clustered_share=d.get("clustered_share"),
        cluster_threshold=float(d.get("cluster_threshold", 0.85)),
        fit_fve=d.get("fit_fve"),
        neuron_2d=arr("neuron_fourier_2d"),
        logit_2d=arr("logit_fourier_2d"),
        pca=arr("pca_coords"),
        pca_explained=list(d.get("pca_explained", [])),
        circles={str(k): np.asarray(v, dtype=float) for k, v in (d.get("circles") or {}).items()},
        residues=d.get("residues"),
    )


def _load_llc(run: Any, data: RunData) -> None:
    """Every cached LLC curve of the run (newest settings per subset)."""
    try:
        from groklab.analysis import llc
    except ModuleNotFoundError:
        return
    d = run.path / llc.LLC_DIR
    if not d.is_dir():
        return
    newest: dict[str, tuple[float, dict[str, Any]]] = {}
    for p in d.glob("llc-*.json"):
        try:
            meta = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if meta.get("kind") != "llc-over-checkpoints":
            continue
        sub = str(meta.get("subset", "total"))
        mtime = p.stat().st_mtime
        if sub not in newest or mtime > newest[sub][0]:
            newest[sub] = (mtime, meta)
    parts = []
    for sub, (_, meta) in sorted(newest.items(), key=lambda kv: (kv[0] != "total", kv[0])):
        try:
            settings = llc.LLCSettings.from_dict(meta["settings"])
            rows, traces = llc.read_cache(run, settings, subset=None if sub == "total" else sub)
        except Exception as e:  # a stale or foreign cache must not break the whole report
            data.notes.append(f"LLC cache for {sub} unreadable: {e}")
            continue
        if not len(rows):
            continue
        rows = rows.assign(series=sub)
        parts.append(rows)
        data.llc_meta[sub] = meta
        if len(traces):
            data.llc_traces[sub] = traces
    if parts:
        data.llc = pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------- run sections
def _card(k: str, v: str, cls: str = "") -> str:
    return (
        f'<div class="card"><div class="k">{html.escape(k)}</div>'
        f'<div class="v {cls}">{html.escape(v)}</div></div>'
    )


def _summary_section(d: RunData) -> Section:
    s, m = d.summary, d.manifest
    status = str(m.get("status", "unknown"))
    final = s.get("final", {})
    cards = [
        _card(
            "status",
            status,
            "good" if status == "completed" else "bad" if status in ("failed", "diverged") else "",
        ),
        _card("steps", _fmt_step(s.get("final_step"))),
        _card("memorised (train ≥ 99%)", _fmt_step(s.get("memorisation_step"))),
        _card(
            "grokked (test ≥ 99%)",
            _fmt_step(s.get("grokking_step")),
            "good" if s.get("grokking_step") is not None else "bad",
        ),
    ]
    for k in sorted(final):
        if k.endswith("/acc"):
            cards.append(_card(f"final {k}", _pct(final[k])))
    for name, step in (s.get("grokking_step_by_subset") or {}).items():
        cards.append(_card(f"{name} ≥ 99% at", _fmt_step(step)))
    facts: list[tuple[str, Any]] = []
    for op, c in d.circuits.items():
        label = "key frequencies" + (f" ({op})" if len(d.circuits) > 1 else "")
        cards.append(_card(label, ", ".join(map(str, c.key_freqs)) or "none"))
        if c.clustered_share is not None:
            facts.append((f"clustered neurons ({op})", f"{c.clustered_share:.1%}"))
        if c.fit_fve is not None:
            facts.append((f"logit fit variance explained ({op})", f"{c.fit_fve:.1%}"))
    if d.phases is not None:
        ph = d.phases
        facts.append(("memorisation", _span(ph.memorisation)))
        facts.append(("circuit formation", _span(ph.circuit_formation)))
        facts.append(("cleanup", _span(ph.cleanup) if ph.cleanup else "not reached"))
    if d.spikes is not None:
        counts = d.spikes["column"].value_counts()
        facts.append(
            (
                "loss spikes",
                ", ".join(f"{counts.get(c, 0)} in {c}" for c in ("train/loss", "test/loss"))
                + (f", {len(d.spikes)} in all loss curves" if len(counts) > 2 else ""),
            )
        )
    if d.llc is not None:
        try:
            from groklab.analysis.llc import landmarks

            for sub, g in d.llc.groupby("series", sort=False):
                lm = landmarks(g)
                facts.append(
                    (
                        f"LLC peak / levels off ({sub})",
                        f"{_fmt_step(lm['peak_step'])} / {_fmt_step(lm['level_step'])}",
                    )
                )
        except ModuleNotFoundError:
            pass
    cfg = d.config
    sp = d.split or {k: m.get(k) for k in ("n_train", "n_test", "split_hash")}
    facts += [
        ("task", _task_line(cfg)),
        ("model", _model_line(cfg)),
        (
            "optimiser",
            f"{cfg.optim.name} lr {cfg.optim.lr:g}, weight decay {cfg.optim.weight_decay:g}",
        ),
        ("parameters", f"{m['n_params']:,}" if m.get("n_params") else None),
        (
            "train / test rows",
            f"{sp['n_train']:,} / {sp['n_test']:,}"
            + (" (imported split)" if sp.get("source") == "imported" else "")
            if sp.get("n_train")
            else None,
        ),
        ("seed / split hash", f"{m.get('seed')} / {sp.get('split_hash')}"),
        (
            "wall time",
            f"{m['wall_seconds']:.0f} s on {m.get('device')}" if m.get("wall_seconds") else None,
        ),
        ("groklab / torch", f"{m.get('groklab_version')} / {m.get('torch_version')}"),
    ]
    body = (
        f'<div class="cards">{"".join(cards)}</div>'
        f'<div class="two"><div>{kv_table(facts)}</div><div>'
        f"<details><summary>config.toml</summary><pre>{html.escape(d.config_toml)}</pre>"
        f"</details></div></div>"
    )
    missing = []
    if not d.circuits and d.progress is None:
        missing.append(f"circuit analysis: {code('groklab analyze ' + _q(d.display_path))}")
    if d.llc is None:
        missing.append(f"LLC: {code('groklab llc ' + _q(d.display_path))}")
    if missing:
        body += '<p class="caption">Not yet computed — ' + "; ".join(missing) + ".</p>"
    for note in d.notes:
        body += f'<p class="caption"><b>Note:</b> {html.escape(note)}</p>'

    return Section("summary", "Summary", html=Markup(body))


def _span(t: Any) -> str:
    if t is None:
        return "—"
    a, b = t
    return f"{_fmt_step(a)} – {'end' if b is None else _fmt_step(b)}"


def _task_line(cfg: Any) -> str:
    dc = cfg.data
    ops = ", ".join(dc.operations)
    shares = f" (shares {', '.join(f'{s:g}' for s in dc.shares)})" if dc.shares else ""
    size = (
        f"{dc.train_size:,} training problems"
        if dc.train_size
        else f"{dc.train_fraction:.0%} of pairs for training"
    )
    split = (
        f"; the published code's split (seed {dc.split_seed})" if dc.split == "published" else ""
    )
    return f"{dc.task} p={dc.p}: {ops}{shares}; {size}{split}"


def _model_line(cfg: Any) -> str:
    mc = cfg.model
    if mc.arch == "mlp":
        return f"MLP, {mc.n_layers} layers, width {mc.d_mlp}"
    return (
        f"transformer, {mc.n_layers} layer(s), d_model {mc.d_model}, {mc.n_heads} heads, "
        f"d_mlp {mc.d_mlp}, {mc.act}"
    )


def _bands(d: RunData) -> list[F.Band]:
    if d.phases is None:
        return []
    ph = d.phases
    out: list[F.Band] = [("memorisation", *ph.memorisation)]
    out.append(("circuit formation", *ph.circuit_formation))
    if ph.cleanup:
        out.append(("cleanup", *ph.cleanup))
    return out


def run_sections(d: RunData, *, max_points: int = F.DEFAULT_MAX_POINTS) -> list[Section]:
    """The run report's sections, in reading order."""
    rp = _q(d.display_path)
    analyze = f"groklab analyze {rp}"
    secs = [_summary_section(d)]
    m = d.metrics
    if not len(m):
        absent = "no metrics yet (the run has not reached its first evaluation)"
        secs.append(Section("loss", "Loss", absent=absent, command=f"groklab train --resume {rp}"))
    else:
        marks = [
            (str(c), float(r["onset"]), float(r["midpoint"]), float(r["end"]))
            for c, r in (d.phase_changes.iterrows() if d.phase_changes is not None else [])
        ]
        n_spikes = 0 if d.spikes is None else len(d.spikes)
        cap = "Log–log axes; thin lines are the logged values, bold lines their rolling average."
        if d.spikes is None:
            cap += " Spike detection unavailable in this install."
        else:
            cap += f" ▼ = loss spikes ({n_spikes}; {d.spike_rule})."
        if marks:
            cap += " ◇ = phase change midpoints (hover for onset/end)."
        secs.append(
            Section(
                "loss",
                "Loss",
                figures={
                    "loss": F.loss_curves(
                        m, spikes=d.spikes, phase_changes=marks, max_points=max_points
                    )
                },
                caption=html.escape(cap),
            )
        )
        s = d.summary
        secs.append(
            Section(
                "accuracy",
                "Accuracy",
                figures={
                    "accuracy": F.accuracy_curves(
                        m,
                        marks={
                            "memorised": s.get("memorisation_step"),
                            "grokked": s.get("grokking_step"),
                        },
                        max_points=max_points,
                    )
                },
                caption="Every named subset; dashed lines mark memorisation (train ≥ 99%) and "
                "grokking (test ≥ 99%).",
            )
        )
    secs.append(_progress_section(d, analyze, max_points))
    secs.extend(_circuit_sections(d, analyze))
    if any(c.startswith("wnorm/") for c in m.columns):
        secs.append(
            Section(
                "weights",
                "Weight norms per matrix",
                figures={"weight-norms": F.weight_norms(m, max_points=max_points)},
                caption="L2 norm of every parameter tensor; weight decay shrinks "
                "them during cleanup.",
            )
        )
    else:
        secs.append(
            Section(
                "weights",
                "Weight norms per matrix",
                absent="this run's metrics have no wnorm/ columns",
            )
        )
    secs.append(_llc_section(d))
    return secs


def _progress_section(d: RunData, analyze: str, max_points: int) -> Section:
    title = "Progress measures and phases"
    if d.progress is None or not len(d.progress):
        return Section(
            "progress", title, absent="progress measures not computed for this run", command=analyze
        )
    figs = {}
    for op in d.progress_ops or [""]:
        pre = f"{op}/" if op else ""
        cols = [
            f"{pre}{c}" for c in ("train_loss", "test_loss", "restricted_loss", "excluded_loss")
        ]
        name = "progress-measures" if len(d.progress_ops) <= 1 else f"progress-measures-{op}"
        figs[name] = F.progress_measures(
            d.progress,
            loss_columns=cols,
            weight_column="sumsq/total" if "sumsq/total" in d.progress else None,
            bands=_bands(d),
            grokking_step=(getattr(d.phases, "grokking_step_by_op", None) or {}).get(op)
            if len(d.progress_ops) > 1
            else d.summary.get("grokking_step"),
            max_points=max_points,
        )
        if len(d.progress_ops) > 1:
            _title_suffix(figs[name], op)
    cap = (
        "Restricted loss keeps only the key-frequency directions of the logits; excluded loss "
        "removes them (on training data). Bands: the training phases"
    )
    if d.phases is not None:
        cap += f" — rule: {d.phases.rule}"
    return Section("progress", title, figures=figs, caption=html.escape(cap + "."))


def _title_suffix(fig: Any, text: str) -> None:
    fig.update_layout(title_text=f"{fig.layout.title.text} — {text}")


def _circuit_sections(d: RunData, analyze: str) -> list[Section]:
    titles = {
        "fourier": "Fourier norms of W_E and W_L",
        "neurons": "Neuron clusters",
        "fourier-2d": "2D Fourier components of neurons and logits",
        "embedding": "Embedding principal components",
    }
    if not d.circuits:
        return [
            Section(k, t, absent="circuit analysis not computed for this run", command=analyze)
            for k, t in titles.items()
        ]
    out = {k: {} for k in titles}
    for op, c in d.circuits.items():
        sfx = "" if len(d.circuits) == 1 else f"-{op}"
        norms = {"W_E": c.we_norms}
        if c.wl_norms is not None:
            norms["W_L = W_U·W_out"] = c.wl_norms
        out["fourier"][f"fourier-norms{sfx}"] = F.fourier_norms(
            norms, labels=c.labels, key_frequencies=c.key_freqs
        )
        if c.neuron_freq is not None:
            out["neurons"][f"neuron-clusters{sfx}"] = F.neuron_clusters(
                freq=c.neuron_freq,
                share=c.neuron_share,
                clustered=c.neuron_clustered,
                fractions=c.neuron_fractions,
                threshold=c.cluster_threshold,
            )
        maps = {}
        if c.neuron_2d is not None:
            maps["neuron activations"] = c.neuron_2d
        if c.logit_2d is not None:
            maps["logits"] = c.logit_2d
        if maps:
            out["fourier-2d"][f"fourier-2d{sfx}"] = F.fourier_2d(maps, labels=c.labels)
        coords = {}
        if c.pca is not None:
            ex = c.pca_explained
            lab = "PC 1 vs PC 2" + (f" ({sum(ex[:2]):.0%} of variance)" if ex else "")
            coords[lab] = c.pca
        for k, xy in list(c.circles.items())[:8]:
            coords[f"cos/sin of frequency {k}"] = xy
        if coords:
            out["embedding"][f"embedding{sfx}"] = F.embedding_pcs(coords, tokens=c.residues)
        if sfx:  # several operations: say which one each figure shows
            log = " (indexed by discrete log)" if op in ("mul", "div") else ""
            for figs in out.values():
                for name, fig in figs.items():
                    if name.endswith(sfx):
                        _title_suffix(fig, op + log)
    caps = {
        "fourier": "Norm of the embedding (and of the neuron-to-logit map) along each Fourier "
        "basis vector of the final checkpoint; a grokked network uses a few key frequencies "
        "(red).",
        "neurons": "Each MLP neuron's activation over the input grid, split by frequency: most "
        "neurons are explained by one key frequency.",
        "fourier-2d": "Norm of each 2D Fourier component of the neuron activations and of the "
        "logits over the (a, b) grid.",
        "embedding": "Tokens projected on the top principal components of W_E and on each key "
        "frequency's cos/sin plane: circles, ordered by the frequency.",
    }
    secs = []
    for k, t in titles.items():
        if out[k]:
            secs.append(Section(k, t, figures=out[k], caption=html.escape(caps[k])))
        else:
            secs.append(
                Section(
                    k,
                    t,
                    absent="this run's analysis has no data for it (e.g. no MLP)",
                    command=analyze,
                )
            )
    return secs


def _llc_section(d: RunData) -> Section:
    title = "Local learning coefficient"
    cmd = f"groklab llc {_q(d.display_path)}"
    if d.llc is None or not len(d.llc):
        return Section("llc", title, absent="no LLC estimates cached for this run", command=cmd)
    test_cols = ["step"] + [
        c for c in d.metrics.columns if c.startswith("test") and c.endswith("/loss")
    ]
    figs = {
        "llc": F.llc_curve(
            d.llc, test_loss=d.metrics[test_cols] if len(d.metrics) else None, bands=_bands(d)
        ),
        "llc-diagnostics": F.llc_diagnostics(d.llc),
    }
    for sub, tr in list(d.llc_traces.items())[:1]:
        g = d.llc[d.llc["series"] == sub]
        if len(g):
            peak = int(g.loc[g["llc"].idxmax(), "step"]) if g["llc"].notna().any() else None
            last = int(g["step"].max())
            steps = [s for s in dict.fromkeys([peak, last]) if s is not None]
            burnin = d.llc_meta.get(sub, {}).get("settings", {}).get("burnin")
            figs["llc-traces"] = F.llc_traces(tr, steps=steps, burnin=burnin, init_loss=g)
    rows = []
    for sub, meta in d.llc_meta.items():
        st = meta.get("settings", {})
        rows.append((f"settings ({sub})", ", ".join(f"{k}={v}" for k, v in st.items())))
        if meta.get("nbeta"):
            rows.append((f"n, nβ ({sub})", f"{meta.get('n')}, {meta['nbeta']:.4g}"))
    warn = (
        d.llc[d.llc.get("warnings", pd.Series(dtype=str)).fillna("").astype(str) != ""]
        if "warnings" in d.llc
        else d.llc.iloc[:0]
    )
    if "gamma_sensitive" in d.llc and d.llc["gamma_sensitive"].notna().any():
        for sub, g in d.llc.groupby("series", sort=False):
            checked = g["gamma_sensitive"].notna()
            if checked.any():
                n_flag = int((g.loc[checked, "gamma_sensitive"] > 0).sum())
                e = g.loc[checked, "gamma_elasticity"].dropna()
                rng = f"; d log LLC / d log γ from {e.min():.2f} to {e.max():.2f}" if len(e) else ""
                rows.append(
                    (
                        f"γ check ({sub})",
                        f"{n_flag} of {int(checked.sum())} estimates γ-sensitive "
                        f"(|d log LLC / d log γ| > 0.2){rng}",
                    )
                )
    body = kv_table(rows)
    if len(warn):
        body += sortable_table(
            ["series", "step", "LLC", "warnings"],
            [(r["series"], int(r["step"]), r["llc"], r["warnings"]) for _, r in warn.iterrows()],
            table_id="llc-warnings",
        )
    else:
        body += '<p class="caption">No estimate carried a warning (no diverged chains).</p>'
    return Section(
        "llc",
        title,
        figures=figs,
        html=Markup(body),
        caption=html.escape(
            "SGLD estimate at each analysed checkpoint (mean ± sd over chains), test loss on the "
            "right axis; thin dashed and dotted: the same estimate at γ/k and γ·k (the γ "
            "check). Diagnostics: the second-half / first-half ratio of each estimate "
            "(≈ 1 = converged), the share of draws below L(w*), the chains excluded as "
            "diverged, and d log LLC / d log γ: outside ±0.2 the estimate is γ-sensitive — "
            "the localisation, not the loss landscape, sets its value."
        ),
    )


# ============================================================================ sweep
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
