"""CLI command groups beyond train/presets/show, one module each.

Each module defines ``register(app: typer.Typer) -> None`` and adds its commands. Keeping them
apart keeps ``groklab --help`` fast (heavy imports happen inside the commands) and lets each
part of the product own its commands.
"""

from __future__ import annotations

import importlib

import typer

__all__ = ["register_all"]

# Order = order in `groklab --help`.
_MODULES = ("analyze", "llc", "sweep", "report", "zoo")


def register_all(app: typer.Typer) -> None:
    for name in _MODULES:
        try:
            mod = importlib.import_module(f"groklab.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"groklab.commands.{name}":
                continue  # that part of the product is not installed in this tree
            raise
        mod.register(app)
