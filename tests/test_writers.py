"""Writers against bad inputs: every case answers with one line and its exit code, and leaves
the disk as it was (a real tiny run, snapshotted with file hashes before and after).

Exit codes: 0 completed, 1 a run failed or diverged (or the disk filled up), 2 bad input,
130 interrupted.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import snapshot, tiny_config
from groklab import store
from groklab.cli import app
from groklab.config import save_config
from groklab.run import load_run
from groklab.train import loop
from helpers.interrupt import ctrl_c_at
from helpers.locks import lock_held_by_another_process

SMALL = ("--set", "train.steps=20")


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory holding one completed tiny run, ``myrun``."""
    w = tmp_path / "work"
    w.mkdir()
    monkeypatch.chdir(w)
    loop.run_training(tiny_config(name="myrun"), w / "myrun", progress=False)
    (w / "myrun.toml").write_text(save_config(tiny_config(name="myrun")))
    (w / "binary.toml").write_bytes(bytes(range(256)) * 4)
    return w


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result, code: int, *needles: str) -> str:
    """The result exited with ``code`` and said one line (no traceback) holding ``needles``."""
    out = (result.stdout + result.stderr).strip()
    assert result.exit_code == code, (result.exit_code, out, result.exception)
    assert "Traceback" not in out and not isinstance(result.exception, AssertionError)
    lines = out.splitlines()
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _spec(work: Path, name: str, text: str) -> Path:
    p = work / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------ bad input: exit 2, no change

BAD_INPUTS = {
    # 1. a path that leads into an existing run must not overwrite it
    "same_run_via_dotdot": (
        ("train", "--config", "myrun.toml", "--out", "typo/../myrun", "-q"),
        ("myrun", "already holds this run, completed"),
    ),
    "other_run_via_dotdot": (
        ("train", "--preset", "smoke", *SMALL, "--out", "typo/../myrun", "-q"),
        ("myrun", "already holds a different run"),
    ),
    "name_dotdot": (("train", "--preset", "smoke", *SMALL, "--set", "name=..", "-q"), ("name",)),
    "name_dot": (("train", "--preset", "smoke", *SMALL, "--set", "name=.", "-q"), ("name",)),
    "out_is_a_file": (
        ("train", "--preset", "smoke", *SMALL, "--out", "myrun.toml", "-q"),
        ("myrun.toml", "not a directory"),
    ),
    # 4. values that crashed or allocated the machine away
    "binary_config": (("train", "--config", "binary.toml", "-q"), ("binary.toml", "binary")),
    "seed_2_63": (
        ("train", "--preset", "smoke", *SMALL, "--set", "train.seed=9223372036854775808", "-q"),
        ("train.seed", "0..9223372036854775807"),
    ),
    "seeds_2_63": (
        ("train", "--preset", "smoke", *SMALL, "--seeds", "0,9223372036854775808", "-q"),
        ("--seeds", "9223372036854775807"),
    ),
    "seeds_huge_range": (
        ("train", "--preset", "smoke", *SMALL, "--seeds", "0-99999999999", "-q"),
        ("--seeds", "at most"),
    ),
    "p_100000": (
        ("train", "--preset", "smoke", "--set", "data.p=100000", "-q"),
        ("data.p=100000", "2..2048"),
    ),
    "steps_1e12": (
        ("train", "--preset", "smoke", "--set", "train.steps=1e12", "-q"),
        ("train.steps", "1..1_000_000_000"),
    ),
    "test_size_1e12": (
        ("train", "--preset", "smoke", "--set", "data.test_size=1e12", "-q"),
        ("data.test_size", "1..16777216"),
    ),
    "seq_len_100000": (
        (
            "train",
            "--preset",
            "smoke",
            "--set",
            "data.task=repeat-subseq",
            "--set",
            "data.seq_len=100000",
            "-q",
        ),
        ("data.seq_len", "1..4096"),
    ),
    # 5. error text reaches the user verbatim, brackets included
    "markup_in_value": (
        ("train", "--preset", "smoke", "--set", "data.task=[bold]x[/bold]", "-q"),
        ("data.task='[bold]x[/bold]' is not allowed",),
    ),
    "train_size_above_data": (
        ("train", "--preset", "smoke", *SMALL, "--set", "data.train_size=100000", "-q"),
        ("data.train_size=100000",),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(work: Path, case: str) -> None:
    args, needles = BAD_INPUTS[case]
    before = snapshot(work.parent)
    one_line(invoke(*args), 2, *needles)
    assert snapshot(work.parent) == before  # no run overwritten, no typo/ or runs/ created


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_creates_nothing(work: Path) -> None:
    before = snapshot(work.parent)
    one_line(
        invoke("train", "--preset", "smoke", *SMALL, "--device", "cuda", "--out", "new", "-q"),
        2,
        "train.device='cuda'",
        "no CUDA",
    )
    # the retry is not told the directory "already holds a run": there is none
    assert snapshot(work.parent) == before


def test_binary_sweep_spec(work: Path) -> None:
    before = snapshot(work.parent)
    one_line(invoke("sweep", "binary.toml", "-q"), 2, "binary.toml", "binary")
    assert snapshot(work.parent) == before


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('name = ".."\npreset = "smoke"\n', ("spec.toml", "name='..'")),
        ('preset = "smoke"\ngrid = 5\n', ("spec.toml", "grid must be a table of key = [values]")),
        (
            'preset = "smoke"\n[grid]\n"data.p" = [53, 100000]\n',
            ("spec.toml", "grid.data.p", "data.p=100000", "2..2048"),
        ),
        (
            'preset = "smoke"\n[[points]]\n"train.seed" = -1\n',
            ("spec.toml", "points[0]", "train.seed=-1"),
        ),
    ],
    ids=["name_dotdot", "grid_not_a_table", "grid_value", "point_value"],
)
def test_sweep_spec_errors_name_the_spec_verbatim(work: Path, text: str, needles) -> None:
    spec = _spec(work, "spec.toml", text)
    before = snapshot(work.parent)
    one_line(invoke("sweep", spec, "-q"), 2, *needles)
    assert snapshot(work.parent) == before
    assert not (work / "sweeps").exists()


