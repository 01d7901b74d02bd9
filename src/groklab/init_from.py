"""Initialising a run from another run's checkpoint (``train.init_from = DIR@STEP``).

The run-directory layer: the trainer loads the weights of a checkpoint to start from
(:func:`init_weights`), and ``groklab train --from-checkpoint`` derives the config that
continues a run's checkpoint (:func:`continue_config`), used by ungrokking experiments
(:mod:`groklab.dcrit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from groklab.config import RunConfig, apply_overrides
from groklab.errors import CheckpointError, ConfigError

__all__ = ["continue_config", "init_weights", "parse_checkpoint_ref"]


def parse_checkpoint_ref(ref: str | Path) -> tuple[Path, int]:
    """``"runs/x@4000"`` → ``(Path("runs/x"), 4000)``.

    Raises:
        ConfigError: the reference is not ``DIR@STEP``.
    """
    d, _, at = str(ref).rpartition("@")
    if not d or not at.isdigit():
        raise ConfigError(
            f"checkpoint {str(ref)!r} is not of the form DIR@STEP (e.g. runs/x@40000)"
        )
    return Path(d), int(at)


def init_weights(ref: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of checkpoint ``DIR@STEP``, checked to fit ``model``.

    Raises:
        CheckpointError: no such run or checkpoint, or its tensors do not fit the model.
    """
    from groklab.run import load_run

    run_dir, step = parse_checkpoint_ref(ref)
    tensors = load_run(run_dir).weights_at(step)
    own = model.state_dict()
    bad = sorted(set(own) ^ set(tensors)) or [
        k for k in own if tuple(own[k].shape) != tuple(tensors[k].shape)
    ]
    if bad:
        raise CheckpointError(
            f"{ref}: checkpoint does not fit this run's model (first mismatch: {bad[0]}); "
            "the model config must be the parent's"
        )
    return tensors


_DATA_KEYS_ALLOWED = ("data.train_subset", "data.subset_seed")


def continue_config(
    ref: str | Path, overrides: Sequence[str] = (), *, name: str | None = None
) -> RunConfig:
    """The config that continues the checkpoint ``DIR@STEP`` with ``overrides``.

    The parent's config is kept, ``train.init_from`` is set to ``ref``, and
    ``data.train_size=N`` becomes ``data.train_subset=N``: train on a random ``N``-row subset of
    the parent's own training split (test split unchanged; drawn with ``data.subset_seed``).
    ``model.*`` and other ``data.*`` keys cannot change (the weights and the data must stay the
    parent's). The name defaults to ``<parent>-from<STEP>[-n<N>]``.

    Raises:
        ConfigError, CheckpointError, RunNotFoundError: bad reference or override.
    """
    from groklab.run import load_run

    run_dir, step = parse_checkpoint_ref(ref)
    parent = load_run(run_dir)
    parent.weights_at(step)  # fail now, with the available steps, if the checkpoint is missing
    if parent.has_imported_split:
        raise ConfigError(
            f"{run_dir}: trained on an imported split (imported_split.safetensors) that a new "
            "run cannot train on; continue only from runs whose config gives their split"
        )
    translated = []
    for ov in overrides:
        key, sep, value = ov.partition("=")
        key = key.strip()
        if key.startswith("model."):
            raise ConfigError(
                f"override {ov!r}: the model must stay the parent's when continuing from a "
                "checkpoint; model.* cannot change"
            )
        if key == "data.train_size":
            key = "data.train_subset"
        elif key.startswith("data.") and key not in _DATA_KEYS_ALLOWED:
            raise ConfigError(
                f"override {ov!r}: only data.train_size (a subset of the parent's training "
                "split), data.train_subset and data.subset_seed may change when continuing "
                "from a checkpoint"
            )
        translated.append(f"{key}{sep}{value}")
    cfg = parent.config
    cfg = replace(cfg, train=replace(cfg.train, init_from=f"{run_dir}@{step}"))
    cfg = apply_overrides(cfg, translated)
    n_parent = int(parent.manifest.get("n_train") or 0)
    size = cfg.data.train_subset
    if size is not None and n_parent and size > n_parent:
        raise ConfigError(
            f"data.train_size={size} is larger than the parent's training set ({n_parent} rows "
            f"in {run_dir})"
        )
    if not any(o.split("=", 1)[0].strip() == "name" for o in overrides):
        auto = f"{parent.config.name}-from{step}" + (f"-n{size}" if size is not None else "")
        cfg = replace(cfg, name=name or auto)
    return cfg
