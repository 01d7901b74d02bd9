"""groklab speed benchmark: one command, side-by-side ratios measured in one run, JSON out.

    python3 benchmarks/run.py                 # the standard set (a few minutes on 2 CPU cores)
    python3 benchmarks/run.py --quick         # fewer rounds and steps (about a minute)
    python3 benchmarks/run.py --grok          # + time to grok, estimated (see below)
    python3 benchmarks/run.py --grok full     # + time to grok, both measured (about an hour)
    python3 benchmarks/run.py --grokfast      # + Grokfast vs none, steps to 99% (long)

What it measures, all in this one process, interleaved round by round so that a change of
machine load hits both sides of every ratio alike:

1. the canonical step (nanda2023: 3,830 training rows, full batch): the baseline — a plain loop
   written the way the published code is (``benchmarks/baseline.py``) — against groklab's
   real trainer (``run_training`` for a number of steps, evaluation and checkpoints at the
   preset's schedule, divided by the steps), and groklab's bare step (forward, backward,
   optimiser);
2. the machine's ceiling: the FLOP/s of a large float32 matmul, and the step's counted FLOPs
   (``torch.utils.flop_counter``) over its time, as a fraction of that;
3. where a step's time goes (``torch.profiler``, grouped);
4. many seeds at once: K models as one stack (``train_many``) against K runs one after
   another, in model-steps per second, on ``smoke`` and ``nanda2023``;
5. optionally the wall time to grok and the Grokfast comparison.

Times are wall-clock medians; the CPU time of the process is reported next to them because a
shared machine's load changes wall time much more than CPU time. The load average is recorded.
Results go to ``benchmarks/results/bench-<time>.json`` and ``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import groklab  # noqa: E402
from baseline import BaselineTrainer, load_groklab_weights  # noqa: E402
from groklab.config import RunConfig  # noqa: E402
from groklab.models import build_model  # noqa: E402
from groklab.run import load_run  # noqa: E402
from groklab.tasks import build_task  # noqa: E402
from groklab.train.ensemble import seed_configs, train_many  # noqa: E402
from groklab.train.loop import resolve_device, run_training  # noqa: E402
from groklab.train.losses import token_losses  # noqa: E402
from groklab.train.optim import make_optimizer  # noqa: E402

RESULTS = ROOT / "results"


# --------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Wall and process CPU time of a block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> _Clock:
        _sync(self.device)
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        _sync(self.device)
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _fmt_ms(s: float) -> str:
    return f"{s * 1e3:8.2f}"


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n== {title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def matmul_flops(device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an ``n × n @ n × n`` float32 matmul (the machine's ceiling)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    best = math.inf
    for _ in range(reps + 1):
        with _Clock(device) as c:
            torch.mm(a, b)
        best = min(best, c.wall)
    return 2 * n**3 / best


# --------------------------------------------------------------------------- the canonical step


class _GroklabStep:
    """groklab's training step on a config's full batch, as the trainer runs it."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.task = build_task(cfg.data)
        self.model = build_model(cfg.model, self.task, seed=cfg.train.seed).to(device)
        self.opt = make_optimizer(list(self.model.parameters()), cfg.optim)
        self.x, self.y = self.task.train_x.to(device), self.task.train_y.to(device)
        self.dtype = torch.float64 if cfg.train.loss_dtype == "float64" else torch.float32
        self.kind = cfg.train.loss

    def forward_backward(self) -> None:
        logits = self.model(self.x, n_scored=self.task.n_scored)
        loss = token_losses(logits, self.y, kind=self.kind, dtype=self.dtype).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()

    def __call__(self) -> None:
        self.forward_backward()
        self.opt.step()


def _baseline(cfg: RunConfig, device: torch.device, *, track_acc: bool = False) -> BaselineTrainer:
    task = build_task(cfg.data)
    return BaselineTrainer(
        (task.train_x, task.train_y[:, -1]),
        (task.test_x, task.test_y[:, -1]),
        d_vocab=task.d_vocab,
        d_vocab_out=task.d_vocab_out,
        seed=cfg.train.seed,
        device=device,
        track_acc=track_acc,
    )


def _baseline_work(base: BaselineTrainer) -> None:
    """The arithmetic of one baseline step (the flop counter's module tracker cannot run
    under no_grad or inference mode, so the test forward is counted with grad on)."""
    from baseline import baseline_loss

    baseline_loss(base.model(base.train_x), base.train_y).backward()
    base.model(base.test_x)
    base.opt.zero_grad()


