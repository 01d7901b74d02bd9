"""Find the one large entry of a list (Nanda et al. 2023's skip-trigram task).

Token layout: ``0 .. 9`` small entries, ``10 .. 19`` large entries, ``20`` = START, ``21`` = END.
A problem is ``START x1 .. xL END`` (L = ``data.seq_len``, default 10) where exactly one entry
is large (>= 10); the model reads the answer, that entry, at END. A 1-layer attention-only
transformer solves it with ten skip trigrams ``v .. END -> v`` (v = 10 .. 19), each learned in
its own phase change. Named subsets ``test/max_v`` (and ``train/max_v`` with a fixed training
set) hold the problems whose answer is ``v``: the per-answer-token loss.

Small entries are uniform over 0 .. 9, the large entry's position uniform over the L slots and
its value uniform over 10 .. 19. With ``data.train_size`` unset every batch is fresh (infinite
data) and the train split is a fixed sample for train metrics; otherwise the model trains on
that many fixed problems. The test split has ``data.test_size`` (2,000) problems.
"""

from __future__ import annotations

import torch

from groklab.config import DataConfig, task_value
from groklab.tasks.base import EvalSubset, Task, tensor_hash

__all__ = ["END", "N_LARGE", "START", "build_max_element", "sample_max_element"]

N_LARGE = 10  # large values 10 .. 19
START, END = 2 * N_LARGE, 2 * N_LARGE + 1


def sample_max_element(
    gen: torch.Generator, rows: int, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` problems: inputs ``[rows, length + 2]`` and answers ``[rows, 1]``."""
    entries = torch.randint(0, N_LARGE, (rows, length), generator=gen)
    where = torch.randint(0, length, (rows,), generator=gen)
    value = torch.randint(N_LARGE, 2 * N_LARGE, (rows,), generator=gen)
    entries[torch.arange(rows), where] = value
    x = torch.cat([torch.full((rows, 1), START), entries, torch.full((rows, 1), END)], dim=1)
    return x, value.unsqueeze(1)


def build_max_element(cfg: DataConfig) -> Task:
    """Build the max-element task of ``cfg`` (see the module docstring)."""
    length = task_value(cfg, "seq_len")
    n_test = task_value(cfg, "test_size")
    infinite = cfg.train_size is None
    gen = torch.Generator().manual_seed(cfg.split_seed)
    train_x, train_y = sample_max_element(gen, n_test if infinite else cfg.train_size, length)
    test_x, test_y = sample_max_element(gen, n_test, length)
    # With at most 10 * L * 10^(L-1) problems a short list can repeat training problems in the
    # test sample; drop those so the test split measures generalisation.
    seen = {r.tobytes() for r in train_x.numpy()}
    keep = torch.tensor([r.tobytes() not in seen for r in test_x.numpy()], dtype=torch.bool)
    if not infinite:
        test_x, test_y = test_x[keep], test_y[keep]

    subsets: dict[str, EvalSubset] = {}
    splits = [("test", test_y)] + ([] if infinite else [("train", train_y)])
    for split, y in splits:
        for v in range(N_LARGE, 2 * N_LARGE):
            rows = torch.nonzero(y[:, 0] == v).squeeze(1)
            subsets[f"{split}/max_{v}"] = EvalSubset(split, rows)

    def sampler(g: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_max_element(g, batch, length)

    vocab = (*tuple(str(v) for v in range(2 * N_LARGE)), "START", "END")
    return Task(
        name="max-element",
        vocab=vocab,
        d_vocab=len(vocab),
        d_vocab_out=2 * N_LARGE,
        n_ctx=length + 2,
        n_scored=1,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        subsets=subsets,
        split_hash=tensor_hash(train_x, test_x),
        info={"seq_len": length, "infinite": infinite},
        sampler=sampler if infinite else None,
    )
