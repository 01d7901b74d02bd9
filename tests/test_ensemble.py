"""Many seeds at once: a stack of K models equals K models trained alone, each a normal run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from groklab.cli import app
from groklab.config import RunConfig, parse_seeds
from groklab.errors import ConfigError
from groklab.run import load_run
from groklab.train import loop
from groklab.train.ensemble import check_stackable, seed_configs, train_many
from groklab.train.loop import run_training
from helpers.interrupt import ctrl_c_at


def _configs(k: int = 3, *, seeds: list[int] | None = None, **kw) -> list[RunConfig]:
    base = {"train": {}, "data": {}, "model": {}, "optim": {}}
    for sec, v in kw.items():
        base[sec] = v
    return [
        tiny_config(
            name=f"m{s}",
            train={**base["train"], "seed": s},
            data={**base["data"], "split_seed": s},
            model=base["model"],
            optim=base["optim"],
        )
        for s in (seeds if seeds is not None else range(k))
    ]


# Stacked and alone, a model runs the same arithmetic in another float order: the batched
# kernels' summation order depends on the stack size and on the CPU (bit-identical on one
# Intel machine, not on an AMD EPYC), and training amplifies a difference step by step. The
# scale of "another order" is the float32 run's distance from the same run in float64;
# ``benchmarks/divergence.py`` measures it for every case below (2026-12-03, AVX512 Xeon):
# over the whole run at most 1.5e-5 in a loss (stop-plain, step 40), 1.8e-5 relative in a
# weight norm and 1.8e-5 in a weight (2layer-ln, 30 steps, LayerNorm amplifies most), while
# the stack itself differed by at most 2.9e-7. TOL is >= 10x each of those. The cases are
# chosen where that growth stays small: at lr 3e-2 (the old early-stopping cases) the
# float64 distance reached 1e-4..2e-3 within 60 steps, and the AMD machine failed there.
TOL = 2e-4


def _assert_same_run(alone, stacked, *, tol: float = TOL) -> None:
    """``stacked`` is the run ``alone``: the same steps and stopping decisions exactly, losses,
    weight norms and weights within ``tol``, and accuracies within one example (training
    pushes training examples onto the decision boundary, so a float order can flip one: seen
    once in train/acc between float32 and float64; the early-stopping cases check that no
    decision hangs on one test example)."""
    ma, mb = alone.metrics, stacked.metrics
    assert list(ma.columns) == list(mb.columns)
    assert ma["step"].tolist() == mb["step"].tolist()
    for col in ma.columns:
        a, b = torch.tensor(ma[col].to_numpy()), torch.tensor(mb[col].to_numpy())
        if col in ("step", "lr"):
            assert torch.equal(b, a), col
        elif col.endswith("/acc"):  # at most one example's prediction flipped
            n = alone.task.n_train if col.startswith("train") else alone.task.n_test
            assert int(((b - a).abs() * n).round().max()) <= 1, col
        else:
            torch.testing.assert_close(b, a, rtol=tol, atol=tol, msg=col)
    assert alone.checkpoint_steps == stacked.checkpoint_steps
    last = alone.checkpoint_steps[-1]
    wa, wb = alone.weights_at(last), stacked.weights_at(last)
    assert set(wa) == set(wb)
    for n in wa:
        torch.testing.assert_close(wb[n].to(wa[n].dtype), wa[n], rtol=0, atol=tol, msg=n)
    assert alone.manifest["status"] == stacked.manifest["status"]
    assert alone.manifest["final_step"] == stacked.manifest["final_step"]


@pytest.mark.parametrize(
    "kw",
    [
        {},  # full batch, transformer (table route), different split seeds
        {"train": {"batch_size": 16}},  # minibatches drawn per model from its own seed
        {"model": {"arch": "mlp", "n_layers": 2}},  # non-transformer: vmap path
        {"model": {"n_layers": 2, "layernorm": True}},
        {"optim": {"grokfast": "ema", "perp_grad": True}},
    ],
    ids=["full", "minibatch", "mlp", "2layer-ln", "filters"],
)
def test_stack_equals_runs_alone(tmp_path, kw: dict) -> None:
    cfgs = _configs(3, **kw)
    alone = [
        load_run(run_training(c, tmp_path / f"a{i}", progress=False)) for i, c in enumerate(cfgs)
    ]
    stacked = train_many(cfgs, [tmp_path / f"s{i}" for i in range(3)])
    for a, s in zip(alone, stacked, strict=True):
        _assert_same_run(a, s)
    # the models really differ from each other (seeds took effect)
    w0, w1 = stacked[0].weights_at(0), stacked[1].weights_at(0)
    assert not torch.equal(w0["embed.W_E"], w1["embed.W_E"])


def test_each_stacked_run_is_a_normal_run_directory(tmp_path) -> None:
    cfgs = _configs(2)
    runs = train_many(cfgs, [tmp_path / "x" / f"seed{i}" for i in range(2)])
    for i, run in enumerate(runs):
        assert run.config == cfgs[i]
        m = run.manifest
        assert m["status"] == "completed" and m["seed"] == i and m["split_seed"] == i
        assert m["stack"]["size"] == 2 and m["stack"]["index"] == i
        assert run.checkpoint_steps == [0, 10, 20, 30]
        model = run.model_at(30)
        logits = model(run.task.test_x[:5], n_scored=1)
        assert logits.shape == (5, 1, run.task.d_vocab_out)
        assert (run.path / "state.safetensors").exists()


def _one_flip_cannot_change_a_decision(run, threshold: float) -> bool:
    """At no evaluation is the count of right test answers one away from stopping or not
    stopping, so a single prediction flipped by float order could not move the stop."""
    n = run.task.n_test
    need = math.ceil(threshold * n)  # right answers that stop the run
    counts = (run.metrics["test/acc"] * n).round().astype(int)
    return not counts.isin([need - 1, need]).any()


# Seeds, lr, steps and threshold per case: the seeds stop at different steps, one of them at
# the last step, no decision is within one test example of flipping, and the float64 distance
# stays small (see TOL); found by scanning lr 1e-2..3e-2 and seeds 0-7.
STOP_CASES = pytest.mark.parametrize(
    ("seeds", "kw"),
    [
        ([0, 1, 2, 3], {"train": {"steps": 50, "stop_test_acc": 0.19}, "optim": {"lr": 2e-2}}),
        (
            [4, 5, 6, 7],
            {
                "train": {"steps": 40, "stop_test_acc": 0.09},
                "optim": {"lr": 1.5e-2, "grokfast": "ma", "grokfast_window": 3},
            },
        ),  # filter state leaves with them
        (
            [2, 4, 5, 6],
            {
                "train": {"steps": 40, "stop_test_acc": 0.12, "batch_size": 64},
                "optim": {"lr": 1.5e-2, "grokfast": "ema"},
            },
        ),  # minibatch schedule too
    ],
    ids=["plain", "ma", "minibatch-ema"],
)


@STOP_CASES
def test_models_stop_early_on_their_own(tmp_path, monkeypatch, seeds: list[int], kw: dict) -> None:
    cfgs = _configs(seeds=seeds, **kw)
    threshold = kw["train"]["stop_test_acc"]
    alone = [
        load_run(run_training(c, tmp_path / f"a{i}", progress=False)) for i, c in enumerate(cfgs)
    ]
    sizes: list[int] = []  # models in the stack at each forward
    real_logits = loop._Stack.logits

    def spy(self, x, n_out):
        sizes.append(self.k)
        return real_logits(self, x, n_out)

    monkeypatch.setattr(loop._Stack, "logits", spy)
    stacked = train_many(cfgs, [tmp_path / f"s{i}" for i in range(len(cfgs))])
    finals = [a.manifest["final_step"] for a in alone]
    assert len(set(finals)) >= 2, "the check needs models that stop at different steps"
    assert max(finals) == kw["train"]["steps"], "the check needs a model that runs to the end"
    assert all(_one_flip_cannot_change_a_decision(a, threshold) for a in alone), (
        "a decision of this case hangs on one test example: choose another threshold"
    )
    for a, s in zip(alone, stacked, strict=True):
        _assert_same_run(a, s)
        # each stopped at the first evaluation at or above the threshold (exact, its own run)
        m = s.metrics
        hit = m.loc[m["test/acc"] >= threshold, "step"]
        assert s.manifest["final_step"] == (int(hit.iloc[0]) if len(hit) else s.config.train.steps)
    # A model that stopped leaves the stack: it shrinks down to the models that run longest.
    assert sizes[0] == len(cfgs)
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-1] == finals.count(max(finals))


@STOP_CASES
def test_the_cases_have_ten_times_the_margin(tmp_path, seeds: list[int], kw: dict) -> None:
    """On this CPU, the whole float32 rounding error of each early-stopping case (its distance
    from float64) stays within TOL / 10 and changes no decision, so another CPU's float order
    (stacked or alone) has room to differ. The same check as benchmarks/divergence.py."""
    for i, cfg in enumerate(_configs(seeds=seeds, **kw)):
        f32 = load_run(run_training(cfg, tmp_path / f"f{i}", progress=False))
        w0 = {n: v.double() for n, v in f32.weights_at(0).items()}
        torch.set_default_dtype(torch.float64)
        try:
            f64 = load_run(run_training(cfg, tmp_path / f"d{i}", progress=False, init_state=w0))
        finally:
            torch.set_default_dtype(torch.float32)
        assert f64.weights_at(0)["embed.W_E"].dtype == torch.float64
        _assert_same_run(f32, f64, tol=TOL / 10)


def test_killed_stack_resumes_to_the_same_end(tmp_path) -> None:
    cfgs = _configs(2, optim={"grokfast": "ma", "grokfast_window": 3})
    whole = train_many(cfgs, [tmp_path / f"w{i}" for i in range(2)])
    outs = [tmp_path / f"k{i}" for i in range(2)]
    with ctrl_c_at(17), pytest.raises(KeyboardInterrupt):
        train_many(cfgs, outs)
    assert json.loads((outs[0] / "manifest.json").read_text())["status"] == "interrupted"
    resumed = train_many(cfgs, outs, resume=True)
    for a, b in zip(whole, resumed, strict=True):
        assert a.metrics.equals(b.metrics)
        wa, wb = a.weights_at(30), b.weights_at(30)
        assert all(torch.equal(wa[n], wb[n]) for n in wa)
    # one member of a stack also resumes alone, from the same state file
    run_training(cfgs[0], outs[0], resume=True, progress=False)


def test_only_seeds_may_differ() -> None:
    a, b = _configs(2)
    check_stackable([a, b])
    with pytest.raises(ConfigError, match=r"optim\.lr differs"):
        check_stackable([a, tiny_config(optim={"lr": 0.5})])
    with pytest.raises(ConfigError, match=r"model\.d_mlp"):
        check_stackable([a, tiny_config(model={"d_mlp": 64})])


def test_parse_and_seed_configs() -> None:
    assert parse_seeds("0,1,2,3") == [0, 1, 2, 3]
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    for bad in ("", "a", "1,1", "-2", "3-x"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    cfgs = seed_configs(tiny_config(name="base"), [4, 7], split_seeds=[1, 2])
    assert [c.name for c in cfgs] == ["base-seed4", "base-seed7"]
    assert [c.train.seed for c in cfgs] == [4, 7]
    assert [c.data.split_seed for c in cfgs] == [1, 2]


def test_cli_seeds_write_one_run_per_seed(tmp_path) -> None:
    out = tmp_path / "base"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--preset",
            "smoke",
            "--set",
            "train.steps=4",
            "--set",
            "train.eval_every=2",
            "--set",
            "model.d_model=16",
            "--set",
            "model.d_mlp=32",
            "--seeds",
            "0,3",
            "--out",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["seed0", "seed3"]
    assert load_run(out / "seed3").config.train.seed == 3
    bad = CliRunner().invoke(app, ["train", "--preset", "smoke", "--seeds", "1,1", "-q"])
    assert bad.exit_code == 2
