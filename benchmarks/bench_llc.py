"""LLC estimator speed: groklab's batched SGLD against devinterp 1.3.2, side by side.

    python3 benchmarks/bench_llc.py                       # canonical model at init, 2 rounds
    python3 benchmarks/bench_llc.py --run runs/nanda2023 --step 10000
    python3 benchmarks/bench_llc.py --rounds 3 --threads 1 --out /tmp/llc.json

One estimate of the canonical model (nanda2023: 1-layer transformer, 226,816 parameters,
3,830 training rows) with the same settings on both sides: 4 chains x 200 draws (+ burn-in),
minibatch 512, the same epsilon, gamma and nbeta, the run's float64 log-softmax cross-entropy.
devinterp runs as it is used in the published grokking workflows: ``estimate_learning_coeff_
with_summary`` over a shuffled ``DataLoader`` with its default ``cores=1`` (chains one after
another); groklab runs ``groklab.analysis.llc.estimate_llc_at`` (chains vectorised). The two
are timed alternately (the order swaps every round) in this one process, so a change of
machine load hits both sides; the ratio uses the median wall time of each side (CPU time is
reported too). devinterp is given groklab's full-data ``L(w*)`` as ``init_loss`` (its default
averages a few minibatches, whose noise times nbeta shifts the estimate by several units), so
the two printed estimates are comparable: they should agree within the chains' spread.

The breakdown (once, after the rounds) times the model's forward + backward alone, with no
sampler around it, for as many SGLD steps as one estimate takes: groklab's batched loss over
all chains at once, and the module's own forward one chain at a time (the computation
devinterp cannot avoid). ``devinterp / module fwd+bwd`` bounds the speedup that any sampler
built on this model's forward can reach; ``groklab / batched fwd+bwd`` is groklab's sampler
overhead (noise, updates, minibatches).

Writes ``benchmarks/results/bench_llc.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import groklab
from groklab.analysis import llc
from groklab.train.losses import token_losses

ROOT = Path(__file__).resolve().parent


def _canonical_run(tmp: Path) -> Any:
    """A one-step nanda2023 run: checkpoints at step 0 (the weights at init) and step 1."""
    cfg = groklab.apply_overrides(
        groklab.get_preset("nanda2023"), ["train.steps=1", "train.checkpoint_every=1"]
    )
    out = tmp / "nanda2023-init"
    if not (out / "config.toml").exists():
        groklab.train(cfg, out=out, progress=False)
    return groklab.load_run(out)


def _devinterp_estimate(
    run: Any, step: int, s: llc.LLCSettings, nbeta: float, init_loss: float
) -> dict:
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    model = run.model_at(step)
    task = run.task
    kind = run.config.train.loss
    dtype = torch.float64 if run.config.train.loss_dtype == "float64" else torch.float32
    loader = DataLoader(
        TensorDataset(task.train_x, task.train_y),
        batch_size=s.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(s.seed),
    )

    def evaluate(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return token_losses(m(x, n_scored=task.n_scored), y, kind=kind, dtype=dtype).mean()

    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore")
        out = estimate_learning_coeff_with_summary(
            model,
            loader,
            evaluate=evaluate,
            sampling_method=SGLD,
            optimizer_kwargs={"lr": s.epsilon, "localization": s.gamma, "nbeta": nbeta},
            num_draws=s.draws,
            num_chains=s.chains,
            num_burnin_steps=s.burnin,
            init_loss=init_loss,
            cores=1,
            seed=s.seed,
            device="cpu",
            verbose=False,
        )
    return {"llc": float(out["llc/mean"]), "llc_std": float(out["llc/std"])}


def _model_only(run: Any, step: int, s: llc.LLCSettings, *, steps: int) -> dict[str, float]:
    """Wall and CPU seconds of the model's forward + backward alone for ``steps`` SGLD steps
    of ``s.chains`` chains (scaled to one estimate's ``burnin + draws`` steps)."""
    rl = llc.run_loss(run, step)
    params = rl.params
    names = list(params)
    c, m, n = s.chains, s.batch_size or rl.n, rl.n
    gen = torch.Generator().manual_seed(s.seed)
    stacked = {k: v.expand(c, *v.shape).clone() for k, v in params.items()}
    model = run.model_at(step)
    task = run.task
    kind = run.config.train.loss
    dtype = torch.float64 if run.config.train.loss_dtype == "float64" else torch.float32
    total = s.burnin + s.draws

    def batched() -> None:
        for _ in range(steps):
            rows = torch.rand(c, n, generator=gen).argsort(dim=1)[:, :m]
            leaves = {k: v.detach().requires_grad_() for k, v in stacked.items()}
            loss = rl.loss_fn(leaves, rows)
            torch.autograd.grad(loss.sum(), [leaves[k] for k in names])

    def module() -> None:
        for _ in range(steps * c):
            rows = torch.randperm(n, generator=gen)[:m]
            model.zero_grad(set_to_none=True)
            logits = model(task.train_x[rows], n_scored=task.n_scored)
            token_losses(logits, task.train_y[rows], kind=kind, dtype=dtype).mean().backward()

    out = {}
    for name, fn in (("groklab_batched_fwd_bwd", batched), ("module_fwd_bwd", module)):
        _, w, cpu = _timed(fn)
        out[f"{name}_seconds"] = w * total / steps
        out[f"{name}_cpu_seconds"] = cpu * total / steps
    return out


def _timed(fn: Any) -> tuple[Any, float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="a nanda2023-shaped run (default: the model at init)")
    ap.add_argument("--step", type=int, help="checkpoint of --run (default: its last)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--burnin", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--epsilon", type=float, default=llc.LLCSettings().epsilon)
    ap.add_argument("--gamma", type=float, default=llc.LLCSettings().gamma)
    ap.add_argument(
        "--breakdown-steps",
        type=int,
        default=60,
        help="SGLD steps timed for the model-only breakdown (0 = skip it)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench_llc.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import devinterp  # noqa: F401
    except ImportError:
        raise SystemExit(
            "devinterp is not installed: pip install 'groklab[llc-check]' (devinterp==1.3.2)"
        ) from None
    import tempfile
    from importlib.metadata import version

    with tempfile.TemporaryDirectory() as tmp:
        run = groklab.load_run(args.run) if args.run else _canonical_run(Path(tmp))
        step = args.step if args.step is not None else run.checkpoint_steps[-1]
        s = llc.LLCSettings(
            epsilon=args.epsilon,
            gamma=args.gamma,
            chains=args.chains,
            draws=args.draws,
            burnin=args.burnin,
            batch_size=args.batch_size,
        )
        nbeta = llc.resolve_nbeta(s.nbeta, n=run.task.n_train, batch_size=s.batch_size)
        print(
            f"LLC benchmark: {run.config.name} step {step}, "
            f"{sum(p.numel() for p in run.model_at(step).parameters()):,} parameters, "
            f"{run.task.n_train} training rows; {s.chains} chains x {s.draws} draws "
            f"(+{s.burnin} burn-in), minibatch {s.batch_size}, eps {s.epsilon:g}, "
            f"gamma {s.gamma:g}, nbeta {nbeta:.4g}; torch threads {torch.get_num_threads()}"
        )
        ours_t, theirs_t, ours_c, theirs_c = [], [], [], []
        ours = theirs = None
        init_loss = llc.run_loss(run, step).init_loss
        for r in range(args.rounds):

            def mine() -> llc.LLCResult:
                return llc.estimate_llc_at(run, step, s)

            def theirs_fn() -> dict:
                return _devinterp_estimate(run, step, s, nbeta, init_loss)

            if r % 2 == 0:
                ours, w, c = _timed(mine)
                theirs, w2, c2 = _timed(theirs_fn)
            else:
                theirs, w2, c2 = _timed(theirs_fn)
                ours, w, c = _timed(mine)
            ours_t.append(w)
            ours_c.append(c)
            theirs_t.append(w2)
            theirs_c.append(c2)
            print(
                f"round {r + 1}: groklab {w:.2f} s (LLC {ours.llc:.2f} ± {ours.llc_std:.2f}), "
                f"devinterp {w2:.2f} s (LLC {theirs['llc']:.2f} ± {theirs['llc_std']:.2f})",
                flush=True,
            )
        t_ours, t_theirs = statistics.median(ours_t), statistics.median(theirs_t)
        ratio = t_theirs / t_ours
        cpu_ratio = statistics.median(theirs_c) / statistics.median(ours_c)
        print(
            f"groklab {t_ours:.2f} s vs devinterp 1.3.2 {t_theirs:.2f} s per estimate: "
            f"{ratio:.2f}x faster (CPU time {cpu_ratio:.2f}x)"
        )
        floor: dict[str, float] = {}
        if args.breakdown_steps > 0:
            floor = _model_only(run, step, s, steps=args.breakdown_steps)
            mod, bat = floor["module_fwd_bwd_seconds"], floor["groklab_batched_fwd_bwd_seconds"]
            floor["devinterp_over_module_fwd_bwd"] = t_theirs / mod
            floor["groklab_over_batched_fwd_bwd"] = t_ours / bat
            print(
                f"model forward+backward alone for one estimate: module one chain at a time "
                f"{mod:.2f} s, groklab batched {bat:.2f} s; devinterp spends "
                f"{t_theirs / mod:.2f}x the module's fwd+bwd (the most any sampler on this "
                f"forward can gain), groklab {t_ours / bat:.2f}x its batched fwd+bwd"
            )
        result = {
            "benchmark": "llc-estimate",
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "devinterp": version("devinterp"),
            "run": str(args.run) if args.run else "nanda2023 at init",
            "step": step,
            "settings": s.to_dict(),
            "nbeta": nbeta,
            "groklab_seconds": ours_t,
            "devinterp_seconds": theirs_t,
            "groklab_cpu_seconds": ours_c,
            "devinterp_cpu_seconds": theirs_c,
            "speedup_wall_median": ratio,
            "speedup_cpu_median": cpu_ratio,
            "breakdown": floor,
            "groklab_llc": {"llc": ours.llc, "llc_std": ours.llc_std} if ours else None,
            "devinterp_llc": theirs,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
