"""Typed exceptions. Every one carries a one-line message naming the bad field or file.

The CLI turns any :class:`GroklabError` into that one line on stderr and its ``exit_code``:
2 for bad input, 1 for a failure of the machine (a full disk) rather than of the input.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "GroklabError",
    "RunDamagedError",
    "RunExistsError",
    "RunLockedError",
    "RunNotFoundError",
    "StorageError",
]


class GroklabError(Exception):
    """Base class: bad input answered with one line and no damage on disk."""

    exit_code = 2


class ConfigError(GroklabError, ValueError):
    """A config value (or override, preset, task, operation) is not allowed."""


class CheckpointError(GroklabError):
    """A checkpoint file is missing, corrupt, or from a different model."""


class RunExistsError(GroklabError):
    """The target run directory already holds a (different) run."""


class RunLockedError(GroklabError):
    """Another process holds the run directory open for writing."""


class RunNotFoundError(GroklabError):
    """The path is not a groklab run directory."""


class StorageError(GroklabError):
    """A file could not be written (a full disk or quota); what was saved before is intact."""

    exit_code = 1


class RunDamagedError(GroklabError):
    """A file of a run directory is missing, unreadable or contradicts the others; the message
    names the file and how to recover."""
