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
    # Nanda et al. 2023's setup: every default of the config classes. Not the paper's network:
    # the split (groklab's shuffle unless data.split="published") and the initial draws
    # (groklab's generator) differ, so key frequencies and phase timings are this run's own.
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


def _zoo(name: str) -> RunConfig:
    # The phase-change task zoo (Nanda et al. 2023 appendix; Michaud et al. 2023), sized for a
    # 2-core CPU where the paper's size is out of reach; the preset descriptions say what is
    # reduced.
    if name.startswith("digit-add"):
        # Paper: d_model 512, d_mlp 2048, lr 1e-4, wd 0.1. Reduced to d_model 128, d_mlp 512,
        # lr 1e-3.
        model = ModelConfig(d_model=128, n_heads=4, d_head=32, d_mlp=512)
        if name == "digit-add":  # infinite data, fresh batches of 64
            return RunConfig(
                name=name,
                data=DataConfig(task="digit-add", n_digits=5, test_size=1000),
                model=model,
                optim=OptimConfig(lr=1e-3, weight_decay=0.1),
                train=TrainConfig(steps=2_000, batch_size=64, eval_every=25, checkpoint_every=250),
            )
        # 700 fixed problems as in the paper; weight decay 1 (paper 0.1 with lr 1e-4) so the
        # reduced model's slow phase fits a CPU budget.
        return RunConfig(
            name=name,
            data=DataConfig(task="digit-add", n_digits=5, train_size=700, test_size=1000),
            model=model,
            optim=OptimConfig(lr=1e-3, weight_decay=1.0),
            train=TrainConfig(steps=8_000, eval_every=50, checkpoint_every=1000),
        )
    if name.startswith("repeat-subseq"):
        model = ModelConfig(n_layers=2, d_model=48, n_heads=4, d_head=12, attn_only=True)
        if name == "repeat-subseq":
            # Infinite data. Departures from the paper (AdamW lr 1e-3, wd 1): lr 1e-2 and wd 0.1.
            # Only the 15 repeated tokens of each sequence are scored and the layer-0
            # previous-token head learns only through K-composition, so the plateau is long at
            # the paper's lr: measured here (batch 64) lr 1e-3 was still on the plateau at step
            # 3,000 and lr 3e-3 changed phase at ~7,070-8,800 (seed 0); lr 1e-2 changes phase
            # at ~1,900-2,500 (seeds 0 and 1, loss 4.59 -> 0.56-0.58). 4,000 steps: 7-8 min of
            # one CPU thread on a shared 2-core machine.
            return RunConfig(
                name=name,
                data=DataConfig(task="repeat-subseq", test_size=500),
                model=model,
                optim=OptimConfig(lr=1e-2, weight_decay=0.1),
                train=TrainConfig(steps=4_000, batch_size=64, eval_every=100, checkpoint_every=250),
            )
        return RunConfig(  # 512 fixed sequences + weight decay 1: grokking
            name=name,
            data=DataConfig(task="repeat-subseq", train_size=512, test_size=500),
            model=model,
            optim=OptimConfig(lr=1e-3, weight_decay=1.0),
            train=TrainConfig(steps=10_000, eval_every=50, checkpoint_every=1000),
        )
    if name == "max-element":
        return RunConfig(
            name=name,
            data=DataConfig(task="max-element", test_size=2000),
            model=ModelConfig(n_layers=1, d_model=64, n_heads=4, d_head=16, attn_only=True),
            optim=OptimConfig(lr=1e-3, weight_decay=0.1),
            train=TrainConfig(steps=3_000, batch_size=64, eval_every=25, checkpoint_every=250),
        )
    # sparse-parity. Paper: 100 subtasks, n 50, k 3, alpha 1.5, batch 10,000. Reduced to 20
    # subtasks of n 20 bits and batch 1,000 so every subtask's phase change fits on a CPU.
    return RunConfig(
        name=name,
        data=DataConfig(
            task="sparse-parity",
            n_tasks=20,
            n_bits=20,
            parity_k=3,
            zipf_alpha=1.5,
            test_size=4000,
        ),
        model=ModelConfig(arch="mlp", n_layers=2, d_mlp=100),
        optim=OptimConfig(lr=1e-3, weight_decay=0.01),
        train=TrainConfig(steps=20_000, batch_size=1000, eval_every=25, checkpoint_every=1000),
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "nanda2023",
            "Nanda et al. 2023's setup: 1-layer transformer, (a+b) mod 113, 30% train, full "
            "batch, AdamW 1e-3 wd 1, 40k steps; groklab's split and init draws "
            "(--set data.split=published for the paper's split)",
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
        Preset(
            "digit-add",
            "5-digit addition, infinite data (fresh batches of 64): one phase change per digit. "
            "1-layer transformer reduced to d_model 128 / d_mlp 512 (paper 512 / 2048), lr 1e-3",
            lambda: _zoo("digit-add"),
        ),
        Preset(
            "digit-add-grok",
            "5-digit addition on 700 fixed problems (the paper's grokking size), full batch, "
            "AdamW lr 1e-3 wd 1 (paper: lr 1e-4, wd 0.1, d_model 512); same reduced model as "
            "digit-add",
            lambda: _zoo("digit-add-grok"),
        ),
        Preset(
            "repeat-subseq",
            "repeated random subsequences (vocab 128, length 85, repeat 16), infinite data: a "
            "2-layer attention-only transformer (d_model 48, 4 heads of 12) forms induction heads "
            "in a phase change at step ~2,000-2,500; batch 64, AdamW lr 1e-2, wd 0.1 (paper lr "
            "1e-3, wd 1), 4,000 steps",
            lambda: _zoo("repeat-subseq"),
        ),
        Preset(
            "repeat-subseq-grok",
            "repeat-subseq on 512 fixed sequences with weight decay 1 (the paper's grokking "
            "variant)",
            lambda: _zoo("repeat-subseq-grok"),
        ),
        Preset(
            "max-element",
            "START x1..x10 END with one entry >= 10: 1-layer attention-only transformer learns "
            "10 skip trigrams (per-answer loss test/max_10..19), infinite data",
            lambda: _zoo("max-element"),
        ),
        Preset(
            "sparse-parity",
            "multitask sparse parity, Zipfian subtasks (alpha 1.5), 1-hidden-layer MLP width "
            "100; reduced to 20 subtasks, n 20, k 3, batch 1,000 (paper 100, 50, 3, 10,000)",
            lambda: _zoo("sparse-parity"),
        ),
    )
}


def get_preset(name: str) -> RunConfig:
    """The config of preset ``name``."""
    try:
        return PRESETS[name].build()
    except KeyError:
        raise ConfigError(f"preset {name!r} is unknown; allowed: {', '.join(PRESETS)}") from None
