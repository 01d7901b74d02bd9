"""Science check: the ``smoke`` preset groks on a CPU in CI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import groklab
from groklab.config import apply_overrides
from groklab.presets import get_preset


@pytest.mark.slow
def test_smoke_preset_groks(tmp_path: Path) -> None:
    # The preset as users run it, plus an early stop once test accuracy has held >= 99% for
    # 100 steps, so CI pays for the grokking and not for the long clean-up after it.
    cfg = apply_overrides(
        get_preset("smoke"), ["train.stop_test_acc=0.99", "train.stop_patience=100"]
    )
    t0, cpu0 = time.perf_counter(), time.process_time()
    run = groklab.train(cfg, out=tmp_path / "smoke")
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    m = run.metrics.set_index("step")
    s = run.summary()
    mem, grok = s["memorisation_step"], s["grokking_step"]
    print(
        f"\nsmoke: train acc >= 99% at step {mem}, test acc >= 99% at step {grok}, "
        f"stopped at {s['final_step']}, {wall:.1f} s wall, {cpu:.1f} s CPU"
    )
    assert run.status == "completed"
    assert s["final_step"] < get_preset("smoke").train.steps  # it stopped early: it grokked
    assert mem is not None and grok is not None, s
    # Grokking: the train set is memorised long before the test set is solved ...
    assert grok >= 3 * mem, s
    # ... and for a long while after memorisation the test accuracy stays far from solved
    # (near the share of test pairs whose commuted pair (b, a) is in the train set).
    assert m.loc[mem : 3 * mem, "test/acc"].max() < 0.7
    # It ends solved.
    assert m["test/acc"].iloc[-1] >= 0.99
    assert m["train/acc"].iloc[-1] == 1.0
    # Every held-out pair is right at the end (the last checkpoint, re-evaluated).
    task = run.task
    model = run.model_at(run.checkpoint_steps[-1])
    with torch.no_grad():
        pred = model(task.test_x, n_scored=1).argmax(-1)
    acc = (pred == task.test_y).float().mean().item()
    assert acc >= 0.99
