"""Frozen run configuration: dataclasses, validation, TOML round trip, dotted overrides.

One :class:`RunConfig` flows through a run. It is never mutated: derive new configs with
:func:`dataclasses.replace` or :func:`apply_overrides`. Every ``__post_init__`` validates its
own fields and raises :class:`~groklab.errors.ConfigError` with a one-line message that names
the field and the allowed values.

One concern, though past ~600 lines: the config sections are one schema (each section's fields,
defaults, bounds and docs sit together), and the TOML round trip and overrides walk that schema;
splitting the sections apart would scatter the one place a field is defined.
"""

from __future__ import annotations

import contextlib
import math
import sys
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import tomli_w

from groklab.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_seeds",
    "save_config",
]

OPERATIONS = ("add", "sub", "mul", "div", "quad")
TASKS = ("modular", "digits", "mnist", "digit-add", "repeat-subseq", "max-element", "sparse-parity")
# Generated sequence tasks (groklab.tasks.*): infinite data unless data.train_size is set.
ZOO_TASKS = ("digit-add", "repeat-subseq", "max-element", "sparse-parity")
IMAGE_TASKS = ("digits", "mnist")  # float pixel inputs, for the dense-input MLP
SPLITS = ("groklab", "published")  # data.split: groklab's torch shuffle or the published one
# Bounds that keep a typo from allocating the machine away: p² problems per operation are
# built in memory, and seeds feed torch generators (signed 64-bit).
MAX_P = 2048
MAX_STEPS = 1_000_000_000
MAX_SEED = 2**63 - 1
MAX_SEEDS = 4096  # seeds of one --seeds list
MAX_ROWS = 2**24  # train_size, test_size, train_subset: = 2048² problems × 4 operations
# Generated tasks: the largest value of each size field.
_ZOO_MAX = {"seq_len": 4096, "n_bits": 4096, "vocab_size": 2**20, "n_tasks": 2**16}


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % k for k in range(2, math.isqrt(n) + 1))


def _choice(section: str, name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{section}.{name}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}"
        )


def _check(cond: bool, section: str, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{section}.{name}={value!r} is not allowed; must be {allowed}")


def parse_seeds(text: str, *, flag: str = "--seeds") -> list[int]:
    """A seed list, as every command's ``--seeds`` (and ``train --split-seeds``) takes it.

    Integers and inclusive ranges, comma-separated: ``"0,1,2,3"``, ``"0-7"``, ``"0-3,10"``
    (spaces ignored) → distinct seeds >= 0, in the order given. A bare ``"3"`` is seed 3.

    Raises:
        ConfigError: malformed text, a negative or repeated seed, more than
            :data:`MAX_SEEDS` seeds or a seed above :data:`MAX_SEED` (named by ``flag``).
    """
    limits = f"at most {MAX_SEEDS} seeds, each in 0..{MAX_SEED}"
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-") if "-" in part[1:] else (part, "", part)
            lo_i, hi_i = int(lo), int(hi)
        except ValueError:
            raise ConfigError(
                f"{flag} {text!r} is not allowed; must be seeds like 0,1,2,3 or 0-7"
            ) from None
        if hi_i - lo_i + 1 > MAX_SEEDS - len(seeds):
            raise ConfigError(f"{flag} {text!r} is not allowed; {limits}")
        seeds.extend(range(lo_i, hi_i + 1))
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"{flag} {text!r} is not allowed; must be distinct seeds >= 0 like 0,1,2,3 or 0-7"
        )
    if max(seeds) > MAX_SEED:
        raise ConfigError(f"{flag} {text!r} is not allowed; {limits}")
    return seeds


# The one table of task defaults: the value a task uses for a data field left unset (None).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "digit-add": {"n_digits": 5, "test_size": 2000},
    "repeat-subseq": {"vocab_size": 128, "seq_len": 85, "repeat_len": 16, "test_size": 2000},
    "max-element": {"seq_len": 10, "test_size": 2000},
    "sparse-parity": {
        "n_tasks": 100,
        "n_bits": 50,
        "parity_k": 3,
        "zipf_alpha": 1.5,
        "test_size": 2000,
    },
    "mnist": {"train_size": 1000},  # Omnigrok: the first 1,000 training images
}


