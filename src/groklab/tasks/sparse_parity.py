"""Multitask sparse parity (Michaud et al. 2023, "The quantization model of neural scaling").

There are ``T = data.n_tasks`` (100) subtasks. An example is a one-hot task code ``i`` and
``n = data.n_bits`` (50) uniform random bits; its label is the parity of the ``k =
data.parity_k`` (3) bits in subtask ``i``'s own fixed subset of positions (drawn once from
``data.split_seed``). Subtask ``i`` (0-based) is drawn with probability ``p_i ∝ (i+1)^-alpha``
(``alpha = data.zipf_alpha``, 1.5): a Zipfian mix, so subtask 0 is the most frequent.

Tokens: the task code is token ``i`` (``0 .. T-1``) at position 0; bit ``j`` with value ``v`` is
token ``T + 2j + v`` at position ``1 + j``. Every (position, value) has its own token, so the
MLP with ``model.mlp_input = "sum"`` sees exactly the concatenated one-hot task code and bits
of the paper; ``d_vocab = T + 2n``, two output classes.

Named subsets ``test/task_i`` (and ``train/task_i`` with a fixed training set) hold one
subtask's examples: the per-subtask loss whose drops are the "quanta" being learned. The test
split is stratified: ``data.test_size // T`` examples of every subtask (at least one).
With ``data.train_size`` unset every batch is fresh (infinite data, as in the paper; the train
split is a fixed Zipfian sample for train metrics); otherwise the model trains on that many
fixed examples drawn from the Zipfian mix.
"""

from __future__ import annotations

import torch

from groklab.config import DataConfig, task_value
from groklab.tasks.base import EvalSubset, Task, tensor_hash

__all__ = ["build_sparse_parity", "encode_parity", "task_frequencies"]



def task_frequencies(n_tasks: int, alpha: float) -> torch.Tensor:
    """Zipfian subtask probabilities ``p_i ∝ (i+1)^-alpha``, ``[n_tasks]`` (float64)."""
    w = torch.arange(1, n_tasks + 1, dtype=torch.float64) ** -alpha
    return w / w.sum()


def encode_parity(
    tasks: torch.Tensor, bits: torch.Tensor, subsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[N, 1+n]`` and labels ``[N, 1]`` for task ids ``[N]`` and bits ``[N, n]``.

    ``subsets [T, k]`` holds each subtask's bit positions.
    """
    n_tasks, n = subsets.shape[0], bits.shape[1]
    label = bits.gather(1, subsets[tasks]).sum(dim=1) % 2
    bit_tokens = n_tasks + 2 * torch.arange(n) + bits
    x = torch.cat([tasks[:, None], bit_tokens], dim=1)
    return x, label[:, None]


def build_sparse_parity(cfg: DataConfig) -> Task:
    """Build the multitask sparse parity task of ``cfg`` (see the module docstring)."""
    n_tasks = task_value(cfg, "n_tasks")
    n = task_value(cfg, "n_bits")
    k = task_value(cfg, "parity_k")
    alpha = task_value(cfg, "zipf_alpha")
    n_test = task_value(cfg, "test_size")
    infinite = cfg.train_size is None
    gen = torch.Generator().manual_seed(cfg.split_seed)
    subsets_k = torch.stack(
        [torch.randperm(n, generator=gen)[:k].sort().values for _ in range(n_tasks)]
    )  # [T, k]
    freq = task_frequencies(n_tasks, alpha)

    def draw(g: torch.Generator, rows: int, tasks: torch.Tensor | None = None):
        if tasks is None:
            tasks = torch.multinomial(freq, rows, replacement=True, generator=g)
        bits = torch.randint(0, 2, (tasks.shape[0], n), generator=g)
        x, y = encode_parity(tasks, bits, subsets_k)
        return x, y, tasks

    train_x, train_y, train_task = draw(gen, n_test if infinite else cfg.train_size)
    per_task = max(n_test // n_tasks, 1)
    test_x, test_y, test_task = draw(gen, 0, torch.arange(n_tasks).repeat_interleave(per_task))

    width = len(str(n_tasks - 1))
    subsets: dict[str, EvalSubset] = {}
    splits = [("test", test_task)] + ([] if infinite else [("train", train_task)])
    for split, task_of_row in splits:
        for i in range(n_tasks):
            rows = torch.nonzero(task_of_row == i).squeeze(1)
            subsets[f"{split}/task_{i:0{width}d}"] = EvalSubset(split, rows)

    def sampler(g: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = draw(g, batch)
        return x, y

    vocab = tuple(f"task{i}" for i in range(n_tasks)) + tuple(
        f"b{j}={v}" for j in range(n) for v in (0, 1)
    )
    return Task(
        name="sparse-parity",
        vocab=vocab,
        d_vocab=len(vocab),
        d_vocab_out=2,
        n_ctx=1 + n,
        n_scored=1,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        subsets=subsets,
        split_hash=tensor_hash(train_x, test_x),
        info={
            "n_tasks": n_tasks,
            "n_bits": n,
            "parity_k": k,
            "zipf_alpha": alpha,
            "frequencies": freq.tolist(),
            "bit_subsets": subsets_k,
            "train_task": train_task,
            "test_task": test_task,
            "subset_names": [f"task_{i:0{width}d}" for i in range(n_tasks)],
            "infinite": infinite,
        },
        sampler=sampler if infinite else None,
    )
