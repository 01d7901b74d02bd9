"""Sweeps: spec parsing and run names, the executor (skip, resume, failures), the summary,
the bisection, the CLI, and a sweep killed mid-way and re-launched."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from groklab import sweep as sw
from groklab.cli import app
from groklab.errors import ConfigError
from groklab.store import read_manifest, writer_alive
from groklab.studies import study_data
from groklab.sweep import bisection as sweep_bisection
from groklab.sweep import executor as sweep_executor

TINY = """
name = "tiny"
seeds = [0, 1]
analyses = ["summary"]

[base.data]
p = 13
train_fraction = 0.6

[base.model]
d_model = 16
n_heads = 2
d_head = 8
d_mlp = 32

[base.optim]
lr = 1e-2
warmup_steps = 2

[base.train]
steps = {steps}
eval_every = 10
checkpoint_every = {ckpt}
device = "cpu"

[grid]
"optim.weight_decay" = [1.0, 0.3]
"""


def _spec_file(tmp_path: Path, *, steps: int = 60, ckpt: int = 20, extra: str = "") -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(TINY.format(steps=steps, ckpt=ckpt) + extra)
    return p


def _files(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file of a run → (mtime_ns, size), to prove nothing was rewritten."""
    return {
        str(f.relative_to(run_dir)): (f.stat().st_mtime_ns, f.stat().st_size)
        for f in sorted(run_dir.rglob("*"))
        if f.is_file() and f.name != ".lock"
    }


# ----------------------------------------------------------------------------- spec


def test_expand_names_grid_points_and_seeds() -> None:
    spec = sw.parse_spec(
        {
            "name": "s",
            "preset": "smoke",
            "set": ["train.steps=10"],
            "seeds": [0, 1],
            "grid": {"optim.weight_decay": [1.0, 0.3], "optim.lr": [1e-3]},
            "points": [
                {"label": "add=0.30", "data.operations": ["add", "mul"], "data.shares": [0.3, 0.7]},
                {"data.train_fraction": 0.4},
            ],
        }
    )
    runs = sw.expand(spec)
    assert len(runs) == 2 * 2 * 1 * 2
    names = [r.name for r in runs]
    assert names[0] == "add=0.30__optim.weight_decay=1.0__optim.lr=0.001__seed=0"
    assert "data.train_fraction=0.4__optim.weight_decay=0.3__optim.lr=0.001__seed=1" in names
    assert len(set(names)) == len(names)
    r = runs[0]
    assert r.group == "add=0.30__optim.weight_decay=1.0__optim.lr=0.001"
    assert r.config.data.shares == (0.3, 0.7)
    assert r.config.optim.weight_decay == 1.0 and r.config.train.seed == 0
    assert r.config.train.steps == 10 and r.config.name == r.name
    assert runs[1].config.train.seed == 1
    # seeds may set the split seed too
    spec2 = replace(spec, seed_keys=("train.seed", "data.split_seed"))
    assert all(x.config.data.split_seed == x.seed for x in sw.expand(spec2))


def test_run_names_are_filesystem_safe_and_unique() -> None:
    assert sw.run_name([("optim.weight_decay", 0.3)], 1) == "optim.weight_decay=0.3__seed=1"
    assert sw.run_name([("data.shares", [0.3, 0.7])]) == "data.shares=0.3-0.7"
    assert sw.run_name([("name", "a/b c")]) == "name=a_b_c"
    assert sw.run_name([]) == "base"
    long = sw.run_name([(f"optim.k{i}", "x" * 20) for i in range(10)])
    assert len(long) <= 150 and "~" in long
    # two values that sanitise to the same text still get distinct directories
    spec = sw.parse_spec({"grid": {"name": ["a b", "a_b"]}})
    names = [r.name for r in sw.expand(spec)]
    assert len(set(names)) == 2 and all(n.startswith("name=a_b") for n in names)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"grdi": {}}, "unknown key 'grdi'"),
        ({"grid": {"optim.wd": [1]}}, "optim.wd"),
        ({"grid": {"optim.weight_decay": [-1]}}, "optim.weight_decay"),
        ({"grid": {"optim.weight_decay": []}}, "is empty"),
        ({"seeds": [0], "grid": {"train.seed": [1, 2]}}, "also set by seeds"),
        ({"seeds": [0, 0]}, "repeats"),
        ({"analyses": ["nope"]}, "'nope' is unknown"),
        ({"analyses": ["no_such_module_xyz:fn"]}, "cannot be imported"),
        ({"seed_keys": ["optim.lr"]}, "seed_keys"),
        ({"preset": "nope"}, "preset 'nope'"),
        ({"bisect": {"key": "data.train_fraction", "lo": 0.5, "hi": 0.1}}, "lo < hi"),
        ({"analysis_options": {"llc": {}}}, "not in analyses"),
    ],
)
def test_bad_specs_name_the_field(spec: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        sw.parse_spec(spec)


def test_missing_analysis_function_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sw.ANALYSES, "ghost", "groklab.sweep:no_such_function")
    with pytest.raises(ConfigError, match=r"needs groklab.sweep.no_such_function"):
        sw.resolve_analysis("ghost")
    monkeypatch.setitem(sw._REQUIRES, "ghost", ("groklab.nothing_here", "f"))
    with pytest.raises(ConfigError, match=r"needs groklab\.nothing_here"):
        sw.resolve_analysis("ghost")


