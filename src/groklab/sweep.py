"""Sweeps: families of runs from one spec, on local worker processes or a Ray cluster.

A sweep spec (TOML) names a base config, a grid and/or an explicit list of overrides, seeds,
and the analyses to run after each run::

    name = "weight-decay"
    preset = "nanda2023"                 # or a [base] table of config sections (or both)
    set = ["train.checkpoint_every=1000"]
    seeds = [0, 1, 2]                    # sets every key in seed_keys (default train.seed)
    analyses = ["spikes"]

    [grid]                               # cartesian product of the axes, in this order
    "optim.weight_decay" = [1.0, 0.3, 0.1]

    [[points]]                           # explicit override sets (x the grid when both)
    label = "add=0.30"                   # optional: the run-name part for this point
    "data.shares" = [0.30, 0.70]

    [bisect]                             # optional: search for a critical value
    key = "data.train_fraction"          # (or data.train_size)
    lo = 0.1                             # expected not to generalise within the budget
    hi = 0.4                             # expected to generalise
    tol = 0.02

Every point becomes one run directory under the sweep directory, named from its overrides
(``optim.weight_decay=0.3__seed=1``). :func:`run_many` is the executor: a completed run with
the same config is skipped, a killed run resumes from its latest full state, a failure is
recorded and the other runs go on. :func:`summarize_sweep` tabulates the grokking and
memorisation steps per run and, per grid point, over seeds (runs that never grokked are
counted, not dropped).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib
import itertools
import json
import math
import multiprocessing
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from groklab.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
)
from groklab.errors import ConfigError, GroklabError, RunDamagedError, RunExistsError
from groklab.store import CONFIG, METRICS, atomic_write_text, read_manifest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

__all__ = [
    "ANALYSES",
    "BisectSpec",
    "SweepPoint",
    "SweepRun",
    "SweepSpec",
    "aggregate_summary",
    "bisect_sweep",
    "expand",
    "format_summary",
    "list_studies",
    "load_spec",
    "parse_spec",
    "resolve_analysis",
    "run_many",
    "run_name",
    "run_sweep",
    "study_spec_path",
    "summarize_runs",
    "summarize_sweep",
    "summary_columns",
    "sweep_status",
]

SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.parquet"
POINTS_FILE = "points.parquet"
BISECT_FILE = "bisect.json"
DONE_STATUSES = ("completed", "diverged")  # final outcomes: never re-run
SEED_KEYS = ("train.seed", "data.split_seed")
_SPEC_KEYS = {
    "name",
    "description",
    "study",
    "preset",
    "config",
    "base",
    "set",
    "grid",
    "points",
    "seeds",
    "seed_keys",
    "analyses",
    "analysis_options",
    "bisect",
}


# ----------------------------------------------------------------------------- analyses


def _analysis_summary(run_dir: Path) -> dict[str, Any]:
    """Built-in trivial analysis: the run's memorisation/grokking steps (from its metrics)."""
    from groklab.run import load_run, summarize_metrics

    s = summarize_metrics(load_run(run_dir).metrics)
    return {"memorisation_step": s["memorisation_step"], "grokking_step": s["grokking_step"]}


def _analysis_llc(
    run_dir: Path, *, every: int | None = None, subsets: Sequence[str] = ("total",), **settings: Any
) -> dict[str, Any]:
    """LLC over checkpoints (cached by :mod:`groklab.analysis.llc` in ``analysis/llc/``).

    Settings: the run's saved calibration if any, else the module's defaults, updated by
    ``settings`` (``epsilon``, ``gamma``, ``chains``, ``draws``, ...). Returns the curve's
    landmarks (peak, levelling-off) per subset, and the cache key of each curve.
    """
    from groklab.analysis import llc
    from groklab.run import load_run

    run = load_run(run_dir)
    cal = llc.load_calibration(run)
    base = cal[0] if cal is not None else llc.LLCSettings()
    s = llc.LLCSettings.from_dict({**base.to_dict(), **settings})
    out: dict[str, Any] = {"settings_key": s.key()}
    for sub in subsets:
        df = llc.llc_over_checkpoints(run, s, every=every, subset=None if sub == "total" else sub)
        prefix = "" if sub == "total" else f"{sub.replace('/', '_')}_"
        for k, v in llc.landmarks(df).items():
            out[f"{prefix}{k}"] = v
    return out


def _analysis_progress(run_dir: Path, *, every: int = 1) -> dict[str, Any]:
    """Progress measures over checkpoints (table in ``analysis/sweep-progress.parquet``) and
    the phase boundaries read off them."""
    import io

    from groklab.analysis.phases import find_phases
    from groklab.analysis.progress import progress_measures
    from groklab.run import load_run
    from groklab.store import atomic_write_bytes

    run = load_run(run_dir)
    prog = progress_measures(run, every=every)
    buf = io.BytesIO()
    prog.table.to_parquet(buf, index=False)
    atomic_write_bytes(Path(run_dir) / "analysis" / "sweep-progress.parquet", buf.getvalue())
    ph = find_phases(prog.table, prog.ops, metrics=run.metrics)
    out: dict[str, Any] = {"grokking_step": ph.grokking_step}
    out["memorisation_end"] = ph.memorisation[1]
    out["circuit_formation_end"] = ph.circuit_formation[1]
    out["cleanup_end"] = ph.cleanup[1] if ph.cleanup else None
    for op, freqs in prog.key_freqs.items():
        out[f"key_freqs_{op}"] = " ".join(map(str, freqs))
    return out


# name -> "module:function" (imported only when used) or a callable. Each takes a run
# directory (and the keyword options of the spec's [analysis_options.<name>] table) and
# returns a dict (its scalar entries go into the sweep summary) or None.
ANALYSES: dict[str, str | Callable[..., Any]] = {
    "summary": _analysis_summary,
    "spikes": "groklab.analysis.spikes:analyze_run",
    "progress": _analysis_progress,
    "llc": _analysis_llc,
}
# What a registered analysis needs from other parts of the product: checked up front, so a
# missing part is a one-line error before any run starts, not a failure after training.
_REQUIRES: dict[str, tuple[str, str]] = {
    "progress": ("groklab.analysis.progress", "progress_measures"),
    "llc": ("groklab.analysis.llc", "llc_over_checkpoints"),
}


def _require(name: str, mod_name: str, fn_name: str) -> Callable[..., Any]:
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(
            f"analyses: {name!r} needs {mod_name}, which cannot be imported here ({e})"
        ) from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ConfigError(
            f"analyses: {name!r} needs {mod_name}.{fn_name}, which this install does not provide"
        )
    return fn


def resolve_analysis(name: str) -> Callable[..., Any]:
    """The callable behind analysis ``name`` (a registered name or ``module:function``).

    Raises:
        ConfigError: unknown name, or what it needs is not available in this install.
    """
    target = ANALYSES.get(name)
    if target is None:
        if ":" not in name:
            raise ConfigError(
                f"analyses: {name!r} is unknown; allowed: {', '.join(ANALYSES)} or module:function"
            )
        target = name
    if name in _REQUIRES:
        _require(name, *_REQUIRES[name])
    if callable(target):
        return target
    mod_name, _, fn_name = target.partition(":")
    return _require(name, mod_name, fn_name)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, bool | int | str) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    try:  # numpy / torch scalars
        return _jsonable(v.item())
    except (AttributeError, ValueError, RuntimeError):
        return str(v)