def task_value(d: DataConfig, name: str) -> Any:
    """``d.<name>``, or its task's default (:data:`TASK_DEFAULTS`) when unset; ``None`` when
    neither is set."""
    v = getattr(d, name)
    return TASK_DEFAULTS.get(d.task, {}).get(name) if v is None else v


# Fields of the generated tasks, and the tasks each applies to (None = that task's default).
_ZOO_FIELDS = {
    "n_digits": ("digit-add",),
    "vocab_size": ("repeat-subseq",),
    "seq_len": ("repeat-subseq", "max-element"),
    "repeat_len": ("repeat-subseq",),
    "n_tasks": ("sparse-parity",),
    "n_bits": ("sparse-parity",),
    "parity_k": ("sparse-parity",),
    "zipf_alpha": ("sparse-parity",),
}


def _check_zoo_fields(d: DataConfig) -> None:
    """Fields of the generated tasks: set only for their task, each in range."""
    s = "data"
    for name, tasks in _ZOO_FIELDS.items():
        v = getattr(d, name)
        if v is None:
            continue
        if d.task not in tasks:
            raise ConfigError(
                f"data.{name} applies only to data.task {' or '.join(tasks)} (task is {d.task!r})"
            )
        if name == "zipf_alpha":
            _check(math.isfinite(v) and v >= 0, s, name, v, "a finite number >= 0")
        else:
            hi = _ZOO_MAX.get(name)
            if hi is None:
                _check(v >= 1, s, name, v, "a positive integer")
            else:
                _check(1 <= v <= hi, s, name, v, f"an integer in 1..{hi}")
    if d.n_digits is not None:
        _check(d.n_digits <= 30, s, "n_digits", d.n_digits, "in 1..30")
    if d.task == "repeat-subseq":
        length, rep = task_value(d, "seq_len"), task_value(d, "repeat_len")
        _check(rep >= 2, s, "repeat_len", rep, ">= 2")
        _check(length >= 2 * rep, s, "seq_len", length, f">= 2 * repeat_len ({2 * rep})")
        _check(task_value(d, "vocab_size") >= 2, s, "vocab_size", d.vocab_size, ">= 2")
    if d.task == "sparse-parity":
        k, n = task_value(d, "parity_k"), task_value(d, "n_bits")
        _check(k <= n, s, "parity_k", k, f"<= n_bits ({n})")
    if d.train_subset is not None:
        _check(
            1 <= d.train_subset <= MAX_ROWS,
            s,
            "train_subset",
            d.train_subset,
            f"an integer in 1..{MAX_ROWS}",
        )
    if d.subset_seed is not None:
        _check(0 <= d.subset_seed <= MAX_SEED, s, "subset_seed", d.subset_seed, f"in 0..{MAX_SEED}")


