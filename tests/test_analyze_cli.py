"""`groklab analyze`: summary, cache, figures and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import groklab
from groklab.cli import app

runner = CliRunner(env={"COLUMNS": "200"})  # a wide console: no wrapped summary lines


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
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
            "train.steps=30",
            "train.eval_every=10",
            "train.checkpoint_every=10",
        ],
    )
    out = tmp_path_factory.mktemp("runs") / "mixed"
    groklab.train(cfg, out=out)
    return out


def test_analyze_mixed_run_summary_and_cache(run_dir):
    res = runner.invoke(app, ["analyze", str(run_dir), "--every", "20", "--no-figures"])
    assert res.exit_code == 0, res.output
    out = res.output
    for text in (
        "add: key frequencies",
        "mul: key frequencies (discrete log, generator 2)",
        "clustered neurons",
        "logit fit variance explained",
        "memorisation",
        "circuit formation",
        "grokking step",
    ):
        assert text in out, text
    analysis = run_dir / "analysis"
    assert len(list(analysis.glob("progress-*.parquet"))) == 1
    assert {p.name.split("-")[1] for p in analysis.glob("snapshot-*.json")} == {"add", "mul"}
    phases = json.loads((analysis / "phases.json").read_text())
    assert phases["memorisation"][0] == 0
    assert not (run_dir / "figures").exists()

    again = runner.invoke(app, ["analyze", str(run_dir), "--every", "20", "--no-figures"])
    assert again.exit_code == 0 and "from cache" in again.output
    other = runner.invoke(
        app,
        [
            "analyze",
            str(run_dir),
            "--every",
            "20",
            "--key-freqs",
            "1,2",
            "--op",
            "add",
            "--no-figures",
        ],
    )
    assert other.exit_code == 0 and "from cache" not in other.output
    assert "add: key frequencies" in other.output and "mul:" not in other.output
    assert len(list(analysis.glob("progress-*.parquet"))) == 2


def test_analyze_writes_figures(tmp_path):
    cfg = groklab.apply_overrides(
        groklab.get_preset("smoke"),
        [
            "data.p=7",
            "model.d_model=8",
            "model.n_heads=1",
            "model.d_head=8",
            "model.d_mlp=16",
            "train.steps=20",
            "train.eval_every=10",
            "train.checkpoint_every=10",
        ],
    )
    groklab.train(cfg, out=tmp_path / "run")
    res = runner.invoke(app, ["analyze", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    figs = sorted(p.name for p in (tmp_path / "run" / "figures").glob("*.png"))
    assert figs == [
        "embedding_pcs.png",
        "fourier_2d.png",
        "fourier_norms.png",
        "neuron_clusters.png",
        "progress.png",
    ]
    assert all(p.stat().st_size > 1000 for p in (tmp_path / "run" / "figures").glob("*.png"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--every", "0"], "--every"),
        (["--key-freqs", "a,b"], "--key-freqs"),
        (["--key-freqs", "99"], "key frequency 99"),
        (["--op", "div"], "not in this run"),
    ],
)
def test_analyze_bad_options_fail_with_one_line(run_dir, args, message):
    res = runner.invoke(app, ["analyze", str(run_dir), "--no-figures", *args])
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output


def test_analyze_not_a_run(tmp_path):
    res = runner.invoke(app, ["analyze", str(tmp_path)])
    assert res.exit_code == 2
    assert "not a groklab run directory" in res.output
