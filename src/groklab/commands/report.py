"""``groklab report DIR``: the HTML report (and PNG/SVG figures) of a run or a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register", "write_and_print"]


def write_and_print(path: Path, *, static: bool = True, formats: str = "png,svg") -> Path:
    """Write the report of ``path`` and print where it is (the last line is the HTML path).

    Raises:
        GroklabError: ``path`` is not a run or sweep directory, or a dependency is missing.
    """
    from groklab.commands._common import console, print_error
    from groklab.errors import GroklabError
    from groklab.report import build_report

    fmts = tuple(f.strip().lower() for f in formats.split(",") if f.strip())
    allowed = {"png", "svg", "pdf", "jpg", "jpeg", "webp"}
    bad = [f for f in fmts if f not in allowed]
    if bad:
        from groklab.errors import ConfigError

        raise ConfigError(f"--formats: {bad[0]!r} is not allowed; use {', '.join(sorted(allowed))}")
    try:
        res = build_report(path, static=static, formats=fmts)
    except ModuleNotFoundError as e:  # plotly missing: one line with the install hint
        raise GroklabError(str(e)) from None
    shown = [k for k, v in res["sections"].items() if v == "shown"]
    absent = {k: v for k, v in res["sections"].items() if v != "shown"}
    console.print(f"sections shown: {', '.join(shown)}", highlight=False)
    if absent:
        console.print(
            "not available: " + "; ".join(f"{k} ({v})" for k, v in absent.items()),
            highlight=False,
        )
    if res["figures"]:
        console.print(
            f"figures: {len(res['figures'])} files in {res['figures'][0].parent}", highlight=False
        )
    if res["static_error"]:
        print_error(res["static_error"], prefix="warning: ", style="yellow")
    html = Path(res["html"])
    console.print(f"report: {html}", highlight=False, soft_wrap=True)
    return html


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        directory: Annotated[Path, typer.Argument(help="a run directory or a sweep directory")],
        static: Annotated[
            bool,
            typer.Option(
                "--static/--no-static",
                help="also write every figure under DIR/figures/ (needs Chrome/Chromium)",
            ),
        ] = True,
        formats: Annotated[
            str, typer.Option("--formats", help="static formats, comma-separated")
        ] = "png,svg",
    ) -> None:
        """Write DIR/report.html (one offline file, interactive figures) and DIR/figures/*.

        Sections whose analysis has not been run are marked absent, with the command that
        produces them (groklab analyze / groklab llc).
        """
        from groklab.commands._common import fail as _fail
        from groklab.errors import GroklabError

        try:
            write_and_print(directory, static=static, formats=formats)
        except GroklabError as e:
            _fail(e)
