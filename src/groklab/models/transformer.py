"""A small decoder-only transformer with TransformerLens naming and hook points.

Parameter names and shapes follow TransformerLens (``embed.W_E [d_vocab, d_model]``,
``blocks.0.attn.W_Q [n_heads, d_model, d_head]``, ``blocks.0.mlp.W_in [d_model, d_mlp]``,
``unembed.W_U [d_model, d_vocab_out]``, ...). As in Nanda et al. (2023) attention has no
biases, the MLP has biases, the unembedding has none, and embeddings are untied.

``forward(tokens, n_scored=k)`` computes the last layer's attention queries, its MLP and the
unembedding only at the last ``k`` positions. Every earlier computation is position-wise or
causal, so those logits are exactly the ones a full forward gives there, for a fraction of
the arithmetic.

Two paths compute the same logits. With a hook attached, the module path runs through every
hook point (analysis). Without one, :func:`stacked_forward` runs: it takes K models' weights
stacked along a leading axis (a single model is K = 1, which is how the trainer trains many
seeds as one computation), skips the hook points, and computes the first attention from
(token, position) tables when the batch is larger than the table (see ``_block0_table``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from groklab.config import ModelConfig
from groklab.models.hooks import HookedModule, HookPoint

__all__ = ["Transformer", "stacked_forward"]


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
        n_out = tokens.shape[1] if n_scored is None else n_scored
        if self.hooks_active:
            return self._forward_hooked(tokens, n_out)
        # No hook attached: the same arithmetic as one member of a stack of models, which
        # skips the hook points and takes the table shortcuts of ``stacked_forward``.
        weights = {name: p.unsqueeze(0) for name, p in self.named_parameters()}
        return stacked_forward(self.cfg, weights, tokens.unsqueeze(0), n_out=n_out).squeeze(0)

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


# --------------------------------------------------------------------------- stacked models
#
# ``stacked_forward`` runs K models of one config at once from weights with a leading model
# axis. With K = 1 it is the hook-free forward of a single Transformer, so a model trained
# alone and the same model trained in a stack run the same code.


def _mm(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [K, n, a] @ w [K, a, c] (+ bias [K, c])`` → ``[K, n, c]``; K = 1 is one GEMM."""
    if x.shape[0] == 1:
        # squeeze, not x[0]: the backward of a select would materialise a zero-filled copy.
        x0, w0 = x.squeeze(0), w.squeeze(0)
        out = x0 @ w0 if bias is None else torch.addmm(bias.squeeze(0), x0, w0)
        return out.unsqueeze(0)
    if bias is None:
        return torch.bmm(x, w)
    return torch.baddbmm(bias.unsqueeze(1), x, w)


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LayerNorm of ``x [K, ..., d]`` with per-model affine ``w, b [K, d]``."""
    d = x.shape[-1]
    if x.shape[0] == 1:
        return F.layer_norm(x.squeeze(0), (d,), w.squeeze(0), b.squeeze(0), 1e-5).unsqueeze(0)
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (d,)
    return F.layer_norm(x, (d,)) * w.view(shape) + b.view(shape)


def _mlp(cfg: ModelConfig, w: dict[str, torch.Tensor], i: int, x: torch.Tensor) -> torch.Tensor:
    """Block ``i``'s MLP on ``x [K, n, d_model]``."""
    pre = _mm(x, w[f"blocks.{i}.mlp.W_in"], w[f"blocks.{i}.mlp.b_in"])
    post = F.relu(pre) if cfg.act == "relu" else F.gelu(pre)
    return _mm(post, w[f"blocks.{i}.mlp.W_out"], w[f"blocks.{i}.mlp.b_out"])


def _causal(n_query: int, n_pos: int, device: torch.device) -> torch.Tensor | None:
    """``[n_query, n_pos]`` mask of allowed keys of the last ``n_query`` queries; ``None`` if all."""
    if n_query == 1:
        return None  # the last position sees every position
    q = torch.arange(n_pos - n_query, n_pos, device=device)
    return torch.arange(n_pos, device=device)[None, :] <= q[:, None]


