"""The one bisection (``groklab.sweep.bisection``): the pure search against synthetic verdicts
whose critical value is known, the verdict rule (criterion and quorum), the ``[bisect]`` spec
keys, and :func:`bisect_sweep` on log scale and the ``final`` criterion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from groklab import sweep as sw
from groklab.errors import ConfigError
from groklab.sweep import executor as sweep_executor
from groklab.sweep.bisection import bisect_search, seed_meets, value_generalises


class Step:
    """``evaluate`` for a step function: a value generalises iff it is >= ``critical``; records
    every batch it was asked about."""

    def __init__(self, critical: float) -> None:
        self.critical = critical
        self.batches: list[list[float]] = []

    def __call__(self, values):
        self.batches.append(list(values))
        return {v: v >= self.critical for v in values}


# ----------------------------------------------------------------------------- the search


def test_linear_search_brackets_the_critical_value_to_tol() -> None:
    ev = Step(0.37)
    res = bisect_search(ev, lo=0.1, hi=0.9, tol=0.01)
    assert res.lo < 0.37 <= res.hi and res.hi - res.lo <= 0.01
    assert res.stop == "tolerance" and res.scale == "linear"
    assert res.estimate == pytest.approx((res.lo + res.hi) / 2)
    # ends first, then one midpoint per round: 0.5, 0.3, 0.4, 0.35, ...
    assert ev.batches[0] == [0.1, 0.9]
    assert [b[0] for b in ev.batches[1:4]] == [0.5, 0.3, 0.4]
    assert all(len(b) == 1 for b in ev.batches[1:])
    # halving 0.8 down to <= 0.01 takes ceil(log2(80)) = 7 rounds
    assert len(res.rounds) == 1 + 7
    # the history: what each round evaluated, its verdicts and the bracket after it
    assert res.rounds[0].values == (0.1, 0.9) and res.rounds[0].generalised == (False, True)
    assert (res.rounds[1].values, res.rounds[1].generalised) == ((0.5,), (True,))
    assert (res.rounds[1].lo, res.rounds[1].hi) == (0.1, 0.5)
    assert (res.rounds[2].lo, res.rounds[2].hi) == (0.3, 0.5)
    assert (res.rounds[-1].lo, res.rounds[-1].hi) == (res.lo, res.hi)
    assert res.evaluated == {v: v >= 0.37 for b in ev.batches for v in b}


def test_log_search_spaces_points_geometrically_and_stops_at_rel_tol() -> None:
    ev = Step(777)
    res = bisect_search(
        ev, lo=10, hi=10_000, scale="log", integer=True, rel_tol=0.02, points_per_round=3
    )
    assert res.lo < 777 <= res.hi and res.hi / res.lo <= 1.02 and res.stop == "tolerance"
    # three points evenly in log between 10 and 10,000: 10 * 1000 ** (j / 4)
    assert ev.batches[1] == [56, 316, 1778]
    assert all(isinstance(v, int) for b in ev.batches for v in b)
    assert res.estimate == pytest.approx(math.sqrt(res.lo * res.hi))
    # log bisection: each round cuts log(hi/lo) by 4, so few rounds for three decades
    assert len(res.rounds) <= 1 + 5


def test_log_search_rounds_floats_to_significant_digits() -> None:
    ev = Step(3e-4)
    res = bisect_search(ev, lo=1e-5, hi=1e-1, scale="log", rel_tol=0.05)
    assert ev.batches[1] == [0.001]  # the geometric middle, not 0.0009999999...
    assert res.lo < 3e-4 <= res.hi and res.hi / res.lo <= 1.05
    # 6 significant digits, not 6 decimals (which would turn 1e-5..1e-3 into 0.0 or 1e-05)
    assert all(v == float(f"{v:.6g}") and v > 0 for b in ev.batches for v in b)


def test_linear_floats_are_rounded_to_six_decimals() -> None:
    ev = Step(0.15)
    bisect_search(ev, lo=0.1, hi=0.2, tol=0.001, points_per_round=2)
    assert ev.batches[1] == [0.133333, 0.166667]


def test_integer_search_stops_when_no_integer_is_left_inside() -> None:
    ev = Step(701)
    res = bisect_search(ev, lo=1, hi=1000, integer=True, max_rounds=50)
    assert (res.lo, res.hi, res.stop) == (700, 701, "exhausted")
    assert len({v for b in ev.batches for v in b}) == sum(len(b) for b in ev.batches)  # no repeats


def test_ends_outside_the_bracket_stop_the_search() -> None:
    below = Step(5)
    res = bisect_search(below, lo=10, hi=100, tol=1)
    assert (res.lo, res.hi, res.stop, res.estimate) == (None, 10, "below", None)
    assert below.batches == [[10, 100]] and len(res.rounds) == 1
    above = Step(500)
    res = bisect_search(above, lo=10, hi=100, scale="log", rel_tol=0.1)
    assert (res.lo, res.hi, res.stop, res.estimate) == (100, None, "above", None)
    assert above.batches == [[10, 100]]
    # inverted ends (lo generalises, hi does not): reported as "below", never bisected
    inverted = bisect_search(lambda vs: {v: v < 50 for v in vs}, lo=10, hi=100, tol=1)
    assert (inverted.lo, inverted.hi, inverted.stop) == (None, 10, "below")


def test_max_rounds_and_either_tolerance() -> None:
    res = bisect_search(Step(0.37), lo=0.0, hi=1.0, tol=1e-6, max_rounds=2)
    assert res.stop == "max_rounds" and len(res.rounds) == 3
    assert (res.lo, res.hi) == (0.25, 0.5)
    only_ends = bisect_search(Step(0.37), lo=0.0, hi=1.0, tol=1e-6, max_rounds=0)
    assert (only_ends.lo, only_ends.hi, only_ends.stop) == (0.0, 1.0, "max_rounds")
    # with both tolerances, the first one met stops it: here rel_tol (hi/lo <= 2) ...
    rel = bisect_search(Step(300), lo=1, hi=1024, integer=True, tol=1, rel_tol=1.0)
    assert rel.hi / rel.lo <= 2 and rel.hi - rel.lo > 1 and rel.stop == "tolerance"
    # ... and here tol (hi - lo <= 100), long before hi/lo <= 1.001
    ab = bisect_search(Step(300), lo=1, hi=1024, integer=True, tol=100, rel_tol=0.001)
    assert ab.hi - ab.lo <= 100 and ab.hi / ab.lo > 1.001 and ab.stop == "tolerance"
    # a last round that reaches the tolerance says so, even when it was the last allowed
    last = bisect_search(Step(0.37), lo=0.0, hi=1.0, tol=0.25, max_rounds=2)
    assert (last.lo, last.hi, last.stop) == (0.25, 0.5, "tolerance")


def test_non_monotone_verdicts_keep_a_consistent_bracket() -> None:
    # 0.25 and 0.75 generalise, 0.5 does not: the bracket ends at the smallest generalising
    # value and the largest non-generalising one below it.
    verdicts = {0.0: False, 1.0: True, 0.25: True, 0.5: False, 0.75: True}
    res = bisect_search(
        lambda vs: {v: verdicts[v] for v in vs},
        lo=0.0,
        hi=1.0,
        tol=0.3,
        points_per_round=3,
    )
    assert (res.lo, res.hi) == (0.0, 0.25)


def test_on_round_sees_every_bracket() -> None:
    seen = []
    res = bisect_search(Step(0.37), lo=0.1, hi=0.9, tol=0.1, on_round=seen.append)
    assert [(b.lo, b.hi) for b in seen] == [(r.lo, r.hi) for r in res.rounds]
    assert [len(b.rounds) for b in seen] == list(range(1, len(res.rounds) + 1))
    assert {b.stop for b in seen} == {"running"} and res.stop == "tolerance"


def test_bad_search_arguments() -> None:
    ev = Step(1)
    with pytest.raises(ConfigError, match=r"scale='cubic' is not allowed; allowed: linear, log"):
        bisect_search(ev, lo=1, hi=2, scale="cubic")
    with pytest.raises(ConfigError, match="need lo < hi"):
        bisect_search(ev, lo=2, hi=1)
    with pytest.raises(ConfigError, match="lo > 0 on a log scale"):
        bisect_search(ev, lo=0, hi=1, scale="log")
    with pytest.raises(ConfigError, match="rel_tol=0 is not allowed"):
        bisect_search(ev, lo=1, hi=2, rel_tol=0)
    with pytest.raises(ConfigError, match="points_per_round >= 1"):
        bisect_search(ev, lo=1, hi=2, points_per_round=0)
    # integers rounding onto one value are no bracket
    with pytest.raises(ConfigError, match="not a bracket"):
        bisect_search(ev, lo=1.2, hi=1.4, integer=True)
    with pytest.raises(ValueError, match="no verdict for 2"):
        bisect_search(lambda vs: {1: False}, lo=1, hi=2)
    assert ev.batches == []  # nothing was evaluated for a bad call


# ----------------------------------------------------------------------------- the verdict


def test_a_value_generalises_on_a_strict_majority_by_default() -> None:
    table = {(1, 1): True, (0, 1): False, (1, 2): False, (2, 2): True, (2, 3): True}
    table |= {(1, 3): False, (2, 4): False, (3, 4): True}
    for (k, n), want in table.items():
        assert value_generalises(k, n) is want, (k, n)
    assert value_generalises(1, 2, quorum=1) and not value_generalises(2, 3, quorum=3)
    with pytest.raises(ConfigError, match="quorum=4 is not allowed with 3 seeds"):
        value_generalises(3, 3, quorum=4)
    with pytest.raises(ConfigError, match="quorum=0"):
        value_generalises(0, 3, quorum=0)


def test_seed_criterion_reached_or_final() -> None:
    # crosses 0.99 at step 200, then falls back: reached, not final
    m = pd.DataFrame({"step": [0, 100, 200, 300], "test/acc": [0.0, 0.5, 0.995, 0.7]})
    assert seed_meets(m, "test/acc", 0.99, criterion="reached")
    assert not seed_meets(m, "test/acc", 0.99, criterion="final")
    assert seed_meets(m, "test/acc", 0.7, criterion="final")  # >=, not >
    assert seed_meets(m, "test/acc", 0.99)  # reached is the default
    diverged = pd.DataFrame({"step": [0, 100], "test/acc": [0.995, float("nan")]})
    assert not seed_meets(diverged, "test/acc", 0.99, criterion="final")
    assert seed_meets(diverged, "test/acc", 0.99, criterion="reached")
    assert not seed_meets(m, "test/loss", 0.5, criterion="final")  # no such column
    assert not seed_meets(m.iloc[:0], "test/acc", 0.0, criterion="final")  # no rows
    with pytest.raises(ConfigError, match="criterion='last' is not allowed; allowed: reached"):
        seed_meets(m, "test/acc", 0.99, criterion="last")


# ----------------------------------------------------------------------------- [bisect] specs


def _bisect(**kw):
    base = {"key": "data.train_fraction", "lo": 0.1, "hi": 0.9}
    return sw.parse_spec({"seeds": [0, 1, 2], "bisect": {**base, **kw}}).bisect


def test_spec_defaults_keep_the_linear_reached_search() -> None:
    b = _bisect()
    assert (b.scale, b.criterion, b.rel_tol) == ("linear", "reached", None)
    assert b.tol == pytest.approx(0.8 / 16)
    size = _bisect(key="data.train_size", lo=100, hi=2000)
    assert size.tol == 1 and size.integer
    log = _bisect(scale="log", criterion="final")
    assert (log.scale, log.criterion, log.tol, log.rel_tol) == ("log", "final", None, 0.1)
    both = _bisect(scale="log", tol=0.05, rel_tol=0.2)
    assert (both.tol, both.rel_tol) == (0.05, 0.2)
    assert _bisect(rel_tol=0.3).tol is None  # a relative tolerance alone: no default tol


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"scale": "exp"}, "bisect.scale='exp' is not allowed; allowed: linear, log"),
        ({"criterion": "any"}, "bisect.criterion='any' is not allowed; allowed: reached, final"),
        ({"rel_tol": 0}, "bisect.rel_tol=0 is not allowed; must be > 0"),
        ({"rel_tol": "x"}, "bisect.rel_tol='x' is not allowed; must be > 0"),
        ({"scale": "log", "lo": 0.0}, 'bisect.lo=0.0 is not allowed with scale = "log"'),
        ({"max_rounds": -1}, "bisect.max_rounds=-1 is not allowed"),
        ({"quorum": 2}, "unknown key bisect.quorum"),
    ],
)
def test_bad_spec_keys_are_one_line_errors(kw, msg) -> None:
    with pytest.raises(ConfigError) as e:
        _bisect(**kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- bisect_sweep


def _fake_executor(test_acc_of):
    """A stand-in for ``run_many`` that writes each run's metrics.parquet with
    ``test_acc_of(value, seed)`` as its test accuracy curve; records the values trained."""
    trained: list[float] = []

    def run_many(configs, outs, **kw):
        for c, o in zip(configs, outs, strict=True):
            v = c.data.train_size if "train_size=" in o.name else c.data.train_fraction
            trained.append(v)
            acc = test_acc_of(v, c.train.seed)
            o.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"step": range(len(acc)), "test/acc": acc}).to_parquet(
                o / "metrics.parquet"
            )
        return [{"out": str(o), "status": "completed", "error": None} for o in outs]

    return run_many, trained


def test_bisect_sweep_final_criterion_ignores_a_crossing_that_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every value from 0.3 reaches 0.99 at some step, but only from 0.6 does it end there:
    criterion "reached" finds 0.3, "final" finds 0.6."""

    def acc(v, seed):
        return [0.1, 0.995 if v >= 0.3 else 0.5, 0.995 if v >= 0.6 else 0.8]

    fake, _ = _fake_executor(acc)
    monkeypatch.setattr(sweep_executor, "run_many", fake)
    for criterion, critical in (("reached", 0.3), ("final", 0.6)):
        spec = sw.parse_spec(
            {
                "seeds": [0, 1, 2],
                "bisect": {
                    "key": "data.train_fraction",
                    "lo": 0.1,
                    "hi": 0.9,
                    "tol": 0.01,
                    "criterion": criterion,
                },
            }
        )
        res, _ = sw.bisect_sweep(spec, tmp_path / criterion, known=[], progress=False)
        assert res["lo"] < critical <= res["hi"] and res["hi"] - res["lo"] <= 0.01
        assert res["criterion"] == criterion
        saved = json.loads((tmp_path / criterion / "bisect.json").read_text())
        assert {"key", "metric", "threshold", "lo", "hi", "estimate", "history"} <= set(saved)


