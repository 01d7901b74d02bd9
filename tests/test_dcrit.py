"""Critical data size search: bisection against stand-in runs whose boundary is known."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from groklab import dcrit
from groklab.config import RunConfig, save_config
from groklab.dcrit import find_dcrit
from groklab.errors import ConfigError, GroklabError
from groklab.store import atomic_write_text


class FakeRuns:
    """Stand-in for ``groklab.sweep.run_many``: writes a finished run directory whose final
    test accuracy is 1 when the size reaches the seed's boundary and 0.05 below it."""

    def __init__(self, boundary: dict[int, int]) -> None:
        self.boundary = boundary
        self.trained: list[tuple[int, int]] = []
        self.configs: list[RunConfig] = []
        self.stack: list[bool] = []

    def __call__(self, configs, outs, *, workers: int = 1, stack: bool = False, **_):
        self.stack.append(stack)
        results = []
        for cfg, out in zip(configs, outs, strict=True):
            out = Path(out)
            self.configs.append(cfg)
            if (out / "manifest.json").exists():  # completed runs are skipped
                results.append({"out": str(out), "status": "completed", "error": None})
                continue
            size, seed = cfg.data.train_size, cfg.train.seed
            self.trained.append((size, seed))
            acc = 1.0 if size >= self.boundary[seed] else 0.05
            out.mkdir(parents=True)
            atomic_write_text(out / "config.toml", save_config(cfg))
            pd.DataFrame(
                {
                    "step": [0, 100, 200],
                    "train/loss": [4.0, 0.1, 0.01],
                    "train/acc": [0.0, 1.0, 1.0],
                    "test/loss": [4.0, 3.0, 0.1 if acc == 1 else 9.0],
                    "test/acc": [0.0, 0.02, acc],
                }
            ).to_parquet(out / "metrics.parquet")
            atomic_write_text(out / "manifest.json", json.dumps({"status": "completed"}))
            results.append({"out": str(out), "status": "completed", "error": None})
        return results


def _fake(monkeypatch, runs):
    """Let find_dcrit and ungrok_curve train with ``runs`` instead of the executor."""
    monkeypatch.setattr(dcrit, "run_many", runs)
    return runs


def test_bisection_finds_the_known_boundary(tmp_path, monkeypatch) -> None:
    # Seeds 0 and 1 generalise from 700 examples, seed 2 only from 1,000: the majority
    # boundary is 700.
    fake = _fake(monkeypatch, FakeRuns({0: 700, 1: 700, 2: 1000}))
    res = find_dcrit(
        RunConfig(name="m"),
        tmp_path / "s",
        lo=100,
        hi=5000,
        seeds=(0, 1, 2),
        rel_tol=0.05,
        max_rounds=20,
    )
    assert all(fake.stack)  # the seeds of a size go to the executor as a stack
    assert res.lo < 700 <= res.hi and res.hi / res.lo <= 1.05
    assert res.estimate == pytest.approx(math.sqrt(res.lo * res.hi))
    assert abs(math.log(res.estimate / 700)) < 0.05
    # Every size has all three seeds; sizes above the boundary generalise, below do not.
    for p in res.points:
        assert p.seeds == (0, 1, 2)
        assert p.generalises == (p.size >= 700)
    pt = next(p for p in res.points if 700 <= p.size < 1000)
    assert pt.generalised == (True, True, False) and pt.share_generalised == pytest.approx(2 / 3)
    # The bisection is logarithmic: about log2(log(50)/log(1.05)) ≈ 6.3 rounds after the ends.
    assert len(res.points) <= 2 + 8
    # Runs were configured for the budget with the early stop at the threshold.
    cfg = fake.configs[0]
    assert cfg.train.stop_test_acc == 0.95 and cfg.name.startswith("m-n")
    saved = json.loads((tmp_path / "s" / "dcrit.json").read_text())
    assert saved["lo"] == res.lo and saved["hi"] == res.hi
    assert len(saved["points"]) == len(res.points)
    table = res.table()
    assert len(table) == 3 * len(res.points)
    assert set(table.columns) >= {"size", "seed", "test_acc", "generalised"}


def test_a_repeated_search_trains_nothing_new(tmp_path, monkeypatch) -> None:
    fake = _fake(monkeypatch, FakeRuns({0: 300}))
    kw = {"lo": 50, "hi": 1000, "seeds": (0,), "rel_tol": 0.1}
    first = find_dcrit(RunConfig(name="m"), tmp_path, **kw)
    n = len(fake.trained)
    again = find_dcrit(RunConfig(name="m"), tmp_path, **kw)
    assert len(fake.trained) == n  # every run directory was already complete
    assert (again.lo, again.hi) == (first.lo, first.hi)


def test_several_points_per_round(tmp_path, monkeypatch) -> None:
    _fake(monkeypatch, FakeRuns({0: 777}))
    res = find_dcrit(
        RunConfig(name="m"),
        tmp_path,
        lo=10,
        hi=10_000,
        seeds=(0,),
        rel_tol=0.02,
        points_per_round=3,
    )
    assert res.lo < 777 <= res.hi and res.hi / res.lo <= 1.02


