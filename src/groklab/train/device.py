"""Which device a run trains on: ``auto`` resolved, and checked to exist here."""

from __future__ import annotations

import torch

from groklab.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(name: str) -> torch.device:
    """The device ``name`` resolves to, checked to exist on this machine.

    Raises:
        ConfigError: CUDA asked for where there is none, or a CUDA index out of range.
    """
    device = resolve_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device={name!r} is not allowed here: this machine has no CUDA device; "
                "allowed: auto, cpu"
            )
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n:
            raise ConfigError(
                f"train.device={name!r} is not allowed here: this machine has {n} CUDA "
                f"device(s); allowed: auto, cpu, cuda, cuda:0..cuda:{n - 1}"
            )
    return device
