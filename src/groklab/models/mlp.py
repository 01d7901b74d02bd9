"""A multilayer perceptron on one-hot token inputs (summed or concatenated) or dense features.

The first layer's weight is an embedding: multiplying the sum (or concatenation) of one-hot
vectors by a matrix is a sum of its rows, so ``embed.W_E [n_in * d_vocab, d_mlp]`` is looked up
instead of building one-hots. Names: ``embed.W_E``, ``layers.{i}.b`` (first layer's bias is
``layers.0.b``), ``layers.{i}.W`` for hidden layers, ``unembed.W_U``/``unembed.b_U``; hook
points ``layers.{i}.hook_pre`` / ``hook_post`` ``[batch, d_mlp]``.
With ``mlp_input="dense"`` the input is a float feature vector ``[batch, d_vocab]`` (an image's
pixels; ``d_vocab`` is the feature count) and the first layer is the matrix product with the
same ``embed.W_E [d_vocab, d_mlp]``.
Initialisation is PyTorch's Linear default, U(±1/sqrt(fan_in)), times ``init_scale``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from groklab.config import ModelConfig
from groklab.models.hooks import HookedModule, HookPoint

__all__ = ["MLP"]


def _uniform(gen: torch.Generator, *shape: int, fan_in: int, scale: float) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter((torch.rand(*shape, generator=gen) * 2 - 1) * bound * scale)


class _Layer(nn.Module):
    def __init__(self, d_in: int, d_out: int, gen: torch.Generator, scale: float, first: bool):
        super().__init__()
        if not first:
            self.W = _uniform(gen, d_in, d_out, fan_in=d_in, scale=scale)
        self.b = _uniform(gen, d_out, fan_in=d_in, scale=scale)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()


class MLP(HookedModule):
    """MLP with ``n_layers`` linear layers of width ``d_mlp`` on one-hot token inputs.

    Args:
        cfg: model config (arch ``mlp``; uses n_layers, d_mlp, act, init_scale, mlp_input).
        d_vocab: input vocabulary size.
        d_vocab_out: number of output classes.
        n_ctx: number of input tokens.
        seed: seed of the local generator used for initialisation.
    """

    def __init__(
        self, cfg: ModelConfig, *, d_vocab: int, d_vocab_out: int, n_ctx: int, seed: int = 0
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_vocab, self.d_vocab_out, self.n_ctx = d_vocab, d_vocab_out, n_ctx
        self.concat = cfg.mlp_input == "concat"
        self.dense = cfg.mlp_input == "dense"
        n_in = d_vocab * (n_ctx if self.concat else 1)
        gen = torch.Generator().manual_seed(seed)
        s = cfg.init_scale
        self.embed = nn.Module()
        self.embed.W_E = _uniform(gen, n_in, cfg.d_mlp, fan_in=n_in, scale=s)
        self.layers = nn.ModuleList(
            _Layer(cfg.d_mlp if i else n_in, cfg.d_mlp, gen, s, first=(i == 0))
            for i in range(cfg.n_layers - 1)
        )
        self.unembed = nn.Module()
        self.unembed.W_U = _uniform(gen, cfg.d_mlp, d_vocab_out, fan_in=cfg.d_mlp, scale=s)
        self.unembed.b_U = _uniform(gen, d_vocab_out, fan_in=cfg.d_mlp, scale=s)
        self.act = F.relu if cfg.act == "relu" else F.gelu
        if self.concat:
            self.register_buffer("offsets", torch.arange(n_ctx) * d_vocab, persistent=False)

    def forward(self, tokens: torch.Tensor, *, n_scored: int | None = None) -> torch.Tensor:
        """Logits ``[batch, 1, d_vocab_out]`` (an MLP has one output position).

        ``tokens`` is ``[batch, n_ctx]`` token ids, or ``[batch, d_vocab]`` floats when dense.
        """
        if self.dense:
            h = tokens.to(self.embed.W_E.dtype) @ self.embed.W_E  # [batch, d_mlp]
        else:
            idx = tokens + self.offsets if self.concat else tokens
            h = self.embed.W_E[idx].sum(dim=1)  # [batch, d_mlp]
        for i, layer in enumerate(self.layers):
            pre = h + layer.b if i == 0 else torch.addmm(layer.b, h, layer.W)
            h = layer.hook_post(self.act(layer.hook_pre(pre)))
        logits = torch.addmm(self.unembed.b_U, h, self.unembed.W_U)
        return logits.unsqueeze(1)