def test_boundary_outside_the_bracket(tmp_path, monkeypatch) -> None:
    _fake(monkeypatch, FakeRuns({0: 50}))
    below = find_dcrit(RunConfig(name="m"), tmp_path / "a", lo=100, hi=200, seeds=(0,))
    assert below.lo is None and below.hi == 100 and below.estimate is None
    _fake(monkeypatch, FakeRuns({0: 900}))
    above = find_dcrit(RunConfig(name="m"), tmp_path / "b", lo=100, hi=200, seeds=(0,))
    assert above.lo == 200 and above.hi is None and above.estimate is None


def test_a_tie_between_seeds_does_not_generalise(tmp_path, monkeypatch) -> None:
    # Seed 0 generalises from 500, seed 1 from 1,000: between them 1 of 2 seeds generalise,
    # which is no strict majority, so D_crit is where both do.
    _fake(monkeypatch, FakeRuns({0: 500, 1: 1000}))
    res = find_dcrit(
        RunConfig(name="m"),
        tmp_path,
        lo=100,
        hi=5000,
        seeds=(0, 1),
        rel_tol=0.02,
        max_rounds=30,
    )
    assert res.lo < 1000 <= res.hi and res.hi / res.lo <= 1.02
    tied = [p for p in res.points if 500 <= p.size < 1000]
    assert tied and all(p.generalised == (True, False) and not p.generalises for p in tied)
    saved = json.loads((tmp_path / "dcrit.json").read_text())
    assert all(q["generalises"] == (q["size"] >= 1000) for q in saved["points"])


def test_the_verdict_is_the_final_accuracy(tmp_path, monkeypatch) -> None:
    """Runs below 300 examples reach the threshold at one evaluation and lose it again: they
    count as not generalising (criterion "final")."""

    def runs(configs, outs, **_):
        for cfg, out in zip(configs, outs, strict=True):
            size = cfg.data.train_size
            out.mkdir(parents=True)
            acc = [0.0, 0.99, 0.99 if size >= 300 else 0.4]
            pd.DataFrame(
                {
                    "step": [0, 100, 200],
                    "train/acc": [0.0, 1.0, 1.0],
                    "test/loss": [4.0, 0.1, 0.1],
                    "test/acc": acc,
                }
            ).to_parquet(out / "metrics.parquet")
            atomic_write_text(out / "config.toml", save_config(cfg))
            atomic_write_text(out / "manifest.json", json.dumps({"status": "completed"}))
        return [{"out": str(o), "status": "completed", "error": None} for o in outs]

    _fake(monkeypatch, runs)
    brackets = []
    res = find_dcrit(
        RunConfig(name="m"),
        tmp_path,
        lo=50,
        hi=1000,
        seeds=(0,),
        rel_tol=0.05,
        on_round=lambda r: brackets.append((r.lo, r.hi)),
    )
    assert res.lo < 300 <= res.hi and res.hi / res.lo <= 1.05
    below = [p for p in res.points if p.size < 300]
    assert below and all(p.grokking_step == (100,) and not p.generalises for p in below)
    # on_round saw the bracket after the ends and after every round, narrowing to the result
    assert brackets[0] == (50, 1000) and brackets[-1] == (res.lo, res.hi)
    assert len(brackets) == len(res.points) - 1
    pairs = itertools.pairwise(brackets)
    assert all(lo1 <= lo2 and hi2 <= hi1 for (lo1, hi1), (lo2, hi2) in pairs)


def test_bad_arguments_and_failed_runs(tmp_path, monkeypatch) -> None:
    _fake(monkeypatch, FakeRuns({0: 1}))
    with pytest.raises(ConfigError, match="lo < hi"):
        find_dcrit(RunConfig(), tmp_path, lo=500, hi=100)

    def failing(configs, outs, **_):
        return [{"out": str(o), "status": "failed", "error": "boom"} for o in outs]

    _fake(monkeypatch, failing)
    with pytest.raises(GroklabError, match="boom"):
        find_dcrit(RunConfig(), tmp_path, lo=10, hi=100, seeds=(0,))


def test_search_with_real_runs(tmp_path, make_config) -> None:
    # Integration with the real executor on runs of a few milliseconds: the verdicts are
    # whatever the tiny runs reach; the search must train, read and record them.
    base = make_config(train={"steps": 20, "eval_every": 10, "checkpoint_every": 10})
    res = find_dcrit(base, tmp_path, lo=10, hi=60, seeds=(0,), max_rounds=1, progress=False)
    assert {p.size for p in res.points} >= {10, 60}
    for p in res.points:
        run = tmp_path / f"n{p.size}-s0"
        assert (run / "metrics.parquet").exists()
        m = json.loads((run / "manifest.json").read_text())
        assert m["status"] == "completed" and m["n_train"] == p.size


def test_seeds_of_one_size_train_as_one_stack(tmp_path, make_config) -> None:
    base = make_config(train={"steps": 6, "eval_every": 3, "checkpoint_every": 3})
    find_dcrit(base, tmp_path, lo=20, hi=30, seeds=(0, 1), max_rounds=0, progress=False)
    manifests = {
        (n, s): json.loads((tmp_path / f"n{n}-s{s}" / "manifest.json").read_text())
        for n in (20, 30)
        for s in (0, 1)
    }
    # one stack per size: the two seeds of size 20 together, those of size 30 together
    assert {tuple(m["stack"]["runs"]) for m in manifests.values()} == {
        tuple(str((tmp_path / f"n{n}-s{s}").resolve()) for s in (0, 1)) for n in (20, 30)
    }
    assert [m["n_train"] for m in manifests.values()] == [20, 20, 30, 30]
