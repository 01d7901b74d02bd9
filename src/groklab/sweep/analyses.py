"""The analyses registry: what a sweep can run on each finished run, and caching its results.

:data:`ANALYSES` maps a name to a ``module:function`` string (imported only when used) or a
callable; each takes a run directory and the spec's ``[analysis_options.<name>]`` keywords and
returns a dict whose scalar entries go into the summary. :func:`resolve_analysis` turns a name
(or ``module:function``) into its callable and checks up front what it needs, so a missing part
is a one-line error before any run starts. Results are stored JSON-safe in
``analysis/sweep-<name>.json`` next to the run.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from groklab.errors import ConfigError


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
