"""Report figures on small synthetic inputs, the page assembly, and the data collection."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from groklab.report import build_report, collect
from groklab.report import figures as F
from groklab.report.html import (
    ReportError,
    Section,
    render_html,
    sortable_table,
)
from helpers import synthetic


def _metrics(n: int = 50, *, every: int = 10) -> pd.DataFrame:
    return synthetic.synthetic_metrics(np.arange(0, n * every + 1, every), grok=n * every * 0.5)


def _traces(fig, name: str):
    return [t for t in fig.data if t.name == name]


def _xs(trace) -> np.ndarray:
    return np.asarray(trace.x, dtype=float)


# --------------------------------------------------------------------------- helpers
def test_thin_indices_keeps_ends_budget_and_forced_rows():
    steps = np.arange(0, 100_001, 10)
    idx = F.thin_indices(steps, 300, keep=np.array([5555]))
    assert idx[0] == 0 and idx[-1] == len(steps) - 1
    assert len(idx) <= 301 and 5555 in idx
    assert np.all(np.diff(idx) > 0)
    # log-spaced half: the first decade of steps is represented by more than one point
    assert (steps[idx] < 1000).sum() >= 20
    assert np.array_equal(F.thin_indices(steps[:50], 300), np.arange(50))


def test_smooth_is_a_log_step_window_mean():
    steps = np.arange(1, 10_001, dtype=float)
    const = F.smooth(steps, np.full(len(steps), 3.0))
    assert np.allclose(const, 3.0)
    # a window narrower than one step is the identity
    y = np.sin(steps)
    assert np.allclose(F.smooth(steps, y, decades=1e-9), y)
    # at step 1000 with a 0.2-decade window: the mean over steps in [1000/10^0.1, 1000*10^0.1]
    got = F.smooth(steps, steps, decades=0.2)[999]
    lo, hi = math.ceil(1000 / 10**0.1), math.floor(1000 * 10**0.1)
    assert got == pytest.approx((lo + hi) / 2)


# --------------------------------------------------------------------------- run figures
def test_loss_curves_every_subset_raw_and_smoothed_with_spikes():
    m = synthetic.synthetic_metrics(
        np.arange(0, 20_001, 5), grok=8000, subsets=("add", "mul"), spikes=(12_000,)
    )
    late = m[m["step"] > 5000]
    spike_step = int(late.loc[late["train/loss"].idxmax(), "step"])
    assert spike_step == 12_000
    spikes = pd.DataFrame({"step": [spike_step], "column": ["train/loss"]})
    fig = F.loss_curves(
        m, spikes=spikes, phase_changes=[("test/loss", 6000, 8000, 9000)], max_points=400
    )
    for name in ("train", "test", "test/add", "test/mul"):
        assert len(_traces(fig, name)) == 1, name  # the rolling mean, in the legend
        assert len(_traces(fig, f"{name} (raw)")) == 1, name
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    raw = _traces(fig, "train (raw)")[0]
    assert len(raw.x) <= 400 + 400 // 20
    # the spike survives thinning in the raw curve and is marked at its exact step
    assert spike_step in _xs(raw)
    (mark,) = [t for t in fig.data if (t.name or "").startswith("spikes")]
    assert list(mark.x) == [spike_step]
    assert mark.y[0] == pytest.approx(m.set_index("step").loc[spike_step, "train/loss"], rel=1e-6)
    (pc,) = _traces(fig, "phase changes")
    assert list(pc.x) == [8000] and "onset 6000" in pc.text[0]
    # step 0 cannot be drawn on a log axis and is left out, not clipped
    assert 0 not in _xs(raw)


def test_accuracy_curves_marks_on_log_axis():
    m = _metrics()
    fig = F.accuracy_curves(m, marks={"memorised": 100, "grokked": 250, "never": None})
    assert {t.name for t in fig.data} >= {"train", "test", "train (raw)", "test (raw)"}
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert sorted(s.x0 for s in lines) == [100, 250]  # shapes: data units
    ann = sorted(a.x for a in fig.layout.annotations)  # annotations: log10 units
    assert ann == pytest.approx([2.0, math.log10(250)])
    assert fig.layout.yaxis.range == (-0.02, 1.02)


def test_weight_norms_one_trace_per_matrix_total_last():
    m = _metrics()
    fig = F.weight_norms(m)
    cols = [c for c in m.columns if c.startswith("wnorm/")]
    assert len(fig.data) == len(cols)
    assert fig.data[-1].name == "total" and fig.data[-1].line.width == 3
    assert np.allclose(fig.data[-1].y, m["wnorm/total"].to_numpy()[1:], rtol=1e-6)


def test_progress_measures_bands_and_panels():
    d = synthetic.synthetic_run_data(n_checkpoints=40, eval_every=100)
    bands = [("memorisation", 0, 200), ("circuit formation", 200, 1000), ("cleanup", 1000, None)]
    fig = F.progress_measures(
        d.progress,
        loss_columns=["add/train_loss", "add/test_loss", "add/restricted_loss", "missing"],
        weight_column="sumsq/total",
        bands=bands,
        grokking_step=1200,
    )
    names = [t.name for t in fig.data]
    assert names[:4] == ["add/train_loss", "add/test_loss", "add/restricted_loss", "sumsq/total"]
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rects) == 3 * 2  # each band on both panels
    assert max(s.x1 for s in rects) == 4000  # an open band runs to the last step
    assert [n for n in names if n and n.startswith("cleanup")] == ["cleanup 1,000–4,000"]
    assert fig.layout.yaxis.type == "log"


def test_fourier_norms_highlights_exactly_the_key_frequencies():
    c = synthetic.synthetic_circuit(p=13, key_freqs=(2, 5), d_mlp=16)
    fig = F.fourier_norms(
        {"W_E": c.we_norms, "W_L": c.wl_norms}, labels=c.labels, key_frequencies=c.key_freqs
    )
    assert len(fig.data) == 2
    red = [
        lb
        for lb, col in zip(fig.data[0].x, fig.data[0].marker.color, strict=True)
        if col == "#d1495b"
    ]
    assert red == ["cos 2", "sin 2", "cos 5", "sin 5"]
    assert np.allclose(fig.data[1].y, c.wl_norms, rtol=1e-6)


def test_neuron_clusters_counts_and_heatmap():
    freq = np.array([3, 3, 7, 7, 7, 1])
    share = np.array([0.9, 0.95, 0.88, 0.99, 0.5, 0.3])
    clustered = share >= 0.85
    fig = F.neuron_clusters(freq=freq, share=share, clustered=clustered)
    bar = fig.data[-1]
    assert list(bar.x) == ["k=3", "k=7", "none"] and list(bar.y) == [2, 2, 2]
    assert "67% of 6 neurons" in fig.layout.title.text
    fractions = np.zeros((6, 7))
    fractions[np.arange(6), freq - 1] = share
    fig = F.neuron_clusters(freq=freq, share=share, clustered=clustered, fractions=fractions)
    heat = fig.data[0]
    z = np.asarray(heat.z)
    assert z.shape == (6, 7)
    # clustered neurons first, grouped by frequency: rows 0-1 are frequency 3, 2-3 frequency 7
    assert list(z.argmax(axis=1)[:4]) == [2, 2, 6, 6]


def test_fourier_2d_and_embedding_panels():
    c = synthetic.synthetic_circuit(p=11, key_freqs=(2,), d_mlp=8)
    fig = F.fourier_2d({"neuron activations": c.neuron_2d, "logits": c.logit_2d}, labels=c.labels)
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    assert np.asarray(fig.data[1].z).shape == (11, 11)
    fig = F.embedding_pcs(
        {"PC 1 vs PC 2": c.pca, "frequency 2": c.circles["2"]}, tokens=list(range(11))
    )
    assert len(fig.data) == 2 and all(len(t.x) == 11 for t in fig.data)
    assert fig.layout.yaxis.scaleanchor == "x"  # circles look like circles


def test_llc_figures():
    d = synthetic.synthetic_run_data(n_checkpoints=20, ops=("add", "mul"), draws=20)
    fig = F.llc_curve(
        d.llc,
        test_loss=d.metrics[["step", "test/loss", "test/add/loss"]],
        bands=[("memorisation", 0, 100)],
    )
    names = [t.name for t in fig.data]
    assert {"LLC (total)", "LLC (add)", "LLC (mul)", "test/loss", "test/add/loss"} <= set(names)
    total = _traces(fig, "LLC (total)")[0]
    band = next(t for t in fig.data if t.fill == "toself")  # ± sd of the first series
    g = d.llc[d.llc["series"] == "total"]
    assert np.allclose(band.y[: len(g)], g["llc"] + g["llc_std"], rtol=1e-5)
    assert np.allclose(total.y, g["llc"], rtol=1e-5)
    assert fig.layout.yaxis2.type == "log"  # the test loss axis
    diag = F.llc_diagnostics(d.llc)
    assert len(diag.data) == 3 * 3  # 3 panels x 3 series
    assert [a.text for a in diag.layout.annotations][:3] == [
        "second half / first half",
        "share of draws below L(w*)",
        "chains diverged (excluded)",
    ]
    tr = F.llc_traces(d.llc_traces["total"], steps=[0, 2000, 99], burnin=100, init_loss=g)
    assert len(tr.data) == 2 * 4  # two existing checkpoints x 4 chains; 99 has no trace
    assert all(len(t.x) == 120 for t in tr.data)


def test_llc_figures_show_the_gamma_check():
    """Rows with the γ check: the side estimates as thin curves, the elasticity as a panel."""
    d = synthetic.synthetic_run_data(n_checkpoints=10, draws=20)
    llc = d.llc.assign(
        gamma_check=3.0,
        llc_gamma_lo=d.llc["llc"] * 2,
        llc_gamma_hi=d.llc["llc"] / 2,
        gamma_elasticity=-np.log(4) / (2 * np.log(3)),
        gamma_sensitive=1.0,
    )
    fig = F.llc_curve(llc)
    lo = _traces(fig, "LLC (total) at γ/3")[0]
    assert np.allclose(lo.y, llc["llc_gamma_lo"], rtol=1e-5)
    assert _traces(fig, "LLC (total) at γ·3")
    diag = F.llc_diagnostics(llc)
    assert [a.text for a in diag.layout.annotations][3] == "d log LLC / d log γ"
    assert np.allclose(diag.data[-1].y, -0.631, atol=1e-3)
    # rows cached before the check: no side curves, no elasticity panel
    old = llc.assign(llc_gamma_lo=np.nan, gamma_elasticity=np.nan)
    assert not _traces(F.llc_curve(old), "LLC (total) at γ/3")
    assert len(F.llc_diagnostics(old).layout.annotations) == 3


# --------------------------------------------------------------------------- sweep figures
def test_grokking_vs_variable_counts_never_grokked_runs():
    t = pd.DataFrame(
        {
            "wd": [1.0, 1.0, 1.0, 0.3, 0.3, 0.3],
            "grokking_step": [1000, 1200, np.nan, 3000, np.nan, np.nan],
        }
    )
    fig = F.grokking_vs_variable(t, variable="wd", budget=5000)
    (never,) = [tr for tr in fig.data if (tr.name or "").endswith("never (3)")]
    assert list(never.y) == [5000] * 3 and sorted(never.x) == [0.3, 0.3, 1.0]
    (mean,) = [tr for tr in fig.data if (tr.name or "").endswith("mean ± sd")]
    by_x = dict(zip(mean.x, mean.y, strict=True))
    assert by_x[1.0] == pytest.approx(1100) and by_x[0.3] == pytest.approx(3000)
    assert list(map(list, mean.customdata)) == [[1, 3], [2, 3]]  # reached / seeds, by x
    # grouped: one mean line per group
    t["op"] = ["add", "mul"] * 3
    fig = F.grokking_vs_variable(t, variable="wd", group="op")
    assert sum((tr.name or "").endswith("mean ± sd") for tr in fig.data) == 2


def test_overlaid_curves_and_llc_by_ratio_colours():
    curves = {f"run{i}": _metrics(30) for i in range(3)}
    fig = F.overlaid_curves(curves, column="test/acc", colours={"run1": "#000000"})
    assert [t.name for t in fig.data] == ["run0", "run1", "run2"]
    assert fig.data[1].line.color == "#000000"
    assert F.ratio_colour(0.5, lo=0.3, hi=0.7) == "rgb(31,95,200)"  # even: blue
    assert F.ratio_colour(0.3, lo=0.3, hi=0.7) == "rgb(214,39,40)"  # most uneven: red
    assert F.ratio_colour(0.7, lo=0.3, hi=0.7) == "rgb(214,39,40)"
    llc = {
        r: pd.DataFrame({"step": [0, 10, 20], "llc": [1.0, 5.0, 2.0 + r]})
        for r in (0.3, 0.4, 0.5, 0.6, 0.7)
    }
    fig = F.llc_by_ratio(llc, column="llc", label="add share")
    assert len(fig.data) == 5
    assert fig.data[-1].name == "add share 0.5"  # even ratio drawn last, on top
    colours = {t.name: t.line.color for t in fig.data}
    assert colours["add share 0.4"] == colours["add share 0.6"]  # symmetric around even


def test_figures_embed_float32_data():
    fig = F.loss_curves(_metrics())
    spec = json.loads(fig.to_json())
    assert spec["data"][0]["y"]["dtype"] == "f4"  # half the bytes of float64


# --------------------------------------------------------------------------- page + collect
def test_render_html_is_offline_and_marks_absent_sections():
    fig = F.loss_curves(_metrics())
    page = render_html(
        "t",
        [
            Section("loss", "Loss", figures={"loss": fig}),
            Section("llc", "LLC", absent="no LLC", command="groklab llc runs/x"),
        ],
    )
    assert page.count("Plotly.newPlot") == 1  # one drawing routine for every figure
    assert page.count('data-fig="loss"') == 1 and 'id="fig-loss-json"' in page
    assert "<code>groklab llc runs/x</code>" in page and "Not available" in page
    from plotly.offline import get_plotlyjs

    assert page.count(get_plotlyjs()) == 1  # plotly.js inline, once
    ours = page.replace(get_plotlyjs(), "")
    assert "http://" not in ours and "https://" not in ours and " src=" not in ours


def test_sortable_table_keeps_raw_values_and_escapes():
    t = sortable_table(["name", "steps"], [("<b>", 1200), ("a", None)], table_id="t")
    assert 'data-v="1200"' in t and "1,200" in t and "&lt;b&gt;" in t and 'data-v=""' in t


def test_figure_json_cannot_close_its_script_block():
    fig = F.overlaid_curves({"</script><b>": _metrics(5)}, column="test/acc")
    page = render_html("t", [Section("c", "C", figures={"c": fig})])
    blob = page.split('id="fig-c-json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(blob)["data"][0]["name"] == "</script><b>"


def test_run_sections_all_present_for_full_data():
    d = synthetic.synthetic_run_data(n_checkpoints=30, ops=("add", "mul"), draws=20)
    secs = collect.run_sections(d)
    assert [s.key for s in secs] == [
        "summary",
        "loss",
        "accuracy",
        "progress",
        "fourier",
        "neurons",
        "fourier-2d",
        "embedding",
        "weights",
        "llc",
    ]
    assert all(s.absent is None for s in secs)
    names = {n for s in secs for n in s.figures}
    assert {
        "progress-measures-add",
        "progress-measures-mul",
        "fourier-norms-add",
        "fourier-norms-mul",
        "llc",
        "llc-diagnostics",
        "llc-traces",
    } <= names
    assert "14, 35, 41, 42, 52" in secs[0].html  # key frequencies in the summary card


def test_run_sections_absent_name_the_commands(tmp_path):
    d = synthetic.synthetic_run_data(n_checkpoints=10, path="runs/my run")
    d.progress, d.phases, d.circuits, d.llc = None, None, {}, None
    secs = {s.key: s for s in collect.run_sections(d)}
    for k in ("progress", "fourier", "neurons", "fourier-2d", "embedding"):
        assert secs[k].absent and secs[k].command == "groklab analyze 'runs/my run'"
    assert secs["llc"].command == "groklab llc 'runs/my run'"
    assert secs["loss"].absent is None and secs["weights"].absent is None


def test_circuit_from_snapshot_dict():
    snap = {
        "op": "mul",
        "step": 30,
        "component_labels": ["const", "cos 1", "sin 1"],
        "key_freqs": [1],
        "we_component_norms": [0.1, 2.0, 2.0],
        "wl_component_norms": None,
        "neuron_freq": [1, 1],
        "neuron_share": [0.9, 0.2],
        "neuron_clustered": [True, False],
        "clustered_share": 0.5,
        "cluster_threshold": 0.85,
        "fit_fve": 0.9,
        "neuron_fourier_2d": None,
        "logit_fourier_2d": [[1, 2, 3]] * 3,
        "pca_coords": [[0, 1], [1, 0], [0, -1]],
        "pca_explained": [0.5, 0.4],
        "circles": {"1": [[0, 1], [1, 0], [0, -1]]},
        "residues": [1, 2, 4],
    }
    c = collect.circuit_from_snapshot(snap)
    assert c.op == "mul" and c.wl_norms is None and c.neuron_2d is None
    assert c.logit_2d.shape == (3, 3) and c.circles["1"].shape == (3, 2)
    assert c.neuron_clustered.dtype == bool and c.residues == [1, 2, 4]


def test_build_report_refuses_other_directories(tmp_path):
    with pytest.raises(ReportError, match="not a run directory"):
        build_report(tmp_path)
    with pytest.raises(ReportError, match="no such directory"):
        build_report(tmp_path / "nope")


def test_sweep_report_from_a_sweep_directory(tmp_path):
    """A sweep directory as `groklab sweep` lays it out (no training: synthetic metrics)."""
    from groklab.config import apply_overrides, save_config
    from groklab.presets import get_preset

    sweep = tmp_path / "wd"
    runs = []
    for wd in (1.0, 0.3):
        for seed in (0, 1):
            name = f"optim.weight_decay={wd}__seed={seed}"
            cfg = apply_overrides(
                get_preset("smoke"), [f"optim.weight_decay={wd}", f"train.seed={seed}"]
            )
            rd = sweep / name
            rd.mkdir(parents=True)
            (rd / "config.toml").write_text(save_config(cfg))
            (rd / "manifest.json").write_text(json.dumps({"status": "completed"}))
            grok = 1000 if wd == 1.0 else 10**9  # wd 0.3 never groks within the budget
            synthetic.synthetic_metrics(np.arange(0, 3001, 50), grok=grok, seed=seed).to_parquet(
                rd / "metrics.parquet"
            )
            runs.append(
                {
                    "name": name,
                    "group": f"optim.weight_decay={wd}",
                    "seed": seed,
                    "overrides": [["optim.weight_decay", wd], ["train.seed", seed]],
                }
            )
    (sweep / "sweep.json").write_text(
        json.dumps(
            {
                "name": "wd",
                "description": "weight decay",
                "seed_keys": ["train.seed"],
                "analyses": [],
                "runs": runs,
            }
        )
    )
    res = build_report(sweep, static=False)
    assert res["sections"]["summary"] == "shown" and res["sections"]["grokking"] == "shown"
    assert res["sections"]["curves"] == "shown"
    assert "llc-ratio" not in res["sections"]  # not a multi-operation sweep
    page = (sweep / "report.html").read_text()
    assert 'id="sweep-runs"' in page and page.count("<tr>") >= 5
    assert 'data-fig="grokking-vs-optim-weight-decay"' in page


# --------------------------------------------------------------------------- command line
def _fake_run(root, name="fake"):
    """A run directory with config, manifest and metrics only (no training)."""
    from groklab.config import save_config
    from groklab.presets import get_preset

    rd = root / name
    rd.mkdir(parents=True)
    (rd / "config.toml").write_text(save_config(get_preset("smoke")))
    (rd / "manifest.json").write_text(json.dumps({"status": "completed", "seed": 0}))
    synthetic.synthetic_metrics(np.arange(0, 3001, 50), grok=1200).to_parquet(
        rd / "metrics.parquet"
    )
    return rd


def test_cli_report_prints_the_report_path_last(tmp_path):
    from typer.testing import CliRunner

    from groklab.cli import app

    rd = _fake_run(tmp_path)
    res = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["report", str(rd), "--no-static"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[-1] == f"report: {rd / 'report.html'}"
    assert "not available: progress" in res.output and "groklab analyze" not in lines[-1]
    assert (rd / "report.html").stat().st_size > 4_000_000  # plotly.js is inside
    assert not (rd / "figures").exists()


def test_cli_report_bad_input_is_one_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    from groklab.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "not a run directory" in res.output
    assert len(res.output.strip().splitlines()) == 1
    rd = _fake_run(tmp_path)
    res = runner.invoke(app, ["report", str(rd), "--formats", "png,gif"])
    assert res.exit_code == 2 and "'gif' is not allowed" in res.output
    assert not (rd / "report.html").exists()  # nothing written on bad input


def test_static_export_failure_keeps_the_html(tmp_path, monkeypatch):
    import kaleido

    def no_browser(*args, **kwargs):
        raise RuntimeError("Could not find Chrome")

    monkeypatch.setattr(kaleido, "write_fig_from_object_sync", no_browser)
    rd = _fake_run(tmp_path)
    res = build_report(rd, static=True)
    assert res["figures"] == [] and "install Chrome or Chromium" in res["static_error"]
    assert (rd / "report.html").exists()


# --------------------------------------------------------------------------- study figures
def test_per_op_loss_one_panel_per_run_raw_and_mean():
    m = _metrics(40)
    m["test/add/loss"], m["test/mul/loss"] = m["test/loss"], m["test/loss"] * 2
    fig = F.per_op_loss({"a": m, "b": m})
    assert len(fig.data) == 8  # 2 runs x 2 ops x (raw, mean)
    assert {t.xaxis for t in fig.data} == {"x", "x2"}
    shown = [t.name for t in fig.data if t.showlegend]
    assert shown == ["test add", "test mul"]  # one legend entry per operation


def test_steps_vs_variable_marks_censored_points_reference_and_bracket():
    pts = pd.DataFrame(
        {
            "wd": [0.1, 1.0],
            "g:mean": [500.0, 100.0],
            "g:std": [50.0, 0.0],
            "g:n_reached": [1, 2],
            "g:mean_lb": [800.0, 100.0],
            "n": [2, 2],
        }
    )
    fig = F.steps_vs_variable(
        pts, "wd", columns={"g": "grokked"}, reference={0.1: 400}, bracket=(0.2, 0.5), log_x=True
    )
    (lb,) = _traces(fig, "grokked: some runs never (lower bound)")
    assert list(lb.x) == [0.1] and list(lb.y) == [800.0]  # only the censored point
    assert list(_traces(fig, "grokked")[0].error_y.array) == [50.0, 0.0]
    assert _traces(fig, "paper") and fig.layout.shapes[0].x0 == 0.2
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"


def test_loss_spikes_marks_each_peak_at_its_loss():
    m = _metrics(40)
    fig = F.loss_spikes({"f32": m, "f64": m}, {"f32": [{"peak": 200}]})
    (peaks,) = _traces(fig, "spike peaks")
    assert list(peaks.x) == [200.0]
    assert peaks.y[0] == pytest.approx(m.set_index("step").loc[200, "train/loss"], rel=1e-6)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["f32: 1 spike(s)", "f64: 0 spike(s)"]


def test_phase_diagram_cells_labels_and_bad_input():
    from groklab.errors import ConfigError

    rows = [
        {"alpha": a, "train_size": n, "phase": ph, "final_test_acc": acc, "t_fit": 1, "t_gen": 9}
        for a, n, ph, acc in [
            (1, 50, "memorisation", 0.8),
            (1, 200, "comprehension", 0.95),
            (8, 50, "confusion", 0.1),
            (8, 200, "grokking", 0.91),
        ]
    ]
    fig = F.phase_diagram(rows, title="t")
    heat = fig.data[0]
    assert list(heat.x) == ["50", "200"] and list(heat.y) == ["1", "8"]
    # z indexes the phases in their canonical order (comprehension, grokking, ...)
    assert np.array_equal(heat.z, [[2, 0], [3, 1]])
    assert heat.text[1][1] == "grokking<br>91%<br>1→9"
    assert [t.name for t in fig.data[1:]] == [
        "comprehension",
        "grokking",
        "memorisation",
        "confusion",
    ]
    with pytest.raises(ConfigError, match="phase 'lost'"):
        F.phase_diagram([{**rows[0], "phase": "lost"}])
    with pytest.raises(ConfigError, match="'alpha' missing"):
        F.phase_diagram([{"train_size": 1, "phase": "grokking"}])


def test_omnigrok_curves_one_legend_entry_per_run():
    m = pd.DataFrame(
        {"step": [0, 10], "train/acc": [0, 1], "test/acc": [0, 0.5], "wnorm/total": [9, 8]}
    )
    fig = F.omnigrok_curves({"α=1": m, "α=8": m})
    assert [t.name for t in fig.data if t.showlegend] == ["α=1", "α=8"]
    assert len(fig.data) == 6 and min(fig.data[0].x) == 1  # step 0 drawn at 1 (log axis)


def test_llc_calibration_frames_the_recommended_setting():
    from types import SimpleNamespace as NS

    def res(eps, gamma, diverged=()):
        return NS(
            trace=np.linspace(1, 2, 40).reshape(2, 20),
            settings=NS(epsilon=eps, gamma=gamma, burnin=5),
            nbeta=3.0,
            llc=1.5,
            init_loss=0.3,
            diverged=list(diverged),
        )

    cal = NS(
        results=[res(1e-4, 10), res(1e-4, 100), res(1.0, 10, (1,)), res(1.0, 100, (0, 1))],
        ok=[True, True, False, False],
        reasons=[[], [], ["diverged"], ["diverged"]],
        recommended=1,
        step=40,
        subset="total",
    )
    fig = F.llc_calibration(cal)
    frames = [s for s in fig.layout.shapes if s.type == "rect" and s.line.color == "green"]
    assert [s.xref for s in frames] == ["x2 domain"]  # row 1 (ε=1e-4), column 2 (γ=100)
    titles = [a.text for a in fig.layout.annotations]
    assert "diverged" in titles[2] and "#b22222" in titles[2] and "OK" in titles[0]
    dotted = [t for t in fig.data if t.line.dash == "dot"]
    assert len(dotted) == 3  # the diverged chains


# --------------------------------------------------------------------------- one definition
def test_static_files_and_the_html_draw_the_same_figure_objects(tmp_path, monkeypatch):
    """The figures kaleido exports are the very objects the HTML embeds."""
    import kaleido

    from groklab.report.html import write_report

    exported = []

    def fake_kaleido(specs, **kw):  # records what would be rendered; no browser
        for spec in specs:
            exported.append(spec["fig"])
            spec["path"].write_bytes(b"\x89PNG")
        return ()

    monkeypatch.setattr(kaleido, "write_fig_from_object_sync", fake_kaleido)
    d = synthetic.synthetic_run_data(n_checkpoints=10, draws=20)
    secs = collect.run_sections(d)
    res = write_report(tmp_path / "r.html", "t", secs, formats=("png",))
    shown = [f for s in secs if s.absent is None for f in s.figures.values()]
    assert len(exported) == len(shown) == len(res["figures"]) >= 8
    import plotly.io as pio

    same = [
        pio.to_json(a) == pio.to_json(b.to_dict()) for a, b in zip(exported, shown, strict=True)
    ]
    assert all(same)
    page = (tmp_path / "r.html").read_text()
    blobs = re.findall(r'<script type="application/json" id="[^"]+-json">(.*?)</script>', page)
    embedded = [json.loads(b) for b in blobs]
    assert [e["layout"]["title"]["text"] for e in embedded] == [f.layout.title.text for f in shown]
    assert [len(e["data"]) for e in embedded] == [len(f.data) for f in shown]
    assert not list(tmp_path.glob("figures/.*.tmp"))  # renamed into place


def test_a_figure_kaleido_failed_to_render_is_an_error_not_a_missing_file(tmp_path, monkeypatch):
    """kaleido returns (does not raise) the error of a figure whose render failed or timed
    out; plotly.io.write_images drops it and the file is silently missing."""
    import kaleido

    from groklab.report.html import StaticExportError, write_static

    def one_times_out(specs, **kw):
        for spec in specs[1:]:
            spec["path"].write_bytes(b"\x89PNG")
        return (TimeoutError("render timed out"),)

    monkeypatch.setattr(kaleido, "write_fig_from_object_sync", one_times_out)
    figs = {"a": F.weight_norms(_metrics(10)), "b": F.weight_norms(_metrics(10))}
    with pytest.raises(StaticExportError, match="TimeoutError: render timed out"):
        write_static(figs, tmp_path, formats=("png",))
    assert list(tmp_path.iterdir()) == []  # neither a partial set nor temporary files


def test_analyze_figures_are_the_report_figures():
    """`groklab analyze` writes the run report's circuit and progress figures, not a copy."""
    from types import SimpleNamespace as NS

    from groklab.report.static import analysis_figures

    d = synthetic.synthetic_run_data(n_checkpoints=10, draws=20)
    op, c = next(iter(d.circuits.items()))
    snap = {
        "op": op,
        "step": c.step,
        "component_labels": c.labels,
        "key_freqs": c.key_freqs,
        "we_component_norms": c.we_norms.tolist(),
        "wl_component_norms": None if c.wl_norms is None else c.wl_norms.tolist(),
        "neuron_freq": None if c.neuron_freq is None else c.neuron_freq.tolist(),
        "neuron_share": None if c.neuron_share is None else c.neuron_share.tolist(),
        "neuron_clustered": None if c.neuron_clustered is None else c.neuron_clustered.tolist(),
        "cluster_threshold": c.cluster_threshold,
        "pca_coords": None if c.pca is None else c.pca.tolist(),
        "pca_explained": c.pca_explained,
        "circles": {k: v.tolist() for k, v in c.circles.items()},
        "residues": c.residues,
    }
    d.circuits = {op: collect.circuit_from_snapshot(snap)}
    report = {n: f for s in collect.run_sections(d) for n, f in s.figures.items()}
    figs = analysis_figures({op: NS(to_dict=lambda: snap)}, d.progress, d.phases)
    pairs = [
        ("fourier_norms", "fourier-norms"),
        ("neuron_clusters", "neuron-clusters"),
        ("embedding_pcs", "embedding"),
        ("progress", "progress-measures"),
    ]
    for ours, theirs in pairs:
        assert figs[ours].to_plotly_json() == report[theirs].to_plotly_json(), ours


