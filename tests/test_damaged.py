"""Damaged run directories: every reader answers with one line naming the damaged file and how
to recover, exit code 2, no traceback, and nothing on disk changed.

The runs are copies of one real tiny run (and one killed run) trained once per module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import snapshot, tiny_config
from groklab.cli import app
from groklab.config import RunConfig
from groklab.errors import RunDamagedError
from groklab.run import load_run
from groklab.store import RunStore, load_checkpoint
from groklab.train import loop
from helpers.interrupt import ctrl_c_at

STEPS = 30  # eval every 5, checkpoints at 0, 10, 20, 30


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A completed tiny run and the same run killed at step 23 (state at step 20)."""
    root = tmp_path_factory.mktemp("made")
    cfg = tiny_config(train={"steps": STEPS})
    loop.run_training(cfg, root / "done", progress=False)
    with ctrl_c_at(23), pytest.raises(KeyboardInterrupt):
        loop.run_training(cfg, root / "killed", progress=False)
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
    "middle-checkpoint-binary": (
        lambda r: _binary(r / "checkpoints" / "step_000010.safetensors"),
        "step_000010.safetensors",
    ),
}

READERS = {
    "show": ("show",),
    "analyze": ("analyze", "--no-figures"),
    "report": ("report", "--no-static"),
    "llc": ("llc",),
}


# show and report read no weights, so damaged weights are not theirs to find
_WEIGHT_DAMAGE = ("final-checkpoint-truncated", "middle-checkpoint-binary")


@pytest.mark.parametrize(
    ("reader", "damage"),
    [
        (r, d)
        for d in DAMAGES
        for r in READERS
        if not (d in _WEIGHT_DAMAGE and r in ("show", "report"))
    ],
)
def test_reader_of_a_damaged_run_says_which_file_in_one_line(
    reader: str, damage: str, made: dict[str, Path], cli, tmp_path: Path
) -> None:
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
        "state-truncated",
        "state-binary",
    ],
)
def test_resume_of_a_damaged_killed_run_refuses_in_one_line(
    damage: str, made: dict[str, Path], cli, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(made["killed"], run)
    damage_fn, name = {
        **DAMAGES,
        "state-truncated": (lambda r: _truncate(r / "state.safetensors", 1000), "state"),
        "state-binary": (lambda r: _binary(r / "state.safetensors"), "state.safetensors"),
    }[damage]
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


def test_missing_metrics_are_damage_unless_a_live_writer_is_between_checkpoint_and_metrics(
    made, tmp_path
) -> None:
    """A live run writes each checkpoint just before its metrics: a reader in between sees
    checkpoints and no metrics yet, which is not damage; a dead run's missing metrics are."""
    run = tmp_path / "run"
    shutil.copytree(made["killed"], run)
    m = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**m, "status": "running"}))
    (run / "metrics.parquet").unlink()
    # killed without a word (status running, nobody holds the lock): damaged
    with pytest.raises(RunDamagedError, match=r"metrics\.parquet: missing, but the run has"):
        load_run(run)
    with RunStore.open_existing(run)[0]:  # a live writer holds the lock
        assert load_run(run).metrics.empty
    shutil.copy(made["killed"] / "metrics.parquet", run / "metrics.parquet")
    m["final_step"] = "garbage"  # a manifest value of the wrong type is no traceback either
    (run / "manifest.json").write_text(json.dumps({**m, "status": "completed"}))
    assert load_run(run).checkpoint_steps == [0, 10, 20]


