"""Planted Fourier circuits: `groklab analyze` must recover exactly what was built by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import groklab
from groklab.analysis import fourier as fr
from groklab.analysis.planted import (
    PLANTED_FILE,
    PlantedCircuit,
    planted_weights,
    write_planted_run,
)
from groklab.analysis.progress import analyze_run, circuit_snapshot, grid_logits
from groklab.cli import app
from groklab.errors import ConfigError
from groklab.models import build_model
from groklab.run import load_run
from groklab.tasks import build_task

runner = CliRunner(env={"COLUMNS": "200"})

# p = 59: n = 59 for add/sub, 58 for mul/div. Amplitudes spread 30x: logit power up to ~1,000x.
CASES = {
    "add-transformer": PlantedCircuit(
        op="add", arch="transformer", freqs=(4, 11, 17, 23, 26), amplitudes=(30, 10, 4, 2, 1)
    ),
    "sub-mlp": PlantedCircuit(op="sub", arch="mlp", freqs=(3, 14, 27), amplitudes=(30, 5, 1)),
    "mul-transformer": PlantedCircuit(
        op="mul",
        arch="transformer",
        freqs=(2, 5, 9, 13, 17, 21, 28),
        amplitudes=(30, 18, 10, 6, 3.5, 2, 1),
    ),
    "div-mlp": PlantedCircuit(
        op="div", arch="mlp", freqs=(1, 7, 20, 24), amplitudes=(30, 10, 3, 1)
    ),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    return {name: write_planted_run(root / name, c).path for name, c in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_analyze_recovers_the_planted_circuit(planted, name):
    c, run_dir = CASES[name], planted[name]
    res = runner.invoke(app, ["analyze", str(run_dir), "--no-figures"])
    assert res.exit_code == 0, res.output
    keys = ", ".join(map(str, sorted(c.freqs)))
    assert f"{c.op}: key frequencies" in res.output and keys in res.output
    power_row = next(line for line in res.output.splitlines() if "logit power" in line)
    assert power_row.count("*:") == len(c.freqs)
    assert all(f" {k}*: " in power_row for k in c.freqs)

    result = analyze_run(load_run(run_dir))  # the cache the command wrote
    assert result.cached
    snap, table = result.snapshots[c.op], result.progress.table.sort_values("step")
    assert result.progress.key_freqs[c.op] == sorted(c.freqs)
    assert snap.key_freqs == sorted(c.freqs)
    power = torch.tensor(snap.logit_power)
    ratio = power[list(c.freqs)].max() / power[list(c.freqs)].min()
    assert ratio > 500  # the spread the former rule (0.1 x the strongest) could not survive
    assert fr.key_frequencies_above(power, 0.1) != sorted(c.freqs)

    assert snap.fit_fve >= 0.99
    by_freq = dict(zip(snap.fit_freqs, snap.fit_coef, strict=True))
    for k, a in zip(c.freqs, c.amplitudes, strict=True):
        assert by_freq[k] == pytest.approx(a, rel=0.01)

    final = table.iloc[-1]
    test_loss, train_loss = final[f"{c.op}/test_loss"], final[f"{c.op}/train_loss"]
    assert abs(final[f"{c.op}/restricted_loss"] - test_loss) <= 0.05 * test_loss
    # Without the key directions the logits are chance (log 59 = 4.1) on the training rows.
    assert final[f"{c.op}/excluded_loss"] > max(3.0, 30 * train_loss)
    assert final[f"{c.op}/key_freqs"] == " ".join(map(str, sorted(c.freqs)))
    assert final[f"{c.op}/logit_fve"] == pytest.approx(snap.fit_fve, abs=1e-6)
    # Checkpoint 0 is the model's random initialisation: no sparse set of frequencies.
    assert table.iloc[0][f"{c.op}/key_freqs"] == ""

    planted_freq = json.loads((run_dir / PLANTED_FILE).read_text())["neuron_freq"]
    assert snap.neuron_freq == planted_freq
    assert snap.neuron_clustered == [k > 0 for k in planted_freq]  # mul/div MLP: 1 zero detector
    assert snap.cluster_counts() == {k: c.phases**2 for k in sorted(c.freqs)}


@pytest.mark.parametrize("name", list(CASES))
def test_planted_weights_compute_the_operation(planted, name):
    # Scored by the task's own labels (a op b mod p), independent of the Fourier module: for
    # mul/div this checks the discrete-log indexing the analysis assumes.
    metrics = load_run(planted[name]).metrics.set_index("step")
    final = metrics.iloc[-1]
    assert final["train/acc"] == 1.0 and final["test/acc"] == 1.0
    assert final["train/loss"] < 0.1
    assert metrics.iloc[0]["test/acc"] < 0.1  # checkpoint 0: random initialisation


def test_mul_under_another_generator_moves_the_key_frequencies(planted):
    # Residue a = 2^i = 8^i' with i = 3 i' (mod 58): cos(w_k(i + j − c)) is frequency 3k in the
    # indices of generator 8. A wrong discrete-log indexing would find no sparse circuit.
    c, run = CASES["mul-transformer"], load_run(planted["mul-transformer"])
    model = run.model_at(run.checkpoint_steps[-1])
    moved = sorted({min(3 * k % 58, -3 * k % 58) for k in c.freqs})
    for generator, want in ((None, sorted(c.freqs)), (8, moved)):
        grid = fr.operation_grid(run.task, generator=generator)
        (logits,), _ = grid_logits(model, [grid])
        assert fr.key_frequencies(fr.logit_frequency_power(logits, grid)) == want
        assert fr.logit_fit(logits, grid, want).fve >= 0.99
    assert moved != sorted(c.freqs)


def test_logits_are_the_planted_sum():
    c = PlantedCircuit(op="sub", arch="transformer", p=31, freqs=(2, 9), amplitudes=(3.0, 1.0))
    cfg, weights = planted_weights(c)
    task = build_task(cfg.data)
    model = build_model(cfg.model, task)
    model.load_state_dict(weights, strict=True)
    grid = fr.operation_grid(task)
    (logits,), _ = grid_logits(model, [grid])
    v = torch.arange(31, dtype=torch.float64)
    diff = grid.target[:, None].double() - v[None, :]
    want = sum(
        a * torch.cos(2 * math.pi * k / 31 * diff)
        for k, a in zip(c.freqs, c.amplitudes, strict=True)
    )
    centred = logits - logits.mean(dim=1, keepdim=True)
    assert (centred - want).abs().max() < 0.02 * sum(c.amplitudes)


def test_untrained_and_memorising_networks_have_no_key_frequencies(tmp_path):
    cfg = groklab.RunConfig()  # the canonical transformer, p = 113
    task = build_task(cfg.data)
    grid = fr.operation_grid(task)
    for seed in range(2):
        (logits,), _ = grid_logits(build_model(cfg.model, task, seed=seed), [grid])
        assert fr.key_frequencies(fr.logit_frequency_power(logits, grid)) == [], seed
    # The smoke preset (p = 53) at half width on 20% of the data without weight decay:
    # memorised, not generalised.
    mem = groklab.apply_overrides(
        groklab.get_preset("smoke"),
        [
            "data.train_fraction=0.2",
            "model.d_model=32",
            "model.d_head=8",
            "model.d_mlp=128",
            "optim.lr=1e-2",
            "optim.weight_decay=0.0",
            "train.steps=100",
            "train.eval_every=100",
            "train.checkpoint_every=100",
            "train.device='cpu'",
        ],
    )
    groklab.train(mem, out=tmp_path / "mem")
    run = load_run(tmp_path / "mem")
    last = run.metrics.iloc[-1]
    assert last["train/acc"] == 1.0 and last["test/acc"] < 0.2
    snap = circuit_snapshot(run)
    assert snap.key_freqs == []
    power = torch.tensor(snap.logit_power)
    assert len(fr.key_frequencies_above(power, 0.1)) > 3  # the former rule saw many


def test_planted_circuit_rejects_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="op='quad'"):
        PlantedCircuit(op="quad")
    with pytest.raises(ConfigError, match=r"frequency 29 .* 1\.\.28"):
        PlantedCircuit(op="mul", freqs=(29,), amplitudes=(1.0,))
    with pytest.raises(ConfigError, match="odd prime"):
        PlantedCircuit(op="mul", p=57, freqs=(3,), amplitudes=(1.0,))
    with pytest.raises(ConfigError, match="amplitude"):
        PlantedCircuit(freqs=(3, 4), amplitudes=(1.0,))
    write_planted_run(tmp_path / "a", PlantedCircuit(p=11, freqs=(2,), amplitudes=(1.0,)))
    with pytest.raises(groklab.errors.RunExistsError):
        write_planted_run(tmp_path / "a", PlantedCircuit(p=11, freqs=(3,), amplitudes=(1.0,)))


def test_a_run_continued_from_a_grokked_checkpoint_groks_at_step_0(planted, tmp_path):
    # Continued from the planted (grokked) weights, test accuracy is >= 99% at step 0: the
    # analysis must say step 0, not "never" (0 is a step, not a missing value).
    src = planted["add-transformer"]
    out = tmp_path / "continued"
    res = runner.invoke(
        app,
        [
            "train",
            "--from-checkpoint",
            f"{src}@1000",
            "--set",
            "train.steps=20",
            "--set",
            "train.eval_every=10",
            "--set",
            "train.checkpoint_every=10",
            "--out",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    assert load_run(out).metrics["test/acc"].iloc[0] >= 0.99
    res = runner.invoke(app, ["analyze", str(out), "--no-figures"])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if "grokking step" in line)
    assert [c.strip() for c in row.split("│") if c.strip()][-1] == "0"
