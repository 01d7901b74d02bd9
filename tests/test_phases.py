"""Phase boundaries on synthetic progress tables whose phases are known by construction."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from groklab.analysis.phases import Phases, find_phases
from groklab.errors import ConfigError


def _table(op: str = "add", grok_at: int | None = 1200) -> pd.DataFrame:
    rows = []
    for step in range(0, 2001, 100):
        # W grows until 300 (memorisation), then decays slowly.
        w = 100 + step / 2 if step <= 300 else 250 - (step - 300) / 100
        # Test loss: peak 8 at 300, slow decline to 7 at 1000, log-linear drop to 1e-4 over
        # 1000..1400 (cleanup), then a slow tail.
        if step <= 300:
            test = 2 + 6 * step / 300
        elif step <= 1000:
            test = 8 * (7 / 8) ** ((step - 300) / 700)
        elif step <= 1400:
            test = 7 * (1e-4 / 7) ** ((step - 1000) / 400)
        else:
            test = 1e-4 * 0.5 ** ((step - 1400) / 600)
        train = 1.0 if step == 0 else 1e-3
        excluded = 1.0 if step == 0 else 2e-3 if step <= 300 else 0.5
        acc = 1.0 if grok_at is not None and step >= grok_at else 0.1
        rows.append(
            {
                "step": step,
                "sumsq/total": w,
                f"{op}/test_loss": test,
                f"{op}/train_loss": train,
                f"{op}/excluded_loss": excluded,
                f"{op}/test_acc": acc,
            }
        )
    return pd.DataFrame(rows)


def test_phases_of_a_constructed_grokking_run():
    ph = find_phases(_table(), ["add"])
    assert ph.memorisation == (0, 300)
    assert ph.circuit_formation == (300, 1000)
    assert ph.cleanup == (1000, 1400)
    assert ph.grokking_step == 1200
    assert ph.excluded_ratio_at_formation == {"add": pytest.approx(2.0)}
    assert ph.excluded_ratio_before_grokking == {"add": pytest.approx(500.0)}
    assert Phases.from_dict(ph.to_dict()) == ph


def test_grokking_step_from_metrics_and_half_width():
    metrics = pd.DataFrame({"step": [1100, 1150, 1200], "test/acc": [0.5, 0.995, 1.0]})
    ph = find_phases(_table(), ["add"], metrics=metrics)
    assert ph.grokking_step == 1150
    assert ph.cleanup == (1000, 1400)
    assert ph.excluded_ratio_before_grokking["add"] == pytest.approx(500.0)


def test_no_grokking_means_no_cleanup():
    ph = find_phases(_table(grok_at=None), ["add"])
    assert ph.grokking_step is None and ph.cleanup is None
    assert ph.memorisation == (0, 300) and ph.circuit_formation == (300, None)
    assert ph.excluded_ratio_before_grokking == {}


def test_mixed_operations_grok_at_the_last_one():
    a, m = _table("add", 1100), _table("mul", 1300)
    t = a.merge(m.drop(columns=["sumsq/total"]), on="step")
    ph = find_phases(t, ["add", "mul"])
    assert ph.grokking_step_by_op == {"add": 1100, "mul": 1300}
    assert ph.grokking_step == 1300
    assert set(ph.excluded_ratio_at_formation) == {"add", "mul"}


def test_bad_input():
    with pytest.raises(ConfigError, match="sumsq/total"):
        find_phases(pd.DataFrame({"step": [0]}), ["add"])
    with pytest.raises(ConfigError, match="half"):
        find_phases(_table(), ["add"], half=1.5)
    assert math.isfinite(find_phases(_table(), ["add"], half=0.9).cleanup[0])