def test_bisect_sweep_on_a_log_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, trained = _fake_executor(lambda v, s: [0.0, 1.0 if v >= 700 else 0.2])
    monkeypatch.setattr(sweep_executor, "run_many", fake)
    spec = sw.parse_spec(
        {
            "seeds": [0],
            "bisect": {
                "key": "data.train_size",
                "lo": 100,
                "hi": 10_000,
                "scale": "log",
                "rel_tol": 0.05,
            },
        }
    )
    res, runs = sw.bisect_sweep(spec, tmp_path, known=[], progress=False)
    assert res["lo"] < 700 <= res["hi"] and res["hi"] / res["lo"] <= 1.05
    assert trained[:3] == [100, 10_000, 1000]  # the ends, then the geometric middle
    assert res["estimate"] == round(math.sqrt(res["lo"] * res["hi"]))
    assert [h["value"] for h in res["history"]] == trained and len(runs) == len(trained)
    # the ends: the critical value below lo is reported with lo as the bracket's top
    spec_lo = sw.parse_spec(
        {"seeds": [0], "bisect": {"key": "data.train_size", "lo": 800, "hi": 900}}
    )
    res_lo, _ = sw.bisect_sweep(spec_lo, tmp_path / "lo", known=[], progress=False)
    assert (res_lo["lo"], res_lo["hi"], res_lo["estimate"]) == (None, 800, None)
    assert "data.train_size=800 already generalises" in res_lo["note"]
