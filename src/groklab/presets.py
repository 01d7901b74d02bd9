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


def _omnigrok(task: str) -> RunConfig:
    # Omnigrok (Liu et al. 2023): 3 linear layers of width 200, ReLU, every initial weight times
    # alpha = 8, MSE on one-hot targets, AdamW (torch defaults: betas 0.9/0.999, no warmup),
    # batch 200.
    model = ModelConfig(arch="mlp", n_layers=3, d_mlp=200, init_scale=8.0, mlp_input="dense")
    if task == "mnist":  # as published: 1,000 training images, lr 1e-3, wd 0.01, 1e5 steps
        return RunConfig(
            name="omnigrok-mnist",
            data=DataConfig(task="mnist", train_size=1_000, test_size=10_000),
            model=model,
            optim=OptimConfig(lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), warmup_steps=0),
            train=TrainConfig(
                steps=100_000,
                batch_size=200,
                loss="mse",
                eval_every=250,
                checkpoint_every=5_000,
                log_checkpoints=10,
            ),
        )
    # The 8x8 digits, sized for a laptop CPU: weight decay 0.1 and lr 3e-3 shrink the norm
    # ~30x faster than wd 0.01 / lr 1e-3, so memorisation (~800 steps) and generalisation
    # (~3,700 steps) both fit in 5,000 steps.
    return RunConfig(
        name="omnigrok-digits",
        data=DataConfig(task="digits", train_size=200),
        model=model,
        optim=OptimConfig(lr=3e-3, weight_decay=0.1, betas=(0.9, 0.999), warmup_steps=0),
        train=TrainConfig(
            steps=5_000, batch_size=200, loss="mse", eval_every=50, checkpoint_every=500
        ),
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
            "small transformer on (a+b) mod 53, 50% train: memorises by step ~100, groks at "
            "~1,050 (about 20 s of one CPU core); 3,000 steps",
            _smoke,
        ),
        Preset(
            "omnigrok-mnist",
            "Omnigrok (Liu et al. 2023): MLP 3x200 with init x8 on 1,000 MNIST images, MSE, "
            "AdamW 1e-3 wd 0.01, batch 200, 1e5 steps (needs data.data_dir with the IDX files)",
            lambda: _omnigrok("mnist"),
        ),
        Preset(
            "omnigrok-digits",
            "Omnigrok on the 8x8 digits (no download): MLP 3x200 with init x8, 200 training "
            "images, MSE, AdamW 3e-3 wd 0.1; memorises, then generalises, within 5,000 steps",
            lambda: _omnigrok("digits"),
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
