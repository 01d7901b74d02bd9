"""Test-only helpers, kept out of the package (DESIGN.md: test-only helpers live under tests/).

Importable as ``helpers`` from the tests (pytest puts ``tests/`` on ``sys.path``) and from the
benchmarks (which put it there themselves).
"""
