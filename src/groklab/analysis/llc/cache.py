"""The LLC over a run's checkpoints, cached under the run's ``analysis/llc/`` folder.

:func:`llc_over_checkpoints` estimates the LLC at the selected checkpoints
(:func:`groklab.run.select_steps`) with fixed settings and keeps the results in parquet and
JSON files named by the subset, the settings' key (and an imported split's hash): one row per step,
every chain's loss trace, and the settings. Steps already cached are reused unless a step
lacks the γ check the settings ask for; new steps are merged into the cache under a file
lock, so several processes may fill one cache. :func:`read_cache` reads it back.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from groklab.analysis.llc.result import LLCResult
from groklab.analysis.llc.runs import estimate_llc_at, resolve_subset
from groklab.analysis.llc.settings import LLCSettings
from groklab.run import select_steps

if TYPE_CHECKING:
    from groklab.run import Run

LLC_DIR = "analysis/llc"
"""Where a run's LLC results are cached, relative to the run directory."""
CALIBRATION_FILE = "calibration.json"
"""The latest calibration's recommendation (inside :data:`LLC_DIR`)."""


def _cache_paths(run: Run, key: str) -> tuple[Path, Path, Path]:
    d = run.path / LLC_DIR
    return d / f"{key}.json", d / f"{key}.parquet", d / f"{key}-traces.parquet"


def _cache_key(run: Run, subset_name: str, settings: LLCSettings) -> str:
    slug = subset_name.replace("/", "-")
    if run.has_imported_split:  # sampled on the imported rows: never a cache of another split
        slug += f"-split{run.task.split_hash[:8]}"
    return f"llc-{slug}-{settings.key()}"


