"""The training engine: the hook-free stacked forward equals the hooked model, a single run is
bit-identical after a resume, and the hot path does no per-step host work."""

from __future__ import annotations

import itertools

import pytest
import torch

import groklab.models.transformer as tf
from conftest import assert_close, tiny_config
from groklab.config import ModelConfig, OptimConfig
from groklab.models.transformer import Transformer, stacked_forward
from groklab.run import load_run
from groklab.train.loop import run_training
from groklab.train.optim import make_optimizer
from helpers.interrupt import ctrl_c_at

SMALL = {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32}

# (d_vocab, n_ctx, batch, n_scored): which way block 0's attention is computed
SHAPES = {
    "score-table": (11, 3, 300, 1),  # pairs of table rows fewer than the batch's scores
    "score-table-2q": (11, 3, 300, 2),  # two scored positions: a causal mask inside
    "row-scores": (30, 3, 200, 1),  # too many pairs: q·k per batch row from tabled q, k
    "small-batch": (11, 4, 5, 4),  # batch smaller than the table: plain rows, no tables
}
VARIANTS = [
    {"n_layers": n, "layernorm": ln, "attn_only": ao, "act": act}
    for n, ln, ao, act in itertools.product((1, 2), (False, True), (False, True), ("relu", "gelu"))
]


def _hooked(model: Transformer, tokens: torch.Tensor, n_out: int) -> torch.Tensor:
    with model.hooks({"hook_embed": lambda x: None}):  # any hook selects the hooked path
        assert model.hooks_active
        return model(tokens, n_scored=n_out)


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_fast_path_equals_hooked_path(shape: str, variant: dict) -> None:
    v, n_ctx, b, n_out = SHAPES[shape]
    model = Transformer(
        ModelConfig(**SMALL, **variant), d_vocab=v, d_vocab_out=v, n_ctx=n_ctx, seed=1
    )
    tokens = torch.randint(0, v, (b, n_ctx), generator=torch.Generator().manual_seed(0))
    fast = model(tokens, n_scored=n_out)
    slow = _hooked(model, tokens, n_out)
    assert fast.shape == slow.shape == (b, n_out, v)
    # The two paths sum in different orders, and another CPU's kernels order them otherwise
    # again. Each path's float32 rounding (its distance from the same model in float64),
    # added up over both paths, is at most 0.31x a 1e-5 tolerance on the logits and 0.13x
    # the gradients' old one here (every shape and variant, 2026-12-03): the tolerances
    # below are >= 10x that.
    assert_close(fast, slow, rtol=5e-5, atol=5e-5)
    params = list(model.parameters())
    g_fast = torch.autograd.grad(fast.square().sum(), params)
    g_slow = torch.autograd.grad(_hooked(model, tokens, n_out).square().sum(), params)
    for a, c in zip(g_fast, g_slow, strict=True):
        # gradients of a sum of squared logits reach ~1e3: compare relative to the tensor
        assert_close(a, c, rtol=2e-4, atol=2e-5 * float(c.abs().max()))


def test_routes_are_the_ones_named(monkeypatch) -> None:
    """The shapes above really exercise the three ways of computing block 0."""
    seen = []
    real_lookup = tf._lookup

    def spy(idx, table):
        seen.append(table.shape[-1])
        return real_lookup(idx, table)

    monkeypatch.setattr(tf, "_lookup", spy)
    cfg = ModelConfig(**SMALL)
    for name, (v, n_ctx, b, n_out) in SHAPES.items():
        seen.clear()
        model = Transformer(cfg, d_vocab=v, d_vocab_out=v, n_ctx=n_ctx)
        model(torch.randint(0, v, (b, n_ctx)), n_scored=n_out)
        expected = {
            "score-table": [2],  # one lookup of h = 2 scores per (query, key) pair
            "score-table-2q": [2],
            "row-scores": [16, 16],  # q and k rows of h·e = 16
            "small-batch": [16],  # the embedding rows
        }[name]
        assert seen == expected, name


def test_stack_of_models_equals_each_model() -> None:
    cfg = ModelConfig(**SMALL)
    models = [Transformer(cfg, d_vocab=11, d_vocab_out=11, n_ctx=3, seed=s) for s in range(3)]
    names = [n for n, _ in models[0].named_parameters()]
    w = {n: torch.stack([dict(m.named_parameters())[n] for m in models]) for n in names}
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 11, (3, 200, 3), generator=gen)  # each model its own batch
    stacked = stacked_forward(cfg, w, tokens, n_out=1)
    # Bit-identical on some CPUs; the batched kernels may sum in another order on others.
    # The float32 rounding of the two (distance from float64, added up) reaches 1.07x a 1e-6
    # tolerance here, so 2e-5 leaves ~19x.
    for k, m in enumerate(models):
        assert_close(stacked[k], m(tokens[k], n_scored=1), rtol=2e-5, atol=2e-5)
    shared = stacked_forward(cfg, w, tokens[0], n_out=1)  # one batch for all models
    assert_close(shared[2], models[2](tokens[0], n_scored=1), rtol=2e-5, atol=2e-5)


def test_resumed_run_is_bit_identical(tmp_path) -> None:
    cfg = tiny_config(optim={"grokfast": "ema"})
    whole = load_run(run_training(cfg, tmp_path / "whole", progress=False))
    with ctrl_c_at(23), pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "killed", progress=False)
    resumed = load_run(run_training(cfg, tmp_path / "killed", resume=True, progress=False))
    assert resumed.manifest["resumed_from_step"] == 20
    assert whole.metrics.equals(resumed.metrics)
    for step in whole.checkpoint_steps:
        a, b = whole.weights_at(step), resumed.weights_at(step)
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_no_host_transfer_between_evaluations(tmp_path, monkeypatch) -> None:
    """Host syncs happen per evaluation/checkpoint, never per step: doubling the steps between
    the same number of evaluations does not add a single one."""
    calls = {"n": 0}
    for meth in ("item", "tolist", "cpu", "__float__", "__int__", "__bool__"):
        real = getattr(torch.Tensor, meth)

        def counted(self, *a, _real=real, **kw):
            calls["n"] += 1
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, meth, counted)

    def transfers(steps: int, name: str) -> int:
        calls["n"] = 0
        every = steps // 2
        cfg = tiny_config(
            optim={"grokfast": "ma", "grokfast_window": 3, "perp_grad": True},
            train={"steps": steps, "eval_every": every, "checkpoint_every": every},
        )
        run_training(cfg, tmp_path / name, progress=False)
        return calls["n"]

    assert transfers(20, "a") == transfers(40, "b") > 0


def test_optimiser_uses_one_fused_update() -> None:
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    for name in ("adamw", "adam", "sgd"):
        opt = make_optimizer(params, OptimConfig(name=name))
        assert opt.defaults.get("fused") is True, name
