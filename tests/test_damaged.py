"""Damaged run directories: every reader answers with one line naming the damaged file and how
to recover, exit code 2, no traceback, and nothing on disk changed.

The runs are copies of one real tiny run (and one killed run) trained once per module.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import snapshot, tiny_config
from groklab.cli import app
from groklab.errors import RunDamagedError
from groklab.run import load_run
from groklab.store import load_checkpoint
from groklab.train import loop

STEPS = 30  # eval every 5, checkpoints at 0, 10, 20, 30


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A completed tiny run and the same run killed at step 23 (state at step 20)."""
    root = tmp_path_factory.mktemp("made")
    cfg = tiny_config(train={"steps": STEPS})
    loop.run_training(cfg, root / "done", progress=False)
    mp = pytest.MonkeyPatch()
    real = loop.lr_at

    def lr_at(t: int, c: object) -> float:
        if t == 23:
            raise KeyboardInterrupt
        return real(t, c)

    mp.setattr(loop, "lr_at", lr_at)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_training(cfg, root / "killed", progress=False)
    finally:
        mp.undo()
    return {"done": root / "done", "killed": root / "killed"}


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., object]:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def one_line_error(result: object, *names: str) -> str:
    """Exit 2, exactly one non-empty line of output, no traceback; the line names ``names``."""
    out = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 2, (result.exit_code, out, result.exception)  # type: ignore[attr-defined]
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- damages


def _truncate(p: Path, n: int = 100) -> None:
    p.write_bytes(p.read_bytes()[:n])


def _binary(p: Path) -> None:
    p.write_bytes(bytes(range(256)) * 3)


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _edit_config(run: Path) -> None:
    cfg = run / "config.toml"
    cfg.write_text(cfg.read_text().replace("d_model = 16", "d_model = 32"))


def _drop_early_rows(run: Path) -> None:
    p = run / "metrics.parquet"
    df = pd.read_parquet(p)
    df[df["step"] > 10].to_parquet(p, index=False)


def _drop_late_rows(run: Path) -> None:
    p = run / "metrics.parquet"
    df = pd.read_parquet(p)
    df[df["step"] < 20].to_parquet(p, index=False)


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "metrics-missing": (lambda r: (r / "metrics.parquet").unlink(), "metrics.parquet"),
    "metrics-empty": (lambda r: _empty(r / "metrics.parquet"), "metrics.parquet"),
    "metrics-truncated": (lambda r: _truncate(r / "metrics.parquet"), "metrics.parquet"),
    "metrics-binary": (lambda r: _binary(r / "metrics.parquet"), "metrics.parquet"),
    "metrics-early-rows-dropped": (_drop_early_rows, "metrics.parquet"),
    "metrics-late-rows-dropped": (_drop_late_rows, "metrics.parquet"),
    "config-binary": (lambda r: _binary(r / "config.toml"), "config.toml"),
    "config-empty": (lambda r: _empty(r / "config.toml"), "config.toml"),
    "config-edited": (_edit_config, "config.toml"),
    "manifest-binary": (lambda r: _binary(r / "manifest.json"), "manifest.json"),
    "manifest-empty": (lambda r: _empty(r / "manifest.json"), "manifest.json"),
    "manifest-list": (lambda r: (r / "manifest.json").write_text("[1, 2]"), "manifest.json"),
    "final-checkpoint-missing": (
        lambda r: (r / "checkpoints" / "step_000030.safetensors").unlink(),
        "step_000030.safetensors",
    ),
    "final-checkpoint-truncated": (
        lambda r: _truncate(r / "checkpoints" / "step_000030.safetensors", 1000),
        "step_000030.safetensors",
    ),
}

