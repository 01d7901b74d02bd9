"""Named, ready-to-run configs. ``groklab presets`` lists them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from groklab.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from groklab.errors import ConfigError

__all__ = ["PRESETS", "Preset", "get_preset"]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    build: Callable[[], RunConfig]


def _nanda2023() -> RunConfig:
    # Nanda et al. 2023: every default of the config classes is this run.
    return RunConfig(name="nanda2023")


def _sullivan2024() -> RunConfig:
    return RunConfig(
        name="sullivan2024",
        data=DataConfig(operations=("add", "mul"), shares=(0.65, 0.35), train_size=16_900),
        train=TrainConfig(steps=10_000),
    )


def _mlp_add() -> RunConfig:
    return RunConfig(
        name="mlp-add",
        data=DataConfig(train_fraction=0.4),
        model=ModelConfig(arch="mlp", n_layers=2, d_mlp=256),
        optim=OptimConfig(lr=3e-3, weight_decay=1.0),
        train=TrainConfig(steps=20_000),
    )


def _smoke() -> RunConfig:
    return RunConfig(
        name="smoke",
        data=DataConfig(p=53, train_fraction=0.5),
        model=ModelConfig(d_model=64, n_heads=4, d_head=16, d_mlp=256),
        optim=OptimConfig(lr=3e-3, weight_decay=1.0),
        train=TrainConfig(steps=3_000, eval_every=50, checkpoint_every=250),
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "nanda2023",
            "Nanda et al. 2023: 1-layer transformer, (a+b) mod 113, 30% train, full batch, "
            "AdamW 1e-3 wd 1, 40k steps",
            _nanda2023,
        ),
        Preset(
            "sullivan2024",
            "Sullivan 2024: add and mul mod 113 mixed 65/35 in 16,900 training problems, "
            "op token, per-op test sets",
            _sullivan2024,
        ),
        Preset(
            "mlp-add",
            "2-layer MLP (width 256, one-hot sum input) on (a+b) mod 113",
            _mlp_add,
        ),
        Preset(
            "smoke",
            "small transformer on (a+b) mod 53 that groks on a laptop CPU in about a minute",
            _smoke,
        ),
    )
}


def get_preset(name: str) -> RunConfig:
    """The config of preset ``name``."""
    try:
        return PRESETS[name].build()
    except KeyError:
        raise ConfigError(
            f"preset {name!r} is unknown; allowed: {', '.join(PRESETS)}"
        ) from None
