"""The loss-spike detector counts and dates spikes of known curves exactly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from groklab.analysis.spikes import analyze_run, detect_spikes, spikes_table
from groklab.errors import ConfigError


def _curve(n: int = 400, seed: int = 0, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """log10 loss falling from 0 to -7 (memorise/grok), then a float32-like noisy floor."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n) * 10
    x = np.concatenate([np.linspace(0.5, -7.0, n // 4), np.full(n - n // 4, -7.0)])
    x = x + rng.normal(0.0, noise, n)  # ±0.15 decades: quantisation-like jitter, never a spike
    return steps, x


def _spike_at(x: np.ndarray, i: int, height: float, decay: int) -> np.ndarray:
    """A slingshot: jump ``height`` decades at point ``i``, relax linearly over ``decay``."""
    x = x.copy()
    for k in range(decay):
        x[i + k] += height * (1 - k / decay)
    return x


def test_smooth_and_noisy_curves_have_no_spikes() -> None:
    steps, x = _curve()
    assert detect_spikes(steps, 10**x) == []
    # a plain decreasing loss (ordinary training) never triggers the rule
    assert detect_spikes(np.arange(100), np.logspace(1, -8, 100), window=5) == []


def test_injected_spikes_are_counted_and_dated() -> None:
    steps, x = _curve()
    x = _spike_at(x, 200, 5.0, 12)  # 1e-7 -> 1e-2, like a float32 slingshot
    x = _spike_at(x, 300, 3.0, 6)
    found = detect_spikes(steps, 10**x)
    assert [sp.start for sp in found] == [2000, 3000]
    assert [sp.peak for sp in found] == [2000, 3000]
    assert all(sp.end is not None for sp in found)
    # ends once within rise/2 = 0.5 decades of the baseline: 5*(1-k/12) <= ~0.5 at k ~ 11
    assert 2090 <= found[0].end <= 2120
    assert 3040 <= found[1].end <= 3060
    assert found[0].height == pytest.approx(5.0, abs=0.4)
    assert found[1].height == pytest.approx(3.0, abs=0.4)
    assert found[0].baseline_loss == pytest.approx(1e-7, rel=0.5)
    t = spikes_table(found)
    assert list(t["start"]) == [2000, 3000]


def test_threshold_and_unfinished_spike() -> None:
    steps, x = _curve(noise=0.0)
    x = _spike_at(x, 250, 0.8, 5)  # below the default 1-decade rise
    assert detect_spikes(steps, 10**x) == []
    assert [sp.start for sp in detect_spikes(steps, 10**x, rise=0.5)] == [2500]
    x2 = x.copy()
    x2[390:] += 4.0  # jumps and never comes back
    last = detect_spikes(steps, 10**x2)
    assert len(last) == 1 and last[0].start == 3900 and last[0].end is None


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="window"):
        detect_spikes([0, 1], [1.0, 1.0], window=0)
    with pytest.raises(ConfigError, match="rise"):
        detect_spikes([0, 1], [1.0, 1.0], rise=0)
    with pytest.raises(ConfigError, match="equal"):
        detect_spikes([0, 1, 2], [1.0, 1.0])


def test_analyze_run_reads_metrics_and_writes_json(tmp_path) -> None:
    steps, x = _curve()
    x = _spike_at(x, 150, 4.0, 10)
    m = pd.DataFrame({"step": steps, "train/loss": 10**x, "test/loss": 10 ** (x + 1)})
    m.to_parquet(tmp_path / "metrics.parquet", index=False)
    res = analyze_run(tmp_path)
    assert res["n"] == 1 and res["first_step"] == 1500
    assert res["n_test_loss"] == 1
    saved = json.loads((tmp_path / "analysis" / "spikes.json").read_text())
    assert saved["spikes"]["train/loss"][0]["start"] == 1500
    with pytest.raises(ConfigError, match="no metrics column"):
        analyze_run(tmp_path, columns=("train/nope",))
