"""Omnigrok: the phase rule, per-layer norms, the norm constraint, the phase diagram."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

import groklab
from groklab.analysis.omnigrok import (
    ANALYSIS,
    PhaseRule,
    analyze_run,
    classify,
    delay_summary,
    layer_norms,
    settle_step,
    sweep_phase_table,
)
from groklab.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
)
from groklab.errors import ConfigError
from groklab.studies.omnigrok import omnigrok_phase_diagram
from groklab.train.norm import NormConstraint, make_norm_constraint, total_norm


def _metrics(train: list[float], test: list[float], every: int = 100) -> pd.DataFrame:
    return pd.DataFrame(
        {"step": [i * every for i in range(len(train))], "train/acc": train, "test/acc": test}
    )


def _digits_config(**kw: object) -> RunConfig:
    """Omnigrok's MLP on a small digits split; ``kw`` are dotted overrides."""
    cfg = RunConfig(
        name="og",
        data=DataConfig(task="digits", train_size=100),
        model=ModelConfig(arch="mlp", n_layers=3, d_mlp=200, init_scale=8.0, mlp_input="dense"),
        optim=OptimConfig(lr=3e-3, weight_decay=0.1, betas=(0.9, 0.999), warmup_steps=0),
        train=TrainConfig(
            steps=20, batch_size=50, loss="mse", eval_every=5, checkpoint_every=20, device="cpu"
        ),
    )
    return apply_overrides(cfg, [f"{k.replace('__', '.')}={v}" for k, v in kw.items()])


# ----------------------------------------------------------------------------- phase rule


@pytest.mark.parametrize(
    ("train", "test", "phase", "t_fit", "t_gen"),
    [
        # fits at 100, generalises at 100: comprehension
        ([0.2, 1.0, 1.0, 1.0], [0.1, 0.92, 0.95, 0.95], "comprehension", 100, 100),
        # generalises before it fits: comprehension
        ([0.2, 0.95, 0.99, 1.0], [0.1, 0.91, 0.93, 0.95], "comprehension", 200, 100),
        # fits at 100, test >= 0.9 only at 500 (5x later): grokking
        ([0.2, 1.0, 1.0, 1.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.5, 0.8, 0.91], "grokking", 100, 500),
        # fits at 200, generalises at 300 (1.5x): comprehension by the 2x ratio
        ([0.2, 0.5, 1.0, 1.0], [0.1, 0.3, 0.5, 0.9], "comprehension", 200, 300),
        # fits, never generalises: memorisation
        ([0.2, 1.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.4], "memorisation", 100, None),
        # never fits (even though test is decent): confusion
        ([0.2, 0.5, 0.9, 0.95], [0.1, 0.5, 0.9, 0.92], "confusion", None, 200),
    ],
)
def test_classify_known_runs(
    train: list[float], test: list[float], phase: str, t_fit: int | None, t_gen: int | None
) -> None:
    res = classify(_metrics(train, test))
    assert (res.phase, res.t_fit, res.t_gen) == (phase, t_fit, t_gen)
    assert res.final_test_acc == test[-1] and res.max_test_acc == max(test)
    assert math.isnan(res.final_wnorm)


def test_classify_rule_parameters() -> None:
    m = _metrics([0.2, 1.0, 1.0, 1.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.5, 0.8, 0.91])
    assert classify(m, PhaseRule(delay_ratio=6)).phase == "comprehension"  # 500 < 6 * 100
    assert classify(m, PhaseRule(min_delay=500)).phase == "comprehension"  # delay 400 < 500
    assert classify(m, PhaseRule(gen_acc=0.95)).phase == "memorisation"
    assert classify(m, PhaseRule(gen_acc=0.5)).t_gen == 300
    with pytest.raises(ConfigError, match="fit_acc"):
        PhaseRule(fit_acc=1.5)
    with pytest.raises(ConfigError, match="train/acc"):
        classify(pd.DataFrame({"step": [0], "test/acc": [0.1]}))


def test_settle_and_delay_summary() -> None:
    m = _metrics([0.5, 1.0, 1.0, 1.0, 1.0], [0.1, 0.6, 0.95, 0.9, 0.905])
    m["wnorm/total"] = [10.0, 9.0, 8.0, 7.0, 6.0]
    assert settle_step(m, "test/acc", tol=0.01) == 300  # 0.95 is 4.5 points off 0.905
    assert settle_step(m, "test/acc", tol=0.05) == 200
    s = delay_summary(m, gen_acc=0.9)
    assert (s["train_100"], s["test_50"], s["test_gen"], s["test_settle"]) == (100, 100, 200, 300)
    assert (s["wnorm_init"], s["wnorm_at_gen"], s["wnorm_final"]) == (10.0, 8.0, 6.0)


# ----------------------------------------------------------------------------- norms