def test_shipped_studies() -> None:
    ours = {"data-fraction", "multi-op-ratio", "precision", "weight-decay"}
    assert ours <= set(sw.list_studies())  # other parts of the product ship studies too
    mo = sw.expand(sw.load_spec("multi-op-ratio"))
    shares = [r.config.data.shares for r in mo]
    assert [s[0] for s in shares] == pytest.approx([0.30 + 0.05 * i for i in range(9)])
    assert all(abs(sum(s) - 1) < 1e-9 for s in shares)
    assert {r.config.data.train_size for r in mo} == {16_900}
    assert {r.config.data.operations for r in mo} == {("add", "mul")}
    assert mo[0].name == "add=0.30__seed=0"
    wd = sw.expand(sw.load_spec("weight-decay"))
    assert sorted({r.config.optim.weight_decay for r in wd}) == [0.1, 0.3, 1.0]
    pr = sw.expand(sw.load_spec("precision"))
    assert {r.config.train.loss_dtype for r in pr} == {"float32", "float64"}
    df = sw.load_spec("data-fraction")
    assert df.bisect is not None and df.bisect.key == "data.train_fraction"
    assert {r.config.data.train_fraction for r in sw.expand(df)} >= {0.95, 0.5, 0.4, 0.3}
    # CLI-style overrides and seeds apply to every run
    small = sw.load_spec("multi-op-ratio", sets=["data.p=59", "data.train_size=4607"], seeds=[3])
    runs = sw.expand(small)
    assert {(r.config.data.p, r.config.data.train_size, r.seed) for r in runs} == {(59, 4607, 3)}


# ----------------------------------------------------------------------------- executor


def test_run_many_skips_completed_and_isolates_failures(tmp_path: Path, make_config) -> None:
    good = [make_config(name=f"g{i}", train={"seed": i}) for i in range(2)]
    bad = make_config(name="bad", data={"train_size": 10_000})  # more problems than exist
    outs = [tmp_path / "g0", tmp_path / "bad", tmp_path / "g1"]
    res = sw.run_many([good[0], bad, good[1]], outs, progress=True)  # the live display too
    assert [r["status"] for r in res] == ["completed", "failed", "completed"]
    assert [r["action"] for r in res] == ["started", None, "started"]
    assert "train_size=10000" in res[1]["error"] and "\n" not in res[1]["error"]
    assert all(r["out"] == str(o.resolve()) for r, o in zip(res, outs, strict=True))

    before = {o: _files(o) for o in (outs[0], outs[2])}
    again = sw.run_many([good[0], bad, good[1]], outs, progress=False)
    assert [r["action"] for r in again] == ["skipped", None, "skipped"]
    assert {o: _files(o) for o in (outs[0], outs[2])} == before

    # a directory holding a different run is reported, and left exactly as it was
    other = make_config(name="g0", optim={"weight_decay": 0.5})
    res = sw.run_many([other], [outs[0]], progress=False)
    assert res[0]["status"] == "failed" and "different run" in res[0]["error"]
    assert "optim.weight_decay" in res[0]["error"]
    assert _files(outs[0]) == before[outs[0]]

    with pytest.raises(ConfigError, match="share one out dir"):
        sw.run_many([good[0], good[1]], [outs[0], outs[0]], progress=False)
    with pytest.raises(ConfigError, match="backend"):
        sw.run_many([good[0]], [outs[0]], backend="slurm", progress=False)


