"""The training loop: metrics, schedules, early stop, divergence, losses, manifest."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_config
from groklab import __version__
from groklab.config import load_config
from groklab.run import load_run
from groklab.store import load_checkpoint
from groklab.tasks import build_task
from groklab.train import checkpoint_schedule, loop
from groklab.train.losses import token_losses


def _train(tmp_path: Path, name: str = "run", **sections) -> Path:
    return loop.run_training(tiny_config(**sections), tmp_path / name, progress=False)


def test_metrics_columns_and_eval_schedule(tmp_path: Path) -> None:
    run = load_run(_train(tmp_path, train={"steps": 23, "eval_every": 5}))
    m = run.metrics
    assert m["step"].tolist() == [0, 5, 10, 15, 20, 23]  # every 5 steps and the last
    base = ["step", "lr", "train/loss", "train/acc", "test/loss", "test/acc"]
    assert m.columns[: len(base)].tolist() == base
    params = [n for n, _ in run.model_at(0).named_parameters()]
    assert {f"wnorm/{n}" for n in params} | {"wnorm/total"} <= set(m.columns)
    assert m.notna().all().all()
    # Weight norms are the norms of the saved weights.
    w = run.weights_at(23)
    last = m.iloc[-1]
    for n in params:
        assert last[f"wnorm/{n}"] == pytest.approx(w[n].norm().item(), rel=1e-6)
    total = math.sqrt(sum(last[f"wnorm/{n}"] ** 2 for n in params))
    assert last["wnorm/total"] == pytest.approx(total, rel=1e-9)
    # Warmup: lr = 1e-2 · min(step / 2, 1).
    assert m["lr"].tolist() == [0.0, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2]


def test_logged_metrics_match_the_saved_weights(tmp_path: Path) -> None:
    for mode in ({}, {"batch_size": 16}):
        run = load_run(
            _train(tmp_path, name=f"b{len(mode)}", train={"checkpoint_every": 5, **mode})
        )
        task = run.task
        m = run.metrics.set_index("step")
        for step in (0, 15, 30):
            model = run.model_at(step)
            for split, x, y in (
                ("train", task.train_x, task.train_y),
                ("test", task.test_x, task.test_y),
            ):
                with torch.no_grad():
                    logits = model(x, n_scored=1)
                loss = torch.nn.functional.cross_entropy(
                    logits[:, 0].double(), y[:, 0], reduction="mean"
                ).item()
                acc = (logits.argmax(-1) == y).double().mean().item()
                # Train metrics cover the whole train split, also in minibatch mode.
                assert m.loc[step, f"{split}/acc"] == acc, (mode, step, split)
                assert m.loc[step, f"{split}/loss"] == pytest.approx(loss, rel=1e-9, abs=1e-12)


def test_checkpoint_schedule(tmp_path: Path) -> None:
    assert checkpoint_schedule(40_000, 100, 0) == set(range(0, 40_001, 100))
    assert checkpoint_schedule(250, 100, 0) == {0, 100, 200, 250}
    early = checkpoint_schedule(1000, 1000, 5)
    assert {0, 1000} < early and len(early) == 7
    gaps = sorted(early - {0, 1000})
    ratios = [b / a for a, b in itertools.pairwise(gaps)]
    assert all(r == pytest.approx(ratios[0], rel=0.15) for r in ratios)  # log-spaced
    run = load_run(
        _train(tmp_path, train={"steps": 23, "checkpoint_every": 10, "log_checkpoints": 3})
    )
    assert run.checkpoint_steps == sorted(checkpoint_schedule(23, 10, 3))
    assert run.checkpoint_steps == [0, 2, 3, 6, 10, 20, 23]
    assert load_checkpoint(run.path / "state.safetensors")[1]["step"] == "23"


def test_config_written_before_step_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config()
    seen = []
    real = loop.lr_at

    def lr_at(t, c):
        seen.append(load_config(tmp_path / "run" / "config.toml"))
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "lr_at", lr_at)
    with pytest.raises(KeyboardInterrupt):
        loop.run_training(cfg, tmp_path / "run", progress=False)
    monkeypatch.setattr(loop, "lr_at", real)
    assert seen == [cfg]
    assert load_run(tmp_path / "run").manifest["status"] == "interrupted"
    assert "KeyboardInterrupt" in load_run(tmp_path / "run").manifest["error"]


def test_manifest(tmp_path: Path) -> None:
    run = load_run(_train(tmp_path, train={"seed": 3}))
    m = run.manifest
    assert m["status"] == "completed"
    assert m["groklab_version"] == __version__
    assert m["torch_version"] == torch.__version__
    assert m["python_version"]
    assert m["seed"] == 3 and m["split_seed"] == 0
    assert m["split_hash"] == build_task(run.config.data).split_hash
    assert m["device"] == "cpu"
    assert m["final_step"] == 30
    assert (m["n_train"], m["n_test"]) == (60, 61)
    assert m["wall_seconds"] > 0 and m["seconds_per_step"] > 0
    assert m["grokking_step"] == run.summary()["grokking_step"]
    assert m["memorisation_step"] == run.summary()["memorisation_step"]


def _predicted_stop(metrics: pd.DataFrame, thr: float, patience: int) -> int | None:
    above_since = None
    for step, acc in zip(metrics["step"], metrics["test/acc"], strict=True):
        if acc >= thr:
            above_since = step if above_since is None else above_since
            if step - above_since >= patience:
                return int(step)
        else:
            above_since = None
    return None


def test_early_stop_once_test_accuracy_stays_high(tmp_path: Path) -> None:
    train = {"steps": 60, "eval_every": 5, "checkpoint_every": 20}
    optim = {"lr": 3e-2}
    full = load_run(_train(tmp_path, name="full", optim=optim, train=train)).metrics
    # A threshold the run reaches and holds for two evaluations before the end.
    candidates = sorted(
        (stop, thr)
        for thr in set(full["test/acc"])
        if thr > 0 and (stop := _predicted_stop(full, thr, 10)) is not None and stop < 50
    )
    assert candidates, full[["step", "test/acc"]]
    stop, thr = candidates[len(candidates) // 2]
    run = load_run(
        _train(
            tmp_path,
            name="stopped",
            optim=optim,
            train={**train, "stop_test_acc": thr, "stop_patience": 10},
        )
    )
    assert run.manifest["status"] == "completed"
    assert run.manifest["final_step"] == stop
    pd.testing.assert_frame_equal(
        run.metrics, full[full["step"] <= stop].reset_index(drop=True), check_exact=True
    )
    assert run.checkpoint_steps[-1] == stop  # a checkpoint where it stopped
    assert load_checkpoint(run.path / "state.safetensors")[1]["step"] == str(stop)


def _all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in tensors.values() if v.is_floating_point())


def test_huge_lr_diverges_and_keeps_a_finite_checkpoint(tmp_path: Path) -> None:
    run = load_run(
        _train(
            tmp_path,
            optim={"lr": 1e4, "warmup_steps": 0},
            train={"steps": 50, "eval_every": 1, "checkpoint_every": 1},
        )
    )
    assert run.manifest["status"] == "diverged"
    final = run.manifest["final_step"]
    assert final < 50
    tl = run.metrics["train/loss"].iloc[-1]
    assert not math.isfinite(tl) or tl > run.config.train.diverge_loss
    assert run.checkpoint_steps and run.checkpoint_steps[-1] < final
    for step in run.checkpoint_steps:
        assert _all_finite(run.weights_at(step)), step
    assert _all_finite(load_checkpoint(run.path / "state.safetensors")[0])


def test_nan_weights_stop_the_run_at_the_next_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loop.make_optimizer

    def make_optimizer(params, cfg):
        opt = real(params, cfg)
        step, calls = opt.step, []

        def poisoned_step(*args, **kwargs):
            out = step(*args, **kwargs)
            calls.append(1)
            if len(calls) == 13:  # the weights of step 13 are NaN
                with torch.no_grad():
                    for g in opt.param_groups:
                        for p in g["params"]:
                            p.fill_(float("nan"))
            return out

        opt.step = poisoned_step
        return opt

    monkeypatch.setattr(loop, "make_optimizer", make_optimizer)
    run = load_run(_train(tmp_path, train={"steps": 40, "eval_every": 5, "checkpoint_every": 2}))
    # Step 14 is a checkpoint step between evaluations: its loss is checked before saving.
    assert run.manifest["status"] == "diverged"
    assert run.manifest["final_step"] == 14
    assert run.checkpoint_steps[-1] == 12
    for step in run.checkpoint_steps:
        assert _all_finite(run.weights_at(step))
    state, meta = load_checkpoint(run.path / "state.safetensors")
    assert meta["step"] == "12" and _all_finite(state)


def test_loss_dtypes_both_train_and_float32_is_a_different_run(tmp_path: Path) -> None:
    runs = {
        d: load_run(_train(tmp_path, name=d, train={"loss_dtype": d}))
        for d in ("float32", "float64")
    }
    x, y = runs["float64"].task.train_x, runs["float64"].task.train_y[:, 0]
    with torch.no_grad():
        logits = runs["float64"].model_at(0)(x, n_scored=1)[:, 0]  # same init for both
    ref = torch.nn.functional.cross_entropy(logits.double(), y).item()
    for d, run in runs.items():
        m = run.metrics
        assert run.status == "completed"
        assert m["train/loss"].iloc[-1] < m["train/loss"].iloc[0]
        assert m["train/loss"].iloc[0] == pytest.approx(ref, rel=1e-6 if d == "float32" else 1e-12)
    # float32 losses are float32 numbers; float64 ones are not (all of them, by chance, ~2^-29 each).
    as32 = {
        d: [float(np.float32(v)) == v for v in r.metrics["train/loss"]] for d, r in runs.items()
    }
    assert all(as32["float32"]) and not any(as32["float64"])
    # Their gradients differ by rounding, so the weights part ways, yet only by rounding.
    w32, w64 = runs["float32"].weights_at(30), runs["float64"].weights_at(30)
    assert any(not torch.equal(w32[k], w64[k]) for k in w64)
    for k in w64:
        torch.testing.assert_close(w32[k], w64[k], rtol=1e-3, atol=1e-4)


def test_float32_log_softmax_rounds_a_tiny_loss_to_zero() -> None:
    """The precision the float64 default keeps: a margin of 30 costs log(1 + e^-30) ≈ 9.4e-14."""
    logits, target = torch.tensor([[[0.0, 30.0]]]), torch.tensor([[1]])  # [batch, pos, class]
    want = math.log1p(math.exp(-30.0))
    l64 = token_losses(logits, target, kind="cross_entropy", dtype=torch.float64)
    l32 = token_losses(logits, target, kind="cross_entropy", dtype=torch.float32)
    assert l64.dtype == torch.float64 and l64.item() == pytest.approx(want, rel=1e-12)
    assert l32.dtype == torch.float32 and l32.item() == 0.0


@pytest.mark.parametrize("loss", ["mse", "stablemax"])
def test_other_losses_train(tmp_path: Path, loss: str) -> None:
    run = load_run(_train(tmp_path, optim={"lr": 3e-2}, train={"loss": loss, "steps": 40}))
    m = run.metrics
    assert run.status == "completed"
    assert m["train/loss"].iloc[-1] < m["train/loss"].iloc[0]
    if loss == "mse":
        task = run.task
        with torch.no_grad():
            logits = run.model_at(0)(task.train_x, n_scored=1)[:, 0].double()
        onehot = torch.nn.functional.one_hot(task.train_y[:, 0], logits.shape[-1]).double()
        ref = torch.nn.functional.mse_loss(logits, onehot).item()
        assert m["train/loss"].iloc[0] == pytest.approx(ref, rel=1e-9)
    else:  # StableMax cross-entropy, from the definition, element by element
        task = run.task
        with torch.no_grad():
            logits = run.model_at(0)(task.train_x, n_scored=1)[:, 0].double().tolist()
        ref = [
            -math.log(_stablemax(row)[y])
            for row, y in zip(logits, task.train_y[:, 0].tolist(), strict=True)
        ]
        assert m["train/loss"].iloc[0] == pytest.approx(sum(ref) / len(ref), rel=1e-9)
        # ... which is not the softmax cross-entropy of the same logits.
        ce = torch.nn.functional.cross_entropy(torch.tensor(logits), task.train_y[:, 0]).item()
        assert abs(m["train/loss"].iloc[0] - ce) > 1e-3


def _stablemax(xs: list[float]) -> list[float]:
    """StableMax (Prieto et al. 2025): s(x) = x + 1 for x >= 0, 1 / (1 − x) for x < 0."""
    s = [x + 1 if x >= 0 else 1 / (1 - x) for x in xs]
    return [v / sum(s) for v in s]


def test_stablemax_loss_on_known_logits() -> None:
    # s(-1, 0, 2, -3) = (1/2, 1, 3, 1/4), sum 4.75.
    logits = torch.tensor([[[-1.0, 0.0, 2.0, -3.0]]] * 4)  # [batch, pos, class]
    targets = torch.tensor([[0], [1], [2], [3]])
    got = token_losses(logits, targets, kind="stablemax", dtype=torch.float64)[:, 0]
    want = [-math.log(v / 4.75) for v in (0.5, 1.0, 3.0, 0.25)]
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    assert got.tolist() == pytest.approx([-math.log(p) for p in _stablemax([-1, 0, 2, -3])])
    # Linear growth for positive logits, where softmax is exponential: s(9) / s(0) = 10.
    two = token_losses(
        torch.tensor([[[9.0, 0.0]]]), torch.tensor([[1]]), kind="stablemax", dtype=torch.float64
    )
    assert two.item() == pytest.approx(math.log(11.0), rel=1e-12)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_other_optimisers_train(tmp_path: Path, name: str) -> None:
    optim = {"name": name, "lr": 1e-2 if name == "adam" else 0.5, "weight_decay": 0.0}
    m = load_run(_train(tmp_path, optim=optim)).metrics
    assert m["train/loss"].iloc[-1] < m["train/loss"].iloc[0]


def _one_adam_step(w, g, *, lr: float, wd: float, decoupled: bool, betas=(0.9, 0.98), eps=1e-8):
    """Adam's first step from zero state, by hand: AdamW shrinks w by (1 − lr·wd) apart from
    the gradient step; Adam adds wd·w to the gradient (L2) before the moment estimates."""
    if decoupled:
        w = w * (1 - lr * wd)
    else:
        g = g + wd * w
    m_hat = (1 - betas[0]) * g / (1 - betas[0])  # bias-corrected moments at t = 1
    v_hat = (1 - betas[1]) * g**2 / (1 - betas[1])
    return w - lr * m_hat / (v_hat.sqrt() + eps)


def test_adam_is_l2_and_adamw_is_decoupled_weight_decay(tmp_path: Path) -> None:
    """optim.name takes effect: at weight decay 1, one step of each matches its own update
    rule by hand and not the other's (at weight decay 0 the two are the same algorithm)."""
    lr, wd = 1e-2, 1.0
    after = {}
    for name in ("adam", "adamw"):
        optim = {"name": name, "lr": lr, "weight_decay": wd, "warmup_steps": 0}
        train = {"steps": 1, "checkpoint_every": 1, "eval_every": 1}
        run = load_run(_train(tmp_path, name=name, optim=optim, train=train))
        after[name] = run.weights_at(1)
    model = run.model_at(0)  # the same initial weights for both
    task = run.task
    logits = model(task.train_x, n_scored=1)
    token_losses(logits, task.train_y, kind="cross_entropy", dtype=torch.float64).mean().backward()
    n_checked = 0
    for k, p in model.named_parameters():
        w0, g = p.detach().double(), p.grad.double()
        want = {
            n: _one_adam_step(w0, g, lr=lr, wd=wd, decoupled=n == "adamw")
            for n in ("adam", "adamw")
        }
        for name, other in (("adam", "adamw"), ("adamw", "adam")):
            got = after[name][k].double()
            torch.testing.assert_close(got, want[name], rtol=0, atol=1e-5, msg=f"{name} {k}")
            if w0.abs().max() > 0:  # (biases start at 0, where decay does nothing)
                # The other rule lands elsewhere: by ~lr where wd·w flips the gradient's sign.
                assert (got - want[other]).abs().max() > 1e-3, (name, k)
                n_checked += 1
    assert n_checked == 2 * 9  # W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, W_out, W_U


def test_mixed_operations_log_per_op_subsets(tmp_path: Path) -> None:
    run = load_run(_train(tmp_path, data={"operations": ("add", "mul")}))
    m = run.metrics
    for op in ("add", "mul"):
        for split in ("train", "test"):
            assert f"{split}/{op}/acc" in m and f"{split}/{op}/loss" in m
    # The per-op test accuracies average to the whole test accuracy, weighted by size.
    task = run.task
    n_add, n_mul = (len(task.subsets[f"test/{op}"].rows) for op in ("add", "mul"))
    mixed = (m["test/add/acc"] * n_add + m["test/mul/acc"] * n_mul) / (n_add + n_mul)
    assert mixed.to_numpy() == pytest.approx(m["test/acc"].to_numpy(), abs=1e-12)
