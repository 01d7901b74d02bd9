"""The command line via its runner: train, presets, show, and every bad input of the issue."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import snapshot, tiny_config
from groklab.cli import app
from groklab.config import config_hash, save_config
from groklab.run import load_run
from groklab.store import RunStore
from groklab.train import loop
from helpers.interrupt import ctrl_c_at


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke the app in an empty working directory (so a default runs/ would show up)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def _one_line_error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_presets_lists_the_four_presets(cli) -> None:
    result = cli("presets")
    assert result.exit_code == 0, result.output
    for name in ("nanda2023", "sullivan2024", "mlp-add", "smoke"):
        assert re.search(rf"\b{re.escape(name)}\b", result.stdout), name
    assert "Nanda" in result.stdout  # with a description


def test_train_smoke_preset_prints_a_summary(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = cli("train", "--preset", "smoke", "--set", "train.steps=20", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert "completed" in result.stdout
    assert re.search(r"steps\s*│?\s*20\b", result.stdout), result.stdout
    assert "grokked" in result.stdout and "final test/acc" in result.stdout
    run = load_run(out)
    assert run.status == "completed"
    assert run.config.name == "smoke" and run.config.train.steps == 20
    assert int(run.metrics["step"].iloc[-1]) == 20
    assert not (tmp_path / "work" / "runs").exists()  # --out was honoured


def test_train_resume_of_a_completed_run_changes_nothing(cli, tmp_path: Path) -> None:
    loop.run_training(tiny_config(), tmp_path / "run", progress=False)
    before = snapshot(tmp_path / "run")
    result = cli("train", "--resume", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    assert "already completed" in " ".join(result.stdout.split())  # rich wraps at 80
    assert snapshot(tmp_path / "run") == before


def _fake_run(path: Path) -> None:
    """A run whose metrics memorise at step 200 and grok at step 700."""
    cfg = tiny_config(train={"steps": 1000})
    rows = []
    for step in range(0, 1001, 100):
        train_acc = 1.0 if step >= 200 else 0.5
        test_acc = 0.995 if step >= 700 else 0.2 + step / 10_000
        rows.append(
            {
                "step": step,
                "lr": 1e-3,
                "train/loss": 1.0 / (step + 1),
                "train/acc": train_acc,
                "test/loss": 5.0 - step / 1000,
                "test/acc": test_acc,
            }
        )
    with RunStore.create(path, cfg) as store:
        store.write_metrics(rows)
        store.write_manifest(
            {"status": "completed", "seed": 0, "split_hash": "abc", "config_hash": config_hash(cfg)}
        )


def test_show_prints_config_status_and_grokking_step(cli, tmp_path: Path) -> None:
    _fake_run(tmp_path / "run")
    result = cli("show", tmp_path / "run")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "p = 11" in out  # the config
    assert re.search(r"status\s*│?\s*completed", out), out
    assert re.search(r"memorised \(train acc ≥ 99%\) at step\s*│?\s*200\b", out), out
    assert re.search(r"grokked \(test acc ≥ 99%\) at step\s*│?\s*700\b", out), out
    assert re.search(r"final test/acc\s*│?\s*99\.5000%", out), out


def test_show_of_a_real_run(cli, tmp_path: Path) -> None:
    loop.run_training(tiny_config(), tmp_path / "run", progress=False)
    result = cli("show", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert re.search(r"status\s*│?\s*completed", result.stdout)
    assert re.search(r"steps\s*│?\s*30\b", result.stdout)


# ---------------------------------------------------------------------------- bad input

BAD_TRAIN_ARGS = [
    (["--preset", "nope"], r"preset 'nope'.*allowed: .*nanda2023"),
    (["--set", "data.task=nope"], r"data\.task='nope'.*allowed: .*modular"),
    (["--set", "data.operations=pow"], r"data\.operations='pow'.*allowed: .*add"),
    (["--set", "data.operations=add,pow"], r"data\.operations='pow'"),
    (["--set", "data.p=12", "--set", "data.operations=mul"], r"data\.p=12 is not prime.*mul"),
    (["--set", "data.operations=div", "--set", "data.p=15"], r"data\.p=15 is not prime.*div"),
    (["--set", "data.train_fraction=0"], r"data\.train_fraction=0\.0 .*\(0, 1\]"),
    (["--set", "data.train_fraction=1.5"], r"data\.train_fraction=1\.5 .*\(0, 1\]"),
    (["--set", "data.train_size=100000"], r"data\.train_size=100000 .*at most 2809"),
    (["--set", "optim.lr=-0.001"], r"optim\.lr=-0\.001 .*> 0"),
    (["--set", "optim.nope=1"], r"unknown key 'optim\.nope'; allowed: .*lr"),
    (["--set", "trian.steps=1"], r"unknown key 'trian\.steps'"),
    (["--set", "optim.lr"], r"section\.key=value"),
    (["--set", "train.steps=many"], r"train\.steps='many'.*integer"),
]


@pytest.mark.parametrize(
    ("args", "message"), BAD_TRAIN_ARGS, ids=[" ".join(a) for a, _ in BAD_TRAIN_ARGS]
)
def test_bad_train_input_exits_2_with_one_line_and_no_trace(
    cli, tmp_path: Path, args: list[str], message: str
) -> None:
    before = snapshot(tmp_path)
    base = [] if args[0] == "--preset" else ["--preset", "smoke"]
    result = cli("train", *base, *args, "--out", tmp_path / "run", "-q")
    line = _one_line_error(result)
    assert re.search(message, line), line
    assert snapshot(tmp_path) == before  # no run directory, no runs/, nothing
    assert "Traceback" not in result.output


def test_existing_directory_with_a_different_run(cli, tmp_path: Path) -> None:
    loop.run_training(tiny_config(), tmp_path / "run", progress=False)
    before = snapshot(tmp_path)
    result = cli("train", "--preset", "smoke", "--out", tmp_path / "run", "-q")
    line = _one_line_error(result)
    assert "already holds a different run" in line and "run" in line
    assert re.search(r"\((data|model|name|optim|train)\.?\w*:", line), line  # names the field
    # The same config again: refused too; the run is complete, so nothing is overwritten.
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(save_config(tiny_config()))
    before = snapshot(tmp_path)
    result = cli("train", "--config", cfg_path, "--out", tmp_path / "run", "-q")
    assert "already holds this run, completed" in _one_line_error(result)
    assert snapshot(tmp_path) == before


def test_non_empty_directory_without_a_run(cli, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    before = snapshot(tmp_path)
    line = _one_line_error(cli("train", "--preset", "smoke", "--out", tmp_path / "mine", "-q"))
    assert "mine" in line and "not empty" in line
    assert snapshot(tmp_path) == before


@pytest.fixture
def interrupted_run(tmp_path: Path) -> Path:
    """A run stopped by Ctrl-C at step 17 (status interrupted, state at step 10)."""
    with ctrl_c_at(17), pytest.raises(KeyboardInterrupt):
        loop.run_training(tiny_config(), tmp_path / "run", progress=False)
    return tmp_path / "run"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "other_run"])
def test_resume_with_corrupt_or_foreign_state(
    cli, tmp_path: Path, interrupted_run: Path, damage: str
) -> None:
    state = interrupted_run / "state.safetensors"
    data = state.read_bytes()
    if damage == "garbage":
        state.write_bytes(b"\x13\x37" * 500)
    elif damage == "truncated":
        state.write_bytes(data[: len(data) - 100])
    elif damage == "foreign":
        import torch

        save_file({"model.embed.W_E": torch.zeros(12, 16)}, str(state))
    else:
        other = tiny_config(optim={"lr": 0.5}, train={"steps": 10})
        loop.run_training(other, tmp_path / "other", progress=False)
        shutil.copyfile(tmp_path / "other" / "state.safetensors", state)
    before = snapshot(tmp_path)
    line = _one_line_error(cli("train", "--resume", interrupted_run, "-q"))
    assert "state.safetensors" in line
    assert snapshot(tmp_path) == before
    assert load_run(interrupted_run).status == "interrupted"


def test_resume_of_a_directory_without_a_run(cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    before = snapshot(tmp_path)
    line = _one_line_error(cli("train", "--resume", tmp_path / "empty", "-q"))
    assert "config.toml" in line
    line = _one_line_error(cli("show", tmp_path / "empty"))
    assert "not a groklab run" in line
    assert snapshot(tmp_path) == before


def test_resume_refuses_a_new_config(cli, interrupted_run: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    line = _one_line_error(cli("train", "--resume", interrupted_run, "--set", "optim.lr=0.1", "-q"))
    assert "--resume" in line
    assert snapshot(tmp_path) == before


def test_console_script_exit_code(tmp_path: Path) -> None:
    exe = shutil.which("groklab")
    cmd = [exe] if exe else [sys.executable, "-m", "groklab.cli"]
    proc = subprocess.run(
        [*cmd, "train", "--preset", "nope", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "preset 'nope'" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- one meaning per flag
# --seeds: a list with ranges (0-3,7) in every command, parsed by groklab.config.parse_seeds.
# --every N: the checkpoints at multiples of N steps (plus the first and last) in every command.
# --steps: a list of checkpoint steps (llc); the step budget is --set train.steps=N everywhere.
# --out/-o: the directory the command writes.


def _capture(monkeypatch: pytest.MonkeyPatch, target: str, seen: dict) -> None:
    """Replace ``module.function`` by one that records its arguments and stops the command."""
    from groklab.errors import GroklabError

    module, _, name = target.rpartition(".")

    def fake(*args, **kwargs):
        seen.update(kwargs, args=args)
        raise GroklabError("stopped by the test")

    monkeypatch.setattr(importlib.import_module(module), name, fake)


def test_train_seeds_is_a_list_with_ranges_and_out_holds_one_run_each(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict = {}
    _capture(monkeypatch, "groklab.train.ensemble.train_many", seen)
    result = cli("train", "-p", "smoke", "--seeds", "0-1,5", "--split-seeds", "3-4,0", "-o", "out")
    assert "stopped by the test" in _one_line_error(result)
    cfgs, targets = seen["args"]
    assert [c.train.seed for c in cfgs] == [0, 1, 5]
    assert [c.data.split_seed for c in cfgs] == [3, 4, 0]
    assert [Path(t) for t in targets] == [Path("out/seed0"), Path("out/seed1"), Path("out/seed5")]
    bad = cli("train", "-p", "smoke", "--seeds", "0-1", "--split-seeds", "x", "-o", "out")
    assert _one_line_error(bad).startswith("error: --split-seeds 'x' is not allowed")


def test_sweep_seeds_is_a_list_with_ranges_and_out_is_the_sweep_directory(
    cli, tmp_path: Path
) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text('name = "s"\npreset = "smoke"\n')
    result = cli("sweep", spec, "--seeds", "0-2,7", "--out", "here", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "4 runs"
    assert [Path(x).parent for x in lines[:-1]] == [Path("here")] * 4
    assert [x.rsplit("seed=", 1)[1] for x in lines[:-1]] == ["0", "1", "2", "7"]
    assert "is not allowed" in _one_line_error(cli("sweep", spec, "--seeds", "2-x", "--dry-run"))


def test_dcrit_seeds_is_a_list_and_out_is_the_search_directory(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict = {}
    _capture(monkeypatch, "groklab.dcrit.find_dcrit", seen)
    args = ("dcrit", "-p", "smoke", "--lo", "10", "--hi", "50", "-o", "search")
    _one_line_error(cli(*args, "--seeds", "0-1,4"))
    assert list(seen["seeds"]) == [0, 1, 4] and Path(seen["args"][1]) == Path("search")
    _one_line_error(cli(*args, "--seeds", "0"))
    assert list(seen["seeds"]) == [0]
    _one_line_error(cli(*args))
    assert list(seen["seeds"]) == [0, 1, 2]  # the default, 0-2


def test_dcrit_refuses_the_old_seed_count_and_step_budget(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict = {}
    _capture(monkeypatch, "groklab.dcrit.find_dcrit", seen)
    args = ("dcrit", "-p", "smoke", "--lo", "10", "--hi", "50")
    line = _one_line_error(cli(*args, "--seeds", "3"))
    assert "not a count" in line and "--seeds 0-2" in line and "--seeds 3-3" in line
    line = _one_line_error(cli(*args, "--seeds", "1"))
    assert "for 1 seed give --seeds 0-0" in line
    line = _one_line_error(cli(*args, "--steps", "4000"))
    assert "--set train.steps=4000" in line
    assert seen == {}  # nothing was searched
    _one_line_error(cli(*args, "--seeds", "0-1", "--set", "train.steps=7"))
    assert seen["args"][0].train.steps == 7


def test_ungrok_seeds_is_a_list_and_out_is_its_directory(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict = {}
    _capture(monkeypatch, "groklab.dcrit.ungrok_curve", seen)
    base = ("ungrok", "runs/x@100", "--sizes", "10,20", "-o", "u")
    _one_line_error(cli(*base, "--seeds", "0-2"))
    assert list(seen["seeds"]) == [0, 1, 2] and Path(seen["args"][2]) == Path("u")
    _one_line_error(cli(*base))
    assert list(seen["seeds"]) == [0]
    line = _one_line_error(cli(*base, "--seeds", "2"))
    assert "ungrok --seeds '2'" in line and "--seeds 0-1" in line


@pytest.fixture(scope="module")
def ckpt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny modular run with checkpoints at 0, 10, 20, 30."""
    out = tmp_path_factory.mktemp("every") / "run"
    loop.run_training(tiny_config(), out, progress=False)
    assert load_run(out).checkpoint_steps == [0, 10, 20, 30]
    return out


