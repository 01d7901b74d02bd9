"""Synthetic report inputs: a grokking-shaped run with every analysis output, no training.

Test-only. Used by the tests of the figure functions and by ``benchmarks/bench_report.py`` to build a
full report of a run with many checkpoints in seconds. The numbers only have the *shapes* of
a grokking run (memorise, plateau, grok; a few key frequencies; neurons clustered by
frequency; an LLC that rises then falls); they are not a model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from groklab.report.collect import Circuit, RunData

__all__ = ["SyntheticPhases", "synthetic_circuit", "synthetic_metrics", "synthetic_run_data"]

_PARAMS = (
    "embed.W_E",
    "pos_embed.W_pos",
    "blocks.0.attn.W_Q",
    "blocks.0.attn.W_K",
    "blocks.0.attn.W_V",
    "blocks.0.attn.W_O",
    "blocks.0.mlp.W_in",
    "blocks.0.mlp.b_in",
    "blocks.0.mlp.W_out",
    "blocks.0.mlp.b_out",
    "unembed.W_U",
)


@dataclass(frozen=True)
class SyntheticPhases:
    """Phase boundaries with the attributes the report reads."""

    memorisation: tuple[int, int]
    circuit_formation: tuple[int, int | None]
    cleanup: tuple[int, int] | None
    grokking_step: int | None
    rule: str = "synthetic"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -500, 500)))


def synthetic_metrics(
    steps: np.ndarray,
    *,
    grok: float = 12_000,
    subsets: tuple[str, ...] = ("add", "mul"),
    spikes: tuple[int, ...] = (),
    seed: int = 0,
) -> pd.DataFrame:
    """A metrics table shaped like a grokking run (columns as ``metrics.parquet``)."""
    g = np.random.default_rng(seed)
    s = np.asarray(steps, dtype=float)
    n = len(s)
    noise = lambda scale: np.exp(g.normal(0, scale, n))  # noqa: E731
    train_loss = 4.7 * np.exp(-s / 300) + 1e-7 * noise(0.3)
    test_loss = (4.7 + 20 * _sigmoid((s - 1500) / 500)) * _sigmoid(-(s - grok) / 900) + 1e-6
    test_loss *= noise(0.05)
    df = pd.DataFrame({"step": s.astype(np.int64), "lr": 1e-3})
    df["train/loss"] = train_loss
    df["train/acc"] = np.clip(1 - np.exp(-s / 150), 0, 1)
    df["test/loss"] = test_loss
    df["test/acc"] = np.clip(_sigmoid((s - grok) / 700) + g.normal(0, 0.005, n), 0, 1)
    for i, sub in enumerate(subsets):
        shift = grok * (0.8 + 0.4 * i)
        df[f"test/{sub}/loss"] = (5 + 10 * _sigmoid((s - 1500) / 500)) * _sigmoid(
            -(s - shift) / 900
        ) + 1e-6
        df[f"test/{sub}/acc"] = np.clip(_sigmoid((s - shift) / 700), 0, 1)
    for st in spikes:
        i = int(np.searchsorted(s, st))
        if i < n:
            df.loc[i : i + 2, "train/loss"] *= 1e4
    total = np.zeros(n)
    for j, p in enumerate(_PARAMS):
        w = (
            (3 + j)
            * (1 + 0.6 * _sigmoid((s - 800) / 300))
            * (0.5 + 0.5 * _sigmoid(-(s - grok) / 2000))
        )
        df[f"wnorm/{p}"] = w
        total += w**2
    df["wnorm/total"] = np.sqrt(total)
    return df


def synthetic_circuit(
    p: int = 113,
    *,
    key_freqs: tuple[int, ...] = (14, 35, 41, 42, 52),
    d_mlp: int = 512,
    op: str = "add",
    seed: int = 0,
    fractions: bool = False,
) -> Circuit:
    """A circuit with exactly ``key_freqs``: norms, neuron clusters, 2D maps, circles."""
    g = np.random.default_rng(seed)
    n_f = (p - 1) // 2
    labels = ["const"] + [f"{t} {k}" for k in range(1, n_f + 1) for t in ("cos", "sin")]
    we = g.uniform(0.05, 0.3, len(labels))
    wl = g.uniform(0.05, 0.3, len(labels))
    for k in key_freqs:
        we[2 * k - 1 : 2 * k + 1] = g.uniform(3, 6, 2)
        wl[2 * k - 1 : 2 * k + 1] = g.uniform(5, 10, 2)
    freq = g.choice(np.asarray(key_freqs), d_mlp)
    share = np.where(
        g.random(d_mlp) < 0.9, g.uniform(0.86, 0.99, d_mlp), g.uniform(0.3, 0.8, d_mlp)
    )
    clustered = share >= 0.85
    frac = None
    if fractions:
        frac = g.uniform(0, 0.02, (d_mlp, n_f))
        frac[np.arange(d_mlp), freq - 1] = share
    n2 = np.full((p, p), 0.1) + g.uniform(0, 0.1, (p, p))
    l2 = n2.copy()
    for k in key_freqs:
        for a in (2 * k - 1, 2 * k):
            n2[a, a] = n2[0, a] = n2[a, 0] = g.uniform(5, 10)
            l2[a, a] = g.uniform(10, 20)
    ang = 2 * np.pi * key_freqs[0] * np.arange(p) / p
    circle = np.stack([np.cos(ang), np.sin(ang)], axis=1) * 3 + g.normal(0, 0.05, (p, 2))
    circles = {}
    for k in key_freqs[:3]:
        a = 2 * np.pi * k * np.arange(p) / p
        circles[str(k)] = np.stack([np.cos(a), np.sin(a)], axis=1) * 2 + g.normal(0, 0.05, (p, 2))
    return Circuit(
        op=op,
        step=40_000,
        labels=labels,
        key_freqs=list(key_freqs),
        we_norms=we,
        wl_norms=wl,
        neuron_freq=freq,
        neuron_share=share,
        neuron_clustered=clustered,
        neuron_fractions=frac,
        clustered_share=float(clustered.mean()),
        cluster_threshold=0.85,
        fit_fve=0.93,
        neuron_2d=n2,
        logit_2d=l2,
        pca=circle,
        pca_explained=[0.21, 0.19],
        circles=circles,
        residues=list(range(p)),
    )


def synthetic_run_data(
    *,
    n_checkpoints: int = 400,
    checkpoint_every: int = 100,
    eval_every: int = 100,
    llc_every: int = 1,
    ops: tuple[str, ...] = ("add",),
    chains: int = 4,
    draws: int = 300,
    path: str | Path = "runs/synthetic",
) -> RunData:
    """A :class:`RunData` with every section filled: metrics, spikes, progress, phases,
    circuits and LLC (with traces), for ``n_checkpoints`` checkpoints."""
    last = n_checkpoints * checkpoint_every
    grok = 0.3 * last
    steps = np.arange(0, last + 1, eval_every)
    subsets = ops if len(ops) > 1 else ()
    metrics = synthetic_metrics(steps, grok=grok, subsets=subsets, spikes=(int(0.6 * last),))
    ck = np.arange(0, last + 1, checkpoint_every)
    prog = pd.DataFrame({"step": ck})
    for i, op in enumerate(ops):
        shift = grok * (1 + 0.2 * i)
        prog[f"{op}/train_loss"] = 4.7 * np.exp(-ck / 300) + 1e-7
        prog[f"{op}/test_loss"] = 20 * _sigmoid(-(ck - shift) / 900) + 1e-6
        prog[f"{op}/restricted_loss"] = 5 * _sigmoid(-(ck - 0.8 * shift) / 1500) + 1e-5
        prog[f"{op}/excluded_loss"] = 4.7 * _sigmoid((ck - 0.5 * shift) / 1500) + 1e-7
    prog["sumsq/total"] = (
        3000 * (1 + _sigmoid((ck - 800) / 300)) * (0.3 + 0.7 * _sigmoid(-(ck - grok) / 2000))
    )
    phases = SyntheticPhases(
        memorisation=(0, int(0.05 * last)),
        circuit_formation=(int(0.05 * last), int(0.25 * last)),
        cleanup=(int(0.25 * last), int(0.35 * last)),
        grokking_step=int(grok),
    )
    g = np.random.default_rng(1)
    llc_rows = []
    sel = ck[::llc_every]
    for series in ("total", *(ops if len(ops) > 1 else ())):
        peak = 0.05 * last
        v = 80 * np.exp(-((np.log1p(sel) - np.log1p(peak)) ** 2) / 2) + 20
        llc_rows.append(
            pd.DataFrame(
                {
                    "step": sel,
                    "llc": v + g.normal(0, 1, len(sel)),
                    "llc_std": np.abs(g.normal(3, 1, len(sel))),
                    "init_loss": 1e-3,
                    "convergence_ratio": 1 + g.normal(0, 0.05, len(sel)),
                    "frac_below_init": np.clip(g.normal(0.02, 0.01, len(sel)), 0, 1),
                    "n_diverged": (g.random(len(sel)) < 0.01).astype(int),
                    "warnings": "",
                    "series": series,
                }
            )
        )
    llc = pd.concat(llc_rows, ignore_index=True)
    burnin = 100
    t = np.arange(burnin + draws)
    traces = pd.concat(
        [
            pd.DataFrame(
                {
                    "step": st,
                    "chain": c,
                    "t": t,
                    "loss": 1e-3 + 0.02 * (1 - np.exp(-t / 30)) + g.normal(0, 0.002, len(t)),
                }
            )
            for st in sel
            for c in range(chains)
        ],
        ignore_index=True,
    )
    from groklab.config import RunConfig, save_config

    cfg = RunConfig(name="synthetic")
    return RunData(
        path=Path(path),
        display_path=str(path),
        name="synthetic",
        config_toml=save_config(cfg),
        config=cfg,
        manifest={"status": "completed", "n_params": 226816, "seed": 0, "device": "cpu"},
        summary={
            "memorisation_step": int(steps[np.argmax(metrics["train/acc"].to_numpy() >= 0.99)]),
            "grokking_step": int(grok),
            "final_step": int(last),
            "final": {
                c: float(metrics[c].iloc[-1])
                for c in metrics.columns
                if c.endswith("/acc") or c.endswith("/loss")
            },
        },
        metrics=metrics,
        spikes=pd.DataFrame(
            {
                "step": [int(0.6 * last)],
                "column": ["train/loss"],
                "value": [float(metrics["train/loss"].iloc[int(0.6 * len(steps))])],
            }
        ),
        spike_rule="synthetic",
        progress=prog,
        progress_ops=list(ops),
        phases=phases,
        circuits={op: synthetic_circuit(op=op, seed=i) for i, op in enumerate(ops)},
        llc=llc,
        llc_meta={"total": {"settings": {"chains": chains, "draws": draws, "burnin": burnin}}},
        llc_traces={"total": traces},
    )