def count_flops(fn: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def bench_step(
    cfg: RunConfig, device: torch.device, *, rounds: int, loop_steps: int, tmp: Path
) -> dict[str, Any]:
    """Baseline step vs groklab's trainer and bare step, interleaved round by round."""
    base = _baseline(cfg, device)
    step = _GroklabStep(cfg, device)
    for _ in range(2):  # warm up allocator, kernels, caches
        base.step()
        step()
    n_base, n_bare = 3, 20
    res: dict[str, list[float]] = {
        k: [] for k in ("base", "base_cpu", "bare", "bare_cpu", "loop", "loop_cpu")
    }
    loop_cfg = replace(cfg, train=replace(cfg.train, steps=loop_steps, device=str(device)))
    for r in range(rounds):
        with _Clock(device) as c:
            for _ in range(n_base):
                base.step()
        res["base"].append(c.wall / n_base)
        res["base_cpu"].append(c.cpu / n_base)
        with _Clock(device) as c:
            for _ in range(n_bare):
                step()
        res["bare"].append(c.wall / n_bare)
        res["bare_cpu"].append(c.cpu / n_bare)
        # The real trainer: evaluation every eval_every and checkpoints (weights, full state,
        # metrics) every checkpoint_every steps, as the preset schedules them.
        with _Clock(device) as c:
            out = run_training(loop_cfg, tmp / f"loop{r}", progress=False)
        m = load_run(out).manifest
        res["loop"].append(m["seconds_per_step"])
        res["loop_cpu"].append(c.cpu / loop_steps)
    med = {k: _med(v) for k, v in res.items()}
    flops_bare = count_flops(step.forward_backward)
    flops_base = count_flops(lambda: _baseline_work(base))
    return {
        "config": cfg.name,
        "n_train": step.task.n_train,
        "n_test": step.task.n_test,
        "rounds": rounds,
        "loop_steps_per_round": loop_steps,
        "eval_every": cfg.train.eval_every,
        "checkpoint_every": cfg.train.checkpoint_every,
        "seconds": med,
        "samples": res,
        "ratio_loop": med["base"] / med["loop"],
        "ratio_bare": med["base"] / med["bare"],
        "ratio_loop_cpu": med["base_cpu"] / med["loop_cpu"],
        "flops_groklab_step": flops_bare,
        "flops_baseline_step": flops_base,
    }


def profile_step(cfg: RunConfig, device: torch.device, *, steps: int = 10) -> dict[str, Any]:
    """Where the bare step's time goes, by op and by kind of work."""
    from torch.profiler import ProfilerActivity, profile

    step = _GroklabStep(cfg, device)
    for _ in range(3):
        step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with _Clock(device) as plain:
        for _ in range(steps):
            step()
    with _Clock(device) as profiled, profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ops = [(e.key, getattr(e, attr) / steps / 1e3, e.count // steps) for e in prof.key_averages()]
    ops = [o for o in ops if o[1] > 0 and o[0].startswith("aten::")]
    ops.sort(key=lambda o: -o[1])
    total = sum(o[1] for o in ops)

    def kind(name: str) -> str:
        n = name.removeprefix("aten::")
        if n in ("mm", "addmm", "bmm", "baddbmm", "matmul"):
            return "matmul (MLP, unembedding, attention tables)"
        if "embedding" in n or n in ("index_select", "gather", "scatter_add_", "sort", "index"):
            return "table lookups and their backward"
        if "softmax" in n or n in ("nll_loss", "nll_loss_backward"):
            return "softmax / log-softmax"
        if "adam" in n or "foreach" in n:
            return "optimiser"
        if "threshold" in n or n in ("relu", "clamp_min"):
            return "ReLU fwd/bwd"
        if n in ("copy_", "_to_copy", "fill_", "zero_", "cat", "stack", "clone", "contiguous"):
            return "copies, casts, fills"
        return "other elementwise / reductions"

    groups: dict[str, float] = {}
    for name, ms, _ in ops:
        groups[kind(name)] = groups.get(kind(name), 0.0) + ms
    return {
        "ms_per_step_profiled": total,
        # Op times are wall clock: a thread descheduled inside an op (a loaded machine) counts
        # that time against the op. Compare the profiled wall time with its CPU time per thread.
        "ms_per_step_unprofiled_wall": plain.wall / steps * 1e3,
        "ms_per_step_profiled_wall": profiled.wall / steps * 1e3,
        "ms_per_step_profiled_cpu": profiled.cpu / steps * 1e3,
        "threads": torch.get_num_threads(),
        "top_ops": [{"op": n, "ms": ms, "calls": c} for n, ms, c in ops[:15]],
        "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
    }


# --------------------------------------------------------------------------- many seeds


def bench_seeds(
    cfg: RunConfig, device: torch.device, *, k: int, steps: int, rounds: int, tmp: Path
) -> dict[str, Any]:
    """K runs one after another vs the same K runs as one stack (model-steps per second)."""
    cfg = replace(cfg, train=replace(cfg.train, steps=steps, device=str(device)))
    cfgs = seed_configs(cfg, list(range(k)))
    seq_loop, seq_total, stk_loop, stk_total = [], [], [], []
    for r in range(rounds):
        with _Clock(device) as c:
            paths = [
                run_training(c_, tmp / f"seq{r}-{i}", progress=False) for i, c_ in enumerate(cfgs)
            ]
        seq_total.append(c.wall)
        seq_loop.append(sum(load_run(p).manifest["wall_seconds"] for p in paths))
        with _Clock(device) as c:
            runs = train_many(cfgs, [tmp / f"stk{r}-{i}" for i in range(k)])
        stk_total.append(c.wall)
        stk_loop.append(runs[0].manifest["wall_seconds"])
    model_steps = k * steps
    out = {
        "config": cfg.name,
        "k": k,
        "steps": steps,
        "rounds": rounds,
        "sequential_loop_s": _med(seq_loop),
        "stacked_loop_s": _med(stk_loop),
        "sequential_total_s": _med(seq_total),
        "stacked_total_s": _med(stk_total),
    }
    out["sequential_model_steps_per_s"] = model_steps / out["sequential_loop_s"]
    out["stacked_model_steps_per_s"] = model_steps / out["stacked_loop_s"]
    out["ratio"] = out["sequential_loop_s"] / out["stacked_loop_s"]
    out["ratio_total"] = out["sequential_total_s"] / out["stacked_total_s"]
    return out


# --------------------------------------------------------------------------- time to grok


def _grokked_run(path: Path) -> tuple[int | None, str]:
    try:
        run = load_run(path)
    except groklab.GroklabError:
        return None, f"{path}: no run there"
    step = run.summary().get("grokking_step")
    if step is None:
        return None, f"{path}: has not reached 99% test accuracy (status {run.status})"
    return int(step), f"{path} (status {run.status})"


def bench_grok(
    cfg: RunConfig, device: torch.device, mode: str, step_res: dict[str, Any], tmp: Path, run: Path
) -> dict[str, Any]:
    if mode == "estimate":
        base_s, loop_s = step_res["seconds"]["base"], step_res["seconds"]["loop"]
        grok_step, source = _grokked_run(run)
        if grok_step is None:
            return {"mode": "estimate", "error": source}
        return {
            "mode": "estimate",
            "how": "steps to 99% test accuracy of a real groklab run × the per-step times measured "
            "above; the baseline is assumed to grok at the same step (same numerics)",
            "grok_step": grok_step,
            "source": source,
            "groklab_s": grok_step * loop_s,
            "baseline_s": grok_step * base_s,
            "ratio": base_s / loop_s,
        }
    grok_cfg = replace(
        cfg, train=replace(cfg.train, stop_test_acc=0.99, stop_patience=0, device=str(device))
    )
    with _Clock(device) as c:
        out = run_training(grok_cfg, tmp / "grok", progress=False)
    run_g = load_run(out)
    g_step = run_g.summary()["grokking_step"]
    res: dict[str, Any] = {
        "mode": "full",
        "how": "both measured from the same initial weights (groklab's step-0 checkpoint copied "
        "into the baseline model): groklab's trainer until test acc >= 99% at an evaluation; "
        "the baseline loop until its per-step test accuracy >= 99%",
        "seed": cfg.train.seed,
        "grok_step": g_step,
        "groklab_s": c.wall,
        "groklab_cpu_s": c.cpu,
    }
    base = _baseline(cfg, device, track_acc=True)
    init = {k: v.detach().to(device) for k, v in run_g.model_at(0).named_parameters()}
    load_groklab_weights(base.model, init)
    limit = 2 * (g_step or cfg.train.steps)
    with _Clock(device) as c:
        for _ in range(limit):
            base.step()
            if base.test_accs[-1] >= 0.99:
                break
    res.update(
        {
            "baseline_grok_step": len(base.test_accs) if base.test_accs[-1] >= 0.99 else None,
            "baseline_s": c.wall,
            "baseline_cpu_s": c.cpu,
        }
    )
    res["ratio"] = res["baseline_s"] / res["groklab_s"]
    return res


# --------------------------------------------------------------------------- Grokfast


def bench_grokfast(
    cfg: RunConfig, device: torch.device, *, seeds: int, steps: int, tmp: Path
) -> dict[str, Any]:
    """Steps to 99% test accuracy without and with the Grokfast-EMA filter, weight decay equal.

    Each arm is one stack of ``seeds`` models (``train_many``); a model stops at the first
    evaluation with test accuracy >= 99%. The runs are written under ``tmp`` (``gf-<arm>-<seed>``),
    so a long comparison that is stopped early can still be read from its run directories.
    The filtered arm runs first: it is the short one.
    """
    cfg = replace(
        cfg,
        train=replace(
            cfg.train,
            steps=steps,
            stop_test_acc=0.99,
            stop_patience=0,
            device=str(device),
            eval_every=min(cfg.train.eval_every, 50),
            # Fewer weight files; metrics are still written at every checkpoint.
            checkpoint_every=max(cfg.train.checkpoint_every, 500),
        ),
    )
    arms = {
        "grokfast-ema": replace(cfg, optim=replace(cfg.optim, grokfast="ema")),
        "none": cfg,
    }
    out: dict[str, Any] = {
        "config": cfg.name,
        "weight_decay": cfg.optim.weight_decay,
        "alpha": cfg.optim.grokfast_alpha,
        "lambda": cfg.optim.grokfast_lambda,
        "max_steps": steps,
        "eval_every": cfg.train.eval_every,
        "arms": {},
    }
    for name, arm in arms.items():
        with _Clock(device) as c:
            runs = train_many(
                seed_configs(arm, list(range(seeds))),
                [tmp / f"gf-{name}-{s}" for s in range(seeds)],
            )
        hit = [r.summary()["grokking_step"] for r in runs]
        got = [h for h in hit if h is not None]
        out["arms"][name] = {
            "steps_to_99": hit,
            "mean": statistics.fmean(got) if got else None,
            "std": statistics.stdev(got) if len(got) > 1 else None,
            "reached": f"{len(got)}/{seeds}",
            "wall_s": c.wall,
            "cpu_s": c.cpu,
        }
    a, b = out["arms"]["none"]["mean"], out["arms"]["grokfast-ema"]["mean"]
    out["speedup"] = a / b if a and b else None
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seeds-k", type=int, default=8, help="models per stack (default 8)")
    ap.add_argument(
        "--grok",
        nargs="?",
        const="estimate",
        choices=("estimate", "full"),
        help="time to grok: 'estimate' (default; needs a grokked run, see --grok-run) or "
        "'full' (both measured, about an hour on 2 CPU cores)",
    )
    ap.add_argument(
        "--grok-run",
        type=Path,
        default=ROOT.parent / "runs" / "nanda2023",
        help="the grokked canonical run whose grokking step --grok estimate uses",
    )
    ap.add_argument("--grokfast", action="store_true", help="Grokfast vs none, steps to 99%%")
    ap.add_argument("--grokfast-preset", default="nanda2023", help="config of --grokfast")
    ap.add_argument("--grokfast-seeds", type=int, default=3)
    ap.add_argument("--grokfast-steps", type=int, default=20_000, help="step budget per run")
    ap.add_argument(
        "--grokfast-dir",
        type=Path,
        default=None,
        help="keep the --grokfast runs in this folder (default: a temporary one)",
    )
    ap.add_argument(
        "--only",
        choices=("step", "seeds", "grok", "grokfast"),
        help="run just this section (step = canonical step, ceiling and profile; grok = --grok "
        "full alone)",
    )
    ap.add_argument(
        "--grok-seed",
        type=int,
        default=None,
        help="train.seed of --grok full (default the preset's; seed 2 groks at ~4,400 steps)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)  # benchmark-level setting, recorded below
    device = resolve_device(args.device)
    q = args.quick
    canon = groklab.get_preset("nanda2023")
    smoke = groklab.get_preset("smoke")
    result: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": {
            "device": str(device),
            "device_name": (
                torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else platform.processor()
            ),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_avg_start": _load(),
        },
    }
    print(
        f"groklab benchmark on {device} ({result['machine']['device_name'] or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {result['machine']['load_avg_start']:.2f}"
    )
    do = {
        "step": args.only in (None, "step"),
        "seeds": args.only in (None, "seeds"),
        "grok": (args.only is None and args.grok is not None) or args.only == "grok",
        "grokfast": args.only == "grokfast" or (args.only is None and args.grokfast),
    }
    with tempfile.TemporaryDirectory(prefix="groklab-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if do["step"]:
            _section_step(result, canon, device, q, tmp)
        if do["seeds"]:
            _section_seeds(result, smoke, canon, device, q, args.seeds_k, tmp)
        if do["grok"]:
            grok_cfg = canon
            if args.grok_seed is not None:
                grok_cfg = replace(canon, train=replace(canon.train, seed=args.grok_seed))
            mode = "full" if args.only == "grok" else args.grok
            _section_grok(result, grok_cfg, device, mode, args.grok_run, tmp)
        if do["grokfast"]:
            gf_cfg = groklab.get_preset(args.grokfast_preset)
            gf_dir = args.grokfast_dir if args.grokfast_dir is not None else tmp / "gf"
            _section_grokfast(result, gf_cfg, device, args, gf_dir)
    result["machine"]["load_avg_end"] = _load()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(result, indent=2, default=float)
    (args.out / f"bench-{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    print(
        f"\nload average {result['machine']['load_avg_start']:.2f} → "
        f"{result['machine']['load_avg_end']:.2f}; results in {args.out / f'bench-{stamp}.json'}"
    )
    return result


def _section_step(
    result: dict[str, Any], canon: RunConfig, device: torch.device, q: bool, tmp: Path
) -> None:
    mm0 = matmul_flops(device)
    step = bench_step(
        canon, device, rounds=3 if q else 5, loop_steps=100 if q else 200, tmp=tmp / "step"
    )
    mm1 = matmul_flops(device)
    ceiling = max(mm0, mm1)
    s = step["seconds"]
    step["matmul_flops_per_s"] = ceiling
    step["achieved_flops_per_s_loop"] = step["flops_groklab_step"] / s["loop"]
    step["achieved_flops_per_s_bare"] = step["flops_groklab_step"] / s["bare"]
    step["fraction_of_matmul_loop"] = step["achieved_flops_per_s_loop"] / ceiling
    step["fraction_of_matmul_bare"] = step["achieved_flops_per_s_bare"] / ceiling
    step["baseline_flops_per_s"] = step["flops_baseline_step"] / s["base"]
    result["canonical_step"] = step
    _table(
        f"canonical step (nanda2023, {step['n_train']} train rows, full batch); "
        f"medians of {step['rounds']} interleaved rounds",
        ["", "wall ms/step", "cpu ms/step", "× faster (wall)", "× faster (cpu)"],
        [
            [
                "baseline (published-style loop)",
                _fmt_ms(s["base"]),
                _fmt_ms(s["base_cpu"]),
                "1.00",
                "1.00",
            ],
            [
                f"groklab trainer (eval {step['eval_every']}, ckpt {step['checkpoint_every']})",
                _fmt_ms(s["loop"]),
                _fmt_ms(s["loop_cpu"]),
                f"{step['ratio_loop']:.2f}",
                f"{step['ratio_loop_cpu']:.2f}",
            ],
            [
                "groklab bare step (fwd+bwd+AdamW)",
                _fmt_ms(s["bare"]),
                _fmt_ms(s["bare_cpu"]),
                f"{step['ratio_bare']:.2f}",
                f"{s['base_cpu'] / s['bare_cpu']:.2f}",
            ],
        ],
    )
    _table(
        "machine ceiling",
        ["", "GFLOP/step", "GFLOP/s", "% of matmul"],
        [
            ["large float32 matmul (2048³)", "", f"{ceiling / 1e9:.1f}", "100.0"],
            [
                "groklab step, trainer time",
                f"{step['flops_groklab_step'] / 1e9:.3f}",
                f"{step['achieved_flops_per_s_loop'] / 1e9:.1f}",
                f"{100 * step['fraction_of_matmul_loop']:.1f}",
            ],
            [
                "groklab step, bare time",
                f"{step['flops_groklab_step'] / 1e9:.3f}",
                f"{step['achieved_flops_per_s_bare'] / 1e9:.1f}",
                f"{100 * step['fraction_of_matmul_bare']:.1f}",
            ],
            [
                "baseline step (incl. test forward)",
                f"{step['flops_baseline_step'] / 1e9:.3f}",
                f"{step['baseline_flops_per_s'] / 1e9:.1f}",
                f"{100 * step['baseline_flops_per_s'] / ceiling:.1f}",
            ],
        ],
    )

    prof = profile_step(canon, device)
    result["profile"] = prof
    tot = prof["ms_per_step_profiled"]
    busy = prof["ms_per_step_profiled_cpu"] / prof["threads"] / prof["ms_per_step_profiled_wall"]
    print(
        f"\nprofiled step: {prof['ms_per_step_profiled_wall']:.1f} ms wall "
        f"({prof['ms_per_step_unprofiled_wall']:.1f} unprofiled), "
        f"{prof['ms_per_step_profiled_cpu']:.1f} ms CPU on {prof['threads']} threads"
        + (
            "; op times are wall clock and the threads were busy only "
            f"{100 * busy:.0f}% of it: a loaded machine inflates them"
            if busy < 0.8
            else ""
        )
    )
    _table(
        f"where groklab's canonical step goes (torch.profiler, {tot:.1f} ms/step of op time)",
        ["kind of work", "ms/step", "share"],
        [[g, f"{ms:.2f}", f"{100 * ms / tot:.0f}%"] for g, ms in prof["groups"].items()],
    )
    _table(
        "top ops",
        ["op", "ms/step", "calls/step"],
        [[o["op"], f"{o['ms']:.2f}", str(o["calls"])] for o in prof["top_ops"][:12]],
    )


def _section_seeds(
    result: dict[str, Any],
    smoke: RunConfig,
    canon: RunConfig,
    device: torch.device,
    q: bool,
    k: int,
    tmp: Path,
) -> None:
    seeds_res = [
        bench_seeds(
            smoke,
            device,
            k=k,
            steps=100 if q else 300,
            rounds=1 if q else 2,
            tmp=tmp / "sm",
        ),
        bench_seeds(
            canon, device, k=k, steps=30 if q else 100, rounds=1 if q else 2, tmp=tmp / "cn"
        ),
    ]
    result["many_seeds"] = seeds_res
    _table(
        f"many seeds at once: K = {k} as one stack vs {k} runs one after another "
        "(trainer loop time, eval and checkpoints included)",
        [
            "config",
            "steps",
            "sequential model-steps/s",
            "stacked model-steps/s",
            "× faster",
        ],
        [
            [
                r["config"],
                str(r["steps"]),
                f"{r['sequential_model_steps_per_s']:.1f}",
                f"{r['stacked_model_steps_per_s']:.1f}",
                f"{r['ratio']:.2f}",
            ]
            for r in seeds_res
        ],
    )


def _section_grok(
    result: dict[str, Any], canon: RunConfig, device: torch.device, mode: str, run: Path, tmp: Path
) -> None:
    step = result.get("canonical_step", {})
    g = bench_grok(canon, device, mode, step, tmp / "grok", run)
    result["time_to_grok"] = g
    if "error" in g:
        print(f"\n== time to grok: not available ({g['error']})")
    else:
        _table(
            f"time to grok the canonical run ({g['mode']}: {g['how']})",
            ["", "steps", "wall"],
            [
                [
                    "baseline",
                    str(g.get("baseline_grok_step", g["grok_step"])),
                    f"{g['baseline_s'] / 60:.1f} min",
                ],
                ["groklab", str(g["grok_step"]), f"{g['groklab_s'] / 60:.1f} min"],
                ["× faster", "", f"{g['ratio']:.2f}"],
            ],
        )


def _section_grokfast(
    result: dict[str, Any], gf_cfg: RunConfig, device: torch.device, args: Any, tmp: Path
) -> None:
    gf = bench_grokfast(
        gf_cfg, device, seeds=args.grokfast_seeds, steps=args.grokfast_steps, tmp=tmp
    )
    result["grokfast"] = gf
    _table(
        f"Grokfast-EMA (α {gf['alpha']}, λ {gf['lambda']}) vs none on {gf['config']}, "
        f"weight decay {gf['weight_decay']} in both, test accuracy checked every "
        f"{gf['eval_every']} steps, budget {gf['max_steps']} steps",
        ["arm", "steps to 99% per seed", "mean", "std", "reached", "wall"],
        [
            [
                name,
                ", ".join("-" if h is None else str(h) for h in a["steps_to_99"]),
                "-" if a["mean"] is None else f"{a['mean']:.0f}",
                "-" if a["std"] is None else f"{a['std']:.0f}",
                a["reached"],
                f"{a['wall_s'] / 60:.1f} min",
            ]
            for name, a in gf["arms"].items()
        ],
    )
    if gf["speedup"]:
        print(f"Grokfast reaches 99% in {1 / gf['speedup']:.2f}× the steps of no filter")


if __name__ == "__main__":
    main()
