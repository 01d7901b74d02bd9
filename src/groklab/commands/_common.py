"""What every command shares: the consoles, the one way to fail, the one error path.

Error text reaches the user verbatim: it is printed as a :class:`rich.text.Text`, never parsed
as markup (a message such as ``grid must be a table of key = [values]`` or the install hint
``pip install 'groklab[plot]'`` keeps its brackets), on one line (no wrapping).

Exit codes: 0 completed, 1 a run failed or diverged (or the disk filled up), 2 bad input,
130 interrupted.
"""

from __future__ import annotations

from typing import Any, NoReturn

import click
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from groklab.errors import GroklabError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "GroklabGroup",
    "console",
    "err_console",
    "fail",
    "print_error",
]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

console = Console()
err_console = Console(stderr=True)


def print_error(msg: str, *, prefix: str = "error: ", style: str = "bold red") -> None:
    """One line on stderr, ``prefix`` in ``style``, ``msg`` verbatim (no markup, no
    highlighting)."""
    line = Text(prefix, style=style) if prefix else Text()
    line.append(str(msg))
    err_console.print(line, highlight=False, soft_wrap=True)


def fail(msg: str | BaseException, code: int | None = None) -> NoReturn:
    """Print ``msg`` as the one error line and exit with ``code``.

    ``code`` defaults to the error's ``exit_code`` for a :class:`GroklabError` (2 for bad
    input, 1 for a full disk), else 2.
    """
    if code is None:
        code = getattr(msg, "exit_code", EXIT_BAD_INPUT)
    print_error(str(msg))
    raise typer.Exit(code)


def interrupted(hint: str = "") -> NoReturn:
    """Ctrl-C: one line (with how to continue) and exit code 130."""
    print_error("interrupted" + (f"; {hint}" if hint else ""), prefix="")
    raise typer.Exit(EXIT_INTERRUPTED)


class GroklabGroup(TyperGroup):
    """The app's command group: the one place a :class:`GroklabError` that a command did not
    handle becomes its one line and exit code, and Ctrl-C becomes exit code 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GroklabError as e:
            fail(e)
        except KeyboardInterrupt:
            interrupted()
