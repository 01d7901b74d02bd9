"""K seeds through the executor: one stacked job versus one job per run (model-steps per second).

    python3 benchmarks/bench_stack.py [--k 1,4,8] [--steps 200] [--rounds 1] [--device cpu]

For each K, the same K seeds of a small modular-addition model ((a + b) mod 47, 40% of the
pairs for training, a 1-layer transformer with d_model 64, full batch) are trained N steps by
``groklab.sweep.run_many`` in this process (``workers=1``, ``threads=1``), once with
``stack=True`` (one job: one ``train_many`` call for the K runs) and once without (K jobs, one
after another), into fresh directories. The time is the whole ``run_many`` call (building
the tasks and models, evaluations, checkpoints, manifests), the median over ``--rounds``.
Prints one JSON object: per K the model-steps per second of both, side by side, and their
ratio (stacked / one job per run), with the load average before and after, since other work
on the machine distorts the ratio. K = 1 is the control: a stack of one is a plain run. One
untimed 2-step run first takes the imports and first kernels out of the first timed arm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from groklab.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from groklab.sweep import run_many


def _configs(k: int, steps: int, device: str) -> list[RunConfig]:
    return [
        RunConfig(
            name=f"bench-s{s}",
            data=DataConfig(p=47, train_fraction=0.4),
            model=ModelConfig(d_model=64, n_heads=4, d_head=16, d_mlp=256),
            optim=OptimConfig(lr=3e-3, weight_decay=1.0),
            train=TrainConfig(
                steps=steps, eval_every=50, checkpoint_every=steps, seed=s, device=device
            ),
        )
        for s in range(k)
    ]


def _seconds(configs: list[RunConfig], root: Path, *, stack: bool) -> float:
    outs = [root / c.name for c in configs]
    t0 = time.perf_counter()
    res = run_many(configs, outs, workers=1, threads=1, progress=False, stack=stack)
    dt = time.perf_counter() - t0
    bad = [r for r in res if r["status"] != "completed"]
    if bad:
        raise SystemExit(f"benchmark run failed: {bad[0]['error']}")
    if stack and len(configs) > 1 and any(r.get("stack") != len(configs) for r in res):
        raise SystemExit("benchmark: the runs were not trained as one stack")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", default="1,4,8", help="stack sizes, comma-separated")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ks = [int(k) for k in args.k.split(",") if k.strip()]
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        # warm-up (imports, first kernels), so the first timed arm does not pay for it
        _seconds(_configs(1, 2, args.device), Path(tmp) / "warm-up", stack=False)
        for k in ks:
            configs = _configs(k, args.steps, args.device)
            alone, stacked = [], []
            for r in range(args.rounds):
                alone.append(_seconds(configs, Path(tmp) / f"alone-k{k}-r{r}", stack=False))
                stacked.append(_seconds(configs, Path(tmp) / f"stack-k{k}-r{r}", stack=True))
            model_steps = k * args.steps
            a, s = statistics.median(alone), statistics.median(stacked)
            rows.append(
                {
                    "k": k,
                    "one_job_per_run_model_steps_per_s": round(model_steps / a, 1),
                    "stacked_model_steps_per_s": round(model_steps / s, 1),
                    "ratio_stacked_over_alone": round(a / s, 3),
                    "one_job_per_run_s": round(a, 2),
                    "stacked_s": round(s, 2),
                }
            )
    load_after = os.getloadavg()
    print(
        json.dumps(
            {
                "benchmark": "K seeds: one stacked job vs one job per run (run_many)",
                "device": args.device,
                "torch_threads": 1,
                "steps": args.steps,
                "rounds": args.rounds,
                "torch": torch.__version__,
                "results": rows,
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in load_after],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
