"""Wall time of one sweep of small runs with 1 worker versus 2 workers (local backend).

    python3 benchmarks/bench_sweep.py [--runs 8] [--steps 500]

Both sweeps train the same runs into fresh directories; the 2-worker time includes starting
the worker processes. 1 worker trains in this process with torch's default threads (all
cores); 2 workers get cores // 2 threads each; a third sweep runs 1 worker with 1 thread.
Prints one JSON object with the times, the ratios (2 workers / 1 worker; 0.5 = perfect
scaling on 2 cores) and the load average before and after, since other work on the machine
distorts the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from groklab.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from groklab.sweep import _cores, run_many


def _configs(n: int, steps: int) -> list[RunConfig]:
    return [
        RunConfig(
            name=f"bench{i}",
            data=DataConfig(p=47, train_fraction=0.4),
            model=ModelConfig(d_model=64, n_heads=4, d_head=16, d_mlp=256),
            optim=OptimConfig(lr=3e-3, weight_decay=1.0),
            train=TrainConfig(
                steps=steps, eval_every=50, checkpoint_every=250, seed=i, device="cpu"
            ),
        )
        for i in range(n)
    ]


def _time(workers: int, configs: list[RunConfig], root: Path, tag: str = "") -> float:
    outs = [root / f"w{workers}{tag}" / c.name for c in configs]
    t0 = time.perf_counter()
    res = run_many(configs, outs, workers=workers, progress=False)
    dt = time.perf_counter() - t0
    bad = [r for r in res if r["status"] != "completed"]
    if bad:
        raise SystemExit(f"benchmark run failed: {bad[0]['error']}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=500)
    args = ap.parse_args()
    configs = _configs(args.runs, args.steps)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        t1 = _time(1, configs, Path(tmp))
        t2 = _time(2, configs, Path(tmp))
        # 1 worker held to 1 torch thread: the per-worker speed, so that t2 / t1_1thread is
        # the parallel efficiency even when other load makes thread counts matter
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t1_1 = _time(1, configs, Path(tmp), "t1")
        finally:
            torch.set_num_threads(threads)
    load_after = os.getloadavg()
    print(
        json.dumps(
            {
                "benchmark": "sweep 1 worker vs 2 workers",
                "cores": _cores(),
                "runs": args.runs,
                "steps_per_run": args.steps,
                "seconds_1_worker": round(t1, 2),
                "seconds_2_workers": round(t2, 2),
                "ratio_2_over_1": round(t2 / t1, 3),
                "seconds_1_worker_1_thread": round(t1_1, 2),
                "ratio_2_over_1_worker_1_thread": round(t2 / t1_1, 3),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in load_after],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
