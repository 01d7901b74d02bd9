"""Key frequencies of one checkpoint under the former and the current rule, side by side.

    python3 benchmarks/key_freq_rules.py RUN_DIR [--step S] [--op OP] [--generator G] [--json F]

For the checkpoint at step ``S`` (default: the final one) and each operation (default: all),
prints the logit power per frequency (strongest first, with the gap to the next in decades),
then for each rule — the former "at least 0.1 × the strongest power" and the current largest
gap (:func:`groklab.analysis.fourier.key_frequencies`) — the key frequencies, the variance of
the logits explained by ``Σ_k A_k cos(w_k(s − c))`` on them, the restricted loss (test rows;
and on the training rows) and the excluded loss (training rows). The train/test loss of the
answer-class logits is printed for reference. ``--json F`` also writes the numbers to ``F``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from groklab.analysis import fourier as fr
from groklab.analysis.progress import excluded_loss, grid_logits, restricted_loss, split_metrics
from groklab.run import load_run

FORMER_FRACTION = 0.1


def compare(run_dir: Path, step: int | None, ops: list[str] | None, generator: int | None) -> dict:
    run = load_run(run_dir)
    steps = run.checkpoint_steps
    step = steps[-1] if step is None else step
    task = run.task  # the run decides its split (an imported run: its own)
    ops = ops or list(task.info["operations"])
    model = run.model_at(step)
    out: dict = {"run": str(run_dir), "step": step, "ops": {}}
    for op in ops:
        grid = fr.operation_grid(task, op, generator=generator)
        (logits,), _ = grid_logits(model, [grid])
        power = fr.logit_frequency_power(logits, grid)
        train_loss = split_metrics(logits, grid, grid.train)[0]
        test_loss = split_metrics(logits, grid, grid.test)[0]
        rules = {
            f"former (>= {FORMER_FRACTION} x strongest)": fr.key_frequencies_above(
                power, FORMER_FRACTION
            ),
            f"current (largest gap >= {fr.KEY_FREQ_MIN_GAP:g} decade, <= {fr.KEY_FREQ_MAX})": (
                fr.key_frequencies(power)
            ),
        }
        res = {}
        for name, keys in rules.items():
            res[name] = {
                "key_freqs": keys,
                "logit_fve": fr.logit_fit(logits, grid, keys).fve,
                "restricted_loss": restricted_loss(logits, grid, keys),
                "restricted_train_loss": restricted_loss(logits, grid, keys, rows=grid.train),
                "excluded_loss": excluded_loss(logits, grid, keys),
            }
        order = sorted(range(1, len(power)), key=lambda k: -float(power[k]))
        out["ops"][op] = {
            "generator": grid.generator,
            "train_loss": train_loss,
            "test_loss": test_loss,
            "power": {int(k): float(power[k]) for k in order},
            "rules": res,
        }
    return out


def _print(result: dict, top: int) -> None:
    print(f"{result['run']}  step {result['step']}")
    for op, r in result["ops"].items():
        gen = f" (discrete log, generator {r['generator']})" if r["generator"] is not None else ""
        print(f"\n{op}{gen}: train loss {r['train_loss']:.4g}, test loss {r['test_loss']:.4g}")
        print("  logit power by frequency, strongest first (gap to the next, decades):")
        items = list(r["power"].items())
        for i, (k, v) in enumerate(items[:top]):
            nxt = items[i + 1][1] if i + 1 < len(items) else 0.0
            gap = math.log10(v / nxt) if v > 0 and nxt > 0 else math.inf
            print(f"    {k:>4}  {v:10.3e}  ({gap:.2f})")
        for name, s in r["rules"].items():
            keys = ", ".join(map(str, s["key_freqs"])) or "none"
            print(f"  {name}: {keys}")
            print(
                f"    logit fit FVE {s['logit_fve']:.4f}; restricted loss {s['restricted_loss']:.4g}"
                f" (train rows {s['restricted_train_loss']:.4g}); excluded loss "
                f"{s['excluded_loss']:.4g}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: final)")
    ap.add_argument("--op", action="append", default=None, help="operation (default: all)")
    ap.add_argument("--generator", type=int, default=None, help="generator of Z_p* for mul/div")
    ap.add_argument("--top", type=int, default=12, help="frequencies to list (default 12)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    result = compare(args.run_dir, args.step, args.op, args.generator)
    _print(result, args.top)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
