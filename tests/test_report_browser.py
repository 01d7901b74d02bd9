"""Reports in a real browser: headless Chromium opens them over file:// with the network
blocked (Debian's ``chromium``; CI installs it). Screenshots go to ``artifacts/``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

import groklab
from groklab.report import build_report
from helpers.browser import find_chromium, inspect_page

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = pytest.mark.slow

# Hover the loss plot, then zoom it: both must work offline (plotly.js is embedded).
_INTERACT = r"""
(async function(){
  var gd = document.getElementById('fig-loss');
  var out = {};
  Plotly.Fx.hover(gd, [{curveNumber: 1, pointNumber: 3}]);
  await new Promise(function(r){ setTimeout(r, 100); });
  out.hover = Array.prototype.map.call(gd.querySelectorAll('.hoverlayer .hovertext'),
                                       function(e){ return e.textContent; });
  out.before = gd.layout.xaxis.range.slice();
  await Plotly.relayout(gd, {'xaxis.range': [out.before[0] + 0.3, out.before[1] - 0.3]});
  out.after = gd.layout.xaxis.range.slice();
  out.drawnAfterZoom = !!gd.querySelector('svg.main-svg .scatterlayer path');
  return JSON.stringify(out);
})()
"""


def _browser() -> str:
    exe = find_chromium()
    assert exe is not None, (
        "the browser test needs Chromium: apt-get install chromium (CI's .ci/run installs it)"
    )
    return exe


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory):
    """A tiny real mixed add/mul run, analysed (circuit + LLC), with its report written."""
    from groklab.analysis import llc
    from groklab.analysis.progress import analyze_run

    cfg = groklab.apply_overrides(
        groklab.get_preset("smoke"),
        [
            "data.p=11",
            "data.operations=add,mul",
            "data.train_size=100",
            "model.d_model=16",
            "model.n_heads=2",
            "model.d_head=8",
            "model.d_mlp=32",
            "train.steps=200",
            "train.eval_every=5",
            "train.checkpoint_every=50",
        ],
    )
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run = groklab.train(cfg, out=out)
    analyze_run(run)
    settings = llc.LLCSettings(chains=2, draws=20, burnin=10, batch_size=None)
    llc.llc_over_checkpoints(run, settings, every=50)
    res = build_report(out, static=True)
    return out, res


EXPECTED = {
    "loss",
    "accuracy",
    "progress-measures-add",
    "progress-measures-mul",
    "fourier-norms-add",
    "fourier-norms-mul",
    "neuron-clusters-add",
    "neuron-clusters-mul",
    "fourier-2d-add",
    "fourier-2d-mul",
    "embedding-add",
    "embedding-mul",
    "weight-norms",
    "llc",
    "llc-diagnostics",
    "llc-traces",
}


def test_run_report_renders_offline_in_chromium(reported_run):
    _, res = reported_run
    _browser()
    assert all(v == "shown" for v in res["sections"].values()), res["sections"]
    ARTIFACTS.mkdir(exist_ok=True)
    page, extra = inspect_page(
        res["html"], screenshot=ARTIFACTS / "report.png", timeout=120, script=_INTERACT
    )
    assert page.ready == "ok", page.page_errors
    assert page.console_errors == []
    assert page.requests == []  # nothing but the file itself: the report is self-contained
    plots = {p["fig"]: p for p in page.plots}
    assert set(plots) == EXPECTED
    for name, p in plots.items():
        assert p["drawn"] and p["traces"] > 0 and p["points"] > 0, (name, p)
    # every named subset of the mixed run is drawn in the loss figure
    assert plots["loss"]["traces"] >= 2 * 4  # train, test, test/add, test/mul: raw + mean
    interact = json.loads(extra)
    assert interact["hover"] and "step" in interact["hover"][0]
    assert interact["after"][0] > interact["before"][0] and interact["drawnAfterZoom"]
    shot = ARTIFACTS / "report.png"
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])
    assert width == 1280 and height > 4000  # the whole page, every section


def test_static_figures_are_the_report_figures(reported_run):
    out, res = reported_run
    assert res["static_error"] is None
    files = {p.name for p in (out / "figures").iterdir()}
    for name in EXPECTED:
        assert f"{name}.png" in files and f"{name}.svg" in files, name
    png = (out / "figures" / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">I", png[16:20])[0] == 2000  # 1000 px at scale 2
    svg = (out / "figures" / "loss.svg").read_text()
    assert svg.lstrip().startswith("<svg") and "train" in svg


def test_sweep_report_table_sorts_in_chromium(tmp_path):
    import numpy as np

    from groklab.config import apply_overrides, save_config
    from groklab.presets import get_preset
    from helpers import synthetic

    _browser()
    sweep = tmp_path / "sw"
    runs = []
    for frac, grok in ((0.3, 2000), (0.5, 900), (0.7, 400)):
        name = f"data.train_fraction={frac}"
        rd = sweep / name
        rd.mkdir(parents=True)
        cfg = apply_overrides(get_preset("smoke"), [f"data.train_fraction={frac}"])
        (rd / "config.toml").write_text(save_config(cfg))
        (rd / "manifest.json").write_text(json.dumps({"status": "completed"}))
        synthetic.synthetic_metrics(np.arange(0, 6001, 50), grok=grok).to_parquet(
            rd / "metrics.parquet"
        )
        runs.append(
            {"name": name, "group": name, "seed": 0, "overrides": [["data.train_fraction", frac]]}
        )
    info = {"name": "fractions", "seed_keys": ["train.seed"], "analyses": [], "runs": runs}
    (sweep / "sweep.json").write_text(json.dumps(info))
    res = build_report(sweep, static=False)
    sort = r"""
(function(){
  var t = document.getElementById('sweep-runs');
  var heads = Array.prototype.slice.call(t.tHead.rows[0].cells);
  var col = heads.findIndex(function(h){ return h.textContent === 'grokking_step'; });
  function column(){ return Array.prototype.map.call(t.tBodies[0].rows,
                       function(r){ return Number(r.cells[col].getAttribute('data-v')); }); }
  var before = column();
  heads[col].click(); var asc = column();
  heads[col].click(); var desc = column();
  return JSON.stringify({before: before, asc: asc, desc: desc});
})()
"""
    page, extra = inspect_page(
        res["html"], screenshot=ARTIFACTS / "sweep-report.png", timeout=120, script=sort
    )
    assert page.ready == "ok" and page.console_errors == [] and page.requests == []
    assert all(p["drawn"] and p["points"] > 0 for p in page.plots)
    order = json.loads(extra)
    assert sorted(order["before"]) == order["asc"] and order["desc"] == order["asc"][::-1]
    assert order["asc"][0] < order["asc"][-1]
