"""Progress measures: known answers on synthetic logits, consistency on a tiny trained run."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

import groklab
from groklab.analysis import fourier as fr
from groklab.analysis import progress as pm
from groklab.config import DataConfig
from groklab.errors import ConfigError
from groklab.tasks import build_task


def _pure_logits(grid: fr.OperationGrid, amps: dict[int, float]) -> torch.Tensor:
    s = grid.target.double()[:, None]
    cls = torch.arange(grid.n, dtype=torch.float64)[None, :]
    return sum(a * torch.cos(2 * math.pi * k / grid.n * (s - cls)) for k, a in amps.items())


@pytest.mark.parametrize("op", ["add", "sub", "mul", "quad"])
def test_restricted_loss_of_pure_key_frequency_logits_equals_its_loss(op):
    grid = fr.operation_grid(build_task(DataConfig(p=23, operations=(op,), train_fraction=0.3)))
    amps = {3: 6.0, 7: 4.0, 10: 5.0}
    logits = _pure_logits(grid, amps) + 0.25  # a class-independent offset changes nothing
    keys = sorted(amps)
    torch.testing.assert_close(pm.restricted_logits(logits, grid, keys), logits)
    full = pm.split_metrics(logits, grid, grid.test)[0]
    assert pm.restricted_loss(logits, grid, keys) == pytest.approx(full, rel=1e-10)
    # Excluding the key frequencies leaves constant logits: loss ln n exactly.
    assert pm.excluded_loss(logits, grid, keys) == pytest.approx(math.log(grid.n), rel=1e-10)
    # Excluding one frequency removes exactly the projection on its two directions: what is
    # removed lies in their span and nothing along them is left.
    one = pm.excluded_logits(logits, grid, [7])
    torch.testing.assert_close(pm.excluded_logits(one, grid, [7]), one)
    torch.testing.assert_close(pm.restricted_logits(logits - one, grid, [7]), logits - one)
    if op != "quad":  # waves of s are orthogonal when every answer is equally common
        torch.testing.assert_close(one, _pure_logits(grid, {3: 6.0, 10: 5.0}) + 0.25)


def test_restricted_loss_removes_memorisation_noise():
    grid = fr.operation_grid(build_task(DataConfig(p=19, train_fraction=0.5)))
    logits = _pure_logits(grid, {4: 8.0})
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(logits.shape, generator=gen, dtype=torch.float64)
    r = pm.restricted_logits(logits + noise, grid, [4])
    # The noise's projection on the 3 kept directions per class is small; the rest is gone.
    assert (r - logits).pow(2).sum() < 0.05 * noise.pow(2).sum()
    # Excluded logits keep the noise (minus those 2 directions) and lose the signal.
    e = pm.excluded_logits(logits + noise, grid, [4])
    assert (e - noise).pow(2).sum() < 0.05 * noise.pow(2).sum()


def test_split_metrics_known_values():
    grid = fr.operation_grid(build_task(DataConfig(p=5, train_fraction=0.4)))
    logits = torch.zeros(25, 5, dtype=torch.float64)
    loss, _ = pm.split_metrics(logits, grid, grid.train)
    assert loss == pytest.approx(math.log(5))
    logits[torch.arange(25), grid.target] = 100.0
    loss, acc = pm.split_metrics(logits, grid, grid.test)
    assert loss < 1e-30 and acc == 1.0
    assert math.isnan(pm.split_metrics(logits, grid, torch.zeros(25, dtype=torch.bool))[0])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = groklab.apply_overrides(
        groklab.get_preset("smoke"),
        [
            "data.p=11",
            "data.train_fraction=0.5",
            "model.d_model=16",
            "model.n_heads=2",
            "model.d_head=8",
            "model.d_mlp=32",
            "train.steps=40",
            "train.eval_every=10",
            "train.checkpoint_every=10",
        ],
    )
    return groklab.train(cfg, out=tmp_path_factory.mktemp("runs") / "tiny")


def test_progress_measures_agree_with_direct_computation(tiny_run):
    run = tiny_run
    prog = pm.progress_measures(run, key_freqs=[1, 3])
    t = prog.table
    assert t["step"].tolist() == run.checkpoint_steps == [0, 10, 20, 30, 40]
    assert prog.key_freqs == {"add": [1, 3]}
    task = run.task
    p = 11
    for step in (0, 30):
        row = t[t["step"] == step].iloc[0]
        model = run.model_at(step)
        with torch.no_grad():
            lg = model(task.train_x, n_scored=1)[:, -1, :p].double()
        # Loss over the p answer classes of the task's own training rows.
        direct = F.cross_entropy(lg, task.train_y[:, 0]).item()
        assert row["add/train_loss"] == pytest.approx(direct, rel=1e-9)
        grid = fr.operation_grid(task)
        (glog,), _ = pm.grid_logits(model, [grid])
        assert row["add/restricted_loss"] == pytest.approx(pm.restricted_loss(glog, grid, [1, 3]))
        assert row["add/excluded_loss/k3"] == pytest.approx(pm.excluded_loss(glog, grid, [3]))
        assert row["add/restricted_train_loss"] == pytest.approx(
            pm.restricted_loss(glog, grid, [1, 3], rows=grid.train)
        )
        assert row["add/excluded_loss"] == pytest.approx(pm.excluded_loss(glog, grid, [1, 3]))
        assert row["add/logit_fve"] == pytest.approx(fr.logit_fit(glog, grid, [1, 3]).fve)
        assert row["add/test_acc"] == pytest.approx(pm.split_metrics(glog, grid, grid.test)[1])
        power = fr.logit_frequency_power(glog, grid)
        assert row["add/key_freqs"] == " ".join(map(str, fr.key_frequencies(power)))
        w = run.weights_at(step)
        assert row["sumsq/total"] == pytest.approx(
            sum(float(v.double().pow(2).sum()) for v in w.values())
        )
        assert row["sumsq/blocks.0.mlp.W_in"] == pytest.approx(
            float(w["blocks.0.mlp.W_in"].double().pow(2).sum())
        )
    # Default key frequencies come from the final checkpoint, the same rule as the snapshot.
    default = pm.progress_measures(run, steps=[40])
    snap = pm.circuit_snapshot(run)
    assert default.key_freqs["add"] == snap.key_freqs
    assert default.table["add/key_freqs"].iloc[-1] == " ".join(map(str, snap.key_freqs))
    with pytest.raises(ConfigError, match="key frequency 9"):
        pm.progress_measures(run, key_freqs=[9])


def test_snapshot_fields(tiny_run):
    snap = pm.circuit_snapshot(tiny_run, 40, key_freqs=[2])
    assert snap.n == 11 and len(snap.neuron_freq) == 32 and len(snap.we_component_norms) == 11
    assert len(snap.pca_coords) == 11 and list(snap.circles) == ["2"]
    assert 0 <= snap.gini_W_E <= 1 and snap.fit_freqs == [2]
    back = pm.Snapshot.from_dict(snap.to_dict())
    assert back == snap


def test_analyze_run_caches_and_recomputes_when_stale(tiny_run):
    run = tiny_run
    first = pm.analyze_run(run, every=20)
    assert not first.cached and first.progress.steps == [0, 20, 40]
    again = pm.analyze_run(run, every=20)
    assert again.cached
    assert again.progress.table.equals(first.progress.table)
    assert pm.analyze_run(run, every=1).progress.steps == [0, 10, 20, 30, 40]
    # A rewritten checkpoint makes the cached result stale.
    path = run.path / "checkpoints" / "step_000040.safetensors"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert not pm.analyze_run(run, every=20).cached
    assert pm.analyze_run(run, every=20, force=False).cached
    assert not pm.analyze_run(run, every=20, force=True).cached


@pytest.mark.slow
def test_grokked_run_is_a_sparse_fourier_circuit(tmp_path):
    """Science check: a small transformer that groks (p = 23) computes a few key frequencies."""
    cfg = groklab.apply_overrides(
        groklab.get_preset("smoke"),
        [
            "data.p=23",
            "data.train_fraction=0.7",
            "model.d_model=32",
            "model.n_heads=2",
            "model.d_head=16",
            "model.d_mlp=64",
            "optim.lr=1e-2",
            "train.steps=1500",
            "train.eval_every=50",
            "train.checkpoint_every=50",
            "train.stop_test_acc=0.999",
            "train.stop_patience=100",
        ],
    )
    run = groklab.train(cfg, out=tmp_path / "grok")
    assert run.summary()["grokking_step"] is not None
    res = pm.analyze_run(run)
    keys = res.progress.key_freqs["add"]
    assert 1 <= len(keys) <= 5
    snap = res.snapshots["add"]
    assert snap.clustered_share > 0.6
    assert set(snap.cluster_counts()) <= set(keys)
    assert snap.fit_fve > 0.8
    assert snap.gini_W_L > 0.5
    last = res.progress.table.iloc[-1]
    # The Fourier circuit alone does at least as well as the whole model on test data, and
    # removing it ruins the training loss.
    assert last["add/restricted_loss"] < 2 * last["add/test_loss"]
    assert last["add/excluded_loss"] > 100 * last["add/train_loss"]
    assert res.phases.cleanup is not None
