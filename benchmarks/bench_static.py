"""Static figure export: one kaleido session for a batch of figures versus one per figure.

    python3 benchmarks/bench_static.py [--figures 5] [--repeat 2]

Exports the figures ``groklab analyze`` writes for a synthetic run (``tests/helpers/
synthetic.py``: no training; circuit and progress figures) as PNG, ``--repeat`` times each
way, interleaved: all of them in one :func:`groklab.report.static.save_figures` call (one
browser start-up, what the commands do), and one call per figure (a start-up each). Prints
one JSON object with the median wall seconds of both and their ratio, and the machine's load
average at the start (on a busy shared machine the wall times can be many times larger).
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
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test-only helpers

from groklab.report import collect  # noqa: E402
from groklab.report.static import save_figures  # noqa: E402
from helpers import synthetic  # noqa: E402


def _figures(n: int) -> dict:
    d = synthetic.synthetic_run_data(n_checkpoints=40, draws=20)
    figs = {n_: f for s in collect.run_sections(d) for n_, f in s.figures.items()}
    return dict(list(figs.items())[:n])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--figures", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    figs = _figures(args.figures)
    load = os.getloadavg()[0]
    batch, single = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            t = time.perf_counter()
            save_figures(figs, Path(tmp) / f"batch{r}")
            batch.append(time.perf_counter() - t)
            t = time.perf_counter()
            for name, fig in figs.items():
                save_figures({name: fig}, Path(tmp) / f"single{r}")
            single.append(time.perf_counter() - t)
    out = SimpleNamespace(
        figures=len(figs),
        load_average_1min=round(load, 2),
        cpus=os.cpu_count(),
        batch_s=round(statistics.median(batch), 2),
        per_figure_s=round(statistics.median(single), 2),
        ratio_per_figure_over_batch=round(statistics.median(single) / statistics.median(batch), 2),
    )
    print(json.dumps(vars(out)))


if __name__ == "__main__":
    main()
