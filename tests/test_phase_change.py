"""Phase-change detection against curves whose drops are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from groklab.analysis.phase_change import (
    detect_phase_changes,
    main_phase_change,
    phase_change_table,
)

STEPS = np.arange(0, 20_001, 50)
LN9 = math.log(9)


def logistic_drop(steps, plateau: float, final: float, centre: float, width: float):
    """Loss falling from ``plateau`` to ``final`` as a logistic in log10(step).

    It has fallen 10% of the drop at log10(step) = centre - width·ln 9, half at ``centre``,
    90% at centre + width·ln 9.
    """
    x = np.log10(np.maximum(steps, 1))
    return final + (plateau - final) / (1 + np.exp((x - centre) / width))


@pytest.mark.parametrize(("centre", "width"), [(3.5, 0.05), (3.5, 0.1), (2.8, 0.04)])
@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_a_logistic_drop_is_found_at_its_known_steps(centre, width, noise) -> None:
    y = logistic_drop(STEPS, 2.0, 0.01, centre, width)
    y = y * (1 + noise * np.random.default_rng(0).standard_normal(len(y)))
    (pc,) = detect_phase_changes(STEPS, y)
    tol = 0.03 + width * 0.5  # decades
    assert abs(math.log10(pc.midpoint) - centre) < tol
    assert abs(math.log10(pc.onset) - (centre - width * LN9)) < tol
    assert abs(math.log10(pc.end) - (centre + width * LN9)) < tol
    assert pc.onset < pc.midpoint < pc.end
    assert pc.plateau == pytest.approx(2.0, rel=0.06)
    assert pc.final == pytest.approx(0.01, abs=0.03)
    assert pc.width_decades == pytest.approx(2 * width * LN9, abs=2 * tol)


def test_two_drops_are_found_in_order_and_the_main_one_is_the_largest() -> None:
    # 1.6 → 0.6 at 10^2.8, then 0.6 → 0 at 10^3.8
    y = logistic_drop(STEPS, 1.0, 0.0, 2.8, 0.04) + logistic_drop(STEPS, 0.6, 0.0, 3.8, 0.04)
    found = detect_phase_changes(STEPS, y)
    assert [round(math.log10(p.midpoint), 1) for p in found] == [2.8, 3.8]
    assert found[0].plateau == pytest.approx(1.6, rel=0.02)
    assert found[0].final == pytest.approx(0.6, rel=0.02)
    assert found[1].final == pytest.approx(0.0, abs=0.02)
    assert main_phase_change(STEPS, y) == found[0]  # drop 1.0 > 0.6
    # 1.9 → 1.6 is a drop of a sixth: kept only when min_rel_drop allows it
    y = logistic_drop(STEPS, 1.0, 0.7, 2.8, 0.02) + logistic_drop(STEPS, 0.9, 0.0, 3.8, 0.04)
    assert [round(math.log10(p.midpoint), 1) for p in detect_phase_changes(STEPS, y)] == [3.8]
    assert len(detect_phase_changes(STEPS, y, min_rel_drop=0.1)) == 2


def test_no_phase_change_in_noise_power_laws_or_the_initial_fall() -> None:
    rng = np.random.default_rng(1)
    assert detect_phase_changes(STEPS, 1 + 0.1 * rng.standard_normal(len(STEPS))) == []
    for a in (0.3, 0.5, 1.0):  # smooth power-law decline: no plateau, no sudden drop
        assert detect_phase_changes(STEPS, 5 * np.maximum(STEPS, 1) ** -a) == []
    # A fall from the very first evaluation has no plateau before it.
    y = logistic_drop(STEPS, 2.0, 0.5, 1.9, 0.05)
    assert detect_phase_changes(STEPS, y) == []
    # Small drops (less than halving) are not phase changes by default.
    assert detect_phase_changes(STEPS, logistic_drop(STEPS, 1.0, 0.7, 3.5, 0.05)) == []
    assert detect_phase_changes([1, 2, 3], [3.0, 2.0, 1.0]) == []


def test_a_slow_drop_is_not_a_phase_change_unless_steep_is_relaxed() -> None:
    y = logistic_drop(STEPS, 2.0, 0.01, 3.3, 0.4)  # 10%→90% over 1.8 decades
    assert detect_phase_changes(STEPS, y) == []
    assert len(detect_phase_changes(STEPS, y, steep=0.3)) == 1


def test_grokking_shaped_test_loss() -> None:
    # test loss rises while the model memorises, sits high, then falls abruptly at ~10^3.9
    x = np.log10(np.maximum(STEPS, 1))
    rise = 4.7 + 10 / (1 + np.exp(-(x - 2.5) / 0.1))
    y = logistic_drop(STEPS, 1.0, 1e-3, 3.9, 0.04) * rise
    pc = main_phase_change(STEPS, y)
    assert pc is not None and abs(math.log10(pc.midpoint) - 3.9) < 0.04
    assert pc.plateau > 10


def test_phase_change_table_covers_every_loss_column() -> None:
    m = pd.DataFrame(
        {
            "step": STEPS,
            "train/loss": logistic_drop(STEPS, 2.0, 0.0, 3.0, 0.05),
            "test/digit_0/loss": logistic_drop(STEPS, 2.0, 0.0, 3.6, 0.05),
            "test/digit_1/loss": np.full(len(STEPS), 0.7),
            "test/acc": np.linspace(0, 1, len(STEPS)),
        }
    )
    t = phase_change_table(m)
    assert list(t.index) == ["train/loss", "test/digit_0/loss", "test/digit_1/loss"]
    assert t.loc["test/digit_0/loss", "midpoint"] == pytest.approx(10**3.6, rel=0.08)
    assert t.loc["train/loss", "midpoint"] == pytest.approx(10**3.0, rel=0.08)
    assert t.loc["test/digit_1/loss", "n_drops"] == 0
    assert math.isnan(t.loc["test/digit_1/loss", "onset"])


def test_spearman_known_values() -> None:
    from groklab.analysis.phase_change import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 4, 1, 0]) == pytest.approx(-1.0)
    # ranks (1,2,3,4) vs (2,1,4,3): 1 - 6·Σd²/(n(n²-1)) = 1 - 6·4/60 = 0.6
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    assert spearman([1, 2, 3, 4, 5], [2, 1, float("nan"), 4, 3]) == pytest.approx(0.6)
    assert math.isnan(spearman([1, 2], [1, 2]))
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
