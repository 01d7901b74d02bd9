"""Delivery of runs from a node's scratch directory through the receiver (no Ray needed: the
receiver is called in-process here; tests/test_sweep_cluster.py runs it as a Ray actor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from safetensors.torch import load_file

from conftest import snapshot, tiny_config
from groklab import sweep as sw
from groklab.errors import ConfigError, RunExistsError
from groklab.store import check_folder_target, read_manifest
from groklab.sweep import delivery as dl
from groklab.sweep.worker import _run_one
from groklab.train.loop import run_training

CFG = tiny_config(train={"steps": 40, "eval_every": 5, "checkpoint_every": 10})


class _NodeLost(BaseException):
    """Stands for the worker's node going away: nothing in the task catches it."""


class _Recorder(dl.Receiver):
    """A receiver that records each put and can cut the task off after the n-th one."""

    def __init__(self, targets: dict[str, str], *, lose_after: int | None = None) -> None:
        super().__init__(targets)
        self.puts: list[list[str]] = []
        self.lose_after = lose_after

    def put(self, key: str, token: str, files: dict[str, bytes]) -> bool:
        ok = super().put(key, token, files)
        self.puts.append(sorted(files))
        if self.lose_after is not None and len(self.puts) == self.lose_after:
            self.lose_after = None
            raise _NodeLost  # after the files were written, as a node dying after its send
        return ok


def _attempt(rec: dl.Receiver, key: str = "run") -> dict[str, Any]:
    with dl.delivered_run(rec, key, "sweep0") as d:
        if d.prior is not None:
            return d.prior
        res = _run_one(CFG, str(d.path), (), {}, None, on_save=d.on_save)
        return {**d.finish(res), "scratch": str(d.path)}


