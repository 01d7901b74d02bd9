"""Sweep specs: parsing and validating a TOML sweep spec, expanding it into runs.

A spec names a base config (a preset, a config file and/or a ``[base]`` table), ``set``
overrides, a ``[grid]`` (cartesian product, in order) and/or ``[[points]]`` (explicit
override sets), seeds and the analyses to run after each run, and optionally a ``[bisect]``
search. :func:`parse_spec` and :func:`load_spec` turn one into a frozen :class:`SweepSpec`;
:func:`expand` turns that into :class:`SweepRun` s, each named from its overrides by
:func:`run_name` (``optim.weight_decay=0.3__seed=1``). The shared file names and final
statuses of the engine live here too, as the lowest module of the package.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from groklab.config import RunConfig, apply_overrides, config_from_dict, config_to_dict, load_config
from groklab.errors import ConfigError
from groklab.sweep.analyses import resolve_analysis

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib


SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.parquet"
POINTS_FILE = "points.parquet"
BISECT_FILE = "bisect.json"
DONE_STATUSES = ("completed", "diverged")  # final outcomes: never re-run
SEED_KEYS = ("train.seed", "data.split_seed")
SCALES = ("linear", "log")  # how a bisection spaces its points
CRITERIA = ("reached", "final")  # when a run's metric counts as meeting the threshold
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
    "stack",
}


@dataclass(frozen=True)
class SweepPoint:
    """One explicit override set: ``overrides`` as (dotted key, value) pairs, optional label."""

    overrides: tuple[tuple[str, Any], ...]
    label: str | None = None


@dataclass(frozen=True)
class BisectSpec:
    """Search for the critical value of ``key`` between not generalising and generalising.

    A value generalises when a strict majority of its seeds meet the criterion
    (:func:`groklab.sweep.bisection.value_generalises`).

    Attributes:
        key: ``data.train_fraction`` or ``data.train_size`` (any numeric config key works).
        lo: a value expected NOT to reach ``threshold`` on ``metric`` within the step budget.
        hi: a value expected to reach it.
        tol: stop once ``hi - lo <= tol`` (``None``: no absolute tolerance).
        max_rounds: at most this many rounds after the two ends.
        metric: the generalisation metric column.
        threshold: the level it must reach.
        scale: ``linear`` (points spaced evenly) or ``log`` (spaced evenly in log; ``lo > 0``).
        criterion: ``reached`` (``metric >= threshold`` at some evaluated step) or ``final``
            (at the last step).
        rel_tol: stop once ``hi / lo <= 1 + rel_tol`` (``None``: no relative tolerance).
    """

    key: str
    lo: float
    hi: float
    tol: float | None
    max_rounds: int = 8
    metric: str = "test/acc"
    threshold: float = 0.99
    scale: str = "linear"
    criterion: str = "reached"
    rel_tol: float | None = None

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
    stack: bool = False
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
        allowed = {
            "key",
            "lo",
            "hi",
            "tol",
            "rel_tol",
            "max_rounds",
            "metric",
            "threshold",
            "scale",
            "criterion",
        }
        bad = sorted(set(b) - allowed)
        if bad:
            raise ConfigError(
                f"{where}: unknown key bisect.{bad[0]}; allowed: {', '.join(sorted(allowed))}"
            )
        missing = [k for k in ("key", "lo", "hi") if k not in b]
        if missing:
            raise ConfigError(f"{where}: bisect.{missing[0]} is required")
        for k, allowed_values in (("scale", SCALES), ("criterion", CRITERIA)):
            if k in b and b[k] not in allowed_values:
                raise ConfigError(
                    f"{where}: bisect.{k}={b[k]!r} is not allowed; allowed: "
                    f"{', '.join(allowed_values)}"
                )
        scale = b.get("scale", "linear")
        lo, hi = b["lo"], b["hi"]
        if not (isinstance(lo, int | float) and isinstance(hi, int | float) and lo < hi):
            raise ConfigError(f"{where}: bisect.lo={lo!r}, hi={hi!r}; need numbers with lo < hi")
        if scale == "log" and not lo > 0:
            raise ConfigError(
                f'{where}: bisect.lo={lo!r} is not allowed with scale = "log"; must be > 0'
            )
        key = str(b["key"])
        _in_spec("bisect.lo", base, key, lo)
        _in_spec("bisect.hi", base, key, hi)
        for k in ("tol", "rel_tol"):
            t = b.get(k)
            if t is not None and not (isinstance(t, int | float) and t > 0):
                raise ConfigError(f"{where}: bisect.{k}={t!r} is not allowed; must be > 0")
        tol, rel_tol = b.get("tol"), b.get("rel_tol")
        if tol is None and rel_tol is None:
            # linear: a sixteenth of the bracket (one example for a size); log: within 10%
            if scale == "log":
                rel_tol = 0.1
            else:
                tol = 1 if key == "data.train_size" else (hi - lo) / 16
        max_rounds = b.get("max_rounds", 8)
        if not (isinstance(max_rounds, int) and max_rounds >= 0):
            raise ConfigError(
                f"{where}: bisect.max_rounds={max_rounds!r} is not allowed; must be an integer >= 0"
            )
        bis = BisectSpec(
            key=key,
            lo=lo,
            hi=hi,
            tol=tol,
            max_rounds=max_rounds,
            metric=str(b.get("metric", "test/acc")),
            threshold=float(b.get("threshold", 0.99)),
            scale=scale,
            criterion=b.get("criterion", "reached"),
            rel_tol=rel_tol,
        )

    stack = d.get("stack", False)
    if not isinstance(stack, bool):
        raise ConfigError(f"{where}: stack={stack!r} is not allowed; must be true or false")

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
        stack=stack,
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
