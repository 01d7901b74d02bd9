"""The CPU thread policy: all cores but one unless told (``--threads``, OMP_NUM_THREADS)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from groklab import sweep as sw
from groklab.cli import app
from groklab.store import read_manifest
from groklab.train import threads as th


@pytest.fixture
def keep_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize(
    ("cores", "physical", "want"),
    [
        (1, 1, 1),  # never zero
        (2, 2, 1),  # a 2-core machine trains on one core and leaves one free
        (8, None, 7),  # unknown topology: all logical CPUs but one
        (8, 4, 4),  # hyper-threads: at most one thread per physical core
        (16, 16, 15),
    ],
)
def test_default_is_all_cores_but_one(monkeypatch, cores: int, physical, want: int) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(th, "usable_cores", lambda: cores)
    monkeypatch.setattr(th, "_physical_cores", lambda: physical)
    assert th.default_threads() == want


def test_omp_num_threads_wins(monkeypatch) -> None:
    monkeypatch.setattr(th, "usable_cores", lambda: 16)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert th.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")  # ignored, as torch ignores it
    monkeypatch.setattr(th, "_physical_cores", lambda: None)
    assert th.default_threads() == 15


def test_train_threads_option(tmp_path, keep_torch_threads) -> None:
    out = tmp_path / "run"
    args = ["train", "--preset", "smoke", "--set", "train.steps=2", "-q", "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--threads", "2"])
    assert res.exit_code == 0, res.output
    assert read_manifest(out)["torch_threads"] == 2
    bad = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "bad"), "--threads", "0"])
    assert bad.exit_code == 2 and not (tmp_path / "bad").exists()
    assert "--threads" in CliRunner().invoke(app, ["train", "--help"]).output


def test_sweep_in_process_takes_the_threads_asked_for(tmp_path, keep_torch_threads) -> None:
    torch.set_num_threads(2)
    out = tmp_path / "r"
    res = sw.run_many([tiny_config(train={"steps": 2})], [out], progress=False, threads=1)
    assert res[0]["status"] == "completed"
    assert read_manifest(out)["torch_threads"] == 1