@pytest.mark.parametrize("command", ["analyze", "llc"])
def test_every_counts_steps_in_analyze_and_llc(cli, ckpt_run: Path, command: str) -> None:
    """--every 2 meant "every 2nd checkpoint" in analyze: refused with the new spelling."""
    line = _one_line_error(cli(command, ckpt_run, "--every", "2"))
    assert "multiples of N steps" in line and "saved every 10 steps" in line
    assert "--every 20" in line


def test_analyze_every_selects_multiples_of_n_steps(cli, ckpt_run: Path) -> None:
    result = cli("analyze", ckpt_run, "--every", "20", "--no-figures")
    assert result.exit_code == 0, result.output
    assert re.search(r"checkpoints analysed\s*│?\s*3 ", result.stdout), result.stdout  # 0 20 30


def test_llc_every_and_steps_select_checkpoints(
    cli, ckpt_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict = {}
    _capture(monkeypatch, "groklab.analysis.llc.llc_over_checkpoints", seen)
    _one_line_error(cli("llc", ckpt_run, "--every", "20", "-q"))
    assert seen["steps"] == [0, 20, 30]
    _one_line_error(cli("llc", ckpt_run, "--steps", "30,10", "-q"))
    assert seen["steps"] == [10, 30]
    line = _one_line_error(cli("llc", ckpt_run, "--steps", "5", "-q"))
    assert "--steps: no checkpoint at step 5" in line
