"""n-digit addition, one digit per token (Nanda et al. 2023, "5 digit addition").

Token layout: ``0 .. 9`` the digits, ``10`` = ``+``, ``11`` = ``=``. A problem with operands
``x1..xn`` and ``y1..yn`` (most significant digit first, leading zeros allowed) and sum
``z0 z1 .. zn`` (``z0`` the final carry, 0 or 1) is the sequence::

    x1 .. xn + y1 .. yn = z0 .. zn

The model reads it left to right and predicts every answer digit from the token before it
(teacher forcing): the input is the sequence without its last token (``3n + 2`` tokens) and
the ``n + 1`` scored positions are ``=, z0, .., z(n-1)`` with targets ``z0 .. zn``. Named
subsets ``test/digit_i`` (and ``train/digit_i`` with a fixed training set) score digit ``z_i``
alone, so each digit's own phase change shows in its loss curve.

Data: with ``data.train_size`` unset, every training batch is a fresh sample (infinite data)
and the train split is a fixed sample used only for train metrics; with ``data.train_size = N``
the model trains on N fixed problems. The test split is ``data.test_size`` (2,000) problems
not in the training set. Operands are uniform over ``0 .. 10^n - 1``.
"""

from __future__ import annotations

import torch

from groklab.config import DataConfig, task_value
from groklab.errors import ConfigError
from groklab.tasks.base import EvalSubset, Task, tensor_hash

__all__ = ["EQUALS", "PLUS", "add_digits", "build_digit_add", "encode_problems"]

PLUS, EQUALS = 10, 11
# Below this many distinct problems the split is drawn without replacement from all of them.
_ENUMERATE_LIMIT = 1 << 20


def add_digits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Digit-wise sum ``[N, n+1]`` (carry first) of operands given as digits ``[N, n]``."""
    n = a.shape[1]
    z = torch.zeros(a.shape[0], n + 1, dtype=torch.long)
    carry = torch.zeros(a.shape[0], dtype=torch.long)
    for i in range(n - 1, -1, -1):  # least significant digit last
        s = a[:, i] + b[:, i] + carry
        z[:, i + 1] = s % 10
        carry = s // 10
    z[:, 0] = carry
    return z


def encode_problems(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``[N, 3n+2]`` and targets ``[N, n+1]`` for operand digits ``a, b: [N, n]``."""
    z = add_digits(a, b)
    rows = a.shape[0]
    x = torch.cat(
        [
            a,
            torch.full((rows, 1), PLUS),
            b,
            torch.full((rows, 1), EQUALS),
            z[:, :-1],
        ],
        dim=1,
    )
    return x, z


def _digits_of(values: torch.Tensor, n: int) -> torch.Tensor:
    """Base-10 digits ``[N, n]`` (most significant first) of integers ``values: [N]``."""
    powers = 10 ** torch.arange(n - 1, -1, -1)
    return (values[:, None] // powers) % 10


def _random_digits(gen: torch.Generator, rows: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ab = torch.randint(0, 10, (rows, 2, n), generator=gen)
    return ab[:, 0], ab[:, 1]


def _keys(x: torch.Tensor, n: int) -> list[bytes]:
    """Hashable identity of each problem (its operand tokens)."""
    ops = x[:, : 2 * n + 1].to(torch.int8).contiguous().numpy()
    return [r.tobytes() for r in ops]


def build_digit_add(cfg: DataConfig) -> Task:
    """Build the n-digit addition task of ``cfg`` (see the module docstring)."""
    n = task_value(cfg, "n_digits")
    n_test = task_value(cfg, "test_size")
    gen = torch.Generator().manual_seed(cfg.split_seed)
    space = 10 ** (2 * n)
    infinite = cfg.train_size is None
    n_train = n_test if infinite else cfg.train_size

    if space <= _ENUMERATE_LIMIT:
        if n_train + n_test > space:
            raise ConfigError(
                f"data.train_size={n_train} plus data.test_size={n_test} is more than the "
                f"{space} distinct {n}-digit problems"
            )
        ids = torch.randperm(space, generator=gen)[: n_train + n_test]
        big = 10**n
        x_all, y_all = encode_problems(_digits_of(ids // big, n), _digits_of(ids % big, n))
        train_x, train_y = x_all[:n_train], y_all[:n_train]
        test_x, test_y = x_all[n_train:], y_all[n_train:]
    else:
        train_x, train_y = encode_problems(*_random_digits(gen, n_train, n))
        # Draw a little extra and drop test problems that are also training problems.
        test_x, test_y = encode_problems(*_random_digits(gen, n_test + n_test // 10 + 8, n))
        seen = set(_keys(train_x, n))
        keep = torch.tensor([k not in seen for k in _keys(test_x, n)])
        test_x, test_y = test_x[keep][:n_test], test_y[keep][:n_test]

    subsets = {f"test/digit_{i}": EvalSubset("test", position=i) for i in range(n + 1)}
    if not infinite:
        subsets.update({f"train/digit_{i}": EvalSubset("train", position=i) for i in range(n + 1)})

    def sampler(g: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_problems(*_random_digits(g, batch, n))

    vocab = (*tuple(str(d) for d in range(10)), "+", "=")
    return Task(
        name="digit-add",
        vocab=vocab,
        d_vocab=len(vocab),
        d_vocab_out=10,
        n_ctx=3 * n + 2,
        n_scored=n + 1,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        subsets=subsets,
        split_hash=tensor_hash(train_x, test_x),
        info={"n_digits": n, "infinite": infinite, "digit_names": [f"z{i}" for i in range(n + 1)]},
        sampler=sampler if infinite else None,
    )