def test_sweep_into_a_run_directory_is_refused(work: Path) -> None:
    spec = _spec(work, "spec.toml", 'preset = "smoke"\n[base.train]\nsteps = 5\n')
    before = snapshot(work.parent)
    one_line(invoke("sweep", spec, "--out", "typo/../myrun", "-q"), 2, "myrun", "holds a run")
    assert snapshot(work.parent) == before


def test_sweep_into_another_sweep_is_refused(work: Path) -> None:
    (work / "sw").mkdir()
    (work / "sw" / "sweep.json").write_text(json.dumps({"name": "other", "runs": []}))
    spec = _spec(work, "spec.toml", 'name = "mine"\npreset = "smoke"\n')
    before = snapshot(work.parent)
    one_line(invoke("sweep", spec, "--out", "sw", "-q"), 2, "'other'", "another --out")
    assert snapshot(work.parent) == before


def test_dcrit_checks_hi_before_training_anything(work: Path) -> None:
    before = snapshot(work.parent)
    result = invoke(
        "dcrit", "--preset", "smoke", "--lo", "5", "--hi", "100000", "--seeds", "0",
        "--set", "train.steps=5", "--out", "search",
    )  # fmt: skip
    one_line(result, 2, "data.train_size=100000", "larger than the data")
    assert snapshot(work.parent) == before  # the lo runs were not trained first


def test_dcrit_into_a_run_directory_is_refused(work: Path) -> None:
    before = snapshot(work.parent)
    result = invoke(
        "dcrit", "--preset", "smoke", "--lo", "5", "--hi", "50", "--seeds", "0",
        "--set", "train.steps=5", "--out", "myrun",
    )  # fmt: skip
    one_line(result, 2, "myrun", "holds a run")
    assert snapshot(work.parent) == before


def test_train_on_a_live_run_names_the_writer(work: Path) -> None:
    """A second `train` on a run another process is writing is told so, with its pid."""
    with lock_held_by_another_process(work / "myrun") as holder:
        before = snapshot(work.parent)
        for args in (
            ("train", "--config", "myrun.toml", "--out", "myrun", "-q"),
            ("train", "--resume", "myrun", "-q"),
        ):
            if args[1] == "--resume":
                # an unfinished run, so that --resume has work to do
                m = json.loads((work / "myrun" / "manifest.json").read_text())
                (work / "myrun" / "manifest.json").write_text(json.dumps({**m, "status": "x"}))
                before = snapshot(work.parent)
            line = one_line(invoke(*args), 2, "being written by another process")
            assert f"pid {holder.pid}" in line
            assert "--resume" not in line.split(";")[0]
            assert snapshot(work.parent) == before


# ------------------------------------------------------------------ runs that end badly


