"""Many seeds at once: K runs of one shape trained as one batched computation.

Seeds are the cheapest axis of a grokking study and the most often repeated. Instead of K
runs one after another, :func:`train_many` holds every parameter of the K models as one
tensor with a leading model axis and runs them together (one GEMM per layer instead of K,
one fused optimiser update, one evaluation), while each model still gets its own run
directory — ``config.toml`` with its own seed, ``metrics.parquet``, checkpoints, full training
state, manifest — exactly as if it had been trained alone, so ``groklab show``,
:func:`groklab.load_run` and ``groklab train --resume`` work on each one.

It is the trainer's own loop (``groklab.train.loop``): a single run is a stack of one, so a
model trained in a stack equals the model trained alone to float tolerance. A model that stops
early (``train.stop_test_acc``, divergence) leaves the stack at that step, and the others go on
as a smaller stack, so early stopping saves as much compute as it does for runs trained alone.

The configs may differ only in ``name``, ``train.seed`` (initialisation and minibatch
order), ``data.split_seed``, ``data.subset_seed`` and ``train.init_from``: everything else
shapes the computation or its schedule and must be shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from groklab.config import RunConfig, config_to_dict
from groklab.errors import ConfigError
from groklab.run import Run

__all__ = ["VARYING_FIELDS", "check_stackable", "seed_configs", "train_many"]

VARYING_FIELDS = (
    "name",
    "train.seed",
    "data.split_seed",
    "data.subset_seed",
    "train.init_from",
)


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_stackable(configs: Sequence[RunConfig]) -> None:
    """Raise :class:`ConfigError` unless the configs differ only in :data:`VARYING_FIELDS`."""
    if not configs:
        raise ConfigError("train_many needs at least one config")
    first = _flat(config_to_dict(configs[0]))
    for cfg in configs[1:]:
        other = _flat(config_to_dict(cfg))
        for key in sorted(set(first) | set(other)):
            if key not in VARYING_FIELDS and first.get(key) != other.get(key):
                raise ConfigError(
                    f"{key} differs between stacked runs ({first.get(key)!r} and "
                    f"{other.get(key)!r}); runs trained together may differ only in "
                    f"{', '.join(VARYING_FIELDS)}"
                )


def seed_configs(
    config: RunConfig, seeds: Sequence[int], *, split_seeds: Sequence[int] | None = None
) -> list[RunConfig]:
    """One config per seed: ``train.seed`` (and ``data.split_seed`` when given) set, named
    ``<name>-seed<N>``."""
    if split_seeds is not None and len(split_seeds) != len(seeds):
        raise ConfigError(
            f"--split-seeds gives {len(split_seeds)} seeds for {len(seeds)} --seeds; "
            "give one split seed per seed"
        )
    out = []
    for i, s in enumerate(seeds):
        cfg = replace(config, name=f"{config.name}-seed{s}", train=replace(config.train, seed=s))
        if split_seeds is not None:
            cfg = replace(cfg, data=replace(cfg.data, split_seed=split_seeds[i]))
        out.append(cfg)
    return out


def train_many(
    configs: Sequence[RunConfig],
    outs: Sequence[str | Path],
    *,
    resume: bool = False,
    progress: bool = False,
    init_states: Sequence[dict[str, torch.Tensor] | None] | None = None,
    on_save: Callable[[Path], None] | None = None,
) -> list[Run]:
    """Train the runs ``configs`` into ``outs`` as one batched computation.

    Args:
        configs: K configs differing only in :data:`VARYING_FIELDS`.
        outs: K run directories (new, or the runs to continue with ``resume``).
        resume: continue the K runs from their saved states (all at the same step).
        progress: show one live progress bar for the stack.
        init_states: optional initial weights per run.
        on_save: called with a run's directory after each of its full saves (see
            :func:`~groklab.train.loop.run_training`).

    Returns:
        The K finished runs, in order.

    Raises:
        ConfigError: the configs differ in a field that must be shared, or the counts differ.
    """
    from groklab.train.loop import train_stack

    configs = list(configs)
    if len(configs) != len(outs):
        raise ConfigError(f"train_many: {len(configs)} configs for {len(outs)} run directories")
    if len({Path(o).resolve() for o in outs}) != len(outs):
        raise ConfigError("train_many: two runs share one run directory")
    if resume:
        from groklab.config import load_config

        configs = [load_config(Path(o) / "config.toml") for o in outs]
    check_stackable(configs)
    paths = train_stack(
        configs, outs, resume=resume, progress=progress, init_states=init_states, on_save=on_save
    )
    return [Run(p) for p in paths]