def test_an_untouched_config_matches_even_if_groklab_writes_configs_differently(
    made, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest records the hash of the text written to config.toml; a later groklab that
    serialises the same config differently (a new field) still opens old runs."""
    import groklab.run

    run = tmp_path / "run"
    shutil.copytree(made["done"], run)
    monkeypatch.setattr(groklab.run, "config_hash", lambda cfg: "0000000000000000")
    assert load_run(run).config.model.d_model == 16
    _edit_config(run)
    with pytest.raises(RunDamagedError, match=r"config\.toml: does not match the run"):
        load_run(run)


def test_unreadable_files_are_named_even_without_permission(
    made, cli, tmp_path, monkeypatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(made["done"], run)
    (run / "metrics.parquet").chmod(0)
    if os.geteuid() == 0:  # root reads every file: let the reader meet the error it would get
        real = pd.read_parquet

        def denied(path, *args, **kwargs):
            if Path(path).name == "metrics.parquet":
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(pd, "read_parquet", denied)
    line = one_line_error(cli("show", run), "metrics.parquet")
    assert "permission denied" in line


def test_analyze_recomputes_a_damaged_analysis_cache(made, cli, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(made["done"], run)
    first = cli("analyze", "--no-figures", run)
    assert first.exit_code == 0, first.output
    caches = sorted((run / "analysis").glob("*-*.json"))
    assert caches
    for p in caches:
        _binary(p)
    _truncate(next((run / "analysis").glob("progress-*.parquet")))
    again = cli("analyze", "--no-figures", run)
    assert again.exit_code == 0, again.output
    assert "from cache" not in again.output
    assert "from cache" in cli("analyze", "--no-figures", run).output  # rewritten


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


# ----------------------------------------------------------------------------- sweeps

SPEC = """
name = "tiny"
seeds = [0]

[base.data]
p = 11
train_fraction = 0.5

[base.model]
d_model = 16
n_heads = 2
d_head = 8
d_mlp = 32

[base.optim]
lr = 1e-2
warmup_steps = 2

[base.train]
steps = 20
eval_every = 5
checkpoint_every = 10
device = "cpu"

[grid]
"optim.weight_decay" = [1.0, 0.3]
"""
A, B = "optim.weight_decay=1.0__seed=0", "optim.weight_decay=0.3__seed=0"


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from groklab import sweep as sw

    root = tmp_path_factory.mktemp("swept")
    (root / "spec.toml").write_text(SPEC)
    sw.run_sweep(sw.load_spec(root / "spec.toml"), root / "sw", progress=False)
    assert sorted(p.name for p in (root / "sw").iterdir() if p.is_dir()) == sorted([A, B])
    return root


def _copy_sweep(swept: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copy(swept / "spec.toml", tmp_path / "spec.toml")
    shutil.copytree(swept / "sw", tmp_path / "sw")
    return tmp_path / "spec.toml", tmp_path / "sw"


def test_relaunch_with_a_binary_config_records_it_and_trains_the_others(
    swept: Path, cli, tmp_path: Path
) -> None:
    spec, sw_dir = _copy_sweep(swept, tmp_path)
    _binary(sw_dir / A / "config.toml")
    shutil.rmtree(sw_dir / B)  # must train again
    damaged = snapshot(sw_dir / A)
    result = cli("sweep", spec, "--out", sw_dir, "--workers", "1", "-q", "--no-figures")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    flat = "".join(result.output.split())  # rich wraps long lines
    assert f"failed:{sw_dir / A}:{sw_dir / A}/config.toml:" in flat
    assert load_run(sw_dir / B).status == "completed"
    assert snapshot(sw_dir / A) == damaged  # left alone
    runs = pd.read_parquet(sw_dir / "summary.parquet").set_index("run")
    assert runs.loc[A, "status"] == "failed" and "config.toml" in runs.loc[A, "error"]
    assert runs.loc[B, "status"] == "completed"


@pytest.mark.parametrize("damage", ["metrics-truncated", "metrics-empty", "manifest-binary"])
def test_a_damaged_run_is_a_failed_row_of_summary_status_and_report(
    damage: str, swept: Path, cli, tmp_path: Path
) -> None:
    from groklab import sweep as sw

    _, sw_dir = _copy_sweep(swept, tmp_path)
    damage_fn, name = DAMAGES[damage]
    damage_fn(sw_dir / A)
    runs, points = sw.summarize_sweep(sw_dir, write=False)
    runs = runs.set_index("run")
    assert runs.loc[A, "status"] == "failed" and name in runs.loc[A, "error"]
    assert runs.loc[B, "status"] == "completed"
    assert points["n_failed"].sum() == 1

    status = cli("sweep", "status", sw_dir)
    assert status.exit_code == 0, status.output
    assert "failed: 1" in status.output and "completed: 1" in status.output
    st = sw.sweep_status(sw_dir).set_index("run")
    assert st.loc[A, "status"] == "failed" and name in st.loc[A, "error"]

    report = cli("report", sw_dir, "--no-static")
    assert report.exit_code == 0, report.output
    html = (sw_dir / "report.html").read_text()
    assert name in html and "failed" in html


def test_a_damaged_sweep_file_is_named_and_a_relaunch_rewrites_it(swept, cli, tmp_path) -> None:
    spec, sw_dir = _copy_sweep(swept, tmp_path)
    good = json.loads((swept / "sw" / "sweep.json").read_text())
    _binary(sw_dir / "sweep.json")
    before = snapshot(sw_dir)
    one_line_error(cli("sweep", "status", sw_dir), "sweep.json", "groklab sweep")
    one_line_error(cli("report", sw_dir, "--no-static"), "sweep.json")
    assert snapshot(sw_dir) == before
    result = cli("sweep", spec, "--out", sw_dir, "-q", "--no-figures", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert json.loads((sw_dir / "sweep.json").read_text())["runs"] == good["runs"]


def test_a_second_spec_into_a_sweep_directory_is_refused(swept: Path, cli, tmp_path) -> None:
    spec, sw_dir = _copy_sweep(swept, tmp_path)
    other = tmp_path / "other.toml"
    other.write_text(SPEC.replace('"optim.weight_decay" = [1.0, 0.3]', '"optim.lr" = [1e-3]'))
    before = snapshot(sw_dir)
    one_line_error(cli("sweep", other, "--out", sw_dir, "--dry-run"), A)  # says so up front
    line = one_line_error(cli("sweep", other, "--out", sw_dir, "-q", "--no-figures"))
    assert "sweep.json" not in line or str(sw_dir) in line
    assert str(sw_dir) in line and A in line and "--out" in line
    assert snapshot(sw_dir) == before
    # the same spec with a changed base changes every run: refused too
    changed = cli("sweep", spec, "--out", sw_dir, "--set", "train.steps=30", "-q")
    one_line_error(changed, "changes run")
    assert snapshot(sw_dir) == before


def test_a_relaunch_may_add_seeds_and_keeps_every_run_listed(swept: Path, cli, tmp_path) -> None:
    spec, sw_dir = _copy_sweep(swept, tmp_path)
    result = cli(
        "sweep",
        spec,
        "--out",
        sw_dir,
        "--seeds",
        "0,1",
        "--only",
        "*1.0__seed=1",
        "-q",
        "--no-figures",
        "--workers",
        "1",
    )
    assert result.exit_code == 0, result.output
    names = [e["name"] for e in json.loads((sw_dir / "sweep.json").read_text())["runs"]]
    assert sorted(names) == sorted([A, B, A[:-1] + "1", B[:-1] + "1"])
    runs = pd.read_parquet(sw_dir / "summary.parquet").set_index("run")
    assert runs.loc[A[:-1] + "1", "status"] == "completed"
    assert runs.loc[B[:-1] + "1", "status"] == "pending"
    assert (runs.loc[[A, B], "status"] == "completed").all()


# ----------------------------------------------------------------------------- properties


def _field_keys() -> list[str]:
    hints = {f.name: f.default_factory() for f in fields(RunConfig) if f.name != "name"}
    return ["name"] + [f"{sec}.{f.name}" for sec, obj in hints.items() for f in fields(obj)]


GARBAGE = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
VALUES = st.one_of(
    st.integers(-3, 40).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.sampled_from(
        [
            "true",
            "false",
            "",
            "[]",
            "[1, 2]",
            "[[1]]",
            "{a = 1}",
            "nan",
            "-inf",
            "1e400",
            '"x"',
            "[",
            "'",
            "0.5",
            "-0",
            "1_0",
            "0x10",
            '["add", "mul"]',
            "none",
        ]
    ),
    GARBAGE,
)
OVERRIDES = st.lists(
    st.tuples(st.one_of(st.sampled_from(_field_keys()), GARBAGE), VALUES).map(
        lambda kv: f"{kv[0]}={kv[1]}"
    )
    | GARBAGE,
    min_size=1,
    max_size=3,
)


def _answer_is_clean(result: object) -> None:
    """Success, a failed/diverged run (exit 1, said in words), or one line and exit 2; never
    an uncaught exception or a traceback."""
    out = result.output  # type: ignore[attr-defined]
    exc = result.exception  # type: ignore[attr-defined]
    assert exc is None or isinstance(exc, SystemExit), (type(exc), exc, out)
    assert "Traceback" not in out
    assert result.exit_code in (0, 1, 2), (result.exit_code, out)  # type: ignore[attr-defined]
    if result.exit_code == 2:  # type: ignore[attr-defined]
        assert len([ln for ln in out.splitlines() if ln.strip()]) == 1, out


# Hypothesis's failure report imports a module that warns (DeprecationWarning); without this
# filter a failing example ends in an INTERNALERROR instead of the falsifying example.
HYPOTHESIS_REPORT = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)


@HYPOTHESIS_REPORT
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(overrides=OVERRIDES)
def test_train_with_random_overrides_trains_or_answers_in_one_line(
    overrides: list[str], tmp_path: Path
) -> None:
    runner = CliRunner()
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        work = Path(d)
        args = ["train", "-p", "smoke", "-q", "--out", str(work / "run")]
        args += ["--set", "train.steps=2", "--set", "train.device=cpu"]
        for ov in overrides:
            args += ["--set", ov]
        before = snapshot(work)
        result = runner.invoke(app, args)
        _answer_is_clean(result)
        if result.exit_code == 2:
            assert snapshot(work) == before


def _real_prefix(data: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, len(data)).map(lambda n: data[:n])


@HYPOTHESIS_REPORT
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_bytes_as_any_file_answer_in_one_line(
    data: st.DataObject, made: dict[str, Path], tmp_path: Path
) -> None:
    which = data.draw(
        st.sampled_from(["config", "spec", "config.toml", "manifest.json", "metrics.parquet"])
    )
    runner = CliRunner()
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        work = Path(d)
        if which in ("config", "spec"):
            blob = data.draw(st.binary(max_size=300))
            (work / "f.toml").write_bytes(blob)
            small = ["--set", "train.steps=2", "--set", "train.device=cpu"]
            args = (
                ["train", "--config", str(work / "f.toml"), "--out", str(work / "out"), "-q"]
                if which == "config"
                else [
                    "sweep",
                    str(work / "f.toml"),
                    "--out",
                    str(work / "out"),
                    "-q",
                    "--workers",
                    "1",
                    "--no-figures",
                ]
            ) + small
        else:
            run = work / "run"
            shutil.copytree(made["done"], run)
            real = (run / which).read_bytes()
            blob = data.draw(st.one_of(st.binary(max_size=300), _real_prefix(real)))
            (run / which).write_bytes(blob)
            reader = data.draw(st.sampled_from([["show"], ["analyze", "--no-figures"]]))
            args = [*reader, str(run)]
        before = snapshot(work)
        result = runner.invoke(app, args)
        _answer_is_clean(result)
        if result.exit_code == 2:
            assert snapshot(work) == before
