"""Turn a :class:`~groklab.report.collect.run.RunData` into the run report's sections.

The summary cards and facts tables, the training curves, the progress measures, the Fourier
circuit views and the LLC section, in reading order (:func:`run_sections`). Each hands plain
tables and arrays to the figure functions in :mod:`groklab.report.figures`; a section whose data
is missing says so and names the command that makes it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from groklab.report import figures as F
from groklab.report.collect.common import _card, _q
from groklab.report.collect.run import Circuit, RunData
from groklab.report.html import Markup, Section, code, kv_table, sortable_table


def _fmt_step(v: Any) -> str:
    return "never" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{int(v):,}"


def _pct(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2%}"


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


def phase_bands(phases: Any) -> list[F.Band]:
    """The training phases of a :class:`groklab.analysis.phases.Phases` as shaded bands."""
    if phases is None:
        return []
    out: list[F.Band] = [("memorisation", *phases.memorisation)]
    out.append(("circuit formation", *phases.circuit_formation))
    if phases.cleanup:
        out.append(("cleanup", *phases.cleanup))
    return out


def _bands(d: RunData) -> list[F.Band]:
    return phase_bands(d.phases)


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


def progress_figures(
    progress: pd.DataFrame,
    ops: list[str],
    *,
    phases: Any = None,
    grokking_step: int | None = None,
    max_points: int = F.DEFAULT_MAX_POINTS,
) -> dict[str, Any]:
    """Operation (``""`` for a single one) → its progress-measures figure.

    Args:
        progress: the progress table (``step``, ``<op>/<loss>`` columns, ``sumsq/total``).
        ops: the operations of the table (one figure each; one or none: one figure).
        phases: the run's :class:`groklab.analysis.phases.Phases` (bands; per-operation
            grokking steps when there are several operations).
        grokking_step: the grokking step marked when there is one operation.
        max_points: most points per curve.
    """
    figs = {}
    for op in ops or [""]:
        pre = f"{op}/" if op else ""
        cols = [
            f"{pre}{c}" for c in ("train_loss", "test_loss", "restricted_loss", "excluded_loss")
        ]
        excl = f"{pre}excluded_loss/k"
        freqs = sorted(
            int(c[len(excl) :]) for c in progress if c.startswith(excl) and c[len(excl) :].isdigit()
        )
        fig = F.progress_measures(
            progress,
            loss_columns=cols,
            freq_columns={f"excluding {k}": f"{excl}{k}" for k in freqs},
            fraction_columns={
                "Gini of W_E Fourier norms": f"{pre}gini_W_E",
                "Gini of W_L Fourier norms": f"{pre}gini_W_L",
                "logit fit: variance explained": f"{pre}logit_fve",
                "test accuracy": f"{pre}test_acc",
            },
            weight_column="sumsq/total" if "sumsq/total" in progress else None,
            bands=phase_bands(phases),
            grokking_step=(getattr(phases, "grokking_step_by_op", None) or {}).get(op)
            if len(ops) > 1
            else grokking_step,
            max_points=max_points,
        )
        if len(ops) > 1:
            _title_suffix(fig, op)
        figs[op if len(ops) > 1 else ""] = fig
    return figs


def _progress_section(d: RunData, analyze: str, max_points: int) -> Section:
    title = "Progress measures and phases"
    if d.progress is None or not len(d.progress):
        return Section(
            "progress", title, absent="progress measures not computed for this run", command=analyze
        )
    figs = {
        f"progress-measures-{op}" if op else "progress-measures": fig
        for op, fig in progress_figures(
            d.progress,
            d.progress_ops,
            phases=d.phases,
            grokking_step=d.summary.get("grokking_step"),
            max_points=max_points,
        ).items()
    }
    cap = (
        "Restricted loss keeps only the key-frequency directions of the logits; excluded loss "
        "removes them (on training data). Bands: the training phases"
    )
    if d.phases is not None:
        cap += f" — rule: {d.phases.rule}"
    return Section("progress", title, figures=figs, caption=html.escape(cap + "."))


def _title_suffix(fig: Any, text: str) -> None:
    fig.update_layout(title_text=f"{fig.layout.title.text} — {text}")


CIRCUIT_FIGURES = ("fourier", "neurons", "fourier-2d", "embedding")


def circuit_figures(circuits: Mapping[str, Circuit]) -> dict[str, dict[str, Any]]:
    """Kind (:data:`CIRCUIT_FIGURES`) → operation → figure of each operation's circuit.

    With several operations each figure's title names its operation. A kind the data cannot
    draw (no MLP neurons, ...) has no entry for that operation.
    """
    out: dict[str, dict[str, Any]] = {k: {} for k in CIRCUIT_FIGURES}
    for op, c in circuits.items():
        norms = {"W_E": c.we_norms}
        if c.wl_norms is not None:
            norms["W_L = W_U·W_out"] = c.wl_norms
        out["fourier"][op] = F.fourier_norms(norms, labels=c.labels, key_frequencies=c.key_freqs)
        if c.neuron_freq is not None:
            out["neurons"][op] = F.neuron_clusters(
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
            out["fourier-2d"][op] = F.fourier_2d(maps, labels=c.labels)
        coords = {}
        if c.pca is not None:
            ex = c.pca_explained
            lab = "PC 1 vs PC 2" + (f" ({sum(ex[:2]):.0%} of variance)" if ex else "")
            coords[lab] = c.pca
        for k, xy in list(c.circles.items())[:8]:
            coords[f"cos/sin of frequency {k}"] = xy
        if coords:
            out["embedding"][op] = F.embedding_pcs(coords, tokens=c.residues)
    if len(circuits) > 1:  # several operations: say which one each figure shows
        for figs in out.values():
            for op, fig in figs.items():
                log = " (indexed by discrete log)" if op in ("mul", "div") else ""
                _title_suffix(fig, op + log)
    return out


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
    stems = {
        "fourier": "fourier-norms",
        "neurons": "neuron-clusters",
        "fourier-2d": "fourier-2d",
        "embedding": "embedding",
    }
    many = len(d.circuits) > 1
    out = {
        k: {stems[k] + (f"-{op}" if many else ""): fig for op, fig in figs.items()}
        for k, figs in circuit_figures(d.circuits).items()
    }
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