def test_layer_norms_group_mlp_tensors_exactly() -> None:
    m = pd.DataFrame(
        {
            "step": [0, 10],
            "wnorm/embed.W_E": [3.0, 1.0],
            "wnorm/layers.0.b": [4.0, 0.0],
            "wnorm/layers.1.W": [1.0, 2.0],
            "wnorm/layers.1.b": [0.0, 0.0],
            "wnorm/unembed.W_U": [6.0, 1.0],
            "wnorm/unembed.b_U": [8.0, 0.0],
            "wnorm/total": [11.22, 2.45],
        }
    )
    ln = layer_norms(m)
    assert list(ln.columns) == [
        "step",
        "wnorm_layer/linear_1",
        "wnorm_layer/linear_2",
        "wnorm_layer/linear_3",
        "wnorm/total",
    ]
    assert ln["wnorm_layer/linear_1"].tolist() == [5.0, 1.0]
    assert ln["wnorm_layer/linear_3"].tolist() == [10.0, 1.0]
    tf = pd.DataFrame(
        {"step": [0], "wnorm/embed.W_E": [2.0], "wnorm/blocks.0.attn.W_Q": [3.0],
         "wnorm/blocks.0.attn.W_K": [4.0]}
    )  # fmt: skip
    assert layer_norms(tf)["wnorm_layer/blocks.0.attn"].tolist() == [5.0]


def test_norm_constraint_projects_onto_the_sphere() -> None:
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(4, 5, generator=gen)) for _ in range(3)]
    before = [p.detach().clone() for p in ps]
    NormConstraint(ps, 2.5).apply()
    assert float(total_norm(ps)) == pytest.approx(2.5, rel=1e-6)
    ratio = ps[0].detach() / before[0]
    torch.testing.assert_close(ps[2].detach(), before[2] * ratio[0, 0])  # one common factor
    assert make_norm_constraint(ps, OptimConfig()) is None
    init = float(total_norm(ps))
    ctl = make_norm_constraint(ps, OptimConfig(fixed_norm="initial"))
    assert ctl is not None and ctl.target == pytest.approx(init)


def test_fixed_norm_validation() -> None:
    for bad in ("abc", "-1", "0", "nan", "true"):
        with pytest.raises(ConfigError, match=r"optim\.fixed_norm"):
            apply_overrides(RunConfig(), [f"optim.fixed_norm={bad}"])
    assert apply_overrides(RunConfig(), ["optim.fixed_norm=12"]).optim.fixed_norm == 12.0
    assert apply_overrides(RunConfig(), ["optim.fixed_norm=initial"]).optim.fixed_norm == "initial"


def test_training_holds_the_norm_fixed(tmp_path: Path) -> None:
    run = groklab.train(_digits_config(optim__fixed_norm=20.0), out=tmp_path / "fixed")
    wn = run.metrics["wnorm/total"]
    assert len(wn) == 5 and all(abs(v - 20.0) < 1e-3 for v in wn)
    free = groklab.train(_digits_config(), out=tmp_path / "free")
    init = free.metrics["wnorm/total"].iloc[0]
    assert init > 60  # alpha = 8
    assert abs(free.metrics["wnorm/total"].iloc[-1] - init) > 0.5  # unconstrained, it moves
    held = groklab.train(_digits_config(optim__fixed_norm="initial"), out=tmp_path / "init")
    assert all(abs(v - init) < 1e-3 for v in held.metrics["wnorm/total"])
    # per-layer norms of the trained run agree with the saved weights
    w = held.weights_at(20)
    ln = layer_norms(held.metrics).iloc[-1]
    expect = torch.cat([w["embed.W_E"].flatten(), w["layers.0.b"]]).norm()
    assert ln["wnorm_layer/linear_1"] == pytest.approx(float(expect), rel=1e-5)


# ----------------------------------------------------------------------------- diagram


