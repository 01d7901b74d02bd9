"""Modular arithmetic mod p, one operation or several mixed with op tokens.

Token layout (numbers never collide with special tokens):
    0 .. p-1        the residues
    p               ``=``
    p+1 .. p+n_ops  one token per operation (only when several operations are mixed)

Single operation: ``[a, b, =]`` (as in Nanda et al. 2023). Mixed: ``[a, op, b, =]``.
The answer is read at the last position. The output classes are the whole input vocabulary,
as in the published model (``d_vocab_out = d_vocab``); a trained model puts no mass on the
non-number classes.
"""

from __future__ import annotations

import random

import torch

from groklab.config import DataConfig
from groklab.errors import ConfigError
from groklab.tasks.base import EvalSubset, Task, tensor_hash

__all__ = ["OP_SYMBOLS", "build_modular", "modular_label", "problems", "published_order"]

OP_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "quad": "q"}


def modular_label(op: str, a: torch.Tensor, b: torch.Tensor, p: int) -> torch.Tensor:
    """The answer of ``a op b mod p`` elementwise (``div`` is a·b⁻¹, needs b != 0)."""
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    if op == "div":
        # b^(p-2) = b^-1 in the field Z_p; exact integer powers via repeated squaring.
        inv = torch.tensor([pow(int(v), p - 2, p) for v in range(p)], dtype=torch.long)
        return (a * inv[b]) % p
    if op == "quad":
        return (a * a + a * b + b * b) % p
    raise ConfigError(f"data.operations={op!r} is not allowed")


def problems(op: str, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All valid ``(a, b, answer)`` for one operation, in row-major (a, b) order."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    if op == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
    return a, b, modular_label(op, a, b, p)


def published_order(n: int, seed: int) -> torch.Tensor:
    """The published progress-measures code's shuffle of ``n`` problems, as indices.

    That code runs ``random.seed(seed); random.shuffle(pairs)`` on the row-major list of
    ``(a, b)`` pairs and trains on the first ``frac_train`` share. ``random.shuffle`` draws
    its swaps from the list's length alone, so shuffling ``range(n)`` with a generator in the
    same state gives the same order without touching Python's global generator.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return torch.tensor(order, dtype=torch.long)


def _counts(cfg: DataConfig, available: list[int]) -> list[int]:
    """Training problems per operation."""
    total_available = sum(available)
    if cfg.train_size is not None:
        total = cfg.train_size
        if total > total_available:
            raise ConfigError(
                f"data.train_size={total} is larger than the data; at most {total_available} "
                f"problems exist for operations {', '.join(cfg.operations)} mod {cfg.p}"
            )
    else:
        total = int(cfg.train_fraction * total_available)
        if total < 1:
            raise ConfigError(
                f"data.train_fraction={cfg.train_fraction} leaves no training problem of the "
                f"{total_available} mod {cfg.p}; raise it to at least {1 / total_available:.3g}"
            )
    if len(available) == 1:
        return [total]
    shares = cfg.shares or tuple(1.0 / len(available) for _ in available)
    raw = [s * total for s in shares]
    counts = [int(r) for r in raw]
    # Largest remainders get the leftover problems, so the total is exact.
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[
        : total - sum(counts)
    ]:
        counts[i] += 1
    for op, n, avail in zip(cfg.operations, counts, available, strict=True):
        if n > avail:
            raise ConfigError(
                f"data.shares asks for {n} {op} problems but only {avail} exist mod {cfg.p}; "
                "lower data.train_size or that operation's share"
            )
    return counts


def build_modular(cfg: DataConfig) -> Task:
    """Build the (possibly mixed) modular arithmetic task of ``cfg``."""
    p, ops = cfg.p, cfg.operations
    mixed = len(ops) > 1
    eq = p
    vocab = [str(i) for i in range(p)] + ["="]
    if mixed:
        vocab += [OP_SYMBOLS[op] for op in ops]
    per_op = [problems(op, p) for op in ops]
    counts = _counts(cfg, [len(t[0]) for t in per_op])

    gen = torch.Generator().manual_seed(cfg.split_seed)
    train_parts, test_parts = [], []
    for k, ((a, b, c), n_train) in enumerate(zip(per_op, counts, strict=True)):
        n = len(a)
        if mixed:
            x = torch.stack([a, torch.full((n,), p + 1 + k), b, torch.full((n,), eq)], dim=1)
        else:
            x = torch.stack([a, b, torch.full((n,), eq)], dim=1)
        if cfg.split == "published":  # single operation (validated by DataConfig)
            perm = published_order(n, cfg.split_seed)
        else:
            perm = torch.randperm(n, generator=gen)
        opk = torch.full((n,), k)
        tr, te = perm[:n_train], perm[n_train:]
        train_parts.append((x[tr], c[tr], opk[tr]))
        test_parts.append((x[te], c[te], opk[te]))

    def cat(parts: list[tuple[torch.Tensor, ...]], i: int) -> torch.Tensor:
        return torch.cat([pt[i] for pt in parts])

    train_x, train_y, train_op = cat(train_parts, 0), cat(train_parts, 1), cat(train_parts, 2)
    test_x, test_y, test_op = cat(test_parts, 0), cat(test_parts, 1), cat(test_parts, 2)

    subsets: dict[str, EvalSubset] = {}
    if mixed:
        for k, op in enumerate(ops):
            subsets[f"train/{op}"] = EvalSubset("train", torch.nonzero(train_op == k).squeeze(1))
            subsets[f"test/{op}"] = EvalSubset("test", torch.nonzero(test_op == k).squeeze(1))

    return Task(
        name="modular",
        vocab=tuple(vocab),
        d_vocab=len(vocab),
        d_vocab_out=len(vocab),
        n_ctx=int(train_x.shape[1]),
        n_scored=1,
        train_x=train_x,
        train_y=train_y.unsqueeze(1),
        test_x=test_x,
        test_y=test_y.unsqueeze(1),
        subsets=subsets,
        split_hash=tensor_hash(train_x, test_x),
        info={
            "p": p,
            "operations": list(ops),
            "train_op": train_op,
            "test_op": test_op,
            "a_position": 0,
            "b_position": 2 if mixed else 1,
        },
    )