def _analysis_marker(out: Path, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return out / "analysis" / f"sweep-{safe}.json"


# ----------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class SweepPoint:
    """One explicit override set: ``overrides`` as (dotted key, value) pairs, optional label."""

    overrides: tuple[tuple[str, Any], ...]
    label: str | None = None


@dataclass(frozen=True)
class BisectSpec:
    """Search for the critical value of ``key`` between not generalising and generalising.

    Attributes:
        key: ``data.train_fraction`` or ``data.train_size`` (any numeric config key works).
        lo: a value expected NOT to reach ``threshold`` on ``metric`` within the step budget.
        hi: a value expected to reach it.
        tol: stop once ``hi - lo <= tol``.
        max_rounds: at most this many rounds after the two ends.
        metric: the generalisation metric column.
        threshold: the level it must reach.
    """

    key: str
    lo: float
    hi: float
    tol: float
    max_rounds: int = 8
    metric: str = "test/acc"
    threshold: float = 0.99

    @property
    def integer(self) -> bool:
        return self.key == "data.train_size"


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep spec (see the module docstring for the TOML form)."""

    name: str
    base: RunConfig
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    points: tuple[SweepPoint, ...] = ()
    seeds: tuple[int, ...] | None = None
    seed_keys: tuple[str, ...] = ("train.seed",)
    analyses: tuple[str, ...] = ()
    analysis_options: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    study: str | None = None
    description: str = ""
    bisect: BisectSpec | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _set_native(cfg: RunConfig, key: str, value: Any) -> RunConfig:
    """Set dotted ``key`` to a native (TOML-parsed) value, validating like a config file."""
    if key == "name":
        return replace(cfg, name=str(value))
    if "." not in key:
        raise ConfigError(f"unknown key {key!r}; use section.key (data, model, optim, train)")
    d = config_to_dict(cfg)
    sec, name = key.split(".", 1)
    if sec not in ("data", "model", "optim", "train"):
        raise ConfigError(f"unknown key {key!r}; sections: data, model, optim, train")
    section = dict(d.get(sec, {}))
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        section.pop(name, None)
        # A None-able field left out of the dict goes back to its default; set None explicitly.
        out = config_from_dict({**d, sec: section})
        return apply_overrides(out, [f"{key}=none"])
    section[name] = list(value) if isinstance(value, tuple) else value
    return config_from_dict({**d, sec: section})


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _as_list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise ConfigError(f"{where}={v!r} is not allowed; must be a list")
    return v


def parse_spec(
    d: dict[str, Any], *, where: str = "spec", base_dir: Path | None = None
) -> SweepSpec:
    """Validate a TOML-shaped sweep spec dict into a :class:`SweepSpec`.

    Every grid value and point is applied to the base config once here, so a bad key or value
    is reported before any run starts; every error names the spec (``where``).
    """
    try:
        return _parse_spec(d, where=where, base_dir=base_dir)
    except ConfigError as e:
        if str(e).startswith(f"{where}:"):
            raise
        raise ConfigError(f"{where}: {e}") from None


def _in_spec(what: str, cfg: RunConfig, key: str, value: Any) -> RunConfig:
    """``_set_native`` with the spec entry that asked for it named in the error."""
    try:
        return _set_native(cfg, key, value)
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None


def _parse_spec(d: dict[str, Any], *, where: str, base_dir: Path | None) -> SweepSpec:
    from groklab.presets import get_preset

    unknown = sorted(set(d) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_SPEC_KEYS))}"
        )
    name = str(d.get("name") or "sweep")
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", name) or name in (".", ".."):
        raise ConfigError(f"{where}: name={name!r} is not allowed; use letters, digits, . _ + -")
    if "preset" in d and "config" in d:
        raise ConfigError(f"{where}: give preset or config, not both")
    if "preset" in d:
        base = get_preset(str(d["preset"]))
    elif "config" in d:
        p = Path(str(d["config"]))
        base = load_config(p if p.is_absolute() or base_dir is None else base_dir / p)
    else:
        base = RunConfig()
    if "base" in d:
        if not isinstance(d["base"], dict):
            raise ConfigError(f"{where}: base must be a table of config sections")
        base = config_from_dict(_deep_merge(config_to_dict(base), d["base"]))
    base = apply_overrides(base, [str(s) for s in _as_list(d.get("set", []), f"{where}: set")])

    seed_keys = tuple(str(k) for k in _as_list(d.get("seed_keys", ["train.seed"]), "seed_keys"))
    for k in seed_keys:
        if k not in SEED_KEYS:
            raise ConfigError(f"{where}: seed_keys has {k!r}; allowed: {', '.join(SEED_KEYS)}")
    seeds = None
    if "seeds" in d:
        seeds = tuple(_as_list(d["seeds"], f"{where}: seeds"))
        if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
            raise ConfigError(f"{where}: seeds={list(seeds)!r} is not allowed; non-negative ints")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"{where}: seeds={list(seeds)!r} has repeats")

    grid_d = d.get("grid", {})
    if not isinstance(grid_d, dict):
        raise ConfigError(f"{where}: grid must be a table of key = [values]")
    grid = []
    for k, vals in grid_d.items():
        vals = _as_list(vals, f"{where}: grid.{k}")
        if not vals:
            raise ConfigError(f"{where}: grid.{k} is empty")
        if seeds is not None and k in seed_keys:
            raise ConfigError(f"{where}: grid.{k} is also set by seeds; drop one")
        for v in vals:
            _in_spec(f"grid.{k}", base, k, v)  # validates key and value now
        grid.append((str(k), tuple(vals)))

    points = []
    for i, pt in enumerate(_as_list(d.get("points", []), f"{where}: points")):
        if not isinstance(pt, dict):
            raise ConfigError(f"{where}: points[{i}] must be a table of key = value")
        label = pt.get("label")
        ovs = tuple((str(k), v) for k, v in pt.items() if k != "label")
        cfg = base
        for k, v in ovs:
            if any(k == g for g, _ in grid):
                raise ConfigError(f"{where}: points[{i}] sets {k}, which the grid also sweeps")
            cfg = _in_spec(f"points[{i}]", cfg, k, v)
        points.append(SweepPoint(ovs, None if label is None else str(label)))

    analyses = tuple(str(a) for a in _as_list(d.get("analyses", []), f"{where}: analyses"))
    for a in analyses:
        resolve_analysis(a)
    opts = d.get("analysis_options", {})
    if not isinstance(opts, dict) or not all(isinstance(v, dict) for v in opts.values()):
        raise ConfigError(f"{where}: analysis_options must be tables [analysis_options.<name>]")
    for a in opts:
        if a not in analyses:
            raise ConfigError(
                f"{where}: analysis_options.{a} is for an analysis not in analyses "
                f"({', '.join(analyses) or 'none'})"
            )

    bis = None
    if "bisect" in d:
        b = d["bisect"]
        if not isinstance(b, dict):
            raise ConfigError(f"{where}: bisect must be a table")
        allowed = {"key", "lo", "hi", "tol", "max_rounds", "metric", "threshold"}
        bad = sorted(set(b) - allowed)
        if bad:
            raise ConfigError(
                f"{where}: unknown key bisect.{bad[0]}; allowed: {', '.join(sorted(allowed))}"
            )
        missing = [k for k in ("key", "lo", "hi") if k not in b]
        if missing:
            raise ConfigError(f"{where}: bisect.{missing[0]} is required")
        lo, hi = b["lo"], b["hi"]
        if not (isinstance(lo, int | float) and isinstance(hi, int | float) and lo < hi):
            raise ConfigError(f"{where}: bisect.lo={lo!r}, hi={hi!r}; need numbers with lo < hi")
        key = str(b["key"])
        _in_spec("bisect.lo", base, key, lo)
        _in_spec("bisect.hi", base, key, hi)
        default_tol = 1 if key == "data.train_size" else (hi - lo) / 16
        tol = b.get("tol", default_tol)
        if not (isinstance(tol, int | float) and tol > 0):
            raise ConfigError(f"{where}: bisect.tol={tol!r} is not allowed; must be > 0")
        bis = BisectSpec(
            key=key,
            lo=lo,
            hi=hi,
            tol=tol,
            max_rounds=int(b.get("max_rounds", 8)),
            metric=str(b.get("metric", "test/acc")),
            threshold=float(b.get("threshold", 0.99)),
        )

    study = d.get("study")
    return SweepSpec(
        name=name,
        base=base,
        grid=tuple(grid),
        points=tuple(points),
        seeds=seeds,
        seed_keys=seed_keys,
        analyses=analyses,
        analysis_options={str(k): dict(v) for k, v in opts.items()},
        study=None if study is None else str(study),
        description=str(d.get("description", "")),
        bisect=bis,
        raw=d,
    )


def list_studies() -> list[str]:
    """Names of the shipped study specs (``groklab/studies/*.toml``)."""
    root = resources.files("groklab") / "studies"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def study_spec_path(name: str) -> Path:
    """Path of the shipped study spec ``name``."""
    if name not in list_studies():
        raise ConfigError(f"study {name!r} is unknown; shipped: {', '.join(list_studies())}")
    return Path(str(resources.files("groklab") / "studies" / f"{name}.toml"))


def load_spec(
    spec: str | Path,
    *,
    sets: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    options: Sequence[str] = (),
) -> SweepSpec:
    """Read a sweep spec: a TOML file path, or the name of a shipped study.

    Args:
        spec: the file, or a study name (see :func:`list_studies`).
        sets: extra ``section.key=value`` overrides applied to the base after the spec's own.
        seeds: replace the spec's seeds.
        options: analysis options ``analysis.key=value`` (value parsed as TOML) that replace
            the spec's ``[analysis_options.<analysis>]`` entries.
    """
    p = Path(spec)
    if not p.is_file():
        if str(spec) in list_studies():
            p = study_spec_path(str(spec))
        else:
            raise ConfigError(
                f"{spec}: no such spec file and no shipped study of that name; "
                f"shipped: {', '.join(list_studies())}"
            )
    try:
        d = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a sweep spec (binary, not UTF-8 TOML text)") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read sweep spec ({e.strerror})") from None
    if sets:
        d["set"] = [*_as_list(d.get("set", []), f"{p}: set"), *sets]
    if seeds is not None:
        d["seeds"] = list(seeds)
    if options:
        opts = {k: dict(v) for k, v in d.get("analysis_options", {}).items()}
        for o in options:
            key, eq, text = o.partition("=")
            name, dot, field_ = key.strip().partition(".")
            if not (eq and dot and name and field_):
                raise ConfigError(f"analysis option {o!r} is not of the form analysis.key=value")
            try:
                value = tomllib.loads(f"v = {text.strip()}")["v"]
            except tomllib.TOMLDecodeError:
                value = text.strip()
            opts.setdefault(name, {})[field_] = value
        d["analysis_options"] = opts
    return parse_spec(d, where=str(p), base_dir=p.parent)


# ----------------------------------------------------------------------------- expansion


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its directory name, grid-point label, overrides and config."""

    name: str
    group: str
    overrides: tuple[tuple[str, Any], ...]
    seed: int | None
    config: RunConfig
    source: str = "grid"


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "-".join(_fmt_value(x) for x in v)
    return str(v)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def run_name(parts: Sequence[tuple[str, Any]] | Sequence[str], seed: int | None = None) -> str:
    """A readable, filesystem-safe name: ``key=value`` parts joined by ``__`` (+ ``seed=N``).

    Args:
        parts: (key, value) overrides, or ready-made label strings.
        seed: the seed, appended as ``seed=N``.
    """
    items = [p if isinstance(p, str) else f"{p[0]}={_fmt_value(p[1])}" for p in parts]
    if seed is not None:
        items.append(f"seed={seed}")
    name = _safe("__".join(items)) or "base"
    if name.startswith("."):
        name = "_" + name[1:]
    if len(name) > 150:  # stay well under the 255-byte filename limit
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:140]}~{digest}"
    return name


def expand(spec: SweepSpec) -> list[SweepRun]:
    """Every run of the spec: (points x grid) x seeds, in a stable order, uniquely named."""
    points = spec.points or (SweepPoint(()),)
    axes = [[(k, v) for v in vals] for k, vals in spec.grid]
    runs: list[SweepRun] = []
    for pt in points:
        for combo in itertools.product(*axes) if axes else [()]:
            ovs = tuple(pt.overrides) + tuple(combo)
            label_parts: list[Any] = [pt.label] if pt.label else list(pt.overrides)
            label_parts += list(combo)
            group = run_name(label_parts)
            cfg = spec.base
            for k, v in ovs:
                cfg = _set_native(cfg, k, v)
            for seed in spec.seeds if spec.seeds is not None else [None]:
                c = cfg
                all_ovs = ovs
                if seed is not None:
                    for k in spec.seed_keys:
                        c = _set_native(c, k, seed)
                    all_ovs = ovs + tuple((k, seed) for k in spec.seed_keys)
                name = run_name(label_parts, seed)
                runs.append(SweepRun(name, group, all_ovs, seed, replace(c, name=name)))
    return _dedupe(runs)


def _dedupe(runs: list[SweepRun]) -> list[SweepRun]:
    """Make names unique (two override sets may sanitise to the same text)."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
    out = []
    for r in runs:
        if seen[r.name] > 1:
            digest = hashlib.sha256(repr(r.overrides).encode()).hexdigest()[:8]
            name = f"{r.name}~{digest}"
            r = replace(r, name=name, config=replace(r.config, name=name))
        out.append(r)
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"sweep: two runs have identical overrides ({dup}); remove the repeat")
    return out


# ----------------------------------------------------------------------------- one run


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str | None:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _config_diff(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k}: {va!r} there, {vb!r} here"
    return None


def _execute(cfg: RunConfig, out: Path) -> str:
    """Train, resume or skip one run. Returns the action taken."""
    from groklab.train.loop import run_training

    if (out / CONFIG).is_file():
        try:
            old = config_to_dict(load_config(out / CONFIG))
        except GroklabError as e:
            raise RunDamagedError(
                f"{str(e).removesuffix('.')}; the run's config.toml is damaged: restore it, or "
                "delete the run directory to train the run again"
            ) from None
        new = config_to_dict(cfg)
        if old != new:
            diff = _config_diff(old, new)
            raise ConfigError(f"{out}: already holds a different run ({diff}); use another --out")
        if read_manifest(out).get("status") in DONE_STATUSES:
            from groklab.run import load_run

            load_run(out)  # a finished run counts only if its files are sound
            return "skipped"
        run_training(cfg, out, resume=True, progress=False)
        return "resumed"
    run_training(cfg, out, progress=False)
    return "started"


def _run_analyses(
    out: Path, names: Sequence[str], options: dict[str, dict[str, Any]], chash: str
) -> dict[str, Any]:
    """Run each analysis once per (run, config, options); results cached in
    ``analysis/sweep-<name>.json`` so a re-launched sweep does not redo them."""
    results: dict[str, Any] = {}
    for name in names:
        opts = _jsonable(options.get(name, {}))
        marker = _analysis_marker(out, name)
        with contextlib.suppress(OSError, ValueError):
            cached = json.loads(marker.read_text())
            if (
                cached.get("config_hash") == chash
                and cached.get("options") == opts
                and cached.get("status") == "ok"
            ):
                results[name] = cached.get("result")
                continue
        fn = resolve_analysis(name)
        result = _jsonable(fn(out, **options.get(name, {})))
        record = {"status": "ok", "config_hash": chash, "options": opts, "result": result}
        atomic_write_text(marker, json.dumps(record, indent=1))
        results[name] = result
    return results


def _run_one(
    cfg: RunConfig,
    out: str,
    analyses: Sequence[str],
    options: dict[str, dict[str, Any]],
    threads: int | None,
) -> dict:
    """Worker entry point (must stay importable for spawn and Ray)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    path = Path(out)
    res: dict[str, Any] = {"out": str(path), "status": "failed", "error": None, "action": None}
    t0 = time.perf_counter()
    try:
        res["action"] = _execute(cfg, path)
        res["status"] = read_manifest(path).get("status", "failed")
    except GroklabError as e:
        res["error"] = str(e)
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)
        where = f" ({tb[-1].filename}:{tb[-1].lineno})" if tb else ""
        res["error"] = f"{type(e).__name__}: {e}{where}"
    if res["status"] in DONE_STATUSES and analyses:
        try:
            res["analyses"] = _run_analyses(path, analyses, options, config_hash(cfg))
        except Exception as e:  # an analysis failure fails this item, not the sweep
            res["status"] = "failed"
            res["error"] = f"analysis: {type(e).__name__}: {e}".splitlines()[0]
    if res["status"] not in DONE_STATUSES and res["error"] is None:
        res["error"] = f"run ended with status {res['status']!r}"
        res["status"] = "failed"
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


def _already_done(
    cfg: RunConfig, out: Path, analyses: Sequence[str], options: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """The result of a run that needs no work at all (finished, same config, analyses cached),
    so a re-launched sweep does not even start a worker for it; else None."""
    m = read_manifest(out)
    if m.get("status") not in DONE_STATUSES:
        return None
    try:
        if config_to_dict(load_config(out / CONFIG)) != config_to_dict(cfg):
            return None
    except GroklabError:
        return None
    chash = config_hash(cfg)
    results: dict[str, Any] = {}
    for name in analyses:
        try:
            cached = json.loads(_analysis_marker(out, name).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(cached, dict):
            return None
        if (
            cached.get("status") != "ok"
            or cached.get("config_hash") != chash
            or cached.get("options") != _jsonable(options.get(name, {}))
        ):
            return None
        results[name] = cached.get("result")
    from groklab.run import load_run

    try:
        load_run(out)  # a finished run counts only if its files are sound
    except GroklabError:
        return None  # the worker reports the damage
    res = {"out": str(out), "status": m["status"], "error": None, "action": "skipped"}
    if analyses:
        res["analyses"] = results
    res["seconds"] = 0.0
    return res


def _init_worker(threads: int, parent_pid: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid: int, *, poll_s: float = 1.0) -> None:
    """Start a daemon thread that ends this worker as soon as the sweep that started it is gone.

    A sweep killed with SIGKILL cannot shut its pool down, and a worker blocked on the task
    queue never sees EOF (it holds both ends of that pipe itself), so without this it would
    sleep forever holding its memory, the resource tracker and its run's lock. The parent
    holds the write end of the spawn pipe until the end (``parent_process().sentinel`` turns
    readable when it dies); the reparenting check (``os.getppid()``) covers starts without
    that sentinel. ``os._exit`` skips cleanup on purpose: run files are written atomically
    and a killed run resumes from its last state.
    """
    import multiprocessing.connection as mpc

    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)

    def watch() -> None:
        while True:
            if sentinel is not None:
                gone = bool(mpc.wait([sentinel], timeout=poll_s))
            else:  # pragma: no cover - every spawn start has the sentinel
                time.sleep(poll_s)
                gone = False
            if gone or os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="groklab-exit-with-parent", daemon=True).start()


# ----------------------------------------------------------------------------- display


def _parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s)
    except ValueError:
        return None


class _Display:
    """Live overall progress: runs done/total, running (with their step), failed, skipped.

    A poll thread reads the run directories (manifest + metrics), so it works the same for
    every backend that writes to storage this process can see.
    """

    def __init__(self, enabled: bool, outs: list[Path], labels: list[str], title: str) -> None:
        self.enabled = enabled
        self.outs, self.labels = outs, labels
        self.done = self.failed = self.skipped = 0
        self.finished: set[int] = set()
        self.launch = datetime.now(timezone.utc).replace(microsecond=0)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        )
        self.total = self.bar.add_task(f"[bold]{title}", total=len(outs), info="")
        self.sub: dict[int, Any] = {}
        self.bar.start()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def record(self, i: int, res: dict[str, Any]) -> None:
        with self._lock:
            self.finished.add(i)
            self.done += 1
            if res["status"] not in DONE_STATUSES:
                self.failed += 1
            elif res.get("action") == "skipped":
                self.skipped += 1
        if self.enabled:
            if res["status"] not in DONE_STATUSES:
                from rich.text import Text

                line = Text("failed ", style="red")
                line.append(f"{self.labels[i]}: {res['error']}")
                self.bar.console.print(line, highlight=False)
            self._refresh()

    def _running(self) -> dict[int, tuple[int, int]]:
        out = {}
        for i, p in enumerate(self.outs):
            if i in self.finished:
                continue
            m = read_manifest(p)
            started = _parse_time(m.get("started_at"))
            if m.get("status") != "running" or started is None or started < self.launch:
                continue
            step = 0
            with contextlib.suppress(Exception):
                step = int(pd.read_parquet(p / METRICS, columns=["step"])["step"].iloc[-1])
            total = 0
            with contextlib.suppress(Exception):
                total = load_config(p / CONFIG).train.steps
            out[i] = (step, total)
        return out

    def _refresh(self) -> None:
        running = self._running()
        with self._lock:
            info = f"{len(running)} running · {self.failed} failed · {self.skipped} skipped"
            self.bar.update(self.total, completed=self.done, info=info)
            for i in list(self.sub):
                if i not in running:
                    self.bar.remove_task(self.sub.pop(i))
            for i, (step, total) in running.items():
                if i not in self.sub:
                    self.sub[i] = self.bar.add_task(
                        f"  {self.labels[i]}", total=total or None, info=""
                    )
                self.bar.update(self.sub[i], completed=step, info="(step at last checkpoint)")

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                self._refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self.thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._refresh()
        self.bar.stop()


# ----------------------------------------------------------------------------- executors


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "backend='ray' needs Ray; install it with: pip install 'groklab[ray]'"
        ) from None
    return ray


def _run_local(
    jobs: list[tuple[RunConfig, str]],
    analyses: tuple[str, ...],
    options: dict[str, dict[str, Any]],
    workers: int,
    on_done: Callable[[int, dict], None],
    threads: int | None = None,
) -> None:
    if workers <= 1:
        # In this process: no start-up cost; the caller's torch threads unless told.
        for i, (cfg, out) in enumerate(jobs):
            on_done(i, _run_one(cfg, out, analyses, options, threads))
        return
    if threads is None:
        from groklab.train.threads import default_threads

        # the cores the thread policy would give one run, shared out (one core left free)
        threads = max(1, default_threads() // workers)
    ctx = multiprocessing.get_context("spawn")
    todo = list(range(len(jobs)))
    # A worker killed from outside (OOM killer) breaks the whole pool; the jobs it took down
    # go to a fresh pool (each resumes from its last state). Give up after three pools.
    for attempt in range(3):
        broken: list[int] = []
        with ProcessPoolExecutor(
            max_workers=min(workers, len(todo)),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(threads, os.getpid()),
        ) as pool:
            futs = {pool.submit(_run_one, *jobs[i], analyses, options, threads): i for i in todo}
            for fut in as_completed(futs):
                i = futs[fut]
                try:
                    on_done(i, fut.result())
                except BrokenProcessPool:
                    broken.append(i)
        if not broken:
            return
        todo = sorted(broken)
        if attempt == 2:
            for i in todo:
                on_done(
                    i,
                    {
                        "out": jobs[i][1],
                        "status": "failed",
                        "error": "its worker process died three times (killed from outside?)",
                        "action": None,
                    },
                )


def _run_ray(
    jobs: list[tuple[RunConfig, str]],
    analyses: tuple[str, ...],
    options: dict[str, dict[str, Any]],
    workers: int,
    address: str | None,
    on_done: Callable[[int, dict], None],
) -> None:
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        import logging

        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(_run_one)
        cap = workers if workers and workers > 0 else len(jobs)
        queue = list(range(len(jobs)))
        pending: dict[Any, int] = {}
        while queue or pending:
            while queue and len(pending) < cap:
                i = queue.pop(0)
                pending[remote.remote(*jobs[i], analyses, options, 1)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as e:  # a worker crash or lost node, after Ray's retries
                    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    res = {
                        "out": jobs[i][1],
                        "status": "failed",
                        "error": f"ray: {type(e).__name__}: {first}",
                        "action": None,
                    }
                on_done(i, res)
    finally:
        if started:
            ray.shutdown()


def run_many(
    configs: list[RunConfig],
    outs: list[Path],
    *,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    progress: bool = True,
    analyses: Sequence[str] = (),
    analysis_options: dict[str, dict[str, Any]] | None = None,
    labels: Sequence[str] | None = None,
    title: str = "sweep",
    threads: int | None = None,
) -> list[dict]:
    """Train each config into its run directory, ``workers`` at a time.

    A run whose manifest says completed (or diverged) with the same config is skipped; a run
    with a saved state is resumed; otherwise it starts. A failure in one run (including a
    directory that holds a different run) is recorded and does not stop the others.

    Args:
        configs: one config per run.
        outs: one run directory per config.
        workers: local backend: worker processes (1 = in this process). Ray backend: the most
            runs in flight at once (0 = as many as the cluster schedules, one CPU each).
        backend: ``local`` or ``ray``.
        address: Ray cluster address (``auto``, ``ray://host:10001``); None = the running
            Ray instance, or a new local one.
        progress: show a live overall progress display.
        analyses: analysis names (see :data:`ANALYSES`) run after each finished run.
        analysis_options: keyword options per analysis name.
        labels: display names of the runs (default: the directory names).
        title: display title.
        threads: local backend: torch threads of each run (None: in this process, the
            caller's setting; in workers, ``default_threads() // workers``, at least 1 — see
            :mod:`groklab.train.threads`).

    Returns:
        One dict per run, in input order: ``out``, ``status`` (completed, diverged or failed),
        ``error`` (None or one line), ``action`` (started, resumed, skipped or None),
        ``seconds``, and ``analyses`` (name → result) when any ran.
    """
    if len(configs) != len(outs):
        raise ConfigError(f"run_many: {len(configs)} configs but {len(outs)} out dirs")
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend={backend!r} is not allowed; allowed: local, ray")
    if backend == "local" and workers < 1:
        raise ConfigError(f"workers={workers} is not allowed; must be >= 1 for the local backend")
    outs_abs = [Path(o).resolve() for o in outs]
    if len(set(outs_abs)) != len(outs_abs):
        raise ConfigError("run_many: two runs share one out dir")
    analyses = tuple(analyses)
    for a in analyses:
        resolve_analysis(a)
    options = {k: dict(v) for k, v in (analysis_options or {}).items()}
    if backend == "ray":
        _import_ray()
    jobs = [(c, str(o)) for c, o in zip(configs, outs_abs, strict=True)]
    results: list[dict | None] = [None] * len(jobs)
    display = _Display(progress, outs_abs, list(labels or [o.name for o in outs_abs]), title)

    def on_done(i: int, res: dict) -> None:
        results[i] = res
        display.record(i, res)

    todo = []
    for i, (cfg, out) in enumerate(jobs):
        done = _already_done(cfg, Path(out), analyses, options)
        if done is not None:
            on_done(i, done)
        else:
            todo.append(i)
    try:
        if todo:

            def on_todo_done(j: int, res: dict) -> None:
                on_done(todo[j], res)

            sub = [jobs[i] for i in todo]
            if backend == "local":
                _run_local(sub, analyses, options, workers, on_todo_done, threads)
            else:
                _run_ray(sub, analyses, options, workers, address, on_todo_done)
    finally:
        display.close()
    return [r for r in results if r is not None]


# ----------------------------------------------------------------------------- summary


def _step_below(metrics: pd.DataFrame, column: str, threshold: float) -> int | None:
    if column not in metrics:
        return None
    hit = metrics.loc[metrics[column] < threshold, "step"]
    return int(hit.iloc[0]) if len(hit) else None


def _value_cell(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return json.dumps(list(v))
    return v


def _foreign(manifest: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Whether the directory holds some other run than the sweep asked for."""
    have, want = manifest.get("config_hash"), entry.get("config_hash")
    return have is not None and want is not None and have != want


def _read_run(out: Path) -> tuple[dict[str, Any], RunConfig | None, pd.DataFrame]:
    """Manifest, config and metrics of a sweep's run directory, checked as every reader checks
    them (:class:`groklab.run.Run`). Before training: ``({}, None, empty)``.

    Raises:
        GroklabError: a file of the run is damaged (named, with the way to recover).
    """
    from groklab.run import load_run

    if not (out / CONFIG).exists():
        return {}, None, pd.DataFrame()
    run = load_run(out)
    return run.manifest, run.config, run.metrics


def _run_row(entry: dict[str, Any], sweep_dir: Path) -> dict[str, Any]:
    from groklab.run import first_step_at

    out = sweep_dir / entry["name"]
    seed_keys = set(entry.get("seed_keys", []))
    row: dict[str, Any] = {
        "run": entry["name"],
        "group": entry.get("group", entry["name"]),
        "source": entry.get("source", "grid"),
        "seed": entry.get("seed"),
    }
    for k, v in entry.get("overrides", []):
        if k not in seed_keys:
            row[k] = _value_cell(v)
    try:
        manifest, cfg, metrics = _read_run(out)
    except GroklabError as e:  # a damaged run is a failed row; the others go on
        row["status"] = "failed"
        row["error"] = str(e)
        return row
    status = manifest.get("status") or ("pending" if cfg is None else "running")
    row["status"] = status
    row["error"] = manifest.get("error")
    if _foreign(manifest, entry):
        row["status"] = "failed"
        row["error"] = f"{out} holds a different run (config hash differs)"
        return row
    if cfg is not None and len(cfg.data.operations) > 1:
        shares = cfg.data.shares or tuple(1 / len(cfg.data.operations) for _ in cfg.data.operations)
        for op, s in zip(cfg.data.operations, shares, strict=True):
            row[f"share:{op}"] = float(s)
    if metrics.empty:
        return row
    row["final_step"] = int(metrics["step"].iloc[-1])
    row["memorisation_step"] = first_step_at(metrics, "train/acc")
    row["grokking_step"] = first_step_at(metrics, "test/acc")
    for c in metrics.columns:
        if c.startswith("test/") and c.endswith("/acc") and c != "test/acc":
            row[f"grokking_step:{c[: -len('/acc')]}"] = first_step_at(metrics, c)
    # The paper's data-fraction numbers are the first epoch with test loss < 1.
    row["test_loss_below_1_step"] = _step_below(metrics, "test/loss", 1.0)
    last = metrics.iloc[-1]
    for c in metrics.columns:
        if c.endswith("/acc") or c in ("train/loss", "test/loss"):
            row[f"final:{c}"] = float(last[c])
    for name in entry.get("analyses", []):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            res = json.loads(_analysis_marker(out, name).read_text()).get("result")
            if isinstance(res, dict):
                for k, v in res.items():
                    if isinstance(v, bool | int | float | str) or v is None:
                        row[f"{name}:{k}"] = v
    return row


_STEP_PREFIXES = ("memorisation_step", "grokking_step", "test_loss_below_1_step")


def _step_columns(df: pd.DataFrame) -> list[str]:
    """Per-run step columns: ``grokking_step``, ``grokking_step:test/add``, ..."""
    return [
        c
        for c in df.columns
        if c in _STEP_PREFIXES
        or (c.split(":")[0] in _STEP_PREFIXES and c.count(":") == 1 and "/" in c)
    ]


def _normalise(df: pd.DataFrame, int_cols: Sequence[str]) -> pd.DataFrame:
    """Nullable ints for step/count columns; strings for object columns of mixed types (so
    the table always writes to parquet)."""
    for c in df.columns:
        if c in int_cols:
            df[c] = pd.to_numeric(df[c], errors="coerce").round().astype("Int64")
        elif df[c].dtype == object:
            kinds = {type(v) for v in df[c] if v is not None and not pd.isna(v)}
            if len(kinds) > 1 or (kinds and not kinds <= {str}):
                df[c] = df[c].map(lambda v: None if v is None or pd.isna(v) else str(v))
    return df


def summarize_runs(entries: list[dict[str, Any]], sweep_dir: Path) -> pd.DataFrame:
    """One row per run (in ``entries`` order): status, overrides, steps, final metrics."""
    rows = [_run_row(e, Path(sweep_dir)) for e in entries]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return _normalise(df, [*_step_columns(df), "final_step", "seed"])


def _censored_median(vals: list[float]) -> float:
    """Median with never-reached runs as +inf (NaN when at least half never reached)."""
    import numpy as np

    if not vals:
        return float("nan")
    med = float(np.median(np.array(vals, dtype=float)))
    return med if math.isfinite(med) else float("nan")


def aggregate_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per grid point (``group``): over the finished seeds, for every step column, how many
    reached it, mean and std over those that did, the censored median (never = +inf), and a
    lower bound on the mean counting never-reached runs at their last step; mean and std of
    the final accuracies."""
    if runs.empty:
        return pd.DataFrame()
    step_cols = _step_columns(runs)
    final_cols = [c for c in runs.columns if c.startswith("final:")]
    skip = {
        "run",
        "group",
        "source",
        "seed",
        "status",
        "error",
        "final_step",
        *step_cols,
        *final_cols,
    }
    skip |= {c for c in runs.columns if ":" in c and not c.startswith("share:")}
    keep_cols = [c for c in runs.columns if c not in skip]
    out = []
    for group, g in runs.groupby("group", sort=False):
        fin = g[g["status"].isin(DONE_STATUSES)]
        row: dict[str, Any] = {"group": group}
        for c in keep_cols:
            row[c] = g[c].iloc[0]
        row["n_runs"] = len(g)
        row["n"] = len(fin)
        row["n_failed"] = int((g["status"] == "failed").sum())
        for c in step_cols:
            reached = [float(v) for v in fin[c] if not pd.isna(v)]
            censored = [float(v) if not pd.isna(v) else math.inf for v in fin[c]]
            bound = [
                float(v) if not pd.isna(v) else float(fs)
                for v, fs in zip(fin[c], fin["final_step"], strict=True)
                if not (pd.isna(v) and pd.isna(fs))
            ]
            row[f"{c}:n_reached"] = len(reached)
            row[f"{c}:mean"] = sum(reached) / len(reached) if reached else float("nan")
            row[f"{c}:std"] = float(pd.Series(reached).std()) if len(reached) > 1 else float("nan")
            row[f"{c}:median"] = _censored_median(censored)
            row[f"{c}:mean_lb"] = sum(bound) / len(bound) if bound else float("nan")
        for c in final_cols:
            vals = pd.to_numeric(fin[c], errors="coerce").dropna()
            row[f"{c}:mean"] = float(vals.mean()) if len(vals) else float("nan")
            row[f"{c}:std"] = float(vals.std()) if len(vals) > 1 else float("nan")
        out.append(row)
    df = pd.DataFrame(out)
    counts = [c for c in df.columns if c.endswith(":n_reached")] + ["n_runs", "n", "n_failed"]
    return _normalise(df, counts)


def _read_sweep(sweep_dir: Path) -> dict[str, Any]:
    p = Path(sweep_dir) / SWEEP_FILE
    try:
        info = json.loads(p.read_text())
    except OSError:
        raise ConfigError(f"{sweep_dir}: not a sweep directory (no {SWEEP_FILE})") from None
    except ValueError:  # not UTF-8, not JSON
        info = None
    ok = isinstance(info, dict) and isinstance(info.get("runs"), list)
    ok = ok and all(
        isinstance(e, dict)
        and isinstance(e.get("name"), str)
        and isinstance(e.get("overrides", []), list)
        for e in info["runs"]
    )
    if not ok:
        raise RunDamagedError(
            f"{p}: damaged (not a sweep file); relaunching the sweep with its spec "
            f"(`groklab sweep SPEC --out {sweep_dir}`) rewrites it"
        )
    return info


def summarize_sweep(
    sweep_dir: str | Path, *, write: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-run and per-point summary tables of a sweep directory (written as parquet).

    Returns:
        ``(runs, points)``: see :func:`summarize_runs` and :func:`aggregate_summary`.
    """
    sweep_dir = Path(sweep_dir)
    info = _read_sweep(sweep_dir)
    entries = [
        {**e, "seed_keys": info.get("seed_keys", []), "analyses": info.get("analyses", [])}
        for e in info["runs"]
    ]
    runs = summarize_runs(entries, sweep_dir)
    points = aggregate_summary(runs)
    if write:
        import io

        for df, name in ((runs, SUMMARY_FILE), (points, POINTS_FILE)):
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            from groklab.store import atomic_write_bytes

            atomic_write_bytes(sweep_dir / name, buf.getvalue())
    return runs, points


def _fmt_step(mean: float, std: float, k: int, n: int, median: float) -> str:
    if n == 0:
        return "-"
    if k == 0:
        return f"0/{n} (never)"
    s = f"{k}/{n}  {mean:,.0f}"
    if not math.isnan(std):
        s += f" ± {std:,.0f}"
    if k < n:
        s += f"  (median {'> budget' if math.isnan(median) else f'{median:,.0f}'})"
    return s


def format_summary(
    points: pd.DataFrame, *, title: str = "sweep summary", extra: Sequence[str] = ()
) -> Any:
    """A rich Table of the per-point summary (what ``groklab sweep`` prints).

    Args:
        points: :func:`aggregate_summary` output.
        title: table title.
        extra: more step columns to show (e.g. ``test_loss_below_1_step``).
    """
    from rich.table import Table

    t = Table(
        title=title,
        title_justify="left",
        caption=(
            "memorised: train acc ≥ 99%, grokked: test acc ≥ 99%; k/n runs reached it, "
            "mean ± sd over those, (median with never = ∞)"
        ),
        caption_justify="left",
    )
    longest = max((len(str(g)) for g in points["group"]), default=5)
    t.add_column("point", min_width=min(longest, 48), overflow="fold")
    t.add_column("runs", justify="right")
    subset_cols = sorted(
        {
            c.rsplit(":", 1)[0]
            for c in points.columns
            if c.startswith("grokking_step:") and c.count(":") == 2
        }
    )
    cols = {"memorisation_step": "memorised", "grokking_step": "grokked"}
    cols.update({c: f"{c.split(':', 1)[1]} grokked" for c in subset_cols})
    labels = {"test_loss_below_1_step": "test loss < 1"}
    cols.update({c: labels.get(c, c) for c in extra})
    for label in cols.values():
        t.add_column(label)
    t.add_column("final test acc", justify="right")
    for _, r in points.iterrows():
        n = int(r["n"])
        cells = [str(r["group"]), f"{n}/{int(r['n_runs'])}"]
        for c in cols:
            if f"{c}:mean" not in r:
                cells.append("-")
                continue
            cells.append(
                _fmt_step(
                    r[f"{c}:mean"], r[f"{c}:std"], int(r[f"{c}:n_reached"]), n, r[f"{c}:median"]
                )
            )
        acc = r.get("final:test/acc:mean", float("nan"))
        cells.append("-" if pd.isna(acc) else f"{acc:.2%}")
        t.add_row(*cells)
    return t


def summary_columns(study: str | None) -> tuple[str, ...]:
    """Extra step columns worth printing for a study."""
    return ("test_loss_below_1_step",) if study == "data-fraction" else ()


# ----------------------------------------------------------------------------- sweeps


def _entry(r: SweepRun) -> dict[str, Any]:
    return {
        "name": r.name,
        "group": r.group,
        "source": r.source,
        "seed": r.seed,
        "overrides": [[k, v] for k, v in r.overrides],
        "config_hash": config_hash(r.config),
    }


def _write_sweep_file(sweep_dir: Path, spec: SweepSpec, runs: list[SweepRun]) -> None:
    info = {
        "name": spec.name,
        "description": spec.description,
        "study": spec.study,
        "seed_keys": list(spec.seed_keys),
        "analyses": list(spec.analyses),
        "spec": spec.raw,
        "base": config_to_dict(spec.base),
        "runs": [_entry(r) for r in runs],
    }
    atomic_write_text(sweep_dir / SWEEP_FILE, json.dumps(_jsonable(info), indent=1))


def _generalised(out: Path, b: BisectSpec) -> bool:
    from groklab.run import first_step_at

    p = out / METRICS
    if not p.exists():
        return False
    return first_step_at(pd.read_parquet(p), b.metric, b.threshold) is not None


def bisect_sweep(
    spec: SweepSpec,
    sweep_dir: Path,
    *,
    known: list[SweepRun],
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    progress: bool = True,
    console: Any = None,
    threads: int | None = None,
) -> tuple[dict[str, Any], list[SweepRun]]:
    """Search ``spec.bisect.key`` for the critical value between memorising and generalising.

    Each round trains ``max(1, workers // seeds)`` interior points (all seeds each) and keeps
    the bracket [largest value that did not generalise, smallest that did]; a point
    generalises when a majority of its seeds reach the threshold within the step budget.
    Runs are ordinary sweep runs (skipped when already done), so a killed search resumes.

    Returns:
        ``(result, runs)``: the result dict (also written to ``bisect.json``) and every run
        trained by the search.
    """
    b = spec.bisect
    assert b is not None
    seeds = list(spec.seeds) if spec.seeds is not None else [None]
    all_runs: list[SweepRun] = []
    history: list[dict[str, Any]] = []

    def value(x: float) -> float | int:
        return round(x) if b.integer else round(float(x), 6)

    def evaluate(values: list[float | int]) -> dict[float | int, bool]:
        runs = []
        for v in values:
            cfg = _set_native(spec.base, b.key, v)
            for s in seeds:
                c = cfg
                ovs: tuple[tuple[str, Any], ...] = ((b.key, v),)
                if s is not None:
                    for k in spec.seed_keys:
                        c = _set_native(c, k, s)
                    ovs += tuple((k, s) for k in spec.seed_keys)
                name = run_name([(b.key, v)], s)
                runs.append(
                    SweepRun(name, run_name([(b.key, v)]), ovs, s, replace(c, name=name), "bisect")
                )
        new = [r for r in runs if r.name not in {k.name for k in known + all_runs}]
        all_runs.extend(new)
        _write_sweep_file(sweep_dir, spec, _merge_runs(known, all_runs))
        run_many(
            [r.config for r in runs],
            [sweep_dir / r.name for r in runs],
            workers=workers,
            backend=backend,
            address=address,
            progress=progress,
            analyses=spec.analyses,
            analysis_options=spec.analysis_options,
            threads=threads,
            title=f"bisect {b.key} ∈ {values}",
        )
        verdict = {}
        for v in values:
            outs = [sweep_dir / r.name for r in runs if r.overrides[0][1] == v]
            ok = sum(_generalised(o, b) for o in outs)
            verdict[v] = 2 * ok > len(outs)
            history.append(
                {"value": v, "generalised": verdict[v], "n_generalised": ok, "n": len(outs)}
            )
            if console is not None:
                console.print(
                    f"bisect: {b.key}={v}: {ok}/{len(outs)} seeds reach {b.metric} ≥ {b.threshold}",
                    highlight=False,
                )
        return verdict

    lo, hi = value(b.lo), value(b.hi)
    ends = evaluate([lo, hi])
    result: dict[str, Any] = {"key": b.key, "metric": b.metric, "threshold": b.threshold}
    if ends[lo] or not ends[hi]:
        result.update(
            {
                "lo": None if ends[lo] else lo,
                "hi": hi if ends[hi] else None,
                "estimate": None,
                "note": (
                    f"{b.key}={lo} already generalises: the critical value is below it"
                    if ends[lo]
                    else f"{b.key}={hi} does not generalise within the budget: the critical "
                    "value is above it (or needs more steps)"
                ),
            }
        )
    else:
        per_round = (
            max(1, workers // max(len(seeds), 1)) if backend == "local" else max(1, workers or 1)
        )
        for _ in range(b.max_rounds):
            if hi - lo <= b.tol:
                break
            cand = sorted(
                {value(lo + (hi - lo) * (j + 1) / (per_round + 1)) for j in range(per_round)}
            )
            cand = [c for c in cand if lo < c < hi]
            if not cand:
                break
            verdict = evaluate(cand)
            ok = [c for c in cand if verdict[c]]
            if ok:
                hi = min(ok)
            fails = [c for c in cand if not verdict[c] and c < hi]
            if fails:
                lo = max(fails)
        result.update({"lo": lo, "hi": hi, "estimate": value((lo + hi) / 2)})
    result["history"] = history
    atomic_write_text(sweep_dir / BISECT_FILE, json.dumps(_jsonable(result), indent=1))
    return result, all_runs


def _merge_runs(a: list[SweepRun], b: list[SweepRun]) -> list[SweepRun]:
    seen, out = set(), []
    for r in [*a, *b]:
        if r.name not in seen:
            seen.add(r.name)
            out.append(r)
    return out


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns."""

    sweep_dir: Path
    results: list[dict[str, Any]]
    runs: pd.DataFrame
    points: pd.DataFrame
    bisect: dict[str, Any] | None = None
    figures: list[Path] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return sum(r["status"] not in DONE_STATUSES for r in self.results)


def run_sweep(
    spec: SweepSpec,
    sweep_dir: str | Path,
    *,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    progress: bool = True,
    only: Sequence[str] = (),
    figures: Callable[[Path], list[Path]] | None = None,
    console: Any = None,
    threads: int | None = None,
) -> SweepResult:
    """Run every point of ``spec`` into ``sweep_dir``, then the bisection (if any), the
    summary tables and the study figures (if matplotlib is installed).

    Args:
        spec: the parsed spec.
        sweep_dir: the sweep directory (one run directory per point inside).
        workers, backend, address, progress, threads: see :func:`run_many`.
        only: glob patterns on run names; when given, only matching runs are trained.
        figures: draws the study's figures at the end and returns their paths, given the
            sweep directory (:func:`groklab.studies.draw_study_figures`; passed in because the
            studies sit above the engine); None: no figures.
        console: a rich Console for messages (None = quiet).
    """
    from groklab.store import check_folder_target, storage_error
    from groklab.train.loop import check_device

    given = Path(sweep_dir)
    sweep_dir = check_folder_target(given, what="sweep")
    if (sweep_dir / SWEEP_FILE).exists():
        with contextlib.suppress(ConfigError, RunDamagedError):  # a damaged one is rewritten
            other = _read_sweep(sweep_dir).get("name")
            if other is not None and other != spec.name:
                raise RunExistsError(
                    f"{given}: holds the sweep {other!r}, not {spec.name!r}; nothing is "
                    "overwritten; choose another --out"
                )
    runs = expand(spec)
    if only:
        runs = [r for r in runs if any(fnmatch.fnmatchcase(r.name, pat) for pat in only)]
        if not runs:
            raise ConfigError(f"--only {' '.join(only)} matches no run of this sweep")
    for device in sorted({r.config.train.device for r in runs}):
        check_device(device)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(sweep_dir, e) from None
    prior: list[SweepRun] = []
    old = None
    with contextlib.suppress(GroklabError):  # no sweep file yet, or a damaged one (rewritten)
        old = _read_sweep(sweep_dir)
    if old is not None:
        _check_same_sweep(sweep_dir, old, expand(spec))
        with contextlib.suppress(GroklabError, KeyError, TypeError, ValueError):
            # keep earlier bisection runs listed (their directories are still there)
            prior_names = {e["name"] for e in old["runs"] if e.get("source") == "bisect"}
            prior = [_entry_to_run(e, spec) for e in old["runs"] if e["name"] in prior_names]
    # sweep.json lists every run of the spec, also when --only trains a few of them
    _write_sweep_file(sweep_dir, spec, _merge_runs(expand(spec), prior))
    results = run_many(
        [r.config for r in runs],
        [sweep_dir / r.name for r in runs],
        workers=workers,
        backend=backend,
        address=address,
        progress=progress,
        analyses=spec.analyses,
        analysis_options=spec.analysis_options,
        threads=threads,
        labels=[r.name for r in runs],
        title=spec.name,
    )
    bis = None
    if spec.bisect is not None and not only:
        bis, brs = bisect_sweep(
            spec,
            sweep_dir,
            known=runs,
            workers=workers,
            backend=backend,
            address=address,
            progress=progress,
            console=console,
            threads=threads,
        )
        _write_sweep_file(sweep_dir, spec, _merge_runs(runs, brs))
    runs_df, points = summarize_sweep(sweep_dir)
    figs: list[Path] = []
    if figures is not None and spec.study:
        try:
            figs = figures(sweep_dir)
        except ImportError as e:
            if console is not None:
                console.print(f"figures skipped: {e}", highlight=False, markup=False)
    return SweepResult(sweep_dir, results, runs_df, points, bis, figs)


def _check_same_sweep(sweep_dir: Path, old: dict[str, Any], runs: list[SweepRun]) -> None:
    """A sweep directory holds one sweep: a relaunch may add runs (more seeds, more points)
    but must not drop or change a run it already lists, else its runs would silently vanish
    from sweep.json, the summary and the report.

    Raises:
        ConfigError: naming the first run the new spec drops or changes.
    """
    new = {r.name: config_hash(r.config) for r in runs}
    for e in old["runs"]:
        if e.get("source") == "bisect":
            continue  # bisection runs are kept listed on their own
        name = e["name"]
        if name not in new:
            why = f"has no run {name!r}"
        elif e.get("config_hash") not in (None, new[name]):
            why = f"changes run {name!r} (config hash differs)"
        else:
            continue
        raise ConfigError(
            f"{sweep_dir}: holds sweep {old.get('name')!r}, and this spec {why}; a sweep "
            "directory holds one sweep (a relaunch may only add runs): use another --out"
        )


def _entry_to_run(e: dict[str, Any], spec: SweepSpec) -> SweepRun:
    ovs = tuple((k, v) for k, v in e["overrides"])
    cfg = spec.base
    for k, v in ovs:
        cfg = _set_native(cfg, k, v)
    return SweepRun(
        e["name"],
        e["group"],
        ovs,
        e.get("seed"),
        replace(cfg, name=e["name"]),
        e.get("source", "grid"),
    )


def _lock_held(run_dir: Path) -> bool | None:
    """Whether some process on this machine holds the run's writer lock (None: unknown).

    Read from /proc/locks, so asking never takes the lock (which could make a starting
    worker fail its own non-blocking lock).
    """
    from groklab.store import writer_alive

    return writer_alive(run_dir)


def sweep_status(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per run: name, status (pending, running, stopped, completed, diverged,
    failed), last logged step, steps, grokking step, error."""
    sweep_dir = Path(sweep_dir)
    info = _read_sweep(sweep_dir)
    rows = []
    for e in info["runs"]:
        out = sweep_dir / e["name"]
        m = read_manifest(out)
        status = m.get("status")
        if status is None:
            status = "pending" if not (out / CONFIG).exists() else "running"
        if (status == "running" and _lock_held(out) is False) or status == "interrupted":
            status = "stopped"
        if _foreign(m, e):
            status = "failed"
            m = {"error": f"{out} holds a different run (config hash differs)"}
        else:
            try:
                _read_run(out)
            except GroklabError as err:  # damaged: failed, with the file and the way out
                status = "failed"
                m = {"error": str(err)}
        step = None
        with contextlib.suppress(Exception):
            step = int(pd.read_parquet(out / METRICS, columns=["step"])["step"].iloc[-1])
        steps = None
        with contextlib.suppress(Exception):
            steps = load_config(out / CONFIG).train.steps
        rows.append(
            {
                "run": e["name"],
                "source": e.get("source", "grid"),
                "status": status,
                "step": step,
                "steps": steps,
                "grokking_step": m.get("grokking_step"),
                "error": m.get("error"),
            }
        )
    return pd.DataFrame(rows)
