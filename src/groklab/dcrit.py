"""Critical data size and ungrokking (Varma et al. 2023, "Explaining grokking through circuit
efficiency").

Three pieces:

* :func:`find_dcrit` searches the training-set size for the boundary ``D_crit`` between runs
  that generalise and runs that only memorise within a step budget: the sweep engine's
  bisection (:func:`groklab.sweep.bisection.bisect_search`) on a log scale, several seeds per
  size, a size counting as "generalises" when a strict majority of its seeds end with test
  accuracy >= ``threshold``. Every run lives in its own directory under the search
  folder, so a killed search continues where it stopped (completed runs are not re-run).
* :func:`continue_config` derives the config that continues training a run's checkpoint
  (``groklab train --from-checkpoint DIR@STEP``): same model and data, weights from the
  checkpoint (``train.init_from``), and ``data.train_size=N`` turned into ``data.train_subset=N``
  — a seeded random subset of the parent's own training split, with the test split unchanged.
* :func:`ungrok_curve` continues one grokked checkpoint on subsets of several sizes and tabulates
  the final test accuracy against the size: a sharp collapse below ``D_crit`` (ungrokking) and
  middle values near it (semi-grokking).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from groklab.config import RunConfig, apply_overrides
from groklab.errors import ConfigError, GroklabError

# The checkpoint helpers live with the run store (the trainer uses them); re-exported here,
# where ungrokking experiments have always found them.
from groklab.init_from import continue_config, init_weights, parse_checkpoint_ref
from groklab.sweep import run_many

__all__ = [
    "DcritPoint",
    "DcritResult",
    "continue_config",
    "find_dcrit",
    "init_weights",
    "parse_checkpoint_ref",
    "run_outcome",
    "ungrok_curve",
]

# --------------------------------------------------------------------------- outcomes


def run_outcome(run_dir: str | Path, *, threshold: float) -> dict[str, Any]:
    """Final accuracies of a finished run and whether it generalised.

    ``generalised``: final test accuracy >= ``threshold``; ``memorised``: final train
    accuracy >= 0.99; ``grokking_step``: first evaluated step with test accuracy >= threshold.
    """
    from groklab.run import first_step_at, load_run

    run = load_run(run_dir)
    m = run.metrics
    if m.empty:
        raise GroklabError(f"{run_dir}: the run has no metrics (status {run.status})")
    last = m.iloc[-1]
    test_acc, train_acc = float(last["test/acc"]), float(last["train/acc"])
    return {
        "status": run.status,
        "final_step": int(last["step"]),
        "test_acc": test_acc,
        "train_acc": train_acc,
        "test_loss": float(last["test/loss"]),
        "generalised": bool(math.isfinite(test_acc) and test_acc >= threshold),
        "memorised": bool(train_acc >= 0.99),
        "grokking_step": first_step_at(m, "test/acc", threshold),
    }


def _execute(
    configs: list[RunConfig], outs: list[Path], *, workers: int, progress: bool, title: str
) -> None:
    """Train the runs with the executor, the seeds of one size stacked (one job per stack);
    raise on the first failure."""
    if not configs:
        return
    results = run_many(configs, outs, workers=workers, progress=progress, title=title, stack=True)
    failed = [r for r in results if r.get("error")]
    if failed:
        r = failed[0]
        raise GroklabError(
            f"{r['out']}: run failed ({r['error']}); {len(failed)} of {len(results)} runs failed"
        )


# --------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class DcritPoint:
    """One training-set size: the outcome of each seed."""

    size: int
    seeds: tuple[int, ...]
    test_acc: tuple[float, ...]
    train_acc: tuple[float, ...]
    generalised: tuple[bool, ...]
    grokking_step: tuple[int | None, ...]

    @property
    def share_generalised(self) -> float:
        return sum(self.generalised) / len(self.generalised)

    @property
    def generalises(self) -> bool:
        """A strict majority of the seeds generalised (the sweep's rule,
        :func:`groklab.sweep.bisection.value_generalises`: 2 of 3, 2 of 2, not 1 of 2)."""
        from groklab.sweep.bisection import value_generalises

        return value_generalises(sum(self.generalised), len(self.generalised))


@dataclass
class DcritResult:
    """The bracket ``lo < D_crit <= hi`` and every evaluated size.

    ``estimate`` is the geometric mean of the bracket; ``lo`` is ``None`` when even the smallest
    size generalised and ``hi`` is ``None`` when even the largest did not (then ``estimate`` is
    ``None`` and the bracket says on which side D_crit lies).
    """

    lo: int | None
    hi: int | None
    points: list[DcritPoint] = field(default_factory=list)
    threshold: float = 0.95
    steps: int = 0
    seeds: tuple[int, ...] = ()
    size_key: str = "data.train_size"

    @property
    def estimate(self) -> float | None:
        if self.lo is None or self.hi is None:
            return None
        return math.sqrt(self.lo * self.hi)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["estimate"] = self.estimate
        for p, dp in zip(self.points, d["points"], strict=True):
            dp["share_generalised"] = p.share_generalised
            dp["generalises"] = p.generalises
        return d

    def table(self):
        """One row per (size, seed): ``size, seed, test_acc, train_acc, generalised,
        grokking_step`` (pandas DataFrame)."""
        import pandas as pd

        rows = [
            {
                "size": p.size,
                "seed": s,
                "test_acc": ta,
                "train_acc": tr,
                "generalised": g,
                "grokking_step": gs,
            }
            for p in sorted(self.points, key=lambda p: p.size)
            for s, ta, tr, g, gs in zip(
                p.seeds, p.test_acc, p.train_acc, p.generalised, p.grokking_step, strict=True
            )
        ]
        return pd.DataFrame(rows)


def _validate_sizes(
    base: RunConfig, sizes: Sequence[int], seeds: Sequence[int], *, size_key: str, seed_key: str
) -> None:
    """Check, before anything is trained or created, that the device exists and that every
    size given (e.g. ``--lo`` and ``--hi``) makes a valid config and task."""
    from groklab.tasks import build_task
    from groklab.train.loop import check_device

    check_device(base.train.device)
    for size in sizes:
        ovs = [f"{size_key}={size}"] + ([f"{seed_key}={seeds[0]}"] if seeds else [])
        try:
            cfg = apply_overrides(base, ovs)
            build_task(cfg.data)
        except ConfigError as e:
            raise ConfigError(f"{size_key}={size}: {e}") from None


def _make_folder(out: str | Path, what: str) -> Path:
    from groklab.store import check_folder_target, storage_error

    path = check_folder_target(out, what=what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(path, e) from None
    return path


def _point_dir(out: Path, size: int, seed: int) -> Path:
    return out / f"n{size}-s{seed}"


def find_dcrit(
    base: RunConfig,
    out: str | Path,
    *,
    lo: int,
    hi: int,
    seeds: Sequence[int] = (0, 1, 2),
    threshold: float = 0.95,
    rel_tol: float = 0.1,
    max_rounds: int = 10,
    points_per_round: int = 1,
    workers: int = 1,
    size_key: str = "data.train_size",
    seed_key: str = "train.seed",
    stop_early: bool = True,
    progress: bool = True,
    on_round: Callable[[DcritResult], None] | None = None,
) -> DcritResult:
    """Search the training-set size at which runs of ``base`` start to generalise.

    The search is :func:`groklab.sweep.bisection.bisect_search` with ``scale="log"``, integer
    sizes and ``rel_tol``: both ends are trained first (expected: ``lo`` memorises only, ``hi``
    generalises), then each round trains ``points_per_round`` sizes spaced evenly in log
    between the current bracket ends, times every seed, in one batch of runs (``workers`` at a
    time), and moves the bracket to the smallest size that generalised and the largest smaller
    size that did not. It stops once ``hi / lo <= 1 + rel_tol``, the bracket holds no integer,
    or after ``max_rounds`` rounds. A seed generalises when its final test accuracy is
    ``>= threshold`` (criterion ``final`` of :func:`groklab.sweep.bisection.seed_meets`) and a
    size when a strict majority of its seeds do
    (:func:`~groklab.sweep.bisection.value_generalises`). The budget is ``base.train.steps``;
    with ``stop_early`` a run stops once its test accuracy has held ``threshold`` for two
    evaluations (saves the time of runs that generalise; the verdict is unchanged; not for runs
    that continue a checkpoint, which start generalised).

    Over a grokked checkpoint (``base = continue_config(ref)``, ``size_key =
    "data.train_subset"``, ``seed_key = "data.subset_seed"``) the boundary is the ungrokking
    one: the smallest subset of its own training data on which the model stays generalised;
    the runs are the same as :func:`ungrok_curve`'s, so both can share one folder.

    Args:
        base: config of every run; ``size_key`` and ``seed_key`` are overridden per run.
        out: search folder: one run directory ``n<size>-s<seed>`` per run and ``dcrit.json``.
        lo, hi: initial bracket of sizes.
        seeds: seeds per size (values of ``seed_key``).
        threshold: final test accuracy that counts as generalising (a strict majority of the
            seeds must reach it).
        rel_tol: stop when the bracket's ratio is within ``1 + rel_tol``.
        max_rounds: rounds after the two ends.
        points_per_round: sizes per round (more = fewer rounds when many workers are free).
        workers: jobs at a time (:func:`groklab.sweep.run_many`, with ``stack``: the seeds of
            one size train as one stack, one job).
        size_key: the override that sets the size (``data.train_size``, or
            ``data.train_subset`` for a search over continued checkpoints).
        seed_key: the override that sets the seed.
        stop_early: stop generalising runs early.
        progress: live progress display of each round's runs.
        on_round: called with the result so far (points and bracket) after the two ends and
            after every round.

    Returns:
        The :class:`DcritResult` (also written to ``out/dcrit.json``).
    """
    import pandas as pd

    from groklab.store import METRICS, atomic_write_text
    from groklab.sweep.bisection import bisect_search, seed_meets

    if not 1 <= lo < hi:
        raise ConfigError(f"dcrit: need 1 <= lo < hi (got lo={lo}, hi={hi})")
    if not seeds:
        raise ConfigError("dcrit: need at least one seed")
    if points_per_round < 1 or max_rounds < 0 or rel_tol <= 0:
        raise ConfigError(
            "dcrit: points_per_round >= 1, max_rounds >= 0 and rel_tol > 0 are required"
        )
    seeds = tuple(int(s) for s in seeds)
    _validate_sizes(base, [lo, hi], seeds, size_key=size_key, seed_key=seed_key)
    out = _make_folder(out, "D_crit search")
    extra = []
    # A run continued from a grokked checkpoint starts above the threshold: never stop early.
    if stop_early and base.train.init_from is None:
        extra = [
            f"train.stop_test_acc={threshold}",
            f"train.stop_patience={2 * base.train.eval_every}",
        ]
    result = DcritResult(
        lo=lo, hi=hi, threshold=threshold, steps=base.train.steps, seeds=seeds, size_key=size_key
    )
    done: dict[int, DcritPoint] = {}

    def save() -> None:
        atomic_write_text(out / "dcrit.json", json.dumps(result.to_dict(), indent=2))

    def evaluate(sizes: list[int]) -> dict[int, bool]:
        new = [s for s in sizes if s not in done]
        cfgs, outs = [], []
        for size in new:
            for seed in seeds:
                cfg = apply_overrides(base, [f"{size_key}={size}", f"{seed_key}={seed}", *extra])
                cfgs.append(replace(cfg, name=f"{base.name}-n{size}-s{seed}"))
                outs.append(_point_dir(out, size, seed))
        _execute(
            cfgs,
            outs,
            workers=workers,
            progress=progress,
            title=f"dcrit {base.name}: sizes {', '.join(map(str, new))}",
        )
        for size in new:
            dirs = [_point_dir(out, size, s) for s in seeds]
            o = [run_outcome(d, threshold=threshold) for d in dirs]
            done[size] = DcritPoint(
                size=size,
                seeds=seeds,
                test_acc=tuple(x["test_acc"] for x in o),
                train_acc=tuple(x["train_acc"] for x in o),
                generalised=tuple(
                    seed_meets(
                        pd.read_parquet(d / METRICS), "test/acc", threshold, criterion="final"
                    )
                    for d in dirs
                ),
                grokking_step=tuple(x["grokking_step"] for x in o),
            )
        result.points = sorted(done.values(), key=lambda p: p.size)
        save()
        return {s: done[s].generalises for s in sizes}

    def after_round(bracket) -> None:
        result.lo, result.hi = bracket.lo, bracket.hi
        save()
        if on_round is not None:
            on_round(result)

    bisect_search(
        evaluate,
        lo=lo,
        hi=hi,
        scale="log",
        integer=True,
        rel_tol=rel_tol,
        max_rounds=max_rounds,
        points_per_round=points_per_round,
        on_round=after_round,
    )
    return result


# --------------------------------------------------------------------------- ungrokking


def ungrok_curve(
    ref: str | Path,
    sizes: Sequence[int],
    out: str | Path,
    *,
    seeds: Sequence[int] = (0,),
    overrides: Sequence[str] = (),
    workers: int = 1,
    progress: bool = True,
):
    """Continue checkpoint ``DIR@STEP`` on training subsets of each size; final accuracies.

    Each (size, seed) run trains on ``data.train_subset=size`` drawn with
    ``data.subset_seed=seed`` (nested subsets for one seed), from the checkpoint's weights, with
    the parent's config plus ``overrides`` (e.g. ``train.steps=5000``), into
    ``out/n<size>-s<seed>``. The runs go to :func:`groklab.sweep.run_many` (``workers`` jobs at
    a time), the seeds of one size as one stack.

    Returns:
        A pandas DataFrame, one row per run: ``size, seed, test_acc, train_acc, test_loss,
        final_step, out``, sorted by size (also written to ``out/ungrok.csv``).
    """
    import pandas as pd

    base_name = continue_config(ref, overrides).name
    cfgs, keys = [], []
    for size in sizes:
        for seed in seeds:
            cfg = continue_config(
                ref, [*overrides, f"data.train_size={size}", f"data.subset_seed={seed}"]
            )
            # The same config (and name) as find_dcrit's runs over a checkpoint's subsets, so
            # a search in the same folder reuses these runs.
            cfgs.append(replace(cfg, name=f"{base_name}-n{size}-s{seed}"))
            keys.append((size, seed))
    if cfgs:
        from groklab.train.loop import check_device

        check_device(cfgs[0].train.device)
    out = _make_folder(out, "ungrokking folder")
    outs = [_point_dir(out, size, seed) for size, seed in keys]
    _execute(cfgs, outs, workers=workers, progress=progress, title=f"ungrok {ref}")
    rows = []
    for (size, seed), o in zip(keys, outs, strict=True):
        r = run_outcome(o, threshold=0.99)
        rows.append(
            {
                "size": size,
                "seed": seed,
                "test_acc": r["test_acc"],
                "train_acc": r["train_acc"],
                "test_loss": r["test_loss"],
                "final_step": r["final_step"],
                "out": str(o),
            }
        )
    table = pd.DataFrame(rows).sort_values(["size", "seed"]).reset_index(drop=True)
    from groklab.store import atomic_write_text

    atomic_write_text(out / "ungrok.csv", table.to_csv(index=False))
    return table
