"""Shared fixtures: tiny configs that train in a fraction of a second, and disk snapshots."""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from groklab.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig


def import_extra(module: str, extra: str) -> ModuleType:
    """Import a module of an optional extra, for tests that need it.

    Outside CI a missing extra skips the test. In CI (``CI=true``, where ``.ci/run`` installs
    ``.[all]``) it is an error: a broken install of an extra must fail the build, not turn
    its tests into silent skips.
    """
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"optional extra: pip install '.[{extra}]'")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # The CI machine has 2 cores shared with other work; one thread per test process keeps
    # timings stable. Thread count does not change results on CPU for these tiny models.
    torch.set_num_threads(1)


def tiny_config(
    *,
    name: str = "tiny",
    data: dict | None = None,
    model: dict | None = None,
    optim: dict | None = None,
    train: dict | None = None,
) -> RunConfig:
    """A run on (a+b) mod 11 with a 16-wide transformer: ~1 ms per step."""
    return RunConfig(
        name=name,
        data=DataConfig(**{"p": 11, "train_fraction": 0.5, **(data or {})}),
        model=ModelConfig(
            **{"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32, **(model or {})}
        ),
        optim=OptimConfig(**{"lr": 1e-2, "warmup_steps": 2, **(optim or {})}),
        train=TrainConfig(
            **{
                "steps": 30,
                "eval_every": 5,
                "checkpoint_every": 10,
                "device": "cpu",
                **(train or {}),
            }
        ),
    )


@pytest.fixture
def make_config() -> Callable[..., RunConfig]:
    return tiny_config


def snapshot(root: Path) -> dict[str, str | None]:
    """Every path under ``root`` → sha256 of its bytes (``None`` for directories)."""
    out: dict[str, str | None] = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, rtol: float = 1.3e-6, atol: float = 1e-5
) -> None:
    """``|actual - expected| <= atol + rtol·|expected|`` elementwise, shapes and dtypes equal.

    The same rule as ``torch.testing.assert_close`` for float32, without its first-call import
    of torch.distributed (seconds on a busy 2-core machine).
    """
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    ok = torch.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=False)
    if not bool(ok.all()):
        diff = (actual - expected).abs().max().item()
        raise AssertionError(
            f"{int((~ok).sum())} of {ok.numel()} elements differ; max |diff| = {diff:.3g}"
        )
