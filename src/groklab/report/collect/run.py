"""Read one run directory into a :class:`RunData`: config, manifest, metrics and cached analyses.

It reads the config, manifest and metrics, calls the analysis modules' *cached-result*
loaders (Fourier circuit snapshots, the LLC cache; never a computation over checkpoints: that
is ``groklab analyze`` / ``groklab llc``) and runs the cheap curve detectors (loss spikes,
phase changes) on the metrics table. What is missing stays ``None`` and the sections say which
command makes it. The sweep report reads each run's cached LLC through the same loader.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from groklab.report.collect.common import _q


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
