"""How the LLC of a grokked checkpoint depends on the localisation γ (and what sets it).

    python3 benchmarks/llc_gamma.py --run runs/nanda-s2 --steps 6000,20000,40000   # docs/llc.md
    python3 benchmarks/llc_gamma.py --run runs/nanda-s2 --part a --no-devinterp

Part a (the table in docs/llc.md): at each ``--steps`` checkpoint, the LLC at γ = 300, 1,000 and
3,000 (ε = 1e-4, nβ = n/log n, 4 chains x 200 draws + 100 burn-in, minibatch 512), by
groklab's sampler (``llc.estimate_llc_at``, without its own γ check: the three γ are the
check) and by devinterp 1.3.2 on the same weights with the same settings, ``L(w*)`` and
nβ given explicitly and a loader that drops the short last batch (as groklab does).

For each checkpoint it also records what sets the scale of γ: ``L(w*)``, the weight norm
``|w*|``, the prior's radius ``sqrt(d/γ)``, ``|∇L(w*)|`` (w* minimises the loss plus weight
decay, not the loss), the Hessian trace ``tr H`` (Hutchinson, 8 probes), the quadratic
prediction ``nβ tr(H) / 2γ`` of the LLC when the prior dominates, and ``prior``: nβ times
the mean excess loss of 16 draws from the prior N(w*, I/γ) alone (no loss force).

Part b: the search for a γ-plateau at one checkpoint (``--search-step``, default the first
of ``--steps``) — a wider γ range, larger nβ, smaller ε, longer chains (see ``_PART_B``).

Every estimate is one thread and one line of output, appended to the JSON as it finishes
(``benchmarks/results/llc_gamma.json`` or ``--out``). ``--wait M`` waits up to M minutes for
each checkpoint of a run still training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import groklab
from groklab.analysis import llc

ROOT = Path(__file__).resolve().parent
_BASE = llc.LLCSettings(
    epsilon=1e-4, gamma=1000.0, chains=4, draws=200, burnin=100, batch_size=512, gamma_check=None
)
# Part b: (label, overrides of _BASE) tried at the --search-step checkpoint.
_PART_B: list[tuple[str, dict[str, Any]]] = [
    ("wider γ", {"gamma": 100.0}),
    ("wider γ", {"gamma": 30.0}),
    ("longer chains", {"gamma": 1000.0, "draws": 600, "burnin": 300}),
    ("smaller ε", {"gamma": 1000.0, "epsilon": 2e-5, "draws": 600, "burnin": 300}),
    ("nβ x10", {"gamma": 1000.0, "nbeta": 4640.0, "epsilon": 1e-5}),
    ("nβ x10", {"gamma": 3000.0, "nbeta": 4640.0, "epsilon": 1e-5}),
    ("nβ x10", {"gamma": 300.0, "nbeta": 4640.0, "epsilon": 1e-5}),
]


def _scales(run: Any, step: int, gammas: list[float], nbeta: float) -> dict[str, Any]:
    """L(w*), |w*|, |grad L(w*)|, tr H and the prior-only excess loss at ``step``."""
    rl = llc.run_loss(run, step)
    names = list(rl.params)
    w = {k: v.detach().double()[None] for k, v in rl.params.items()}  # [1, ...], float64
    d = sum(v.numel() for v in w.values())

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        out = rl.loss_fn(p, None)
        return out[0] if rl.batched else out

    def grad(p: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
        return list(torch.autograd.grad(loss(leaves), [leaves[k] for k in names]))

    g = grad(w)
    gnorm = float(torch.sqrt(sum((x**2).sum() for x in g)))
    gen = torch.Generator().manual_seed(0)
    tr = []
    h = 1e-4  # central differences of float64 gradients (the forward has no double backward)
    for _ in range(8):  # Hutchinson: E[v^T H v] = tr H for Rademacher v
        v = {k: torch.randint(0, 2, x.shape, generator=gen).double() * 2 - 1 for k, x in w.items()}
        gp = grad({k: w[k] + h * v[k] for k in names})
        gm = grad({k: w[k] - h * v[k] for k in names})
        tr.append(
            float(
                sum(((a - b) / (2 * h) * v[k]).sum() for a, b, k in zip(gp, gm, names, strict=True))
            )
        )
    tr_h = sum(tr) / len(tr)
    prior: dict[str, float] = {}
    l0 = float(loss(w))
    with torch.no_grad():
        for gam in gammas:
            ex = []
            for _ in range(16):
                p = {
                    k: v + torch.randn(v.shape, generator=gen).double() / math.sqrt(gam)
                    for k, v in w.items()
                }
                ex.append(float(loss(p)) - l0)
            prior[f"{gam:g}"] = nbeta * sum(ex) / len(ex)
    return {
        "init_loss": rl.init_loss,
        "init_loss_float64_weights": l0,
        "n": rl.n,
        "d": d,
        "nbeta": nbeta,
        "weight_norm": float(torch.sqrt(sum((v**2).sum() for v in w.values()))),
        "grad_norm": gnorm,
        "hessian_trace": tr_h,
        "hessian_trace_probes": tr,
        "prior_radius": {f"{gam:g}": math.sqrt(d / gam) for gam in gammas},
        "quadratic_llc": {f"{gam:g}": nbeta * tr_h / (2 * gam) for gam in gammas},
        "prior_only_llc": prior,
    }


def _devinterp(run: Any, step: int, s: llc.LLCSettings, nbeta: float, init_loss: float) -> dict:
    # devinterp on groklab's module, as in bench_llc (full minibatches only, as these runs did)
    from bench_llc import _devinterp_estimate

    return _devinterp_estimate(run, step, s, nbeta, init_loss, drop_last=True)


def _ours(run: Any, step: int, s: llc.LLCSettings) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = llc.estimate_llc_at(run, step, s)
    return {
        "llc": r.llc,
        "llc_std": r.llc_std,
        "per_chain": [float(v) for v in r.llc_per_chain],
        "convergence_ratio": r.convergence_ratio,
        "convergence_z": r.convergence_z,
        "frac_below_init": r.frac_below_init,
        "n_diverged": len(r.diverged),
        "warnings": list(r.warnings),
        "trace_blocks": [float(b.mean()) for b in r.trace.mean(axis=0).reshape(10, -1)]
        if r.trace.shape[1] % 10 == 0
        else None,
        "seconds": time.perf_counter() - t0,
    }


def _wait_for(run: Any, step: int, minutes: float) -> None:
    """Wait for a training run to save checkpoint ``step``."""
    path = run.path / "checkpoints" / f"step_{step:06d}.safetensors"
    t_end = time.time() + 60 * minutes
    while not path.exists() and time.time() < t_end:
        time.sleep(20)
    time.sleep(5)  # let the atomic write finish its rename


def _pm(d: dict[str, Any] | None) -> str:
    if not d or d.get("llc") is None or not math.isfinite(d["llc"]):
        return "—" if not d else "all chains diverged"
    return f"{d['llc']:.3g} ± {d['llc_std']:.2g}"


def _ratio(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.2f}"


def render(paths: list[Path]) -> str:
    """The markdown table of docs/llc.md from result files of this script."""
    head = (
        "| step | γ | ε | nβ | draws | LLC (groklab) | 2nd/1st half | devinterp | L(w*) | ‖w*‖ "
        "| sqrt(d/γ) | prior only |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for path in paths:
        res = json.loads(path.read_text())
        for e in res["estimates"]:
            s, g = e["settings"], e["groklab"]
            sc = res["scales"][str(e["step"])]
            d = sc["d"]
            prior = sc["prior_only_llc"].get(f"{s['gamma']:g}")
            if prior is not None:  # the prior's mean excess loss, times this row's nβ
                prior *= e["nbeta"] / sc["nbeta"]
            lines.append(
                f"| {e['step']:,} | {s['gamma']:,g} | {s['epsilon']:g} | {e['nbeta']:.4g} "
                f"| {s['draws']}+{s['burnin']} | {_pm(g)} | {_ratio(g['convergence_ratio'])} "
                f"| {_pm(e.get('devinterp'))} | {sc['init_loss']:.2g} | {sc['weight_norm']:.3g} "
                f"| {math.sqrt(d / s['gamma']):.3g} | {'—' if prior is None else f'{prior:.3g}'} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="a canonical (nanda2023) run")
    ap.add_argument(
        "--render", type=Path, nargs="+", help="print the markdown table of these result files"
    )
    ap.add_argument("--steps", default="10000,20000,40000")
    ap.add_argument("--gammas", default="300,1000,3000")
    ap.add_argument("--part", choices=["a", "b", "ab"], default="ab")
    ap.add_argument("--search-step", type=int, help="part b's checkpoint (default: the first)")
    ap.add_argument("--no-devinterp", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--wait", type=float, default=0, help="wait up to this many minutes for a checkpoint"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "llc_gamma.json")
    args = ap.parse_args()
    if args.render:
        print(render(args.render))
        return
    if args.run is None:
        ap.error("--run is required (or --render FILES)")
    torch.set_num_threads(args.threads)
    run = groklab.load_run(args.run)
    steps = [int(v) for v in args.steps.split(",")]
    gammas = [float(v) for v in args.gammas.split(",")]
    nbeta = llc.resolve_nbeta(_BASE.nbeta, n=run.task.n_train, batch_size=_BASE.batch_size)
    out: dict[str, Any] = {
        "benchmark": "llc-gamma",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(args.run),
        "seed": run.manifest.get("seed"),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "base_settings": _BASE.to_dict(),
        "scales": {},
        "estimates": [],
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, default=float))

    def one(step: int, s: llc.LLCSettings, label: str, devinterp: bool) -> None:
        nb = llc.resolve_nbeta(s.nbeta, n=run.task.n_train, batch_size=s.batch_size)
        rec: dict[str, Any] = {"step": step, "label": label, "settings": s.to_dict(), "nbeta": nb}
        rec["groklab"] = _ours(run, step, s)
        if devinterp:
            t0 = time.perf_counter()
            l0 = out["scales"][str(step)]["init_loss"]
            rec["devinterp"] = {**_devinterp(run, step, s, nb, l0)}
            rec["devinterp"]["seconds"] = time.perf_counter() - t0
        out["estimates"].append(rec)
        save()
        g = rec["groklab"]
        line = (
            f"step {step:>6} {label:<14} γ={s.gamma:<6g} ε={s.epsilon:<6g} nβ={nb:<7.4g} "
            f"draws={s.draws:<4} LLC {g['llc']:.4g} ± {g['llc_std']:.2g} "
            f"(2nd/1st {g['convergence_ratio']:.3g}, below {g['frac_below_init']:.0%}, "
            f"div {g['n_diverged']}, {g['seconds']:.0f} s)"
        )
        if devinterp:
            dv = rec["devinterp"]
            line += f"; devinterp {dv['llc']:.4g} ± {dv['llc_std']:.2g} ({dv['seconds']:.0f} s)"
        print(line, flush=True)

    for step in steps:
        if args.wait:
            _wait_for(run, step, args.wait)
            run = groklab.load_run(args.run)  # sees the new checkpoints
        sc = _scales(run, step, gammas, nbeta)
        out["scales"][str(step)] = sc
        save()
        print(
            f"step {step}: L(w*) {sc['init_loss']:.3g}, |w*| {sc['weight_norm']:.4g}, "
            f"|∇L| {sc['grad_norm']:.3g}, tr H {sc['hessian_trace']:.3g}; per γ: radius "
            + ", ".join(f"{k}: {v:.3g}" for k, v in sc["prior_radius"].items())
            + "; nβ trH/2γ "
            + ", ".join(f"{k}: {v:.3g}" for k, v in sc["quadratic_llc"].items())
            + "; prior-only "
            + ", ".join(f"{k}: {v:.3g}" for k, v in sc["prior_only_llc"].items()),
            flush=True,
        )
        if "a" in args.part:
            for gam in gammas:
                one(step, replace(_BASE, gamma=gam), "table", not args.no_devinterp)
    if "b" in args.part:
        step = args.search_step if args.search_step is not None else steps[0]
        if str(step) not in out["scales"]:
            out["scales"][str(step)] = _scales(run, step, gammas, nbeta)
        for label, over in _PART_B:
            one(step, replace(_BASE, **over), label, False)
    print(f"wrote {args.out}\n\n{render([args.out])}")


if __name__ == "__main__":
    main()
