"""Ungrokking protocol: continue a checkpoint on a random subset of its own training data."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from typer.testing import CliRunner

import groklab
from groklab.cli import app
from groklab.config import DataConfig, apply_overrides, load_config
from groklab.dcrit import continue_config, ungrok_curve
from groklab.errors import CheckpointError, ConfigError
from groklab.tasks import build_task
from groklab.tasks.subset import take_train_subset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _rows(x: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in x.tolist()}


def test_train_subset_is_a_seeded_nested_subset_with_the_same_test_split() -> None:
    base = DataConfig(p=11, train_fraction=0.5)
    full = build_task(base)
    small = build_task(DataConfig(p=11, train_fraction=0.5, train_subset=20))
    smaller = build_task(DataConfig(p=11, train_fraction=0.5, train_subset=8))
    other = build_task(DataConfig(p=11, train_fraction=0.5, train_subset=20, subset_seed=1))
    assert small.n_train == 20 and smaller.n_train == 8
    assert _rows(smaller.train_x) < _rows(small.train_x) < _rows(full.train_x)
    assert _rows(other.train_x) != _rows(small.train_x)
    assert torch.equal(small.test_x, full.test_x) and torch.equal(small.test_y, full.test_y)
    # labels travel with their rows
    lookup = dict(zip(map(tuple, full.train_x.tolist()), full.train_y.tolist(), strict=True))
    assert all(
        lookup[tuple(x)] == y
        for x, y in zip(small.train_x.tolist(), small.train_y.tolist(), strict=True)
    )
    assert small.split_hash != full.split_hash


def test_train_subsets_and_per_row_info_are_reindexed() -> None:
    mixed = build_task(DataConfig(p=11, operations=("add", "mul"), train_fraction=0.5))
    sub = take_train_subset(mixed, 30, seed=2)
    ops = sub.info["train_op"]
    assert ops.shape == (30,)
    for k, op in enumerate(("add", "mul")):
        rows = sub.subsets[f"train/{op}"].rows
        assert bool((ops[rows] == k).all())
        assert torch.equal(sub.subsets[f"test/{op}"].rows, mixed.subsets[f"test/{op}"].rows)
    assert sum(sub.subsets[f"train/{op}"].rows.numel() for op in ("add", "mul")) == 30
    # the op token of each kept row agrees with the re-indexed op
    assert bool((sub.train_x[:, 1] == 11 + 1 + ops).all())


def test_train_subset_errors() -> None:
    with pytest.raises(ConfigError, match="larger than the training split"):
        build_task(DataConfig(p=11, train_fraction=0.5, train_subset=1000))
    with pytest.raises(ConfigError, match="needs a fixed training set"):
        build_task(DataConfig(task="max-element", train_subset=10))
    with pytest.raises(ConfigError, match="train_subset"):
        DataConfig(train_subset=0)


@pytest.fixture
def parent(tmp_path, make_config):
    cfg = make_config(name="parent", train={"steps": 20, "checkpoint_every": 10})
    return groklab.train(cfg, out=tmp_path / "parent")


def test_continue_config(parent) -> None:
    ref = f"{parent.path}@10"
    cfg = continue_config(ref, ["data.train_size=20", "train.steps=7", "optim.weight_decay=0.5"])
    assert cfg.data.train_subset == 20
    assert cfg.data.train_fraction == parent.config.data.train_fraction  # parent's split kept
    assert cfg.model == parent.config.model
    assert cfg.train.init_from == ref and cfg.train.steps == 7
    assert cfg.optim.weight_decay == 0.5
    assert cfg.name == "parent-from10-n20"
    assert continue_config(ref, ["name=x"]).name == "x"
    with pytest.raises(ConfigError, match="model"):
        continue_config(ref, ["model.d_model=32"])
    with pytest.raises(ConfigError, match=r"data\.p"):
        continue_config(ref, ["data.p=13"])
    with pytest.raises(ConfigError, match="larger than the parent's training set"):
        continue_config(ref, ["data.train_size=61"])
    with pytest.raises(CheckpointError, match="no checkpoint at step 11"):
        continue_config(f"{parent.path}@11")
    with pytest.raises(ConfigError, match="DIR@STEP"):
        continue_config(str(parent.path))


def test_continued_run_starts_from_the_checkpoint(parent, tmp_path) -> None:
    cfg = continue_config(f"{parent.path}@10", ["data.train_size=12", "train.steps=10"])
    child = groklab.train(cfg, out=tmp_path / "child")
    start = child.weights_at(0)
    for k, v in parent.weights_at(10).items():
        assert torch.equal(start[k], v), k
    man = child.manifest
    assert man["n_train"] == 12 and man["n_test"] == parent.manifest["n_test"]
    assert load_config(child.path / "config.toml").train.init_from == f"{parent.path}@10"
    assert _rows(child.task.train_x) <= _rows(parent.task.train_x)
    # A killed continuation resumes from its own state, without needing the parent.
    assert child.status == "completed"


def test_init_from_a_different_model_is_refused(parent, tmp_path) -> None:
    cfg = apply_overrides(parent.config, [f"train.init_from={parent.path}@10", "model.d_model=32"])
    with pytest.raises(CheckpointError, match="does not fit"):
        groklab.train(cfg, out=tmp_path / "bad")


def test_cli_from_checkpoint(parent, tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-child"
    res = runner.invoke(
        app,
        [
            "train",
            "--from-checkpoint",
            f"{parent.path}@20",
            "--set",
            "data.train_size=15",
            "--set",
            "train.steps=5",
            "--out",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert cfg["data"]["train_subset"] == 15 and cfg["train"]["init_from"] == f"{parent.path}@20"
    assert json.loads((out / "manifest.json").read_text())["n_train"] == 15
    bad = runner.invoke(app, ["train", "--from-checkpoint", f"{parent.path}@999", "-q"])
    assert bad.exit_code == 2
    assert re.search(r"no checkpoint at step 999", bad.output)
    both = runner.invoke(
        app, ["train", "--from-checkpoint", f"{parent.path}@20", "--preset", "smoke"]
    )
    assert both.exit_code == 2


def test_ungrok_curve_table(parent, tmp_path) -> None:
    table = ungrok_curve(
        f"{parent.path}@20",
        [8, 30],
        tmp_path / "u",
        seeds=(0, 1),
        overrides=["train.steps=4"],
        progress=False,
    )
    assert list(table["size"]) == [8, 8, 30, 30] and list(table["seed"]) == [0, 1, 0, 1]
    assert table["test_acc"].between(0, 1).all() and (table["final_step"] == 4).all()
    assert (tmp_path / "u" / "ungrok.csv").exists()
    assert json.loads((tmp_path / "u" / "n8-s1" / "manifest.json").read_text())["n_train"] == 8


def test_ungrok_study_spec_parses() -> None:
    from groklab.sweep import load_spec

    spec = load_spec("ungrok")
    sizes = dict(spec.grid)["data.train_subset"]
    assert len(sizes) >= 5
    assert spec.base.train.init_from is not None


def test_dcrit_over_a_checkpoint_reuses_the_ungrok_runs(parent, tmp_path, monkeypatch) -> None:
    from groklab import dcrit
    from groklab.dcrit import find_dcrit
    from groklab.sweep import run_many

    ref = f"{parent.path}@20"
    folder = tmp_path / "shared"
    ungrok_curve(ref, [8, 30], folder, overrides=["train.steps=4"], progress=False)
    seen, actions = [], []

    def recording(configs, outs, **kw):
        seen.extend(configs)
        res = run_many(configs, outs, **{**kw, "progress": False})
        actions.extend(r["action"] for r in res)
        return res

    monkeypatch.setattr(dcrit, "run_many", recording)
    res = find_dcrit(
        continue_config(ref, ["train.steps=4"]),
        folder,
        lo=8,
        hi=30,
        seeds=(0,),
        size_key="data.train_subset",
        seed_key="data.subset_seed",
        max_rounds=0,
    )
    assert {p.size for p in res.points} == {8, 30}
    # the two ends were the ungrok runs: same configs, so nothing was trained again
    assert actions == ["skipped", "skipped"]
    assert all(c.train.stop_test_acc is None for c in seen)  # no early stop from a grokked start
    assert len(list(folder.glob("n*-s0"))) == 2
