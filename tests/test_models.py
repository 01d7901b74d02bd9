"""Models: TransformerLens names and shapes, hook points, scored-position logits, init, MLP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from groklab.config import DataConfig, ModelConfig
from groklab.models import MLP, Transformer, build_model
from groklab.tasks import build_task

SMALL = {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32}


def _model(data: DataConfig | None = None, seed: int = 0, **model):
    task = build_task(data or DataConfig(p=7))
    return build_model(ModelConfig(**{**SMALL, **model}), task, seed=seed), task


def _all_tokens(task) -> torch.Tensor:
    return torch.cat([task.train_x, task.test_x])


def test_transformer_parameter_names_and_shapes() -> None:
    model, task = _model()
    assert isinstance(model, Transformer)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {
        "embed.W_E": (8, 16),  # d_vocab = p + 1 ('=')
        "pos_embed.W_pos": (3, 16),
        "blocks.0.attn.W_Q": (2, 16, 8),
        "blocks.0.attn.W_K": (2, 16, 8),
        "blocks.0.attn.W_V": (2, 16, 8),
        "blocks.0.attn.W_O": (2, 8, 16),
        "blocks.0.mlp.W_in": (16, 32),
        "blocks.0.mlp.b_in": (32,),
        "blocks.0.mlp.W_out": (32, 16),
        "blocks.0.mlp.b_out": (16,),
        "unembed.W_U": (16, 8),
    }
    assert task.d_vocab == task.d_vocab_out == 8


def test_layernorm_and_attn_only_parameters() -> None:
    model, _ = _model(n_layers=2, layernorm=True)
    names = {n for n, _ in model.named_parameters()}
    for i in (0, 1):
        assert {f"blocks.{i}.ln1.w", f"blocks.{i}.ln1.b", f"blocks.{i}.ln2.w"} <= names
        assert f"blocks.{i}.mlp.W_in" in names
    assert {"ln_final.w", "ln_final.b"} <= names
    attn_only, _ = _model(attn_only=True, layernorm=True)
    names = {n for n, _ in attn_only.named_parameters()}
    assert not any(".mlp." in n or "ln2" in n for n in names)
    assert "blocks.0.attn.W_O" in names and "blocks.0.mlp.hook_post" not in attn_only.hook_names


def test_hook_names_exist() -> None:
    model, _ = _model(n_layers=2)
    expected = {
        "hook_embed",
        "hook_pos_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_k",
        "blocks.0.attn.hook_v",
        "blocks.0.attn.hook_attn_scores",
        "blocks.0.attn.hook_pattern",
        "blocks.0.attn.hook_z",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_resid_mid",
        "blocks.0.mlp.hook_pre",
        "blocks.0.mlp.hook_post",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
        "blocks.1.attn.hook_pattern",
        "blocks.1.mlp.hook_post",
        "blocks.1.hook_resid_post",
    }
    assert expected <= set(model.hook_names)


def test_run_with_cache_shapes() -> None:
    model, task = _model(n_layers=2)
    tokens = _all_tokens(task)
    b = tokens.shape[0]
    logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (b, 3, 8)
    assert set(cache) == set(model.hook_names)
    assert cache["hook_embed"].shape == (b, 3, 16)
    for i in (0, 1):
        pre = f"blocks.{i}."
        assert cache[pre + "hook_resid_pre"].shape == (b, 3, 16)
        assert cache[pre + "attn.hook_q"].shape == (b, 3, 2, 8)
        assert cache[pre + "attn.hook_k"].shape == (b, 3, 2, 8)
        assert cache[pre + "attn.hook_z"].shape == (b, 3, 2, 8)
        assert cache[pre + "attn.hook_attn_scores"].shape == (b, 2, 3, 3)
        assert cache[pre + "attn.hook_pattern"].shape == (b, 2, 3, 3)
        assert cache[pre + "hook_attn_out"].shape == (b, 3, 16)
        assert cache[pre + "mlp.hook_pre"].shape == (b, 3, 32)
        assert cache[pre + "mlp.hook_post"].shape == (b, 3, 32)
        assert cache[pre + "hook_resid_post"].shape == (b, 3, 16)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert_close(pattern.sum(-1), torch.ones(b, 2, 3))
    assert torch.all(pattern.triu(diagonal=1) == 0)  # causal
    assert torch.all(cache["blocks.0.mlp.hook_post"] >= 0)  # relu
    # The cache of the residual stream is consistent with the logits.
    assert_close(cache["blocks.1.hook_resid_post"] @ model.unembed.W_U, logits)
    # Only the named hooks are cached, and hooks are gone afterwards.
    _, some = model.run_with_cache(tokens, names=["blocks.0.attn.hook_pattern"])
    assert list(some) == ["blocks.0.attn.hook_pattern"]
    assert not model.hooks_active
    with pytest.raises(KeyError, match="hook_nope"):
        model.run_with_cache(tokens, names=["blocks.0.hook_nope"])


def test_hooks_edit_activations() -> None:
    model, task = _model()
    tokens = _all_tokens(task)
    with model.hooks({"blocks.0.mlp.hook_post": torch.zeros_like}):
        ablated = model(tokens, n_scored=1)
    assert not model.hooks_active
    # Zeroed neurons = an MLP whose output weights are zero (b_out is zero at init).
    with torch.no_grad():
        model.blocks[0].mlp.W_out.zero_()
    assert_close(model._forward_hooked(tokens, 1), ablated, rtol=0, atol=0)


MODEL_VARIANTS = [
    {},
    {"layernorm": True},
    {"attn_only": True},
    {"act": "gelu"},
    {"n_layers": 2, "layernorm": True},
    {"n_layers": 3, "attn_only": True},
]
TASK_VARIANTS = [
    DataConfig(p=23),
    DataConfig(p=7),
    DataConfig(p=11, operations=("add", "mul")),
]


@pytest.mark.parametrize("variant", MODEL_VARIANTS, ids=lambda v: ",".join(v) or "default")
@pytest.mark.parametrize("data", TASK_VARIANTS, ids=["p23", "p7", "mixed"])
def test_scored_positions_equal_full_forward(variant: dict, data: DataConfig) -> None:
    model, task = _model(data, seed=3, **variant)
    with torch.no_grad():
        for p in model.parameters():  # away from init so LayerNorm affine and biases matter
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    tokens = _all_tokens(task)
    n_ctx = tokens.shape[1]
    with torch.no_grad():
        full = model._forward_hooked(tokens, None)
        scored = model._forward_hooked(tokens, 1)
        assert full.shape == (len(tokens), n_ctx, task.d_vocab_out)
        assert scored.shape == (len(tokens), 1, task.d_vocab_out)
        assert torch.equal(scored, full[:, -1:])
        # The hook-free path, on a batch large enough for its lookup tables and on a small one.
        # The two paths sum in different orders (and other CPUs differently again): their
        # float32 rounding (distance from float64, added up) is at most 0.26x a 1e-5
        # tolerance over these variants (2026-12-03), so 5e-5 leaves ~20x.
        for batch in (tokens, tokens[:5], tokens.repeat(3, 1)):
            ref = model._forward_hooked(batch, 1)
            assert_close(model(batch, n_scored=1), ref, rtol=5e-5, atol=5e-5)
            assert_close(model(batch), model._forward_hooked(batch, None), rtol=5e-5, atol=5e-5)
        # run_with_cache (hooks active) returns the hooked logits.
        logits, _ = model.run_with_cache(tokens, names=["hook_embed"], n_scored=1)
        assert torch.equal(logits, scored)


def test_init_is_seeded_and_local() -> None:
    torch.manual_seed(0)
    before = torch.rand(4)
    torch.manual_seed(0)
    a, _ = _model(seed=5)
    b, _ = _model(seed=5)
    c, _ = _model(seed=6)
    assert torch.equal(torch.rand(4), before)  # global RNG untouched
    for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), n
        if pa.abs().sum() > 0:
            assert not torch.equal(pa, pc), n


def test_init_scale_multiplies_weights() -> None:
    for arch, extra in (("transformer", {"layernorm": True}), ("mlp", {"n_layers": 3})):
        base, _ = _model(seed=2, arch=arch, **extra)
        for scale in (2.0, 0.5):
            scaled, _ = _model(seed=2, arch=arch, init_scale=scale, **extra)
            for (n, p1), p2 in zip(base.named_parameters(), scaled.parameters(), strict=True):
                if ".ln" in n or n.startswith("ln_"):
                    assert torch.equal(p2, p1), n  # LayerNorm starts at identity
                else:
                    assert torch.equal(p2, scale * p1), n


def test_transformer_init_std_as_in_the_paper() -> None:
    model, _ = _model(DataConfig(p=113), d_model=128, n_heads=4, d_head=32, d_mlp=512)
    d_model, d_vocab = 128, 114
    for name, std in (
        ("embed.W_E", d_model**-0.5),
        ("blocks.0.attn.W_Q", d_model**-0.5),
        ("blocks.0.mlp.W_in", d_model**-0.5),
        ("blocks.0.mlp.W_out", d_model**-0.5),
        ("unembed.W_U", d_vocab**-0.5),
    ):
        w = model.get_parameter(name)
        assert abs(w.std().item() / std - 1) < 0.05, name
        assert abs(w.mean().item()) < 0.05 * std, name
    assert torch.equal(model.blocks[0].mlp.b_in, torch.zeros(512))


def _one_hot_mlp(model: MLP, tokens: torch.Tensor, concat: bool) -> torch.Tensor:
    """Reference: explicit one-hot inputs times the weight matrices."""
    d_vocab = model.d_vocab
    oh = F.one_hot(tokens, d_vocab).float()  # [b, n_ctx, d_vocab]
    x = oh.reshape(len(tokens), -1) if concat else oh.sum(1)
    h = torch.relu(x @ model.embed.W_E + model.layers[0].b)
    for layer in model.layers[1:]:
        h = torch.relu(h @ layer.W + layer.b)
    return (h @ model.unembed.W_U + model.unembed.b_U).unsqueeze(1)


@pytest.mark.parametrize("mlp_input", ["sum", "concat"])
@pytest.mark.parametrize("n_layers", [2, 3])
def test_mlp_names_shapes_and_known_answer(mlp_input: str, n_layers: int) -> None:
    model, task = _model(arch="mlp", n_layers=n_layers, mlp_input=mlp_input)
    assert isinstance(model, MLP)
    n_in = 8 * (3 if mlp_input == "concat" else 1)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    expected = {"embed.W_E": (n_in, 32), "layers.0.b": (32,)}
    for i in range(1, n_layers - 1):
        expected |= {f"layers.{i}.W": (32, 32), f"layers.{i}.b": (32,)}
    expected |= {"unembed.W_U": (32, 8), "unembed.b_U": (8,)}
    assert shapes == expected
    tokens = _all_tokens(task)
    with torch.no_grad():
        out = model(tokens, n_scored=1)
        assert out.shape == (len(tokens), 1, 8)
        assert_close(out, _one_hot_mlp(model, tokens, mlp_input == "concat"))
        _, cache = model.run_with_cache(tokens)
    assert cache["layers.0.hook_post"].shape == (len(tokens), 32)
    # Summed one-hots cannot tell a+b from b+a; concatenated ones can.
    swapped = tokens[:, [1, 0, 2]]
    with torch.no_grad():
        if mlp_input == "sum":
            assert_close(model(swapped), out)
        else:
            assert not torch.allclose(model(swapped), out)