def test_analyses_run_once_and_failures_are_recorded(
    tmp_path: Path, make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def counting(run_dir: Path, *, scale: int = 1) -> dict:
        calls.append(run_dir)
        return {"answer": 42 * scale, "curve": [1, 2, 3]}

    def broken(run_dir: Path) -> dict:
        raise RuntimeError("analysis exploded")

    monkeypatch.setitem(sw.ANALYSES, "count", counting)
    monkeypatch.setitem(sw.ANALYSES, "broken", broken)
    cfgs = [make_config(name=f"r{i}", train={"seed": i}) for i in range(2)]
    outs = [tmp_path / "r0", tmp_path / "r1"]
    res = sw.run_many(
        cfgs, outs, progress=False, analyses=["count"], analysis_options={"count": {"scale": 2}}
    )
    assert [r["analyses"]["count"]["answer"] for r in res] == [84, 84]
    assert len(calls) == 2
    res = sw.run_many(
        cfgs, outs, progress=False, analyses=["count"], analysis_options={"count": {"scale": 2}}
    )
    assert len(calls) == 2 and all(r["action"] == "skipped" for r in res)
    res = sw.run_many(cfgs, outs, progress=False, analyses=["count"])  # new options: rerun
    assert len(calls) == 4 and res[0]["analyses"]["count"]["answer"] == 42
    res = sw.run_many(cfgs, outs, progress=False, analyses=["broken"])
    assert [r["status"] for r in res] == ["failed", "failed"]
    assert "analysis exploded" in res[0]["error"]


def test_ray_backend_without_ray_gives_install_hint(
    tmp_path: Path, make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'groklab\[ray\]'"):
        sw.run_many([make_config()], [tmp_path / "r"], backend="ray", progress=False)
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- summary


def test_aggregate_counts_never_grokked_runs() -> None:
    runs = pd.DataFrame(
        {
            "run": ["a0", "a1", "a2", "b0", "b1", "b2", "c0"],
            "group": ["a", "a", "a", "b", "b", "b", "c"],
            "status": ["completed"] * 6 + ["failed"],
            "optim.weight_decay": [1.0] * 3 + [0.1] * 3 + [0.3],
            "seed": [0, 1, 2, 0, 1, 2, 0],
            "final_step": [500, 500, 500, 900, 900, 900, None],
            "grokking_step": [100, 200, None, 300, None, None, None],
            "final:test/acc": [1.0, 1.0, 0.5, 1.0, 0.2, 0.4, None],
        }
    )
    pts = sw.aggregate_summary(runs).set_index("group")
    a, b, c = pts.loc["a"], pts.loc["b"], pts.loc["c"]
    assert (a["n"], a["grokking_step:n_reached"]) == (3, 2)
    assert a["grokking_step:mean"] == 150
    assert a["grokking_step:std"] == pytest.approx(math.sqrt(5000))
    assert a["grokking_step:median"] == 200  # never-grokked = +inf, median still finite
    assert a["grokking_step:mean_lb"] == pytest.approx((100 + 200 + 500) / 3)
    assert (b["grokking_step:n_reached"], b["grokking_step:mean"]) == (1, 300)
    assert pd.isna(b["grokking_step:median"])  # most never grokked: median unknown
    assert b["grokking_step:mean_lb"] == pytest.approx((300 + 900 + 900) / 3)
    assert b["final:test/acc:mean"] == pytest.approx(1.6 / 3)
    assert (c["n_runs"], c["n"], c["n_failed"]) == (1, 0, 1)
    assert a["optim.weight_decay"] == 1.0


def test_sweep_summary_and_cli(tmp_path: Path) -> None:
    spec = _spec_file(tmp_path)
    out = tmp_path / "sw"
    runner = CliRunner()
    r = runner.invoke(app, ["sweep", str(spec), "--out", str(out), "-w", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert "optim.weight_decay=0.3" in r.output and "summary:" in r.output
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == [
        "optim.weight_decay=0.3__seed=0",
        "optim.weight_decay=0.3__seed=1",
        "optim.weight_decay=1.0__seed=0",
        "optim.weight_decay=1.0__seed=1",
    ]
    runs = pd.read_parquet(out / "summary.parquet")
    pts = pd.read_parquet(out / "points.parquet")
    assert len(runs) == 4 and len(pts) == 2
    assert set(runs["status"]) == {"completed"}
    assert {"memorisation_step", "grokking_step", "final:test/acc", "summary:grokking_step"} <= set(
        runs.columns
    )
    assert list(runs["optim.weight_decay"]) == [1.0, 1.0, 0.3, 0.3]
    # the per-run steps agree with the run's own summary
    from groklab import load_run

    for _, row in runs.iterrows():
        s = load_run(out / row["run"]).summary()
        got = None if pd.isna(row["memorisation_step"]) else int(row["memorisation_step"])
        assert got == s["memorisation_step"]

    # the explicit `run` subcommand is the same command; everything is skipped now
    r2 = runner.invoke(app, ["sweep", "run", str(spec), "--out", str(out), "-w", "1", "-q"])
    assert r2.exit_code == 0, r2.output
    pd.testing.assert_frame_equal(pd.read_parquet(out / "summary.parquet"), runs)

    st = runner.invoke(app, ["sweep", "status", str(out)])
    assert st.exit_code == 0 and "completed: 4" in st.output

    # the same names with another base config: a different sweep, refused before anything is
    # touched (exit 2, one line); the summary keeps the old runs' results as they are
    before = {n: _files(out / n) for n in names}
    sweep_file = (out / "sweep.json").read_bytes()
    r3 = runner.invoke(
        app, ["sweep", str(spec), "--out", str(out), "-w", "1", "-q", "--set", "train.steps=70"]
    )
    assert r3.exit_code == 2, r3.output
    assert "changes run" in r3.output and "--out" in r3.output
    assert {n: _files(out / n) for n in names} == before
    assert (out / "sweep.json").read_bytes() == sweep_file
    pd.testing.assert_frame_equal(pd.read_parquet(out / "summary.parquet"), runs)

    dry = runner.invoke(app, ["sweep", str(spec), "--dry-run", "--only", "*0.3__seed=1"])
    assert dry.exit_code == 0 and "1 runs" in dry.output

    bad = runner.invoke(app, ["sweep", str(tmp_path / "missing.toml")])
    assert bad.exit_code == 2 and "no such spec file" in bad.output
    bad = runner.invoke(app, ["sweep", "status", str(tmp_path)])
    assert bad.exit_code == 2 and "not a sweep directory" in bad.output


def test_bisection_finds_the_critical_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search logic against a known step function: generalises iff fraction >= 0.37."""
    trained: list[float] = []

    def fake_run_many(configs, outs, **kw):
        for c in configs:
            trained.append(c.data.train_fraction)
        return [{"out": str(o), "status": "completed", "error": None} for o in outs]

    def fake_generalised(out: Path, b) -> bool:
        return float(out.name.split("=")[1].split("__")[0]) >= 0.37

    # bisect_sweep looks both up in its own module, not in the package namespace
    monkeypatch.setattr(sweep_executor, "run_many", fake_run_many)
    monkeypatch.setattr(sweep_bisection, "_generalised", fake_generalised)
    spec = sw.parse_spec(
        {
            "seeds": [0, 1, 2],
            "bisect": {"key": "data.train_fraction", "lo": 0.1, "hi": 0.9, "tol": 0.01},
        }
    )
    res, runs = sw.bisect_sweep(spec, tmp_path, known=[], workers=1, progress=False)
    assert res["lo"] < 0.37 <= res["hi"] and res["hi"] - res["lo"] <= 0.01
    assert res["estimate"] == pytest.approx(0.37, abs=0.01)
    assert len(runs) == 3 * len(set(trained))
    assert json.loads((tmp_path / "bisect.json").read_text())["hi"] == res["hi"]
    # with 6 workers and 3 seeds, each round tries 2 points: fewer rounds
    trained.clear()
    res2, _ = sw.bisect_sweep(spec, tmp_path / "w6", known=[], workers=6, progress=False)
    assert res2["lo"] < 0.37 <= res2["hi"]
    # an end that already generalises is reported, not bisected
    spec_lo = replace(spec, bisect=replace(spec.bisect, lo=0.5))
    res3, _ = sw.bisect_sweep(spec_lo, tmp_path / "lo", known=[], progress=False)
    assert res3["estimate"] is None and "below it" in res3["note"]


def test_bisection_verdict_is_a_majority_of_seeds_on_real_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the executor is replaced: it writes each run's metrics.parquet, and the verdict
    reads them. Seed s reaches test/acc 0.99 iff train_fraction >= (0.30, 0.45, 0.60)[s], so
    any-seed would find 0.30, all-seeds 0.60, and the majority (2 of 3) 0.45."""
    first = {0: 0.30, 1: 0.45, 2: 0.60}

    def fake_run_many(configs, outs, **kw):
        for c, o in zip(configs, outs, strict=True):
            v, s = c.data.train_fraction, c.train.seed
            steps = [0, 100, 200, 300]
            # Every run memorises; test accuracy reaches 0.99 at step 300 only where the
            # seed generalises, else it tops out at 0.985 (below the threshold).
            test_acc = [0.01, 0.5, 0.9, 0.995 if v >= first[s] else 0.985]
            o.mkdir(parents=True, exist_ok=True)
            metrics = {"step": steps, "train/acc": [0.1, 1.0, 1.0, 1.0], "test/acc": test_acc}
            pd.DataFrame(metrics).to_parquet(o / "metrics.parquet")
        return [{"out": str(o), "status": "completed", "error": None} for o in outs]

    monkeypatch.setattr(sweep_executor, "run_many", fake_run_many)
    spec = sw.parse_spec(
        {
            "seeds": [0, 1, 2],
            "bisect": {"key": "data.train_fraction", "lo": 0.1, "hi": 0.9, "tol": 0.01},
        }
    )
    res, _ = sw.bisect_sweep(spec, tmp_path, known=[], workers=1, progress=False)
    assert res["lo"] < 0.45 <= res["hi"] and res["hi"] - res["lo"] <= 0.01
    for h in res["history"]:  # every point: the seeds that got there, and the majority
        n = sum(h["value"] >= t for t in first.values())
        assert (h["n_generalised"], h["n"], h["generalised"]) == (n, 3, n >= 2)
    # Points where one seed or two seeds generalised were both tried: majority decided them.
    assert {1, 2} <= {h["n_generalised"] for h in res["history"]}


# ----------------------------------------------------------------------------- kill + resume


@pytest.mark.slow
def test_killed_sweep_relaunches_without_rerunning_and_matches(tmp_path: Path) -> None:
    spec = _spec_file(tmp_path, steps=600, ckpt=50)
    ref = tmp_path / "ref"
    killed = tmp_path / "killed"
    sw.run_sweep(sw.load_spec(spec), ref, workers=1, progress=False)

    cmd = [sys.executable, "-m", "groklab.cli", "sweep", str(spec), "--out", str(killed)]
    cmd += ["-w", "2", "-q", "--no-figures"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL)
    run_dirs = [killed / r.name for r in sw.expand(sw.load_spec(spec))]
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            st = [read_manifest(d).get("status") for d in run_dirs]
            partial = [
                d
                for d, s in zip(run_dirs, st, strict=True)
                if s == "running" and (d / "state.safetensors").exists()
            ]
            if "completed" in st and partial:
                break
            assert proc.poll() is None, "the sweep finished before it could be killed"
            time.sleep(0.005)
        else:
            pytest.fail("no moment with one run done and one half done")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers at once
        proc.wait()
    # the workers die a moment after the signal; their run locks go with them
    gone = time.time() + 60
    while any(writer_alive(d) for d in run_dirs) and time.time() < gone:
        time.sleep(0.05)

    done = [d for d in run_dirs if read_manifest(d).get("status") == "completed"]
    before = {d: _files(d) for d in done}
    st = sw.sweep_status(killed).set_index("run")
    assert "stopped" in set(st["status"])  # a killed run is shown as stopped, not running

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for d in done:  # nothing completed was re-run: every file it had is untouched ...
        after = _files(d)
        assert {k: after.get(k) for k in before[d]} == before[d]
        # ... and only an analysis the kill interrupted may have been added
        assert all(k.startswith("analysis/") for k in set(after) - set(before[d]))
    resumed = [read_manifest(d).get("resumed_from_step") for d in run_dirs if d not in done]
    assert any(s is not None and s > 0 for s in resumed)  # the half-done run went on
    a = pd.read_parquet(ref / "summary.parquet")
    b = pd.read_parquet(killed / "summary.parquet")
    pd.testing.assert_frame_equal(a, b)  # nothing lost: identical to an uninterrupted sweep
    assert set(b["status"]) == {"completed"}


# ----------------------------------------------------------------------------- figures


def test_study_figures_from_a_tiny_multi_op_sweep(tmp_path: Path) -> None:
    spec = sw.parse_spec(
        {
            "name": "mo",
            "study": "multi-op-ratio",
            "base": {
                "data": {"p": 7, "operations": ["add", "mul"], "train_size": 60},
                "model": {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32},
                "train": {"steps": 30, "eval_every": 5, "checkpoint_every": 10, "device": "cpu"},
            },
            "points": [
                {"label": "add=0.30", "data.shares": [0.3, 0.7]},
                {"label": "add=0.50", "data.shares": [0.5, 0.5]},
            ],
        }
    )
    out = tmp_path / "mo"
    res = sw.run_sweep(spec, out, progress=False)
    assert res.n_failed == 0
    runs = res.runs.set_index("run")
    assert runs.loc["add=0.30", "share:add"] == pytest.approx(0.3)
    assert {"grokking_step:test/add", "grokking_step:test/mul"} <= set(runs.columns)
    assert "grokking_step:test/add:mean" in res.points.columns
    # an LLC curve cached the way groklab.analysis.llc caches it
    for name, peak in (("add=0.30", 10), ("add=0.50", 20)):
        d = out / name / "analysis" / "llc"
        d.mkdir(parents=True)
        pd.DataFrame(
            {
                "step": [0, 10, 20, 30],
                "llc": [1.0, 3.0 if peak == 10 else 2.0, 2.0 if peak == 10 else 3.0, 1.5],
            }
        ).to_parquet(d / "llc-total-abc.parquet")
    r = CliRunner().invoke(app, ["sweep", "figures", str(out)])
    assert r.exit_code == 0, r.output
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs == ["grok_step_vs_share.png", "llc_curves.png", "per_op_test_loss.png"]
    assert all((out / "figures" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_precision_study_runs_the_spike_detector(tmp_path: Path) -> None:
    raw = {
        "name": "pr",
        "study": "precision",
        "analyses": ["spikes"],
        "analysis_options": {"spikes": {"window": 3}},
        "base": {
            "data": {"p": 7, "train_fraction": 0.6},
            "model": {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32},
            "train": {"steps": 20, "eval_every": 2, "checkpoint_every": 10, "device": "cpu"},
        },
        "grid": {"train.loss_dtype": ["float32", "float64"]},
    }
    spec = sw.parse_spec(raw)
    res = sw.run_sweep(spec, tmp_path / "pr", progress=False)
    assert res.n_failed == 0
    assert {"spikes:n", "spikes:first_step", "spikes:n_test_loss"} <= set(res.runs.columns)
    assert not (tmp_path / "pr" / "figures").exists()  # the engine draws nothing
    data = study_data(tmp_path / "pr")
    assert list(data) == ["loss_spikes"]
    assert sorted(data["loss_spikes"]["curves"]) == sorted(res.runs["run"])
    # `groklab sweep` draws them after the run (here: nothing left to train)
    import tomli_w

    spec_file = tmp_path / "pr.toml"
    spec_file.write_text(tomli_w.dumps(raw))
    r = CliRunner().invoke(app, ["sweep", str(spec_file), "--out", str(tmp_path / "pr"), "-q"])
    assert r.exit_code == 0, r.output
    png = tmp_path / "pr" / "figures" / "loss_spikes.png"
    assert f"figure: {png}" in r.output.replace("\n", "")
    assert png.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(
        (tmp_path / "pr" / res.runs["run"][0] / "analysis" / "spikes.json").read_text()
    )
    assert saved["rule"] == {"window": 3, "rise": 1.0}


def test_cli_device_flows_to_every_run(tmp_path: Path) -> None:
    """--device sets train.device of every run, checked before anything is created."""
    spec = _spec_file(tmp_path, steps=20, ckpt=10)
    spec.write_text(spec.read_text().replace('device = "cpu"', 'device = "cuda"'))
    runner = CliRunner()
    out = tmp_path / "s"
    base = ["sweep", str(spec), "--out", str(out), "-w", "1", "-q", "--seeds", "0"]
    # bad values and a device this machine lacks (local backend): exit 2, nothing on disk
    for extra, says in (
        (["--device", "tpu"], "train.device"),
        (["--gpus-per-run", "0"], "gpus_per_run"),
        (["--gpus-per-run", "1.5"], "gpus_per_run"),
        *([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA device")]),
    ):
        r = runner.invoke(app, [*base, *extra])
        assert r.exit_code == 2, r.output
        assert says in r.output
        assert not out.exists()
    r = runner.invoke(app, [*base, "--device", "cpu"])  # the spec's cuda, replaced
    assert r.exit_code == 0, r.output
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(runs) == 2
    for run in runs:
        assert 'device = "cpu"' in (run / "config.toml").read_text()
