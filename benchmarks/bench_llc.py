"""LLC estimator speed: groklab's batched SGLD against devinterp 1.3.2, side by side.

    python3 benchmarks/bench_llc.py                       # canonical model at init, 2 rounds
    python3 benchmarks/bench_llc.py --run runs/nanda2023 --step 10000
    python3 benchmarks/bench_llc.py --rounds 3 --threads 1 --out /tmp/llc.json

One estimate of the canonical model (nanda2023: 1-layer transformer, 226,816 parameters,
3,830 training rows) with the same settings on both sides: 4 chains x 200 draws (+ burn-in),
minibatch 512, the same epsilon, gamma and nbeta, the run's float64 log-softmax cross-entropy.
devinterp runs as it is used in the published grokking workflows: ``estimate_learning_coeff_
with_summary`` over a shuffled ``DataLoader`` with its default ``cores=1`` (chains one after
another); groklab runs ``groklab.analysis.llc.estimate_llc_at`` (chains vectorised).

devinterp samples whatever module it is given, so it runs twice, on the same weights:

- ``devinterp (published model)``: the module a researcher without groklab brings — the
  published-style transformer of ``benchmarks/baseline.py`` (every position through the
  attention, MLP and unembedding, as Nanda et al.'s and Sullivan's code do), loaded with the
  checkpoint's weights (its last-position logits are checked against groklab's);
- ``devinterp (groklab module)``: devinterp driving groklab's own ``Transformer``, whose
  forward already computes only the scored position and the first attention from tables. This
  isolates the sampler: the two then share one forward.

The arms are timed in turn (the order rotates every round) in this one process, so a change
of machine load hits every side; ratios use the median wall time of each side (CPU time is
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
    run: Any,
    step: int,
    s: llc.LLCSettings,
    nbeta: float,
    init_loss: float,
    *,
    published: bool = False,
    drop_last: bool = False,
) -> dict:
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    model = _published_model(run, step) if published else run.model_at(step)
    task = run.task
    kind = run.config.train.loss
    dtype = torch.float64 if run.config.train.loss_dtype == "float64" else torch.float32
    loader = DataLoader(
        TensorDataset(task.train_x, task.train_y),
        batch_size=s.batch_size,
        shuffle=True,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(s.seed),
    )

    def evaluate(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        # The published model gives logits at every position; the loss is on the scored ones.
        logits = m(x)[:, -task.n_scored :] if published else m(x, n_scored=task.n_scored)
        return token_losses(logits, y, kind=kind, dtype=dtype).mean()

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


def _published_model(run: Any, step: int) -> torch.nn.Module:
    """The published-style transformer (benchmarks/baseline.py) with ``run``'s weights at
    ``step``; its last-position logits equal groklab's model's (checked)."""
    from baseline import BaselineTransformer, load_groklab_weights

    cfg, task = run.config.model, run.task
    if cfg.n_layers != 1 or cfg.layernorm or cfg.attn_only or cfg.act != "relu":
        raise SystemExit("the published-style arm needs the canonical 1-layer ReLU model")
    ours = run.model_at(step)
    pub = BaselineTransformer(
        d_vocab=task.d_vocab,
        d_vocab_out=task.d_vocab_out,
        n_ctx=task.n_ctx,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
    )
    load_groklab_weights(pub, {k: v.detach() for k, v in ours.named_parameters()})
    with torch.no_grad():
        x = task.train_x[:256]
        want = ours(x, n_scored=1)[:, -1]
        got = pub(x)[:, -1]
    if not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
        diff = float((got - want).abs().max())
        raise SystemExit(f"published-style model disagrees with groklab's (max |diff| {diff})")
    return pub


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
        init_loss = llc.run_loss(run, step).init_loss
        arms: dict[str, Any] = {
            "groklab": lambda: llc.estimate_llc_at(run, step, s),
            "devinterp (groklab module)": lambda: _devinterp_estimate(
                run, step, s, nbeta, init_loss
            ),
            "devinterp (published model)": lambda: _devinterp_estimate(
                run, step, s, nbeta, init_loss, published=True
            ),
        }
        names = list(arms)
        wall: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        est: dict[str, dict[str, float]] = {}
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            parts = []
            for name in order:
                out, w, c = _timed(arms[name])
                wall[name].append(w)
                cpu[name].append(c)
                if isinstance(out, llc.LLCResult):
                    out = {"llc": out.llc, "llc_std": out.llc_std}
                est[name] = out
                parts.append(f"{name} {w:.2f} s (LLC {out['llc']:.2f} ± {out['llc_std']:.2f})")
            print(f"round {r + 1}: " + "; ".join(parts), flush=True)
        med = {n: statistics.median(wall[n]) for n in names}
        med_cpu = {n: statistics.median(cpu[n]) for n in names}
        t_ours = med["groklab"]
        t_theirs = med["devinterp (groklab module)"]
        ratios = {n: med[n] / t_ours for n in names[1:]}
        cpu_ratios = {n: med_cpu[n] / med_cpu["groklab"] for n in names[1:]}
        print(
            f"\none estimate, median of {args.rounds} rounds (wall s, CPU s, speedup of groklab):"
        )
        for n in names:
            extra = "" if n == "groklab" else f"  {ratios[n]:.2f}x (CPU {cpu_ratios[n]:.2f}x)"
            print(f"  {n:<30} {med[n]:8.2f} {med_cpu[n]:8.2f}{extra}")
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
            "wall_seconds": wall,
            "cpu_seconds": cpu,
            "speedup_wall_median": ratios,
            "speedup_cpu_median": cpu_ratios,
            "breakdown": floor,
            "estimates": est,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
