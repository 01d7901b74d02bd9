"""Per-token losses: cross-entropy (float64 or float32 log-softmax), StableMax CE, MSE."""

from __future__ import annotations

import torch

__all__ = ["stablemax_log_probs", "token_losses"]


def stablemax_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log StableMax: s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0, normalised (Prieto 2025)."""
    s = torch.where(logits >= 0, logits + 1, 1 / (1 - logits.clamp(max=0)))
    return s.log() - s.sum(dim=-1, keepdim=True).log()


def token_losses(
    logits: torch.Tensor, targets: torch.Tensor, *, kind: str, dtype: torch.dtype
) -> torch.Tensor:
    """Loss of every scored token, ``[batch, n_scored]``, computed in ``dtype``.

    Args:
        logits: ``[batch, n_scored, d_vocab_out]``.
        targets: ``[batch, n_scored]`` class indices.
        kind: ``cross_entropy``, ``stablemax`` or ``mse`` (against one-hot targets, averaged
            over classes, so the mean over tokens equals ``torch.nn.MSELoss``).
        dtype: float64 keeps tiny losses representable (no slingshot spikes); float32 reproduces
            them.
    """
    x = logits.to(dtype)
    if kind == "cross_entropy":
        logp = x.log_softmax(dim=-1)
        return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if kind == "stablemax":
        logp = stablemax_log_probs(x)
        return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if kind == "mse":
        onehot = torch.nn.functional.one_hot(targets, x.shape[-1]).to(dtype)
        return (x - onehot).pow(2).mean(dim=-1)
    raise ValueError(f"train.loss={kind!r} is not allowed")
