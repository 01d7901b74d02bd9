"""The package version, in its own module so that the library can read it without importing
the package's public API (``groklab/__init__.py`` sits above everything it re-exports)."""

__version__ = "0.1.0"
