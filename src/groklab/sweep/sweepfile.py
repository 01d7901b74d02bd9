"""The sweep file: ``sweep.json``, the record of which runs a sweep directory holds.

Reading it (a damaged file is a :class:`~groklab.errors.RunDamagedError` naming the way out),
writing it from a spec and its runs, merging run lists, rebuilding runs from its entries, and
:func:`_check_same_sweep`: a sweep directory holds one sweep, so a relaunch may add runs but
not change what an existing run means.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from groklab.config import config_hash, config_to_dict
from groklab.errors import ConfigError, RunDamagedError
from groklab.store import atomic_write_text
from groklab.sweep.analyses import _jsonable
from groklab.sweep.spec import SWEEP_FILE, SweepRun, SweepSpec, _set_native


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


def _merge_runs(a: list[SweepRun], b: list[SweepRun]) -> list[SweepRun]:
    seen, out = set(), []
    for r in [*a, *b]:
        if r.name not in seen:
            seen.add(r.name)
            out.append(r)
    return out


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