def _assert_same_run(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(
        pd.read_parquet(a / "metrics.parquet"), pd.read_parquet(b / "metrics.parquet")
    )
    files = ["state.safetensors", *(f"checkpoints/{p.name}" for p in (a / "checkpoints").iterdir())]
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == sorted(
        p.name for p in (a / "checkpoints").iterdir()
    )
    for f in files:
        ta, tb = load_file(a / f), load_file(b / f)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert ta[k].equal(tb[k]), (f, k)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(dl.SCRATCH_ENV, str(tmp_path / "scratch"))
    return tmp_path / "scratch"


def test_a_run_is_delivered_through_the_receiver_only(tmp_path: Path, scratch: Path) -> None:
    target = tmp_path / "sweep" / "run"
    rec = _Recorder({"run": str(target)})
    res = _attempt(rec)
    assert res["status"] == "completed" and res["action"] == "started"
    # trained in scratch (node "local" outside Ray), never at the target path
    assert Path(res["scratch"]) == scratch / "local" / "sweep0" / "run"
    assert not Path(res["scratch"]).exists()  # scratch removed after delivery
    # one put per save (checkpoints at 0, 10, 20, 30, 40), then the final one
    assert len(rec.puts) == 6
    assert rec.puts[-1] == ["manifest.json", "metrics.parquet"]
    assert "state.safetensors" in rec.puts[0] and "config.toml" in rec.puts[0]
    assert rec.puts[1] == [
        "checkpoints/step_000010.safetensors",
        "metrics.parquet",
        "state.safetensors",
    ]
    # moved into place: no .partial left, no lock, no temporary file
    assert sorted(p.name for p in target.parent.iterdir()) == ["run"]
    assert not [p for p in target.rglob(".*")]
    assert read_manifest(target)["status"] == "completed"
    local = run_training(CFG, tmp_path / "local", progress=False)
    _assert_same_run(local, target)


def test_a_lost_attempt_leaves_a_partial_and_the_next_resumes_it(
    tmp_path: Path, scratch: Path
) -> None:
    target = tmp_path / "sweep" / "run"
    rec = _Recorder({"run": str(target)}, lose_after=2)
    with pytest.raises(_NodeLost):
        _attempt(rec)
    part = dl.partial_dir(target)
    assert not target.exists() and part.is_dir()  # never a half run at <sweep>/<run>
    assert read_manifest(part)["status"] == "running"
    assert not (scratch / "local" / "sweep0" / "run").exists()
    # the summary and the status read the partial as an unfinished run, not as damage
    res = _attempt(rec)
    assert res["status"] == "completed" and res["action"] == "resumed"
    assert read_manifest(target)["resumed_from_step"] == 10
    assert not part.exists()
    _assert_same_run(run_training(CFG, tmp_path / "local", progress=False), target)
    # a later attempt of the delivered run (a retry racing its own success) does nothing
    before = snapshot(target)
    again = _attempt(rec)
    assert again["action"] == "resumed" and snapshot(target) == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["run"]


def test_an_older_attempt_is_refused(tmp_path: Path) -> None:
    rec = dl.Receiver({"run": str(tmp_path / "run")})
    old, _, _ = rec.begin("run")
    new, _, _ = rec.begin("run")
    assert not rec.put("run", old, {"config.toml": b"x"})
    assert not dl.partial_dir(tmp_path / "run").exists()
    assert rec.put("run", new, {"config.toml": b"x"})
    with pytest.raises(ConfigError, match="not a path inside"):
        rec.put("run", new, {"../escape": b"x"})
    with pytest.raises(ConfigError, match="no run 'other'"):
        rec.begin("other")


def test_a_run_that_fails_before_writing_leaves_no_partial(tmp_path: Path, scratch: Path) -> None:
    rec = dl.Receiver({"run": str(tmp_path / "run")})
    with dl.delivered_run(rec, "run", "sweep0") as d:
        res = d.finish({"out": str(d.path), "status": "failed", "error": "no CUDA device"})
    assert res["status"] == "failed" and res["error"] == "no CUDA device"
    assert list(tmp_path.iterdir()) == [scratch]


def test_claim_moves_an_unfinished_run_and_refuses_others(tmp_path: Path) -> None:
    out = tmp_path / "a"
    run_training(CFG, out, progress=False)
    dl.claim(CFG, out)
    assert not out.exists() and (dl.partial_dir(out) / "config.toml").is_file()
    # a different run is reported and left alone
    other = tmp_path / "b"
    run_training(CFG, other, progress=False)
    before = snapshot(other)
    with pytest.raises(RunExistsError, match="different run"):
        dl.claim(tiny_config(optim={"lr": 3e-3}), other)
    assert snapshot(other) == before
    # the run in both places: named, nothing moved
    (tmp_path / "c").mkdir()
    run_training(CFG, tmp_path / "c" / "r", progress=False)
    dl.partial_dir(tmp_path / "c" / "r").mkdir()
    with pytest.raises(RunExistsError, match=r"also in r\.partial"):
        dl.claim(CFG, tmp_path / "c" / "r")
    # unrelated files are refused; an empty directory makes way
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("x")
    with pytest.raises(RunExistsError, match="holds no groklab run"):
        dl.claim(CFG, tmp_path / "d")
    (tmp_path / "e").mkdir()
    dl.claim(CFG, tmp_path / "e")
    assert not (tmp_path / "e").exists()


SPEC = {
    "name": "tiny-delivery",
    "seeds": [0],
    "base": {
        "data": {"p": 11, "train_fraction": 0.5},
        "model": {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        "train": {"steps": 40, "eval_every": 5, "checkpoint_every": 10, "device": "cpu"},
    },
    "grid": {"optim.weight_decay": [1.0, 0.3]},
}


def test_status_summary_and_local_backend_treat_a_partial_as_an_unfinished_run(
    tmp_path: Path, scratch: Path
) -> None:
    spec = sw.parse_spec(SPEC)
    sweep = tmp_path / "s"
    first = sw.run_sweep(spec, sweep, progress=False, only=["*=0.3*"])
    assert first.n_failed == 0
    name = next(r.name for r in sw.expand(spec) if "=1.0" in r.name)
    # the other run, cut off after two deliveries from a Ray node
    cfg = next(r.config for r in sw.expand(spec) if r.name == name)
    rec = _Recorder({name: str(sweep / name)}, lose_after=2)
    with pytest.raises(_NodeLost), dl.delivered_run(rec, name, "s0") as d:
        _run_one(cfg, str(d.path), (), {}, None, on_save=d.on_save)
    assert (sweep / f"{name}.partial").is_dir()

    assert check_folder_target(sweep, what="sweep") == sweep.resolve()
    st = sw.sweep_status(sweep).set_index("run")
    assert len(st) == 2  # the partial is not a run of its own
    assert st.loc[name, "status"] == "running" and st.loc[name, "step"] == 10
    assert st.loc[name, "error"] is None
    runs, _ = sw.summarize_sweep(sweep, write=False)
    row = runs.set_index("run").loc[name]
    assert row["status"] == "running" and row["final_step"] == 10

    # the local backend takes the partial over and resumes it in place
    res = sw.run_sweep(spec, sweep, progress=False)
    by = {Path(r["out"]).name: r for r in res.results}
    assert by[name]["action"] == "resumed" and by[name]["status"] == "completed"
    assert not (sweep / f"{name}.partial").exists()
    assert json.loads((sweep / name / "manifest.json").read_text())["resumed_from_step"] == 10
    _assert_same_run(run_training(cfg, tmp_path / "local", progress=False), sweep / name)
