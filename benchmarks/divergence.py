"""How far two float orders of one training drift apart: the numbers behind the tolerances of
the stacked-vs-alone tests in ``tests/test_ensemble.py``.

    PYTHONPATH=src python3 benchmarks/divergence.py      # about a minute on 2 cores

A model trained in a stack (``train_many``) runs the same arithmetic as the model trained
alone, but through batched kernels whose float summation order depends on the stack size and
on the CPU (MKL/oneDNN block differently on Intel, AMD and ARM): on this Intel machine the two
agree bit for bit, on an AMD EPYC they did not, and training amplifies the difference step by
step. No CPU's order is privileged, so the scale of "same arithmetic, other order" is measured
as the float32 run's distance from the same run in float64 (same initial weights): any two
float32 orders differ by about that much (at most about twice it).

For each test case it trains the case's seeds alone in float32, alone in float64 and as one
stack, and prints, per logged step, the largest difference over the seeds (up to the step
each stops at): any loss (absolute), any weight norm (relative), accuracy (test examples that
flipped), and the weights at the last checkpoint (absolute, relative to the largest weight).
The tests' tolerances are at least 10× the float64 column at the case's last step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import tiny_config  # noqa: E402
from groklab.run import Run, load_run  # noqa: E402
from groklab.train.ensemble import train_many  # noqa: E402
from groklab.train.loop import run_training  # noqa: E402

# name -> (seeds, train, optim, model): the cases of test_models_stop_early_on_their_own and
# test_stack_equals_runs_alone, as those tests build them
CASES: dict[str, tuple[list[int], dict, dict, dict]] = {
    "stop-plain": ([0, 1, 2, 3], {"steps": 50, "stop_test_acc": 0.19}, {"lr": 2e-2}, {}),
    "stop-ma": (
        [4, 5, 6, 7],
        {"steps": 40, "stop_test_acc": 0.09},
        {"lr": 1.5e-2, "grokfast": "ma", "grokfast_window": 3},
        {},
    ),
    "stop-minibatch-ema": (
        [2, 4, 5, 6],
        {"steps": 40, "stop_test_acc": 0.12, "batch_size": 64},
        {"lr": 1.5e-2, "grokfast": "ema"},
        {},
    ),
    "full": ([0, 1, 2], {}, {}, {}),
    "minibatch": ([0, 1, 2], {"batch_size": 16}, {}, {}),
    "mlp": ([0, 1, 2], {}, {}, {"arch": "mlp", "n_layers": 2}),
    "2layer-ln": ([0, 1, 2], {}, {}, {"n_layers": 2, "layernorm": True}),
    "filters": ([0, 1, 2], {}, {"grokfast": "ema", "perp_grad": True}, {}),
}


def _configs(name: str) -> list:
    seeds, train, optim, model = CASES[name]
    return [
        tiny_config(
            name=f"m{s}",
            train={**train, "seed": s},
            data={"split_seed": s},
            optim=optim,
            model=model,
        )
        for s in seeds
    ]


def _diffs(a: Run, b: Run) -> dict[int, tuple[float, float, float]]:
    """Per common logged step: (max abs loss diff, max rel weight-norm diff, acc flips)."""
    ma, mb = a.metrics.set_index("step"), b.metrics.set_index("step")
    loss = [c for c in ma.columns if c.endswith("/loss")]
    norms = [c for c in ma.columns if c.startswith("wnorm/")]
    n_test = a.task.n_test
    out = {}
    for s in ma.index.intersection(mb.index):
        dl = max(abs(ma.at[s, c] - mb.at[s, c]) for c in loss)
        dn = max(
            (abs(ma.at[s, c] - mb.at[s, c]) / abs(ma.at[s, c]) for c in norms if ma.at[s, c]),
            default=0.0,
        )
        flips = round(abs(ma.at[s, "test/acc"] - mb.at[s, "test/acc"]) * n_test)
        out[int(s)] = (float(dl), float(dn), float(flips))
    return out


def _weights_diff(a: Run, b: Run) -> tuple[float, float]:
    """(max abs diff, that over the largest weight) of the weights at the last checkpoint."""
    last = min(a.checkpoint_steps[-1], b.checkpoint_steps[-1])
    wa, wb = a.weights_at(last), b.weights_at(last)
    d = max(float((wa[n].double() - wb[n].double()).abs().max()) for n in wa)
    return d, d / max(float(wa[n].abs().max()) for n in wa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for name in args.cases:
            cfgs = _configs(name)
            alone = [
                load_run(run_training(c, t / f"{name}-a{i}", progress=False))
                for i, c in enumerate(cfgs)
            ]
            f64 = []
            for i, c in enumerate(cfgs):
                w0 = {n: v.double() for n, v in alone[i].weights_at(0).items()}
                torch.set_default_dtype(torch.float64)
                try:
                    path = run_training(c, t / f"{name}-d{i}", progress=False, init_state=w0)
                finally:
                    torch.set_default_dtype(torch.float32)
                f64.append(load_run(path))
            stacked = train_many(cfgs, [t / f"{name}-s{i}" for i in range(len(cfgs))])
            finals = [a.manifest["final_step"] for a in alone]
            print(f"\n== {name}: seeds {CASES[name][0]}, final steps {finals}")
            print(
                f"{'step':>5} | {'stack: loss':>11} {'norm rel':>9} {'flips':>5} | "
                f"{'float64: loss':>13} {'norm rel':>9} {'flips':>5}"
            )
            rows: dict[int, list[float]] = {}
            for a, s, d in zip(alone, stacked, f64, strict=True):
                ds, dd = _diffs(a, s), _diffs(a, d)
                for st in ds:
                    r = rows.setdefault(st, [0.0] * 6)
                    rows[st] = [max(x, y) for x, y in zip(r, ds[st] + dd[st], strict=True)]
            for st, r in sorted(rows.items()):
                print(
                    f"{st:>5} | {r[0]:11.1e} {r[1]:9.1e} {r[2]:5.0f} | "
                    f"{r[3]:13.1e} {r[4]:9.1e} {r[5]:5.0f}"
                )
            ws = [_weights_diff(a, s) for a, s in zip(alone, stacked, strict=True)]
            wd = [_weights_diff(a, d) for a, d in zip(alone, f64, strict=True)]
            print(
                "weights at the last checkpoint, max abs (rel. to largest weight): "
                f"stack {max(w[0] for w in ws):.1e} ({max(w[1] for w in ws):.1e}), "
                f"float64 {max(w[0] for w in wd):.1e} ({max(w[1] for w in wd):.1e})"
            )
            f64_finals = [d.manifest["final_step"] for d in f64]
            same = "same" if f64_finals == finals else f"DIFFERENT: {f64_finals}"
            print(f"early-stopping decisions in float64: {same}")


if __name__ == "__main__":
    main()
