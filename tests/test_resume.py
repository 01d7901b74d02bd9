"""Resume: a killed run, continued, ends bit-identical to an uninterrupted one (on CPU)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from groklab.cli import app
from groklab.config import save_config
from groklab.run import load_run
from groklab.store import load_checkpoint
from groklab.train import loop

VARIANTS = {
    "full_batch": {},
    "minibatch": {"train": {"batch_size": 16}},
    "grokfast_ema": {"optim": {"grokfast": "ema", "grokfast_alpha": 0.9}},
    "grokfast_ma_perp": {
        "optim": {"grokfast": "ma", "grokfast_window": 4, "perp_grad": True},
        "train": {"batch_size": 24},
    },
    "mixed_ops_sgd": {
        "data": {"operations": ("add", "mul")},
        "optim": {"name": "sgd", "momentum": 0.9, "lr": 0.1},
    },
}


def _config(variant: str):
    v = VARIANTS[variant]
    return tiny_config(
        data=v.get("data"),
        optim=v.get("optim"),
        train={"steps": 40, "eval_every": 5, "checkpoint_every": 10, **v.get("train", {})},
    )


def _kill_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Interrupt the loop (as Ctrl-C would) when it reaches ``step``."""
    real = loop.lr_at

    def lr_at(t, cfg):
        if t == step:
            raise KeyboardInterrupt
        return real(t, cfg)

    monkeypatch.setattr(loop, "lr_at", lr_at)


def assert_runs_identical(a: Path, b: Path) -> None:
    """Every checkpoint tensor, the full training state, and the metrics are identical."""
    ra, rb = load_run(a), load_run(b)
    assert ra.checkpoint_steps == rb.checkpoint_steps
    for step in ra.checkpoint_steps:
        wa, wb = ra.weights_at(step), rb.weights_at(step)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (step, k)
    sa, _ = load_checkpoint(a / "state.safetensors")
    sb, _ = load_checkpoint(b / "state.safetensors")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    pd.testing.assert_frame_equal(ra.metrics, rb.metrics, check_exact=True)
    assert ra.manifest["status"] == rb.manifest["status"] == "completed"
    assert ra.manifest["final_step"] == rb.manifest["final_step"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_after_interrupt_is_bit_identical(
    variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(variant)
    loop.run_training(cfg, tmp_path / "whole", progress=False)

    _kill_at(monkeypatch, 27)
    with pytest.raises(KeyboardInterrupt):
        loop.run_training(cfg, tmp_path / "killed", progress=False)
    monkeypatch.undo()
    killed = load_run(tmp_path / "killed")
    assert killed.status == "interrupted"
    assert killed.checkpoint_steps[-1] == 20
    assert load_checkpoint(tmp_path / "killed" / "state.safetensors")[1]["step"] == "20"
    assert killed.metrics["step"].max() == 25  # rows past the state are dropped on resume

    loop.run_training(cfg, tmp_path / "killed", resume=True, progress=False)
    assert load_run(tmp_path / "killed").manifest["resumed_from_step"] == 20
    assert_runs_identical(tmp_path / "whole", tmp_path / "killed")


def test_resume_twice_and_at_a_checkpoint_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config("minibatch")
    loop.run_training(cfg, tmp_path / "whole", progress=False)
    for kill in (10, 31):  # right at a checkpoint step, then between checkpoints
        _kill_at(monkeypatch, kill)
        with pytest.raises(KeyboardInterrupt):
            loop.run_training(
                cfg, tmp_path / "killed", resume=(tmp_path / "killed").exists(), progress=False
            )
        monkeypatch.undo()
    loop.run_training(cfg, tmp_path / "killed", resume=True, progress=False)
    assert load_run(tmp_path / "killed").manifest["resumed_from_step"] == 30
    assert_runs_identical(tmp_path / "whole", tmp_path / "killed")


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from groklab.train import loop
    from groklab.config import load_config

    real, kill_step = loop.lr_at, int(sys.argv[3])

    def lr_at(t, cfg):
        if t == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind
        return real(t, cfg)

    loop.lr_at = lr_at
    loop.run_training(load_config(sys.argv[1]), sys.argv[2], progress=False)
    """
)


def test_sigkilled_run_resumes_via_cli(tmp_path: Path) -> None:
    cfg = _config("grokfast_ema")
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(save_config(cfg))
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(cfg_path), str(tmp_path / "killed"), "33"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_run(tmp_path / "killed").status == "running"  # died without a word
    assert load_checkpoint(tmp_path / "killed" / "state.safetensors")[1]["step"] == "30"

    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "killed"), "-q"])
    assert result.exit_code == 0, result.output
    assert "completed" in result.output

    loop.run_training(cfg, tmp_path / "whole", progress=False)
    assert_runs_identical(tmp_path / "whole", tmp_path / "killed")