READERS = {
    "show": ("show",),
    "analyze": ("analyze", "--no-figures"),
    "report": ("report", "--no-static"),
    "llc": ("llc",),
}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_reader_of_a_damaged_run_says_which_file_in_one_line(
    reader: str, damage: str, made: dict[str, Path], cli, tmp_path: Path
) -> None:
    if damage == "final-checkpoint-truncated" and reader in ("show", "report"):
        pytest.skip("show and report read no weights")
    run = tmp_path / "run"
    shutil.copytree(made["done"], run)
    damage_fn, name = DAMAGES[damage]
    damage_fn(run)
    before = snapshot(run)
    line = one_line_error(cli(*READERS[reader], run), name)
    assert str(run) in line
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "damage",
    [
        "metrics-missing",
        "metrics-empty",
        "metrics-truncated",
        "metrics-binary",
        "metrics-early-rows-dropped",
        "config-binary",
        "config-edited",
    ],
)
def test_resume_of_a_damaged_killed_run_refuses_in_one_line(
    damage: str, made: dict[str, Path], cli, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(made["killed"], run)
    damage_fn, name = DAMAGES[damage]
    damage_fn(run)
    before = snapshot(run)
    one_line_error(cli("train", "--resume", run, "-q"), name)
    assert snapshot(run) == before


def test_resume_without_metrics_keeps_no_partial_history(made: dict[str, Path], tmp_path) -> None:
    """The bug: a resumed run without metrics reported memorisation from the later rows only."""
    run = tmp_path / "run"
    shutil.copytree(made["killed"], run)
    (run / "metrics.parquet").unlink()
    before = snapshot(run)
    with pytest.raises(RunDamagedError, match=r"metrics\.parquet: missing; cannot resume"):
        loop.run_training(tiny_config(), run, resume=True, progress=False)
    assert snapshot(run) == before


def test_resume_rebuilds_a_damaged_manifest(made: dict[str, Path], cli, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(made["done"], run)
    _binary(run / "manifest.json")
    one_line_error(cli("show", run), "manifest.json", "--resume")
    result = cli("train", "--resume", run, "-q")
    assert result.exit_code == 0, result.output
    fixed = load_run(run)
    good = load_run(made["done"])
    assert fixed.status == "completed"
    assert fixed.manifest["final_step"] == STEPS
    pd.testing.assert_frame_equal(fixed.metrics, good.metrics)
    assert cli("show", run).exit_code == 0


def test_resume_rebuilds_the_missing_final_checkpoint(made, cli, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(made["done"], run)
    final = run / "checkpoints" / "step_000030.safetensors"
    final.unlink()
    one_line_error(cli("analyze", "--no-figures", run), final.name, "--resume")
    result = cli("train", "--resume", run, "-q")
    assert result.exit_code == 0, result.output
    assert "rebuilt" in result.output
    got, meta = load_checkpoint(final)
    want, want_meta = load_checkpoint(made["done"] / "checkpoints" / final.name)
    assert meta == want_meta
    assert got.keys() == want.keys()
    assert all(bool((got[k] == want[k]).all()) for k in want)
    assert load_run(run).checkpoint_steps == [0, 10, 20, 30]


def test_final_checkpoint_missing_is_not_silently_step_zero(made, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(made["done"], run)
    for s in (10, 20, 30):
        (run / "checkpoints" / f"step_{s:06d}.safetensors").unlink()
    with pytest.raises(RunDamagedError, match=r"step_000030\.safetensors: missing"):
        load_run(run)


def test_unreadable_files_are_named_even_without_permission(made, cli, tmp_path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    run = tmp_path / "run"
    shutil.copytree(made["done"], run)
    (run / "metrics.parquet").chmod(0)
    one_line_error(cli("show", run), "metrics.parquet")


def test_analyze_of_an_image_task_run_says_it_needs_a_modular_task(cli, tmp_path) -> None:
    cfg = tiny_config(
        data={"task": "digits", "train_size": 100},
        model={"arch": "mlp", "mlp_input": "dense", "n_layers": 2, "d_model": 16, "d_mlp": 16},
        train={"steps": 2, "eval_every": 1, "checkpoint_every": 1},
    )
    loop.run_training(cfg, tmp_path / "img", progress=False)
    before = snapshot(tmp_path / "img")
    line = one_line_error(cli("analyze", tmp_path / "img"), "modular")
    assert re.search(r"digits", line), line
    assert snapshot(tmp_path / "img") == before
