"""groklab: a laboratory for the science of grokking."""

from __future__ import annotations

from groklab._version import __version__
from groklab.api import train
from groklab.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    load_config,
)
from groklab.errors import (
    CheckpointError,
    ConfigError,
    GroklabError,
    RunExistsError,
    RunLockedError,
    RunNotFoundError,
)
from groklab.presets import PRESETS, get_preset
from groklab.run import Run, load_run

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "GroklabError",
    "ModelConfig",
    "OptimConfig",
    "Run",
    "RunConfig",
    "RunExistsError",
    "RunLockedError",
    "RunNotFoundError",
    "TrainConfig",
    "__version__",
    "apply_overrides",
    "get_preset",
    "load_config",
    "load_run",
    "train",
]
