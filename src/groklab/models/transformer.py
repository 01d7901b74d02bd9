"""A small decoder-only transformer with TransformerLens naming and hook points.

Parameter names and shapes follow TransformerLens (``embed.W_E [d_vocab, d_model]``,
``blocks.0.attn.W_Q [n_heads, d_model, d_head]``, ``blocks.0.mlp.W_in [d_model, d_mlp]``,
``unembed.W_U [d_model, d_vocab_out]``, ...). As in Nanda et al. (2023) attention has no
biases, the MLP has biases, the unembedding has none, and embeddings are untied.

``forward(tokens, n_scored=k)`` computes the last layer's attention queries, its MLP and the
unembedding only at the last ``k`` positions. Every earlier computation is position-wise or
causal, so those logits are exactly the ones a full forward gives there, for a fraction of
the arithmetic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from groklab.config import ModelConfig
from groklab.models.hooks import HookedModule, HookPoint

__all__ = ["Transformer"]


def _normal(gen: torch.Generator, *shape: int, std: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape, generator=gen) * std)


class LayerNorm(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(F.layer_norm(x, x.shape[-1:], self.w, self.b, 1e-5))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, n_ctx: int, gen: torch.Generator) -> None:
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        std = cfg.init_scale / math.sqrt(d)
        self.W_Q = _normal(gen, h, d, e, std=std)
        self.W_K = _normal(gen, h, d, e, std=std)
        self.W_V = _normal(gen, h, d, e, std=std)
        self.W_O = _normal(gen, h, e, d, std=std)
        self.scale = 1.0 / math.sqrt(e)
        self.register_buffer(
            "mask", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool)), persistent=False
        )
        self.hook_q = HookPoint()  # [batch, q_pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, k_pos, head, d_head]
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()  # [batch, q_pos, head, d_head]

    def _mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of q [b, nq, h, e] over k, v [b, nk, h, e] → z [b, nq, h, e]."""
        n_q, n_k = q.shape[1], k.shape[1]
        mask = self.mask[n_k - n_q : n_k, :n_k]
        if n_k <= 8:
            # Tiny contexts: broadcasting beats a batched matmul of 1×d_head×n_k products.
            scores = (q.unsqueeze(2) * k.unsqueeze(1)).sum(-1) * self.scale  # [b, nq, nk, h]
            scores = scores.masked_fill(~mask[None, :, :, None], float("-inf"))
            pattern = scores.softmax(dim=2)
            return (pattern.unsqueeze(-1) * v.unsqueeze(1)).sum(2)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale
        pattern = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return torch.einsum("bhqk,bkhe->bqhe", pattern, v)

    def fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_Q|W_K|W_V as one [d_model, 3·h·e] matrix and W_O as [h·e, d_model]."""
        h, d, e = self.W_Q.shape
        w_qkv = torch.stack([self.W_Q, self.W_K, self.W_V])  # [3, h, d, e]
        w_qkv = w_qkv.permute(2, 0, 1, 3).reshape(d, 3 * h * e)
        return w_qkv, self.W_O.reshape(h * e, d)

    def forward_fast(self, qkv: torch.Tensor, n_query: int) -> torch.Tensor:
        """Attention output from precomputed q|k|v rows ``[batch, pos, 3·h·e]``."""
        b, n_pos, _ = qkv.shape
        h, _, e = self.W_Q.shape
        q, k, v = qkv.view(b, n_pos, 3, h, e).unbind(2)
        z = self._mix(q[:, n_pos - n_query :], k, v)
        return z.reshape(b * n_query, h * e) @ self.W_O.reshape(h * e, -1)

    def forward(self, x: torch.Tensor, n_query: int) -> torch.Tensor:
        # x: [batch, pos, d_model]; queries only at the last n_query positions.
        n_pos = x.shape[1]
        xq = x[:, n_pos - n_query :]
        q = self.hook_q(torch.einsum("bpd,hde->bphe", xq, self.W_Q))
        k = self.hook_k(torch.einsum("bpd,hde->bphe", x, self.W_K))
        v = self.hook_v(torch.einsum("bpd,hde->bphe", x, self.W_V))
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale
        mask = self.mask[n_pos - n_query : n_pos, :n_pos]
        scores = self.hook_attn_scores(scores.masked_fill(~mask, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        return torch.einsum("bqhe,hed->bqd", z, self.W_O)


class MLPBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator) -> None:
        super().__init__()
        std = cfg.init_scale / math.sqrt(cfg.d_model)
        self.W_in = _normal(gen, cfg.d_model, cfg.d_mlp, std=std)
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = _normal(gen, cfg.d_mlp, cfg.d_model, std=std)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = F.relu if cfg.act == "relu" else F.gelu
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Hooks see [batch, pos, d_mlp] (as documented); the matmuls run on [batch·pos, ·].
        pre = torch.addmm(self.b_in, x.reshape(-1, x.shape[-1]), self.W_in)
        post = self.hook_post(self.act(self.hook_pre(pre.view(*x.shape[:-1], -1))))
        out = torch.addmm(self.b_out, post.reshape(-1, post.shape[-1]), self.W_out)
        return out.reshape(*x.shape[:-1], -1)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, n_ctx: int, gen: torch.Generator) -> None:
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model) if cfg.layernorm else None
        self.attn = Attention(cfg, n_ctx, gen)
        self.mlp = None if cfg.attn_only else MLPBlock(cfg, gen)
        self.ln2 = LayerNorm(cfg.d_model) if (cfg.layernorm and self.mlp is not None) else None
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: torch.Tensor, n_query: int) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        x = self.ln1(resid) if self.ln1 is not None else resid
        attn_out = self.hook_attn_out(self.attn(x, n_query))
        # Positions before the queried ones are not needed downstream of this block.
        resid = self.hook_resid_mid(resid[:, resid.shape[1] - n_query :] + attn_out)
        if self.mlp is not None:
            x = self.ln2(resid) if self.ln2 is not None else resid
            resid = resid + self.hook_mlp_out(self.mlp(x))
        return self.hook_resid_post(resid)


class Transformer(HookedModule):
    """Decoder-only transformer (TransformerLens naming).

    Args:
        cfg: model config (arch ``transformer``).
        d_vocab: input vocabulary size.
        d_vocab_out: number of output classes.
        n_ctx: sequence length.
        seed: seed of the local generator used for initialisation.
    """

    def __init__(
        self, cfg: ModelConfig, *, d_vocab: int, d_vocab_out: int, n_ctx: int, seed: int = 0
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_vocab, self.d_vocab_out, self.n_ctx = d_vocab, d_vocab_out, n_ctx
        gen = torch.Generator().manual_seed(seed)
        std = cfg.init_scale / math.sqrt(cfg.d_model)
        self.embed = nn.Module()
        self.embed.W_E = _normal(gen, d_vocab, cfg.d_model, std=std)
        self.pos_embed = nn.Module()
        self.pos_embed.W_pos = _normal(gen, n_ctx, cfg.d_model, std=std)
        self.blocks = nn.ModuleList(Block(cfg, n_ctx, gen) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model) if cfg.layernorm else None
        self.unembed = nn.Module()
        self.unembed.W_U = _normal(
            gen, cfg.d_model, d_vocab_out, std=cfg.init_scale / math.sqrt(d_vocab_out)
        )
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_pos_embed = HookPoint()

    def forward(self, tokens: torch.Tensor, *, n_scored: int | None = None) -> torch.Tensor:
        """Logits ``[batch, n_out, d_vocab_out]`` for the last ``n_scored`` positions.

        Args:
            tokens: ``[batch, pos]`` token ids.
            n_scored: positions to compute logits for (the last ones); ``None`` = all.
        """
        n_pos = tokens.shape[1]
        if not self.hooks_active and tokens.shape[0] * n_pos > 2 * self.d_vocab * n_pos:
            return self._forward_fast(tokens, n_pos if n_scored is None else n_scored)
        return self._forward_hooked(tokens, n_scored)

    def _forward_fast(self, tokens: torch.Tensor, n_out: int) -> torch.Tensor:
        """Same logits as the hooked path, with the first block's inputs taken from a table.

        Before the first attention the residual stream at (token, position) is
        ``W_E[token] + W_pos[position]``: only ``d_vocab · n_ctx`` distinct rows. Their
        (LayerNorm and) Q/K/V projections are computed once per distinct row and gathered,
        instead of once per batch row. The gathered rows are the very rows the direct
        computation produces, so the logits agree with the hooked path.
        """
        b, n_pos = tokens.shape
        v_, d = self.embed.W_E.shape
        table = (self.embed.W_E[:, None, :] + self.pos_embed.W_pos[None, :n_pos, :]).reshape(
            v_ * n_pos, d
        )  # [(token, pos), d_model]
        idx = tokens * n_pos + torch.arange(n_pos, device=tokens.device)  # [b, pos]
        block0 = self.blocks[0]
        x_table = block0.ln1(table) if block0.ln1 is not None else table
        w_qkv, _ = block0.attn.fused_weights()
        qkv = F.embedding(idx, x_table @ w_qkv)  # [b, pos, 3·h·e]
        n_query = n_out if len(self.blocks) == 1 else n_pos
        attn_out = block0.attn.forward_fast(qkv, n_query)  # [b·n_query, d_model]
        resid = F.embedding(idx[:, n_pos - n_query :], table).reshape(b * n_query, d) + attn_out
        if block0.mlp is not None:
            x = block0.ln2(resid) if block0.ln2 is not None else resid
            resid = resid + block0.mlp(x)
        resid = resid.view(b, n_query, d)
        for i, block in enumerate(self.blocks[1:], start=1):
            resid = block(resid, n_out if i == len(self.blocks) - 1 else n_pos)
        if self.ln_final is not None:
            resid = self.ln_final(resid)
        return (resid.reshape(-1, d) @ self.unembed.W_U).view(b, n_out, -1)

    def _forward_hooked(self, tokens: torch.Tensor, n_scored: int | None) -> torch.Tensor:
        n_pos = tokens.shape[1]
        n_out = n_pos if n_scored is None else n_scored
        embed = self.hook_embed(self.embed.W_E[tokens])
        pos = self.hook_pos_embed(self.pos_embed.W_pos[:n_pos])
        resid = embed + pos
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            resid = block(resid, n_out if i == last else n_pos)
        if self.ln_final is not None:
            resid = self.ln_final(resid)
        return torch.einsum("bpd,dv->bpv", resid, self.unembed.W_U)