@dataclass(frozen=True)
class DataConfig:
    """What to learn: the task, its vocabulary and its train/test split.

    Attributes:
        task: task family (``modular``).
        p: modulus; ``mul`` and ``div`` need a prime.
        operations: one or more of ``add, sub, mul, div, quad`` (quad = a²+ab+b²).
            Several operations mix in one dataset with an op token: ``[a, op, b, =]``.
        shares: share of the training set per operation (mixed data); equal when unset.
        train_fraction: share of all problems used for training, in (0, 1].
        train_size: number of training problems; overrides ``train_fraction`` when set.
            Image tasks: the number of training images (default: 1,000 for ``mnist``,
            ``train_fraction`` of the 1,797 images for ``digits``); the rest are the test set.
        split_seed: seed of the shuffle of problems into train/test.
        split: how the problems are shuffled into train/test: ``None``/``"groklab"`` (default)
            a ``torch.randperm`` per operation from a local generator seeded with
            ``split_seed``; ``"published"``: the published progress-measures code's split,
            ``random.seed(split_seed); random.shuffle(pairs)`` over the row-major list of
            ``(a, b)`` pairs, the first ``train_fraction`` share (or ``train_size``) for
            training. Modular task with one operation only.
        data_dir: image tasks: folder holding the MNIST IDX files (``mnist`` only).
        test_size: image tasks: keep only this many of the remaining examples (a seeded random
            subset) as the test set, for cheaper evaluations; ``None`` = all of them.
            Generated tasks (``digit-add``, ``repeat-subseq``, ``max-element``,
            ``sparse-parity``): size of the fixed test sample (default 2,000); with infinite
            data the train split is a fixed sample of the same size, used for train metrics.
        n_digits: ``digit-add``: digits per operand (default 5).
        vocab_size: ``repeat-subseq``: number of random token values (default 128).
        seq_len: ``repeat-subseq``: sequence length incl. the repeat (default 85);
            ``max-element``: number of list entries (default 10).
        repeat_len: ``repeat-subseq``: length of the repeated subsequence (default 16).
        n_tasks, n_bits, parity_k, zipf_alpha: ``sparse-parity``: number of subtasks (100),
            random bits (50), bits per subtask's parity (3), Zipf exponent of the subtask
            frequencies p_i ∝ i^-alpha (1.5).
        train_subset: train on a random subset of this many rows of the train split (the test
            split unchanged): ungrokking / semi-grokking; ``groklab train --from-checkpoint``
            sets it from ``data.train_size``. Subsets of one ``subset_seed`` are nested.
        subset_seed: seed of the draw of ``train_subset`` (default 0).
    """

    task: str = "modular"
    p: int = 113
    operations: tuple[str, ...] = ("add",)
    shares: tuple[float, ...] | None = None
    train_fraction: float = 0.3
    train_size: int | None = None
    split_seed: int = 0
    split: str | None = None
    data_dir: str | None = None
    test_size: int | None = None
    n_digits: int | None = None
    vocab_size: int | None = None
    seq_len: int | None = None
    repeat_len: int | None = None
    n_tasks: int | None = None
    n_bits: int | None = None
    parity_k: int | None = None
    zipf_alpha: float | None = None
    train_subset: int | None = None
    subset_seed: int | None = None

    def __post_init__(self) -> None:
        s = "data"
        _choice(s, "task", self.task, TASKS)
        _check(
            isinstance(self.p, int) and 2 <= self.p <= MAX_P,
            s,
            "p",
            self.p,
            f"an integer in 2..{MAX_P}",
        )
        _check(len(self.operations) >= 1, s, "operations", self.operations, "non-empty")
        for op in self.operations:
            _choice(s, "operations", op, OPERATIONS)
        _check(
            len(set(self.operations)) == len(self.operations),
            s,
            "operations",
            self.operations,
            "without repeats",
        )
        needs_field = [op for op in self.operations if op in ("mul", "div")]
        if needs_field and not _is_prime(self.p):
            raise ConfigError(
                f"data.p={self.p} is not prime; operations {', '.join(needs_field)} need a prime "
                "modulus (e.g. 113, 97, 59)"
            )
        if self.shares is not None:
            _check(
                len(self.shares) == len(self.operations),
                s,
                "shares",
                self.shares,
                f"one share per operation ({len(self.operations)})",
            )
            _check(
                all(x >= 0 for x in self.shares) and abs(sum(self.shares) - 1.0) < 1e-6,
                s,
                "shares",
                self.shares,
                "non-negative and summing to 1",
            )
        _check(
            0.0 < self.train_fraction <= 1.0,
            s,
            "train_fraction",
            self.train_fraction,
            "in (0, 1]",
        )
        if self.train_size is not None:
            _check(
                1 <= self.train_size <= MAX_ROWS,
                s,
                "train_size",
                self.train_size,
                f"an integer in 1..{MAX_ROWS}",
            )
        _check(
            0 <= self.split_seed <= MAX_SEED, s, "split_seed", self.split_seed, f"in 0..{MAX_SEED}"
        )
        if self.split == "groklab":  # the default spelled out: stored as None, same hash
            object.__setattr__(self, "split", None)
        if self.split is not None:
            _choice(s, "split", self.split, SPLITS)
            if self.task != "modular" or len(self.operations) != 1:
                raise ConfigError(
                    f"data.split={self.split!r} applies only to data.task modular with one "
                    f"operation (task {self.task!r}, operations {', '.join(self.operations)})"
                )
        if self.test_size is not None:
            _check(
                1 <= self.test_size <= MAX_ROWS,
                s,
                "test_size",
                self.test_size,
                f"an integer in 1..{MAX_ROWS}",
            )
        _check_zoo_fields(self)