def _block_rows(
    cfg: ModelConfig, w: dict[str, torch.Tensor], i: int, resid: torch.Tensor, n_query: int
) -> torch.Tensor:
    """Block ``i`` on residual rows ``[K, b, pos, d]`` → ``[K, b, n_query, d]``."""
    pre = f"blocks.{i}."
    k_, b, n_pos, d = resid.shape
    x = _ln(resid, w[pre + "ln1.w"], w[pre + "ln1.b"]) if cfg.layernorm else resid
    xq = x[:, :, n_pos - n_query :]
    q = torch.einsum("kbpd,khde->kbphe", xq, w[pre + "attn.W_Q"])
    k = torch.einsum("kbpd,khde->kbphe", x, w[pre + "attn.W_K"])
    v = torch.einsum("kbpd,khde->kbphe", x, w[pre + "attn.W_V"])
    scores = torch.einsum("kbqhe,kbphe->kbhqp", q, k) / math.sqrt(cfg.d_head)
    mask = _causal(n_query, n_pos, resid.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    z = torch.einsum("kbhqp,kbphe->kbqhe", scores.softmax(dim=-1), v)
    resid = resid[:, :, n_pos - n_query :] + torch.einsum(
        "kbqhe,khed->kbqd", z, w[pre + "attn.W_O"]
    )
    if not cfg.attn_only:
        x = _ln(resid, w[pre + "ln2.w"], w[pre + "ln2.b"]) if cfg.layernorm else resid
        resid = resid + _mlp(cfg, w, i, x.reshape(k_, b * n_query, d)).view(k_, b, n_query, d)
    return resid


def _block0_table(
    cfg: ModelConfig, w: dict[str, torch.Tensor], tokens: torch.Tensor, n_query: int
) -> torch.Tensor:
    """Block 0's attention on ``tokens [K, b, pos]`` from (token, position) tables.

    Before the first attention the residual at (token t, position j) is ``W_E[t] + W_pos[j]``:
    one of only ``R = d_vocab · pos`` rows. So everything the attention computes from a single
    position is computed once per table row and looked up:

    - the attention score of a (query row, key row) pair and head, when the table of all pairs
      is not larger than the batch's own scores (else per batch row from tabled q and k);
    - each key row's value pushed through ``W_O``, ``VO [R, head, d_model]``, so a query's
      attention output is ``Σ_{j, h} pattern[j, h] · VO[row_j, h]``: one ``embedding_bag``
      (a weighted sum of looked-up rows) that also adds the query's own residual row.

    Every looked-up number is the number the direct computation produces, up to the order of
    float additions. Returns the residual after attention, ``[K, b, n_query, d_model]``.
    """
    k_, b, n_pos = tokens.shape
    _, n_vocab, d = w["embed.W_E"].shape
    h, e = cfg.n_heads, cfg.d_head
    r = n_vocab * n_pos
    dev = tokens.device
    table = (w["embed.W_E"][:, :, None, :] + w["pos_embed.W_pos"][:, None, :n_pos, :]).reshape(
        k_, r, d
    )  # [K, (token, pos), d]
    x = _ln(table, w["blocks.0.ln1.w"], w["blocks.0.ln1.b"]) if cfg.layernorm else table
    row = tokens * n_pos + torch.arange(n_pos, device=dev)  # [K, b, pos] table row per position
    q_rows = row[:, :, n_pos - n_query :]  # [K, b, q]
    v = torch.einsum("krd,khde->krhe", x, w["blocks.0.attn.W_V"])
    vo = torch.einsum("krhe,khef->krhf", v, w["blocks.0.attn.W_O"])  # [K, R, h, d]
    k_tab = torch.einsum("krd,khde->khre", x, w["blocks.0.attn.W_K"])  # [K, h, R, e]
    if n_vocab * n_query * r <= 4 * b * n_query * n_pos:
        # Score table [K, (query token, query pos) · key row, h]: fewer pairs than lookups.
        xq = x.view(k_, n_vocab, n_pos, d)[:, :, n_pos - n_query :].reshape(k_, -1, d)
        q_tab = torch.einsum("kqd,khde->khqe", xq, w["blocks.0.attn.W_Q"])
        s_tab = (q_tab @ k_tab.transpose(-1, -2)).permute(0, 2, 3, 1) / math.sqrt(e)
        q_pair = tokens[:, :, n_pos - n_query :] * n_query + torch.arange(n_query, device=dev)
        pair = q_pair[..., None] * r + row[:, :, None, :]  # [K, b, q, pos]
        scores = _lookup(pair, s_tab.reshape(k_, -1, h))  # [K, b, q, pos, h]
    else:
        q_tab = torch.einsum("krd,khde->krhe", x, w["blocks.0.attn.W_Q"])
        q = _lookup(q_rows, q_tab.reshape(k_, r, h * e)).view(k_, b, n_query, 1, h, e)
        kk = _lookup(row, k_tab.transpose(1, 2).reshape(k_, r, h * e))
        scores = (q * kk.view(k_, b, 1, n_pos, h, e)).sum(-1) / math.sqrt(e)  # [K, b, q, pos, h]
    mask = _causal(n_query, n_pos, dev)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
    pattern = scores.softmax(dim=3)  # [K, b, q, pos, h]
    # A bag of pos·h value rows weighted by the pattern, plus the query's own row weighted 1.
    vo_idx = (row[:, :, None, :, None] * h + torch.arange(h, device=dev)).expand(
        k_, b, n_query, n_pos, h
    )
    idx = torch.cat(
        [vo_idx.reshape(k_, b * n_query, n_pos * h), r * h + q_rows.reshape(k_, -1, 1)], dim=2
    )
    bag = torch.cat([vo.reshape(k_, r * h, d), table], dim=1)  # [K, R·h + R, d]
    weights = torch.cat(
        [pattern.reshape(k_, b * n_query, n_pos * h), pattern.new_ones(k_, b * n_query, 1)],
        dim=2,
    )
    resid = _per_model(
        lambda i, t, ws: F.embedding_bag(i, t, per_sample_weights=ws, mode="sum"),
        idx,
        bag,
        weights,
    )
    return resid.view(k_, b, n_query, d)


def _per_model(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(t_1[k], t_2[k], ...)`` for every model k, stacked.

    Lookups run model by model so that each model's backward accumulates in the same order
    as when it is trained alone. (``squeeze``/``unbind`` rather than ``t[k]``: the backward
    of an index would write a zero-filled copy of the whole stack per model.)
    """
    if tensors[0].shape[0] == 1:
        return fn(*(t.squeeze(0) for t in tensors)).unsqueeze(0)
    return torch.stack([fn(*ts) for ts in zip(*(t.unbind(0) for t in tensors), strict=True)])


def _lookup(idx: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rows ``table[k, idx[k]]`` of each model: ``[K, ...] , [K, rows, c]`` → ``[K, ..., c]``."""
    return _per_model(F.embedding, idx, table)


def stacked_forward(
    cfg: ModelConfig, weights: dict[str, torch.Tensor], tokens: torch.Tensor, *, n_out: int
) -> torch.Tensor:
    """Logits of K transformers of one config, without hook points.

    Args:
        cfg: the models' config.
        weights: every parameter by its TransformerLens name with a leading model axis
            (``embed.W_E [K, d_vocab, d_model]``, ...).
        tokens: ``[K, batch, pos]`` token ids (each model its own batch) or ``[batch, pos]``
            (one batch for all models).
        n_out: number of (last) positions to compute logits for.

    Returns:
        ``[K, batch, n_out, d_vocab_out]`` logits, each model's equal to its own
        ``Transformer.forward`` with hooks (up to float summation order).
    """
    k_ = weights["embed.W_E"].shape[0]
    if tokens.dim() == 2:
        tokens = tokens.expand(k_, *tokens.shape)
    group = _group_size(cfg, weights, tokens, n_out)
    if group < k_:
        parts = {n: w.split(group) for n, w in weights.items()}
        return torch.cat(
            [
                _stacked(cfg, {n: p[i] for n, p in parts.items()}, chunk, n_out=n_out)
                for i, chunk in enumerate(tokens.split(group))
            ]
        )
    return _stacked(cfg, weights, tokens, n_out=n_out)


# Largest activation of a group of stacked models on CPU. glibc serves allocations above its
# mmap threshold (at most 32 MiB) with fresh pages every time, and on a virtual machine every
# fresh page faults: a stack of 8 canonical models (63 MiB per MLP activation) spent more time
# in page faults than it saved by batching. Groups below the threshold reuse the heap.
_CPU_GROUP_BYTES = 16 * 2**20


def _group_size(
    cfg: ModelConfig, weights: dict[str, torch.Tensor], tokens: torch.Tensor, n_out: int
) -> int:
    """How many of the K models to run as one batched computation."""
    k_, b, n_pos = tokens.shape
    if tokens.device.type != "cpu":
        return k_  # device allocators cache their blocks: the bigger the batch the better
    rows = b * (n_pos if cfg.n_layers > 1 else n_out)
    width = max(cfg.d_model, weights["unembed.W_U"].shape[-1], 0 if cfg.attn_only else cfg.d_mlp)
    per_model = rows * width * weights["unembed.W_U"].element_size()
    return max(1, min(k_, _CPU_GROUP_BYTES // max(per_model, 1)))


def _tables_pay(cfg: ModelConfig, b: int, d_vocab: int, n_pos: int, n_query: int) -> bool:
    """Whether block 0's attention from (token, position) tables is cheaper than per row.

    The tables replace each row's q/k/v projections, but each query then sums ``n_pos · h``
    looked-up ``d_model``-wide rows (and the lookups' backward scatters them). That pays when
    the batch is larger than the table and the lookups cost well under the projections they
    replace: short inputs such as ``a b =`` (bag 13 rows vs 147k multiply-adds per example on
    the canonical model), not 84-token sequences queried at every position (repeat-subseq's
    first block: the lookups cost as much as the direct attention, and their backward ~30×
    more in time).
    """
    h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    direct = n_pos * d * 3 * h * e + 2 * n_query * n_pos * h * e + n_query * h * e * d
    lookups = n_query * (n_pos * h + 1) * d
    return b > 2 * d_vocab and 4 * lookups <= direct


def _stacked(
    cfg: ModelConfig, weights: dict[str, torch.Tensor], tokens: torch.Tensor, *, n_out: int
) -> torch.Tensor:
    """:func:`stacked_forward` of one group of models."""
    k_, b, n_pos = tokens.shape
    d_vocab, d = weights["embed.W_E"].shape[1:]
    last = cfg.n_layers - 1
    n_query = n_out if last == 0 else n_pos
    if _tables_pay(cfg, b, d_vocab, n_pos, n_query):
        # Larger batch than table: first attention from (token, position) tables.
        resid = _block0_table(cfg, weights, tokens, n_query)
        if not cfg.attn_only:
            x = resid
            if cfg.layernorm:
                x = _ln(resid, weights["blocks.0.ln2.w"], weights["blocks.0.ln2.b"])
            resid = resid + _mlp(cfg, weights, 0, x.reshape(k_, -1, d)).view(resid.shape)
        first = 1
    else:
        embed = _lookup(tokens, weights["embed.W_E"])
        resid = embed + weights["pos_embed.W_pos"][:, None, :n_pos]
        first = 0
    for i in range(first, cfg.n_layers):
        resid = _block_rows(cfg, weights, i, resid, n_out if i == last else n_pos)
    if cfg.layernorm:
        resid = _ln(resid, weights["ln_final.w"], weights["ln_final.b"])
    logits = _mm(resid.reshape(k_, b * n_out, d), weights["unembed.W_U"])
    return logits.view(k_, b, n_out, -1)
