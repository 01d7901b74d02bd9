"""Run store: checkpoint round trip, corrupt and foreign checkpoints, lock, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import snapshot, tiny_config
from groklab.config import apply_overrides, config_hash
from groklab.errors import CheckpointError, RunExistsError, RunLockedError, RunNotFoundError
from groklab.models import build_model
from groklab.run import load_run
from groklab.store import (
    RunStore,
    atomic_write_bytes,
    checkpoint_name,
    list_checkpoint_steps,
    load_checkpoint,
    read_manifest,
)
from groklab.tasks import build_task
from helpers.locks import lock_held_by_another_process


def _saved_run(path: Path, cfg=None, steps=(0, 7)):
    """A run directory holding checkpoints of a perturbed model; returns (config, model)."""
    cfg = cfg or tiny_config()
    task = build_task(cfg.data)
    model = build_model(cfg.model, task, seed=cfg.train.seed)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(9)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
    with RunStore.create(path, cfg) as store:
        for s in steps:
            store.write_checkpoint(s, model.state_dict(), {"config_hash": config_hash(cfg)})
    return cfg, model


def test_checkpoint_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    cfg, model = _saved_run(tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.config == cfg
    assert run.checkpoint_steps == [0, 7]
    loaded = run.model_at(7)
    assert not loaded.training
    for (n, a), (m, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b), n
    x = torch.cat([run.task.train_x, run.task.test_x])
    with torch.no_grad():
        assert torch.equal(loaded(x, n_scored=1), model(x, n_scored=1))
    assert run.weights_at(7).keys() == model.state_dict().keys()


def test_trained_run_checkpoints_match_its_state(tmp_path: Path) -> None:
    from groklab.train.loop import run_training

    run_training(tiny_config(), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    state, meta = load_checkpoint(tmp_path / "run" / "state.safetensors")
    assert meta["kind"] == "state" and meta["step"] == "30"
    final = run.weights_at(30)
    for k, v in final.items():
        assert torch.equal(state[f"model.{k}"], v), k
    assert any(k.startswith("optim.") for k in state)  # optimiser moments saved for resume
    # Weights really change between checkpoints.
    assert not torch.equal(run.weights_at(0)["embed.W_E"], final["embed.W_E"])


def test_missing_checkpoint_step_names_available_steps(tmp_path: Path) -> None:
    _saved_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 5; available: 0\.\.7"):
        load_run(tmp_path / "run").weights_at(5)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "header_only"])
def test_corrupt_checkpoint_raises_naming_the_file(tmp_path: Path, damage: str) -> None:
    _saved_run(tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / checkpoint_name(7)
    data = path.read_bytes()
    path.write_bytes(
        {
            "truncate": data[: len(data) // 2],
            "garbage": os.urandom(len(data)),
            "empty": b"",
            "header_only": data[:12],
        }[damage]
    )
    with pytest.raises(CheckpointError) as info:
        load_run(tmp_path / "run").model_at(7)
    msg = str(info.value)
    assert checkpoint_name(7) in msg and "\n" not in msg
    # The other checkpoint still loads.
    load_run(tmp_path / "run").model_at(0)


def test_foreign_safetensors_is_rejected(tmp_path: Path) -> None:
    _, model = _saved_run(tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / checkpoint_name(7)
    # Right tensors, but no groklab metadata (e.g. written by another library).
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"step_000007\.safetensors: not a groklab"):
        load_run(tmp_path / "run").model_at(7)
    save_file({"a": torch.zeros(2)}, str(path), metadata={"format": "other"})
    with pytest.raises(CheckpointError, match="not a groklab"):
        load_checkpoint(path)


def test_checkpoint_with_wrong_keys_or_shapes_is_rejected(tmp_path: Path) -> None:
    cfg, model = _saved_run(tmp_path / "run")
    meta = {"config_hash": config_hash(cfg)}
    with RunStore.open_existing(tmp_path / "run")[0] as store:
        renamed = {k.replace("W_", "M_"): v for k, v in model.state_dict().items()}
        store.write_checkpoint(1, renamed, meta)
        wide = {**model.state_dict(), "embed.W_E": torch.zeros(99, 16)}
        store.write_checkpoint(2, wide, meta)
        store.write_checkpoint(3, model.state_dict(), {"config_hash": "0123456789abcdef"})
    run = load_run(tmp_path / "run")
    for step, why in ((1, "does not match"), (2, "does not match"), (3, "different run")):
        with pytest.raises(CheckpointError, match=why) as info:
            run.model_at(step)
        assert checkpoint_name(step) in str(info.value)


def test_second_writer_is_locked_out(tmp_path: Path) -> None:
    _saved_run(tmp_path / "run")
    store, _ = RunStore.open_existing(tmp_path / "run")
    try:
        with pytest.raises(RunLockedError, match=r"\.lock"):
            RunStore.open_existing(tmp_path / "run")
        from groklab.train.loop import run_training

        with pytest.raises(RunLockedError):
            run_training(tiny_config(), tmp_path / "run", resume=True, progress=False)
    finally:
        store.close()
    RunStore.open_existing(tmp_path / "run")[0].close()  # free again once closed


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    _saved_run(tmp_path / "run")
    with lock_held_by_another_process(tmp_path / "run"), pytest.raises(RunLockedError):
        RunStore.open_existing(tmp_path / "run")
    RunStore.open_existing(tmp_path / "run")[0].close()


def test_create_refuses_existing_runs_and_other_files(tmp_path: Path) -> None:
    cfg, _ = _saved_run(tmp_path / "run")
    before = snapshot(tmp_path)
    with pytest.raises(RunExistsError, match="already holds this run"):
        RunStore.create(tmp_path / "run", cfg)
    other = apply_overrides(cfg, ["optim.lr=0.5"])
    with pytest.raises(RunExistsError, match=r"different run \(optim\.lr"):
        RunStore.create(tmp_path / "run", other)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    before = snapshot(tmp_path)
    with pytest.raises(RunExistsError, match="holds no groklab run"):
        RunStore.create(tmp_path / "notes", cfg)
    with pytest.raises(RunExistsError, match="not a directory"):
        RunStore.create(tmp_path / "file", cfg)
    assert snapshot(tmp_path) == before


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(RunNotFoundError, match=r"no config\.toml"):
        load_run(tmp_path)
    with pytest.raises(RunNotFoundError):
        RunStore.open_existing(tmp_path / "missing")
    assert read_manifest(tmp_path) == {}
    assert list_checkpoint_steps(tmp_path) == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temp file left
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