@dataclass(frozen=True)
class ModelConfig:
    """The network. Vocabulary sizes and context length come from the task.

    Attributes:
        arch: ``transformer`` or ``mlp``.
        n_layers: transformer blocks, or linear layers of the MLP (>= 2).
        d_model, n_heads, d_head, d_mlp: transformer widths; ``d_mlp`` is the MLP width too.
        act: ``relu`` or ``gelu``.
        layernorm: LayerNorm before attention, MLP and unembedding.
        attn_only: transformer blocks without MLP.
        init_scale: multiplier on every initial weight (Omnigrok's alpha).
        mlp_input: MLP only: one-hot inputs ``sum`` (shared embedding) or ``concat``, or
            ``dense``: float feature vectors ``[batch, d_vocab]`` (image tasks).
    """

    arch: str = "transformer"
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    act: str = "relu"
    layernorm: bool = False
    attn_only: bool = False
    init_scale: float = 1.0
    mlp_input: str = "sum"

    def __post_init__(self) -> None:
        s = "model"
        _choice(s, "arch", self.arch, ("transformer", "mlp"))
        _choice(s, "act", self.act, ("relu", "gelu"))
        _choice(s, "mlp_input", self.mlp_input, ("sum", "concat", "dense"))
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 1, s, name, v, "a positive integer")
        if self.arch == "mlp":
            _check(self.n_layers >= 2, s, "n_layers", self.n_layers, ">= 2 for arch=mlp")
        _check(
            0 < self.init_scale < math.inf, s, "init_scale", self.init_scale, "a finite number > 0"
        )


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, schedule and gradient filters.

    Attributes:
        name: ``adamw``, ``adam`` or ``sgd``.
        lr: peak learning rate (> 0).
        weight_decay: decoupled for AdamW, L2 for Adam/SGD.
        betas: Adam betas.
        eps: Adam epsilon.
        momentum: SGD momentum.
        warmup_steps: linear warmup ``lr * min(step / warmup_steps, 1)``, then constant.
        grokfast: gradient filter ``none``, ``ema`` or ``ma`` (Grokfast).
        grokfast_alpha: EMA decay of the Grokfast-EMA filter.
        grokfast_lambda: amplification of the slow gradient component.
        grokfast_window: window of the Grokfast-MA filter.
        perp_grad: ⊥Grad: remove each tensor's gradient component along its weights.
        fixed_norm: hold the total L2 norm of all parameters at this value: the weights are
            rescaled onto that sphere at the start and after every optimiser step (Omnigrok's
            constrained runs). A number, ``"initial"`` (the norm at initialisation), or
            ``None`` (off).
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    momentum: float = 0.0
    warmup_steps: int = 10
    grokfast: str = "none"
    grokfast_alpha: float = 0.98
    grokfast_lambda: float = 2.0
    grokfast_window: int = 100
    perp_grad: bool = False
    fixed_norm: float | str | None = None

    def __post_init__(self) -> None:
        s = "optim"
        _choice(s, "name", self.name, ("adamw", "adam", "sgd"))
        _check(self.lr > 0 and math.isfinite(self.lr), s, "lr", self.lr, "a finite number > 0")
        _check(self.weight_decay >= 0, s, "weight_decay", self.weight_decay, ">= 0")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            s,
            "betas",
            self.betas,
            "two numbers in [0, 1)",
        )
        _check(self.eps > 0, s, "eps", self.eps, "> 0")
        _check(0 <= self.momentum < 1, s, "momentum", self.momentum, "in [0, 1)")
        _check(self.warmup_steps >= 0, s, "warmup_steps", self.warmup_steps, ">= 0")
        _choice(s, "grokfast", self.grokfast, ("none", "ema", "ma"))
        _check(0 <= self.grokfast_alpha < 1, s, "grokfast_alpha", self.grokfast_alpha, "in [0, 1)")
        _check(self.grokfast_lambda >= 0, s, "grokfast_lambda", self.grokfast_lambda, ">= 0")
        _check(self.grokfast_window >= 1, s, "grokfast_window", self.grokfast_window, ">= 1")
        if self.fixed_norm is not None:
            fn = self.fixed_norm
            ok = fn == "initial" or (
                isinstance(fn, float | int)
                and not isinstance(fn, bool)
                and math.isfinite(fn)
                and fn > 0
            )
            _check(ok, s, "fixed_norm", fn, "a finite number > 0, 'initial' or none")


