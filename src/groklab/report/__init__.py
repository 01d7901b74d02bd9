"""Reports: one self-contained HTML file per run or sweep, plus the figures as PNG/SVG.

Example::

    from groklab.report import build_report

    out = build_report("runs/nanda2023")      # runs/nanda2023/report.html, figures/*.png|svg
    print(out["html"])

Modules: :mod:`~groklab.report.figures` (one plotly function per figure, drawing analysis
outputs only), :mod:`~groklab.report.collect` (reads run/sweep directories and cached
analysis results into report sections), :mod:`~groklab.report.html` (page assembly and static
export). The headless-Chromium driver that tests and times reports is test-only:
``tests/helpers/browser.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["REPORT_FILE", "build_report", "build_run_report", "build_sweep_report"]

REPORT_FILE = "report.html"


def build_run_report(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    static: bool = True,
    formats: tuple[str, ...] = ("png", "svg"),
    max_points: int | None = None,
) -> dict[str, Any]:
    """Write the report of one run: ``<run>/report.html`` and ``<run>/figures/*``.

    Args:
        run_dir: the run directory.
        out: the HTML path (default ``<run>/report.html``; figures go beside it).
        static: also write every figure as PNG/SVG (needs kaleido and Chrome/Chromium).
        formats: static formats (``png``, ``svg``, ``pdf``, ...).
        max_points: most points per curve (default: :data:`figures.DEFAULT_MAX_POINTS`).

    Returns:
        ``html`` path, ``figures`` paths, ``static_error`` (or ``None``), ``seconds``,
        ``sections`` (key → ``"shown"`` or the reason it is absent).
    """
    from groklab.report import collect
    from groklab.report import figures as F
    from groklab.report.html import subtitle_line, write_report

    run_dir = Path(run_dir)
    data = collect.load_run_data(run_dir, display_path=str(run_dir))
    sections = collect.run_sections(data, max_points=max_points or F.DEFAULT_MAX_POINTS)
    m = data.manifest
    res = write_report(
        Path(out) if out else run_dir / REPORT_FILE,
        f"groklab run report — {data.name}",
        sections,
        subtitle=subtitle_line(
            str(run_dir),
            f"status {m.get('status', 'unknown')}",
            f"config {m.get('config_hash')}" if m.get("config_hash") else None,
            f"git {str(m.get('git_rev'))[:8]}" if m.get("git_rev") else None,
        ),
        static=static,
        formats=formats,
    )
    res["sections"] = {s.key: "shown" if s.absent is None else s.absent for s in sections}
    return res


def build_sweep_report(
    sweep_dir: str | Path,
    *,
    out: str | Path | None = None,
    static: bool = True,
    formats: tuple[str, ...] = ("png", "svg"),
) -> dict[str, Any]:
    """Write the report of a sweep: ``<sweep>/report.html`` and ``<sweep>/figures/*``."""
    from groklab.report import collect
    from groklab.report.html import subtitle_line, write_report

    sweep_dir = Path(sweep_dir)
    data = collect.load_sweep_data(sweep_dir, display_path=str(sweep_dir))
    sections = collect.sweep_sections(data)
    name = data.info.get("name") or sweep_dir.name
    res = write_report(
        Path(out) if out else sweep_dir / REPORT_FILE,
        f"groklab sweep report — {name}",
        sections,
        subtitle=subtitle_line(
            str(sweep_dir),
            f"study {data.info['study']}" if data.info.get("study") else None,
            f"{len(data.runs)} runs",
        ),
        static=static,
        formats=formats,
    )
    res["sections"] = {s.key: "shown" if s.absent is None else s.absent for s in sections}
    return res


def build_report(path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """The run or sweep report of ``path``, whichever it is.

    Raises:
        ReportError: ``path`` is neither a run directory (``config.toml``) nor a sweep
            directory (``sweep.json``).
    """
    from groklab.report.html import ReportError

    p = Path(path)
    if (p / "config.toml").is_file():
        return build_run_report(p, **kwargs)
    if (p / "sweep.json").is_file():
        kwargs.pop("max_points", None)
        return build_sweep_report(p, **kwargs)
    if not p.exists():
        raise ReportError(f"{p}: no such directory")
    raise ReportError(
        f"{p}: not a run directory (no config.toml) or sweep directory (no sweep.json)"
    )
