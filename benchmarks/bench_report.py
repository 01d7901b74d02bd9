"""Size and opening time of the report of a run with 400 checkpoints, in headless Chromium.

    python3 benchmarks/bench_report.py [--checkpoints 400] [--eval-every 10] [--repeat 3]

The run is synthetic (``tests/helpers/synthetic.py``: no training): 400 checkpoints every 100
steps, metrics evaluated every ``--eval-every`` steps (10 = 4,001 rows, ten times denser than
the canonical run), progress measures and an LLC estimate (with its SGLD traces) at every
checkpoint, and the final checkpoint's circuit for p = 113 — every section of the report full.

The report is opened ``--repeat`` times over file:// in a fresh offline headless Chromium
without DevTools instrumentation (which slows the page). For each: wall time until the page
is *open* (first screen drawn; further figures draw as they scroll into view) and until
*every* figure is drawn, and the CPU seconds of Chromium's renderer process over the same
spans — the page's own cost, which does not depend on what else the machine runs (on a busy
shared machine the wall times can be many times larger). Also reported, side by side: the
same numbers for a page holding only plotly.js (the fixed cost of any plotly page) and the
ratios report / plotly-only. Prints one JSON object; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test-only helpers

from groklab.report import collect  # noqa: E402
from groklab.report.html import write_report  # noqa: E402
from helpers import synthetic  # noqa: E402
from helpers.browser import inspect_page  # noqa: E402


def _plotly_only(path: Path) -> None:
    from plotly.offline import get_plotlyjs

    ready = "<script>document.documentElement.setAttribute('data-report-ready','ok')</script>"
    path.write_text(
        f"<!DOCTYPE html><html><head><script>{get_plotlyjs()}</script></head>"
        f"<body>plotly.js only{ready}</body></html>"
    )


def _open(path: Path, repeat: int) -> dict[str, float]:
    rows = []
    for _ in range(repeat):
        r = inspect_page(path, timeout=600, instrument=False)
        if r.ready != "ok":
            raise SystemExit(f"{path}: page did not open cleanly ({r.ready})")
        rows.append(
            {
                "open_s": r.load_seconds,
                "complete_s": r.complete_seconds,
                "renderer_cpu_open_s": r.cpu.get("cpu_open/renderer", float("nan")),
                "renderer_cpu_complete_s": r.cpu.get("cpu_complete/renderer", float("nan")),
                "all_processes_cpu_open_s": sum(
                    v for k, v in r.cpu.items() if k.startswith("cpu_open/")
                ),
            }
        )
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=400)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    t0 = time.perf_counter()
    data = synthetic.synthetic_run_data(
        n_checkpoints=args.checkpoints, eval_every=args.eval_every, ops=("add",)
    )
    sections = collect.run_sections(data)
    t_sections = time.perf_counter() - t0
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        html = Path(tmp) / "report.html"
        res = write_report(html, "benchmark", sections, static=False)
        size = html.stat().st_size
        base = Path(tmp) / "plotly.html"
        _plotly_only(base)
        report = _open(html, args.repeat)
        plotly_only = _open(base, args.repeat)
    from plotly.offline import get_plotlyjs

    out = {
        "checkpoints": args.checkpoints,
        "metric_rows": len(data.metrics),
        "figures": sum(len(s.figures) for s in sections),
        "size_mb": round(size / 1e6, 2),
        "plotlyjs_mb": round(len(get_plotlyjs().encode()) / 1e6, 2),
        "build_s": {"figures": round(t_sections, 2), "html": round(res["seconds"]["html"], 2)},
        "report": report,
        "plotly_only": plotly_only,
        "ratio_report_over_plotly_only": {
            k: round(report[k] / plotly_only[k], 2) if plotly_only[k] else None for k in report
        },
        "repeat": args.repeat,
        "loadavg_before": [round(x, 1) for x in load_before],
        "loadavg_after": [round(x, 1) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