def _write_parquet(path: Path, df: pd.DataFrame) -> None:
    from groklab.store import atomic_write_bytes

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def read_cache(
    run: Run, settings: LLCSettings, *, subset: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cached rows (one per step) and traces (long format) for these settings and subset."""
    name, _, _ = resolve_subset(run, subset)
    _, p_rows, p_traces = _cache_paths(run, _cache_key(run, name, settings))
    rows = pd.read_parquet(p_rows) if p_rows.exists() else pd.DataFrame({"step": []})
    traces = (
        pd.read_parquet(p_traces)
        if p_traces.exists()
        else pd.DataFrame({"step": [], "chain": [], "t": [], "loss": []})
    )
    return rows, traces


def _row(step: int, res: LLCResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "step": step,
        "llc": res.llc,
        "llc_std": res.llc_std,
        "init_loss": res.init_loss,
        "nbeta": res.nbeta,
        "convergence_ratio": res.convergence_ratio,
        "frac_below_init": res.frac_below_init,
        "n_diverged": len(res.diverged),
        "seconds": res.seconds,
        "warnings": " | ".join(res.warnings),
    }
    gc = res.gamma_check
    row.update(
        {
            "gamma_check": float("nan") if gc is None else gc.factor,
            "gamma_check_chains": 0 if gc is None else gc.chains,
            "llc_gamma_lo": float("nan") if gc is None else gc.llc_lo,
            "llc_gamma_lo_std": float("nan") if gc is None else gc.llc_lo_std,
            "llc_gamma_hi": float("nan") if gc is None else gc.llc_hi,
            "llc_gamma_hi_std": float("nan") if gc is None else gc.llc_hi_std,
            "gamma_elasticity": float("nan") if gc is None else gc.elasticity,
            "gamma_elasticity_se": float("nan") if gc is None else gc.elasticity_se,
            # a float (1/0, NaN = not checked) so that rows cached before the check concat
            "gamma_sensitive": float("nan") if gc is None else float(gc.sensitive),
        }
    )
    for c, v in enumerate(res.llc_per_chain):
        row[f"llc_chain_{c}"] = float(v)
    return row


def _has_check(row: Mapping[str, Any], settings: LLCSettings) -> bool:
    """Whether a cached row carries the γ check these settings ask for (rows cached before
    the check existed, or with another factor or chain count, do not)."""
    if not settings.checks_gamma:
        return True
    factor, chains = row.get("gamma_check"), row.get("gamma_check_chains")
    try:
        return float(factor) == settings.gamma_check and int(chains) == settings.check_chains
    except (TypeError, ValueError):
        return False


def _trace_frame(step: int, trace: np.ndarray) -> pd.DataFrame:
    c, t = trace.shape
    return pd.DataFrame(
        {
            "step": np.full(c * t, step, dtype=np.int64),
            "chain": np.repeat(np.arange(c, dtype=np.int32), t),
            "t": np.tile(np.arange(t, dtype=np.int32), c),
            "loss": trace.reshape(-1).astype(np.float64),
        }
    )


def llc_over_checkpoints(
    run: Run,
    settings: LLCSettings | None = None,
    *,
    every: int | None = None,
    steps: Iterable[int] | None = None,
    subset: str | None = None,
    device: str | torch.device = "cpu",
    recompute: bool = False,
    on_step: Callable[[int, LLCResult | None], None] | None = None,
) -> pd.DataFrame:
    """The LLC at each selected checkpoint, with fixed settings, cached in the run directory.

    Results are stored in ``<run>/analysis/llc/llc-<subset>-<settings hash>.parquet`` (one
    row per step: estimate, spread, diagnostics, per-chain estimates), ``...-traces.parquet``
    (every chain's loss at every SGLD step) and ``....json`` (the settings, subset, ``n``,
    ``nbeta``). Steps already in the cache are not recomputed (unless ``recompute``), except
    a step cached without the γ check that ``settings`` ask for (its estimate comes out the
    same, the check is added); the cache is rewritten after every new step, so an
    interrupted call keeps its progress.

    Args:
        run: the run.
        settings: fixed sampler settings for every checkpoint.
        every: analyse checkpoints at multiples of this many steps (plus the first and last).
        steps: explicit checkpoint steps (overrides ``every``).
        subset: restrict the loss to one training subset (see :func:`resolve_subset`).
        device: where to sample.
        recompute: ignore the cache.
        on_step: called with ``(step, result)`` after each new estimate, and with
            ``(step, None)`` for a step taken from the cache.

    Returns:
        One row per selected step, sorted by step.
    """
    s = settings or LLCSettings()
    name, rows_idx, _ = resolve_subset(run, subset)
    key = _cache_key(run, name, s)
    p_json, p_rows, p_traces = _cache_paths(run, key)
    wanted = select_steps(run.checkpoint_steps, every=every, steps=steps)
    cached_rows, _ = (
        (pd.DataFrame({"step": []}), None) if recompute else read_cache(run, s, subset=subset)
    )
    done = {int(r["step"]) for r in cached_rows.to_dict("records") if _has_check(r, s)}
    from groklab._version import __version__

    meta: dict[str, Any] = {
        "kind": "llc-over-checkpoints",
        "groklab_version": __version__,
        "run_config_hash": run.manifest.get("config_hash"),
        "subset": name,
        "subset_rows": "training rows" if rows_idx is None else f"train/{name} training rows",
        "settings": s.to_dict(),
        "key": key,
    }
    for step in wanted:
        if step in done:
            if on_step is not None:
                on_step(step, None)
            continue
        res = estimate_llc_at(run, step, s, subset=subset, device=device)
        meta.update({"n": res.n, "nbeta": res.nbeta, "n_params": res.n_params})
        _merge_into_cache(p_json, p_rows, p_traces, step, res, meta)
        if on_step is not None:
            on_step(step, res)
    rows, _ = read_cache(run, s, subset=subset)
    if not len(rows):
        return pd.DataFrame({"step": []})
    rows = rows[rows["step"].isin(wanted)]
    return rows.sort_values("step").reset_index(drop=True)


def _merge_into_cache(
    p_json: Path, p_rows: Path, p_traces: Path, step: int, res: LLCResult, meta: dict[str, Any]
) -> None:
    """Add one step's result to the cache files, under a lock, merged with what is on disk
    now — so several processes may fill one cache (e.g. disjoint ``--steps``) at once."""
    import fcntl

    from groklab.store import atomic_write_text

    p_rows.parent.mkdir(parents=True, exist_ok=True)
    with open(p_rows.parent / f".{p_rows.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = pd.read_parquet(p_rows) if p_rows.exists() else pd.DataFrame({"step": []})
        traces = pd.read_parquet(p_traces) if p_traces.exists() else None
        new_row = pd.DataFrame([_row(step, res)])
        rows = new_row if not len(rows) else pd.concat([rows[rows["step"] != step], new_row])
        new_tr = _trace_frame(step, res.trace)
        traces = new_tr if traces is None else pd.concat([traces[traces["step"] != step], new_tr])
        _write_parquet(p_rows, rows.sort_values("step").reset_index(drop=True))
        _write_parquet(p_traces, traces.reset_index(drop=True))
        atomic_write_text(p_json, json.dumps(meta, indent=2, sort_keys=True))