def test_diverged_run_exits_1(work: Path) -> None:
    result = invoke(
        "train", "--config", "myrun.toml", "--set", "train.diverge_loss=1e-9",
        "--out", "div", "-q",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "div: diverged at step 0" in err[0], result.stderr
    assert load_run(work / "div").status == "diverged"


def test_ctrl_c_is_recorded_interrupted_and_exits_130(work: Path) -> None:
    with ctrl_c_at(17):
        result = invoke("train", "--config", "myrun.toml", "--out", "killed", "-q")
    assert result.exit_code == 130, result.output
    line = one_line(result, 130, "interrupted", "--resume killed")
    assert "error" not in line
    run = load_run(work / "killed")
    assert run.status == "interrupted" and run.checkpoint_steps[-1] == 10
    result = invoke("train", "--resume", "killed", "-q")
    assert result.exit_code == 0, result.output
    assert load_run(work / "killed").status == "completed"


# ------------------------------------------------------------------ full disk


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, n_ok: int) -> list[str]:
    """Make every atomic write after the first ``n_ok`` fail as on a full disk."""
    real_fsync = store.os.fsync
    calls: list[str] = []

    def fsync(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        if len(calls) > n_ok:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(store.os, "fsync", fsync)
    return calls


def _no_temp_files(root: Path) -> None:
    assert not [p for p in root.rglob("*.tmp")], "a temporary file was left behind"


def test_full_disk_on_resume_damages_nothing(work: Path, monkeypatch) -> None:
    with ctrl_c_at(17):
        invoke("train", "--config", "myrun.toml", "--out", "killed", "-q")
    before = snapshot(work.parent)
    _disk_full_after(monkeypatch, 0)
    result = invoke("train", "--resume", "killed", "-q")
    one_line(result, 1, "manifest.json", "No space left on device", "unchanged")
    assert snapshot(work.parent) == before
    monkeypatch.undo()
    monkeypatch.chdir(work)
    assert invoke("train", "--resume", "killed", "-q").exit_code == 0  # space freed: continues
    assert load_run(work / "killed").status == "completed"


def test_full_disk_during_training_keeps_what_was_saved(work: Path, monkeypatch) -> None:
    # writes: config, manifest, step 0 (weights, metrics, state), step 10 weights, then full
    _disk_full_after(monkeypatch, 6)
    result = invoke("train", "--config", "myrun.toml", "--out", "full", "-q")
    one_line(result, 1, "full/metrics.parquet", "No space left on device")
    _no_temp_files(work)
    monkeypatch.undo()
    monkeypatch.chdir(work)
    run = load_run(work / "full")
    assert run.checkpoint_steps == [0, 10]
    run.model_at(10)  # what was saved before the disk filled up still loads
    assert run.status == "failed" or run.status == "running"
    assert invoke("train", "--resume", "full", "-q").exit_code == 0  # space freed: continues
    assert load_run(work / "full").status == "completed"


def test_full_disk_at_the_first_write_leaves_no_directory(work: Path, monkeypatch) -> None:
    before = snapshot(work.parent)
    _disk_full_after(monkeypatch, 0)
    result = invoke("train", "--config", "myrun.toml", "--out", "new", "-q")
    one_line(result, 1, "config.toml", "No space left on device")
    assert snapshot(work.parent) == before


# ------------------------------------------------------------------ file modes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_users_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        loop.run_training(tiny_config(train={"steps": 10}), tmp_path / "run", progress=False)
    finally:
        os.umask(old)
    for name in ("config.toml", "manifest.json", "metrics.parquet", "state.safetensors"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == mode, name
    ckpt = tmp_path / "run" / "checkpoints" / "step_000010.safetensors"
    assert stat.S_IMODE(ckpt.stat().st_mode) == mode


def test_ungrok_into_a_run_directory_is_refused(work: Path) -> None:
    before = snapshot(work.parent)
    result = invoke(
        "ungrok", "myrun@30", "--sizes", "10,20", "--set", "train.steps=5", "--out", "myrun"
    )
    one_line(result, 2, "myrun", "holds a run")
    assert snapshot(work.parent) == before


# ------------------------------------------------------------------ verbatim errors, one path


def test_install_hint_reaches_the_user_verbatim(work: Path, monkeypatch) -> None:
    import groklab.report.static
    from groklab.report.html import StaticExportError

    def no_kaleido(sweep_dir):
        raise StaticExportError("static figures need kaleido: pip install 'groklab[plot]'")

    monkeypatch.setattr(groklab.report.static, "draw_study_figures", no_kaleido)
    one_line(invoke("sweep", "figures", "anywhere"), 2, "pip install 'groklab[plot]'")


def test_uncaught_groklab_error_is_one_line_through_the_app(work: Path, monkeypatch) -> None:
    """A command that does not catch GroklabError itself still answers with one line, exit 2,
    its text verbatim (the app's command group is the one error path)."""
    import groklab.sweep
    from groklab.errors import ConfigError

    def broken() -> list[str]:
        raise ConfigError("studies: [bold]x[/bold] = [values] is not allowed")

    monkeypatch.setattr(groklab.sweep, "list_studies", broken)
    line = one_line(invoke("sweep", "studies"), 2, "[bold]x[/bold] = [values]")
    assert line.startswith("error: ")


def test_lazy_checkpoint_schedule_is_the_schedule() -> None:
    for steps, every, n_log in [(250, 100, 0), (1000, 1000, 5), (23, 10, 3), (7, 1, 4)]:
        lazy = {t for t in range(steps + 2) if loop.is_checkpoint_step(
            t, steps, every, loop._log_checkpoints(steps, every, n_log)
        )}  # fmt: skip
        assert lazy == loop.checkpoint_schedule(steps, every, n_log)


def test_largest_seed_trains_and_reads_back(work: Path) -> None:
    """Seeds up to 2^63-1 are exact (no float round trip) in overrides and in config.toml."""
    big = 2**63 - 1
    result = invoke(
        "train", "--config", "myrun.toml", "--set", "train.steps=3",
        "--set", f"train.seed={big}", "--set", f"data.split_seed={big}", "--out", "big", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = load_run(work / "big")
    assert run.config.train.seed == big and run.config.data.split_seed == big
