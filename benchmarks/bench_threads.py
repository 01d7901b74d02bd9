"""Torch threads under contention: the canonical step at 1 and N threads, idle and beside a
busy process. One command, every ratio measured side by side in one run:

    PYTHONPATH=src python3 benchmarks/bench_threads.py            # a few minutes, idle machine
    PYTHONPATH=src python3 benchmarks/bench_threads.py --quick    # smoke check (seconds)
    PYTHONPATH=src python3 benchmarks/bench_threads.py --baseline # + the paper-style step

The step is groklab's bare training step on the nanda2023 preset's model and full batch
(forward, backward, AdamW; ``_GroklabStep`` of ``benchmarks/run.py``); with ``--baseline``
also the plain loop written the way the published code is (``benchmarks/baseline.py``). For each round it times
``--steps`` steps in every condition — threads ∈ {1, ``--threads`` (default: usable cores)},
with and without a competitor — in a rotated order, so that a change of machine load hits
every condition alike. The competitor is one single-threaded CPU burner (a Python busy loop
in a child process that this script starts before the timed block and stops after it).

Reported: median wall ms/step per condition, the slow-downs busy/idle, the speed-up of N
threads over 1 (idle and busy), the machine load seen (the 1-minute load average, and the
share of all CPUs busy during each timed block, from /proc/stat, which includes the
benchmark itself and its burner), and which thread count wins beside a busy process.
Results go to ``benchmarks/results/threads-<time>.json``.

This is the measurement behind groklab's thread policy (``groklab.train.threads``): train on
every usable core but one unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import groklab  # noqa: E402
from groklab.train.threads import usable_cores  # noqa: E402
from run import _baseline, _GroklabStep  # noqa: E402

RESULTS = ROOT / "results"
BURNER = "while True:\n    pass\n"  # one thread, pure CPU, no memory traffic to speak of


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs, or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    vals = [int(v) for v in fields]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    total = sum(vals[:8])  # guest time is already inside user
    return total - idle, total


def _busy_share(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float:
    if a is None or b is None or b[1] == a[1]:
        return float("nan")
    return (b[0] - a[0]) / (b[1] - a[1])


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


class _Burner:
    """A single-threaded busy loop in a child process, for the length of a ``with`` block."""

    def __enter__(self) -> _Burner:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", BURNER], env=env)
        time.sleep(0.3)  # let it start and take its share of the scheduler
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def _time_steps(step: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 steps (smoke check)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every condition")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per condition and round")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="the many-thread side (default: usable cores, torch's usual default)",
    )
    ap.add_argument("--baseline", action="store_true", help="also time the paper-style step")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = ap.parse_args(argv)
    rounds, steps = (2, 2) if args.quick else (args.rounds, args.steps)
    many = args.threads or max(2, usable_cores())
    counts = [1, many]

    cfg = groklab.get_preset("nanda2023")
    step = _GroklabStep(cfg, torch.device("cpu"))
    subjects: dict[str, Callable[[], None]] = {"groklab": step}
    if args.baseline:
        subjects["baseline"] = _baseline(cfg, torch.device("cpu")).step
    conditions = [(sub, t, busy) for sub in subjects for busy in (False, True) for t in counts]
    machine = {
        "processor": platform.processor() or platform.machine(),
        "usable_cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_default_threads": torch.get_num_threads(),
        "load_avg_start": _load(),
    }
    print(
        f"bench_threads: nanda2023 canonical step ({step.task.n_train} rows, full batch), "
        f"{machine['usable_cores']} usable cores, torch {torch.__version__}, "
        f"load average {machine['load_avg_start']:.2f}"
    )
    for t in counts:  # warm up each thread count (pool start, allocator, caches)
        torch.set_num_threads(t)
        for fn in subjects.values():
            _time_steps(fn, 2)

    def name(sub: str, t: int, busy: bool) -> str:
        return f"{sub}/{t}t-{'busy' if busy else 'idle'}"

    samples: dict[str, list[float]] = {name(*c): [] for c in conditions}
    share: dict[str, list[float]] = {k: [] for k in samples}
    loads: list[float] = []
    for r in range(rounds):
        rot = conditions[r % len(conditions) :] + conditions[: r % len(conditions)]
        for sub, t, busy in rot:
            key = name(sub, t, busy)
            torch.set_num_threads(t)
            fn = subjects[sub]
            if busy:
                with _Burner():
                    a = _cpu_times()
                    samples[key].append(_time_steps(fn, steps))
                    b = _cpu_times()
            else:
                a = _cpu_times()
                samples[key].append(_time_steps(fn, steps))
                b = _cpu_times()
            share[key].append(_busy_share(a, b))
        loads.append(_load())
        print(f"  round {r + 1}/{rounds} done, load average {loads[-1]:.2f}", flush=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {}
    best_busy = {}
    for sub in subjects:
        for t in counts:
            ratios[f"{sub}/slowdown_busy_{t}t"] = med[name(sub, t, True)] / med[name(sub, t, False)]
        for busy in (False, True):
            cond = "busy" if busy else "idle"
            ratios[f"{sub}/speedup_{many}t_over_1t_{cond}"] = (
                med[name(sub, 1, busy)] / med[name(sub, many, busy)]
            )
        best_busy[sub] = min(counts, key=lambda t, sub=sub: med[name(sub, t, True)])

    print(f"\n{'condition':>19}  {'ms/step':>9}  {'min':>9}  {'max':>9}  {'CPUs busy':>9}")
    for k, v in samples.items():
        print(
            f"{k:>19}  {med[k] * 1e3:9.1f}  {min(v) * 1e3:9.1f}  {max(v) * 1e3:9.1f}  "
            f"{statistics.median(share[k]):9.0%}"
        )
    print()
    for k, v in ratios.items():
        print(f"{k:>36}: {v:6.2f}x")
    for sub, t in best_busy.items():
        print(f"{sub + ': fastest beside a busy process':>36}: {t} thread(s)")
    print(f"load average during the run: {min(loads):.2f} .. {max(loads):.2f}")

    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": machine,
        "config": cfg.name,
        "n_train": step.task.n_train,
        "rounds": rounds,
        "steps_per_round": steps,
        "seconds_per_step_median": med,
        "samples": samples,
        "cpu_busy_share": share,
        "load_avg_per_round": loads,
        "ratios": ratios,
        "fastest_threads_busy": best_busy,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"threads-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {path}")
    return result


if __name__ == "__main__":
    main()
