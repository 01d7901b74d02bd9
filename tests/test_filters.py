"""Gradient filters and StableMax, each against its definition computed by hand.

The trainer runs plain SGD (lr η, no momentum, no weight decay, no warmup) with a checkpoint
after every step, so the gradient it applied at step t is exactly ``(w_t − w_{t+1}) / η``.
The raw gradient at ``w_t`` is recomputed here from the saved weights; the test then applies
the filter's definition by hand and compares.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_config
from groklab.config import OptimConfig
from groklab.run import load_run
from groklab.train.loop import run_training
from groklab.train.losses import stablemax_log_probs, token_losses
from groklab.train.optim import GradFilter

LR = 0.5
STEPS = 3


def _train(tmp_path, **optim):
    cfg = tiny_config(
        optim={"name": "sgd", "lr": LR, "weight_decay": 0.0, "warmup_steps": 0, **optim},
        train={"steps": STEPS, "eval_every": 1, "checkpoint_every": 1},
    )
    return load_run(run_training(cfg, tmp_path / "run", progress=False))


def _weights(run, t):
    w = run.weights_at(t)
    return {n: w[n].to(torch.float64) for n in w}


def _applied(run, t):
    """The gradient the optimiser applied at step t (SGD: w_{t+1} = w_t − η g)."""
    a, b = _weights(run, t), _weights(run, t + 1)
    return {n: (a[n] - b[n]) / LR for n in a}


def _raw(run, t):
    """The unfiltered full-batch gradient at the weights of step t."""
    model = run.model_at(t)
    task = run.task
    logits = model(task.train_x, n_scored=task.n_scored)
    loss = token_losses(logits, task.train_y, kind="cross_entropy", dtype=torch.float64).mean()
    loss.backward()
    return {n: p.grad.to(torch.float64) for n, p in model.named_parameters()}


def _close(got: dict, want: dict) -> None:
    for n in want:
        scale = want[n].abs().max().item() + 1e-12
        err = (got[n] - want[n]).abs().max().item()
        assert err <= 2e-4 * scale + 1e-6, f"{n}: off by {err:.3g} (scale {scale:.3g})"


def test_no_filter_applies_the_raw_gradient(tmp_path) -> None:
    run = _train(tmp_path)
    for t in range(STEPS):
        _close(_applied(run, t), _raw(run, t))


def test_grokfast_ema_is_its_definition(tmp_path) -> None:
    alpha, lam = 0.8, 2.0
    run = _train(tmp_path, grokfast="ema", grokfast_alpha=alpha, grokfast_lambda=lam)
    ema = None
    for t in range(STEPS):
        g = _raw(run, t)
        # e starts at the first gradient, then e ← α e + (1 − α) g; the step uses g + λ e.
        ema = dict(g) if ema is None else {n: alpha * ema[n] + (1 - alpha) * g[n] for n in g}
        want = {n: g[n] + lam * ema[n] for n in g}
        _close(_applied(run, t), want)
        # and it really changes the gradient
        assert any((want[n] - g[n]).abs().max() > 1e-4 for n in g)


def test_grokfast_ma_is_its_definition(tmp_path) -> None:
    window, lam = 2, 3.0
    run = _train(tmp_path, grokfast="ma", grokfast_window=window, grokfast_lambda=lam)
    history = []
    for t in range(STEPS):
        g = _raw(run, t)
        history.append(g)
        if len(history) < window:  # the window is not full yet: the raw gradient
            want = g
        else:
            last = history[-window:]
            want = {n: g[n] + lam * sum(h[n] for h in last) / window for n in g}
        _close(_applied(run, t), want)


def test_perp_grad_is_its_definition(tmp_path) -> None:
    run = _train(tmp_path, perp_grad=True)
    for t in range(STEPS):
        g, w = _raw(run, t), _weights(run, t)
        want = {}
        for n in g:
            gf, wf = g[n].flatten(), w[n].flatten()
            # zero weights (biases at init) have no direction to project out
            g_perp = gf if float(wf @ wf) == 0.0 else gf - (gf @ wf) / (wf @ wf) * wf
            # rescaled to the norm of the raw gradient
            want[n] = (g_perp * gf.norm() / g_perp.norm()).view_as(g[n])
        got = _applied(run, t)
        _close(got, want)
        for n in got:  # orthogonal to the weights, same norm as the raw gradient
            cos = (got[n].flatten() @ w[n].flatten()) / (got[n].norm() * w[n].norm() + 1e-30)
            assert abs(float(cos)) < 1e-3
            assert math.isclose(float(got[n].norm()), float(g[n].norm()), rel_tol=1e-3)


@pytest.mark.parametrize(
    "opt",
    [
        {"grokfast": "ema", "grokfast_alpha": 0.9},
        {"grokfast": "ma", "grokfast_window": 3},
        {"perp_grad": True},
        {"grokfast": "ema", "perp_grad": True},
    ],
)
def test_stacked_filter_filters_each_model_on_its_own(opt: dict) -> None:
    cfg = OptimConfig(**opt)
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,)]
    k = 3
    ws = [torch.randn(k, *s, generator=gen) for s in shapes]
    stacked = GradFilter([w.clone().requires_grad_() for w in ws], cfg, stacked=True)
    alone = [
        GradFilter([ws[i][m].clone().requires_grad_() for i in range(len(shapes))], cfg)
        for m in range(k)
    ]
    for _ in range(4):
        gs = [torch.randn(k, *s, generator=gen) for s in shapes]
        for p, g in zip(stacked.params, gs, strict=True):
            p.grad = g.clone()
        stacked.apply()
        for m, f in enumerate(alone):
            for p, g in zip(f.params, gs, strict=True):
                p.grad = g[m].clone()
            f.apply()
            for i, p in enumerate(f.params):
                torch.testing.assert_close(stacked.params[i].grad[m], p.grad)


def test_filter_state_round_trip_continues_identically() -> None:
    cfg = OptimConfig(grokfast="ma", grokfast_window=3)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(4, generator=gen) for _ in range(6)]
    a = GradFilter([torch.zeros(4, requires_grad=True)], cfg)
    b = GradFilter([torch.zeros(4, requires_grad=True)], cfg)
    for g in grads[:4]:
        a.params[0].grad = g.clone()
        a.apply()
    b.load_state({k: v.clone() for k, v in a.state.items()})
    for g in grads[4:]:
        for f in (a, b):
            f.params[0].grad = g.clone()
            f.apply()
        assert torch.equal(a.params[0].grad, b.params[0].grad)


def test_stablemax_values_are_the_formula() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0, -3.0]], dtype=torch.float64)
    # s(x) = x + 1 for x >= 0, 1 / (1 − x) for x < 0
    s = torch.tensor([3.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    want = (s / s.sum()).log()
    torch.testing.assert_close(stablemax_log_probs(logits)[0], want, rtol=0, atol=1e-15)
    tok = token_losses(logits[:, None], torch.tensor([[2]]), kind="stablemax", dtype=torch.float64)
    assert math.isclose(float(tok), -math.log(0.5 / 4.75), rel_tol=1e-12)


def test_stablemax_gradient_is_finite_where_the_unused_branch_blows_up() -> None:
    # 1 / (1 − x) is infinite at x = 1, a point where the x + 1 branch is the one used.
    x = torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64, requires_grad=True)
    stablemax_log_probs(x)[0].backward()
    assert torch.isfinite(x.grad).all()
    # d/dx log s(x0) − log Σ s: for x0 = 1 (s = 2, s' = 1), Σ s = 2 + 2/3 + 1
    total = 2 + 2 / 3 + 1
    assert math.isclose(float(x.grad[0]), 1 / 2 - 1 / total, rel_tol=1e-12)