def test_every_figure_function_is_used_by_a_writer():
    """Each figure function of groklab.report.figures is called by the report, a command or
    the static writers: none is left without a user."""
    import ast
    import inspect
    from pathlib import Path

    import plotly.graph_objects as go

    import groklab

    src = Path(groklab.__file__).parent
    writers = [
        *(src / "report" / "collect").glob("*.py"),
        src / "report" / "static.py",
        *(src / "commands").glob("*.py"),
    ]
    used = set()
    for path in writers:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.alias):
                used.add(node.name)
    figure_functions = [
        name
        for name in F.__all__
        if inspect.isfunction(getattr(F, name))
        and inspect.signature(getattr(F, name)).return_annotation in (go.Figure, "go.Figure")
    ]
    assert len(figure_functions) >= 20
    unused = [n for n in figure_functions if n not in used]
    assert not unused, f"figure functions no writer uses: {unused}"


def test_progress_figure_has_the_per_frequency_and_sparsity_panels() -> None:
    """The progress figure (report and `groklab analyze`) shows the excluded loss per key
    frequency beside the train loss, and the Gini / fit / accuracy measures in [0, 1]."""
    from groklab.report.collect.sections import progress_figures

    st = np.arange(0, 1000, 100)
    df = pd.DataFrame(
        {
            "step": st,
            "add/train_loss": np.exp(-st / 300) + 1e-3,
            "add/test_loss": np.exp(-st / 500) + 1e-2,
            "add/excluded_loss": np.ones(10),
            "add/excluded_loss/k3": np.full(10, 2.0),
            "add/excluded_loss/k17": np.full(10, 3.0),
            "add/gini_W_E": np.linspace(0, 1, 10),
            "add/test_acc": np.linspace(0, 1, 10),
            "sumsq/total": np.linspace(5, 1, 10),
        }
    )
    fig = progress_figures(df, ["add"])[""]
    by_name = {t.name: t for t in fig.data}
    # per-frequency panel: sorted by frequency, with the train loss as the reference
    assert [n for n in by_name if n.startswith("excluding")] == ["excluding 3", "excluding 17"]
    assert by_name["excluding 3"].xaxis == by_name["add/train_loss (reference)"].xaxis != "x"
    assert by_name["Gini of W_E Fourier norms"].yaxis == by_name["test accuracy"].yaxis
    assert by_name["sumsq/total"].yaxis not in {by_name["excluding 3"].yaxis, "y"}
    # without those columns: the two-panel figure (losses, weights)
    plain = progress_figures(df[["step", "add/train_loss", "sumsq/total"]], ["add"])[""]
    assert [t.name for t in plain.data] == ["add/train_loss", "sumsq/total"]