def test_phase_diagram_driver_runs_and_reuses_the_grid(tmp_path: Path) -> None:
    base = _digits_config(train__steps=10, train__checkpoint_every=10)
    table = omnigrok_phase_diagram(base, alphas=[1, 8], train_sizes=[60, 120], out=tmp_path)
    assert sorted(zip(table["alpha"], table["train_size"], strict=True)) == [
        (1.0, 60),
        (1.0, 120),
        (8.0, 60),
        (8.0, 120),
    ]
    assert set(table["phase"]) <= {"comprehension", "grokking", "memorisation", "confusion"}
    assert (tmp_path / "phase_table.csv").exists()
    mtime = (tmp_path / "alpha8-n60" / "metrics.parquet").stat().st_mtime_ns
    again = omnigrok_phase_diagram(
        base, alphas=[8], train_sizes=[60], out=tmp_path
    )  # completed run reused, not retrained
    assert (tmp_path / "alpha8-n60" / "metrics.parquet").stat().st_mtime_ns == mtime
    assert (
        again["final_test_acc"].iloc[0]
        == table.set_index("run").loc[str(tmp_path / "alpha8-n60"), "final_test_acc"]
    )
    # a grown grid trains only its new cell
    more = omnigrok_phase_diagram(base, alphas=[8, 2], train_sizes=[60], out=tmp_path)
    assert (tmp_path / "alpha8-n60" / "metrics.parquet").stat().st_mtime_ns == mtime
    assert more["alpha"].tolist() == [8.0, 2.0] and (tmp_path / "alpha2-n60").is_dir()

    # the sweep analysis and the study figures read the same runs
    res = analyze_run(tmp_path / "alpha8-n60", gen_acc=0.05)
    expect = classify(groklab.load_run(tmp_path / "alpha8-n60").metrics, PhaseRule(gen_acc=0.05))
    assert res["phase"] == expect.phase and res["t_gen"] == 0  # 5% is reached at once
    assert (res["alpha"], res["train_size"]) == (8.0, 60)
    names = ["alpha1-n60", "alpha8-n60", "alpha1-n120", "alpha8-n120"]
    spec = {"analysis_options": {ANALYSIS: {"gen_acc": 0.05}}}
    (tmp_path / "sweep.json").write_text(
        json.dumps({"spec": spec, "runs": [{"name": n} for n in names]})
    )
    swept = sweep_phase_table(tmp_path)
    assert len(swept) == 4 and (swept["t_gen"] == 0).all()  # the spec's rule was used
    from groklab.studies import _omnigrok_phase

    data = _omnigrok_phase(tmp_path, pd.DataFrame(), pd.DataFrame())
    assert set(data) == {"phase_diagram", "curves"}
    assert len(data["phase_diagram"]["results"]) == 4
    assert list(data["curves"]["runs"]) == ["α=1", "α=8"]  # both alphas at n = 60


# ----------------------------------------------------------------------------- science


@pytest.mark.slow
def test_large_init_memorises_then_generalises_and_fixed_norm_removes_the_delay(
    tmp_path: Path,
) -> None:
    """omnigrok-digits, shortened to 2,000 steps: alpha = 8 fits its 200 images long before
    test accuracy rises; alpha = 1 generalises at once; holding alpha = 8's weight norm at the
    norm alpha = 1 ends at (12.84 with this recipe) removes the delay."""
    base = groklab.get_preset("omnigrok-digits")
    base = replace(base, train=replace(base.train, steps=2_000, eval_every=50, device="cpu"))
    big = groklab.train(base, out=tmp_path / "a8").metrics
    acc = big.set_index("step")["test/acc"]
    t_fit = delay_summary(big)["train_99"]
    assert t_fit is not None and t_fit <= 1_000  # memorised (full run: 650)
    assert acc[t_fit] < 0.4  # ... without generalising (full run: 0.20)
    assert acc[2 * t_fit] < 0.5  # still not, twice as long after (full run: 0.39)
    assert acc[2_000] > acc[t_fit] + 0.2  # but test accuracy is rising (full run: 0.50)

    short = replace(base, train=replace(base.train, steps=300))
    one = groklab.train(
        replace(short, model=replace(short.model, init_scale=1.0)), out=tmp_path / "a1"
    ).metrics
    assert classify(one).phase == "comprehension"
    assert delay_summary(one)["test_gen"] <= 100  # test acc >= 0.9 by step 100

    fixed = replace(short, optim=replace(short.optim, fixed_norm=12.84))
    fx = groklab.train(fixed, out=tmp_path / "fixed").metrics
    assert classify(fx).phase == "comprehension"
    assert delay_summary(fx)["test_gen"] <= 100  # no delay left


def test_omnigrok_sweep_draws_its_study_figures(tmp_path: Path) -> None:
    """A tiny omnigrok-phase sweep: `groklab sweep` finds the study's figures and writes them
    as PNG (one kaleido session for both)."""
    from groklab import sweep as sw
    from groklab.report.static import draw_study_figures

    spec = sw.parse_spec(
        {
            "name": "og",
            "study": "omnigrok-phase",
            "base": _spec_base(),
            "analyses": [f"groklab.analysis.omnigrok:{analyze_run.__name__}"],
            "grid": {"model.init_scale": [1.0, 8.0], "data.train_size": [60]},
        }
    )
    res = sw.run_sweep(spec, tmp_path / "og", progress=False)
    assert res.n_failed == 0
    paths = draw_study_figures(tmp_path / "og")
    assert sorted(p.name for p in paths) == ["curves.png", "phase_diagram.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def _spec_base() -> dict[str, object]:
    from groklab.config import config_to_dict

    d = config_to_dict(_digits_config(train__steps=10, train__checkpoint_every=10))
    d.pop("name", None)
    return d
