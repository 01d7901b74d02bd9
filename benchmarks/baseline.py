"""The baseline: the canonical run written the way the published code writes it.

Our own plain implementation, kept here only to measure groklab against. It follows the
structure of the public code of Nanda et al. (2023) and its TransformerLens-style demo:

- a full forward over every position (attention, MLP and unembedding at all 3 positions,
  though only the last one is scored), einsum attention with a ``-1e10`` causal mask,
  identity hook modules on every activation;
- float64 log-softmax cross-entropy on the last position;
- ``torch.optim.AdamW`` with its defaults (lr 1e-3, weight decay 1, betas (0.9, 0.98)) and a
  ``LambdaLR`` linear warmup over 10 steps;
- every step: train forward, backward, optimiser step, then the test-set forward under
  ``torch.inference_mode`` and both losses read to the host with ``.item()``.

Initialisation has the same distribution as groklab's (N(0, 1/d_model), W_U N(0, 1/d_vocab)).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BaselineTrainer", "BaselineTransformer", "baseline_loss", "load_groklab_weights"]


class _Hook(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_head: int, n_ctx: int, gen) -> None:
        super().__init__()
        s = 1 / math.sqrt(d_model)
        self.W_K = nn.Parameter(torch.randn(n_heads, d_head, d_model, generator=gen) * s)
        self.W_Q = nn.Parameter(torch.randn(n_heads, d_head, d_model, generator=gen) * s)
        self.W_V = nn.Parameter(torch.randn(n_heads, d_head, d_model, generator=gen) * s)
        self.W_O = nn.Parameter(torch.randn(d_model, d_head * n_heads, generator=gen) * s)
        self.register_buffer("mask", torch.tril(torch.ones((n_ctx, n_ctx))))
        self.d_head = d_head
        self.hook_k, self.hook_q, self.hook_v = _Hook(), _Hook(), _Hook()
        self.hook_z, self.hook_attn, self.hook_attn_pre = _Hook(), _Hook(), _Hook()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.hook_k(torch.einsum("ihd,bpd->biph", self.W_K, x))
        q = self.hook_q(torch.einsum("ihd,bpd->biph", self.W_Q, x))
        v = self.hook_v(torch.einsum("ihd,bpd->biph", self.W_V, x))
        scores = torch.einsum("biph,biqh->biqp", k, q)
        n = x.shape[-2]
        masked = torch.tril(scores) - 1e10 * (1 - self.mask[:n, :n])
        pattern = self.hook_attn(
            torch.softmax(self.hook_attn_pre(masked / math.sqrt(self.d_head)), dim=-1)
        )
        z = self.hook_z(torch.einsum("biph,biqp->biqh", v, pattern))
        z_flat = z.permute(0, 2, 1, 3).reshape(z.shape[0], z.shape[2], -1)
        return torch.einsum("df,bqf->bqd", self.W_O, z_flat)


class _MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, gen) -> None:
        super().__init__()
        s = 1 / math.sqrt(d_model)
        self.W_in = nn.Parameter(torch.randn(d_mlp, d_model, generator=gen) * s)
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.randn(d_model, d_mlp, generator=gen) * s)
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.hook_pre, self.hook_post = _Hook(), _Hook()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_pre(torch.einsum("md,bpd->bpm", self.W_in, x) + self.b_in)
        x = self.hook_post(torch.relu(x))
        return torch.einsum("dm,bpm->bpd", self.W_out, x) + self.b_out


class BaselineTransformer(nn.Module):
    """1 layer, d_model 128, 4 heads of 32, d_mlp 512, ReLU, no LayerNorm, untied embeddings."""

    def __init__(
        self,
        *,
        d_vocab: int,
        d_vocab_out: int,
        n_ctx: int,
        d_model: int = 128,
        n_heads: int = 4,
        d_head: int = 32,
        d_mlp: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        s = 1 / math.sqrt(d_model)
        self.W_E = nn.Parameter(torch.randn(d_model, d_vocab, generator=gen) * s)
        self.W_pos = nn.Parameter(torch.randn(n_ctx, d_model, generator=gen) * s)
        self.attn = _Attention(d_model, n_heads, d_head, n_ctx, gen)
        self.mlp = _MLP(d_model, d_mlp, gen)
        self.W_U = nn.Parameter(
            torch.randn(d_model, d_vocab_out, generator=gen) / math.sqrt(d_vocab_out)
        )
        self.hook_embed, self.hook_pos, self.hook_mid, self.hook_post = (
            _Hook(),
            _Hook(),
            _Hook(),
            _Hook(),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.hook_embed(torch.einsum("dbp->bpd", self.W_E[:, tokens]))
        x = x + self.hook_pos(self.W_pos[: x.shape[-2]])
        x = self.hook_mid(x + self.attn(x))
        x = self.hook_post(x + self.mlp(x))
        return x @ self.W_U  # logits at every position


def load_groklab_weights(model: BaselineTransformer, weights: dict[str, torch.Tensor]) -> None:
    """Copy a groklab ``Transformer``'s weights (TransformerLens names, as in
    ``dict(groklab_model.named_parameters())``) into ``model`` in place, so both compute the
    same function (the published layout stores most matrices transposed)."""
    n_heads, _, d_head = weights["blocks.0.attn.W_Q"].shape
    a, m = "blocks.0.attn.", "blocks.0.mlp."
    new = {
        "W_E": weights["embed.W_E"].T,
        "W_pos": weights["pos_embed.W_pos"],
        "attn.W_Q": weights[a + "W_Q"].transpose(1, 2),
        "attn.W_K": weights[a + "W_K"].transpose(1, 2),
        "attn.W_V": weights[a + "W_V"].transpose(1, 2),
        "attn.W_O": weights[a + "W_O"].reshape(n_heads * d_head, -1).T,
        "mlp.W_in": weights[m + "W_in"].T,
        "mlp.b_in": weights[m + "b_in"],
        "mlp.W_out": weights[m + "W_out"].T,
        "mlp.b_out": weights[m + "b_out"],
        "W_U": weights["unembed.W_U"],
    }
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(new[name])


def baseline_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the last position with a float64 log-softmax."""
    logits = logits[:, -1].to(torch.float64)
    log_probs = logits.log_softmax(dim=-1)
    return -log_probs.gather(dim=-1, index=labels[:, None])[:, 0].mean()


class BaselineTrainer:
    """The published loop: one call of :meth:`step` is one epoch of it."""

    def __init__(
        self,
        train: tuple[torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor],
        *,
        d_vocab: int,
        d_vocab_out: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
        track_acc: bool = False,
    ) -> None:
        self.track_acc = track_acc
        self.train_x, self.train_y = (t.to(device) for t in train)
        self.test_x, self.test_y = (t.to(device) for t in test)
        self.model = BaselineTransformer(
            d_vocab=d_vocab, d_vocab_out=d_vocab_out, n_ctx=self.train_x.shape[1], seed=seed
        ).to(device)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98)
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(s / 10, 1))
        self.train_losses: list[float] = []
        self.test_losses: list[float] = []
        self.test_accs: list[float] = []

    def step(self) -> None:
        train_loss = baseline_loss(self.model(self.train_x), self.train_y)
        train_loss.backward()
        self.train_losses.append(train_loss.item())
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()
        with torch.inference_mode():
            logits = self.model(self.test_x)
            self.test_losses.append(baseline_loss(logits, self.test_y).item())
            if self.track_acc:  # not in the published loop; needed to time grokking
                acc = (logits[:, -1].argmax(-1) == self.test_y).float().mean()
                self.test_accs.append(acc.item())