@dataclass(frozen=True)
class TrainConfig:
    """The loop: length, batches, loss, evaluation and checkpoint schedule, device.

    Attributes:
        steps: optimiser steps.
        batch_size: minibatch size; ``None`` = full batch.
        loss: ``cross_entropy``, ``mse`` (on one-hot targets) or ``stablemax`` (StableMax CE).
        loss_dtype: ``float64`` (no slingshot spikes) or ``float32`` for the log-softmax.
        eval_every: evaluate every named subset every this many steps.
        checkpoint_every: save weights every this many steps.
        log_checkpoints: extra log-spaced checkpoints before ``checkpoint_every``.
        seed: seed of the local generators for init and minibatches.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        stop_test_acc: stop once test accuracy has stayed >= this ...
        stop_patience: ... for this many steps (``None`` = never stop early).
        diverge_loss: a train loss above this (or NaN/inf) marks the run diverged.
        init_from: start from another run's weights, ``DIR@STEP`` (its checkpoint at STEP);
            set by ``groklab train --from-checkpoint`` (ungrokking). ``None`` = fresh init.
    """

    steps: int = 40_000
    batch_size: int | None = None
    loss: str = "cross_entropy"
    loss_dtype: str = "float64"
    eval_every: int = 100
    checkpoint_every: int = 100
    log_checkpoints: int = 0
    seed: int = 0
    device: str = "auto"
    stop_test_acc: float | None = None
    stop_patience: int = 0
    diverge_loss: float = 1e6
    init_from: str | None = None

    def __post_init__(self) -> None:
        s = "train"
        _check(
            1 <= self.steps <= MAX_STEPS, s, "steps", self.steps, f"an integer in 1..{MAX_STEPS:_}"
        )
        if self.batch_size is not None:
            _check(self.batch_size >= 1, s, "batch_size", self.batch_size, ">= 1 or none")
        _choice(s, "loss", self.loss, ("cross_entropy", "mse", "stablemax"))
        _choice(s, "loss_dtype", self.loss_dtype, ("float64", "float32"))
        _check(self.eval_every >= 1, s, "eval_every", self.eval_every, ">= 1")
        _check(self.checkpoint_every >= 1, s, "checkpoint_every", self.checkpoint_every, ">= 1")
        _check(self.log_checkpoints >= 0, s, "log_checkpoints", self.log_checkpoints, ">= 0")
        _check(0 <= self.seed <= MAX_SEED, s, "seed", self.seed, f"in 0..{MAX_SEED}")
        dev_ok = self.device in ("auto", "cpu", "cuda") or (
            self.device.startswith("cuda:") and self.device[5:].isdigit()
        )
        _check(dev_ok, s, "device", self.device, "auto, cpu, cuda or cuda:N")
        if self.stop_test_acc is not None:
            _check(0 < self.stop_test_acc <= 1, s, "stop_test_acc", self.stop_test_acc, "in (0, 1]")
        _check(self.stop_patience >= 0, s, "stop_patience", self.stop_patience, ">= 0")
        _check(self.diverge_loss > 0, s, "diverge_loss", self.diverge_loss, "> 0")
        if self.init_from is not None:
            d, _, at = self.init_from.rpartition("@")
            _check(bool(d) and at.isdigit(), s, "init_from", self.init_from, "DIR@STEP")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Written to ``config.toml`` before step 0."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        plain = (
            bool(self.name)
            and self.name not in (".", "..")
            and not any(c in self.name for c in "/\\\0")
        )
        _check(plain, "run", "name", self.name, "a plain name (no / or \\, not . or ..)")
        for sec, cls in (
            ("data", DataConfig),
            ("model", ModelConfig),
            ("optim", OptimConfig),
            ("train", TrainConfig),
        ):
            if not isinstance(getattr(self, sec), cls):
                raise ConfigError(f"{sec} must be a {cls.__name__}")
        # Image tasks feed float pixels: only the dense-input MLP takes them. (One direction
        # only, so overrides can switch the model first and the task after it.)
        dense = self.model.arch == "mlp" and self.model.mlp_input == "dense"
        if self.data.task in IMAGE_TASKS and not dense:
            raise ConfigError(
                f"data.task={self.data.task!r} needs model.arch='mlp' and "
                f"model.mlp_input='dense' (got {self.model.arch!r}, {self.model.mlp_input!r}); "
                "set those first or start from preset omnigrok-digits / omnigrok-mnist"
            )


# ----------------------------------------------------------------------------- conversion

_SECTIONS = ("data", "model", "optim", "train")


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """A plain, TOML-ready dict (tuples become lists, ``None`` values are left out)."""

    def clean(obj: Any) -> Any:
        if is_dataclass(obj):
            return {
                f.name: clean(getattr(obj, f.name))
                for f in fields(obj)
                if getattr(obj, f.name) is not None
            }
        if isinstance(obj, tuple | list):
            return [clean(x) for x in obj]
        return obj

    return clean(cfg)


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce a parsed TOML/override value to the annotated field type."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and len(args) < len(get_args(tp)):
            return None
        errors = []
        for a in args:
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}={value!r} is not allowed; must be a list")
        args = get_args(tp)
        item_tp = args[0]
        return tuple(_coerce(v, item_tp, where) for v in value)
    if origin is Literal:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}={value!r} is not allowed; must be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{where}={value!r} is not allowed; must be an integer")
        if isinstance(value, int):
            return value  # exact: a float round trip would change integers beyond 2^53
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value)
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{where}={value!r} is not allowed; must be an integer") from None
        if not f.is_integer():
            raise ConfigError(f"{where}={value!r} is not allowed; must be an integer")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} is not allowed; must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r} is not allowed; must be a number") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r} is not allowed; must be a string")
        return value
    return value


def _section_from_dict(cls: type, d: dict[str, Any], section: str) -> Any:
    hints = _type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {section}.{unknown[0]}; allowed: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in d.items()}
    return cls(**kwargs)


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a (TOML-shaped) dict."""
    allowed = {"name", *_SECTIONS}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}; allowed: {', '.join(sorted(allowed))}")
    kwargs: dict[str, Any] = {}
    if "name" in d:
        kwargs["name"] = str(d["name"])
    hints = _type_hints(RunConfig)
    for sec in _SECTIONS:
        if sec in d:
            if not isinstance(d[sec], dict):
                raise ConfigError(f"{sec} must be a table of keys")
            kwargs[sec] = _section_from_dict(hints[sec], d[sec], sec)
    return RunConfig(**kwargs)


def save_config(cfg: RunConfig) -> str:
    """The config as TOML text."""
    return tomli_w.dumps(config_to_dict(cfg))


def load_config(path: str | Path) -> RunConfig:
    """Read a config TOML file (a run's ``config.toml`` or a user's file)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a config file (binary, not UTF-8 TOML text)") from None
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    try:
        return config_from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """Apply ``section.key=value`` overrides (values parsed as TOML, else as strings).

    Raises:
        ConfigError: for a malformed override, an unknown key, or a value not allowed.
    """
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not of the form section.key=value")
        key, text = ov.split("=", 1)
        key = key.strip()
        value = _parse_value(text.strip())
        if key == "name":
            cfg = replace(cfg, name=str(value))
            continue
        if "." not in key:
            raise ConfigError(
                f"unknown key {key!r}; use section.key with section one of {', '.join(_SECTIONS)}"
            )
        sec, name = key.split(".", 1)
        if sec not in _SECTIONS:
            raise ConfigError(f"unknown key {key!r}; sections: {', '.join(_SECTIONS)}")
        section = getattr(cfg, sec)
        names = [f.name for f in fields(section)]
        if name not in names:
            raise ConfigError(f"unknown key {key!r}; allowed: {', '.join(names)}")
        hint = _type_hints(type(section))[name]
        new_section = replace(section, **{name: _coerce(value, hint, key)})
        cfg = replace(cfg, **{sec: new_section})
    return cfg


def config_hash(cfg: RunConfig) -> str:
    """A short stable hash of the config (identity of a run)."""
    import hashlib

    return hashlib.sha256(save_config(cfg).encode()).hexdigest()[:16]
