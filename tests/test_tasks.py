"""Task invariants: labels, splits, sizes, mixed operations, split hash."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from groklab.config import DataConfig
from groklab.errors import ConfigError
from groklab.tasks import build_task
from groklab.tasks.modular import build_modular

SMALL_PRIMES = [2, 3, 5, 7, 11, 13, 17, 19, 23]


def _python_answer(op: str, a: int, b: int, p: int) -> int:
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    if op == "div":
        # The inverse by search, independent of the Fermat power used in the library.
        (inv,) = [c for c in range(1, p) if (b * c) % p == 1]
        return (a * inv) % p
    assert op == "quad"
    return (a * a + a * b + b * b) % p


def _rows(task) -> list[tuple[tuple[int, ...], int]]:
    x = torch.cat([task.train_x, task.test_x]).tolist()
    y = torch.cat([task.train_y, task.test_y]).squeeze(1).tolist()
    return [(tuple(r), c) for r, c in zip(x, y, strict=True)]


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "quad"])
@pytest.mark.parametrize("p", [7, 13])
def test_labels_match_python_arithmetic_on_every_pair(op: str, p: int) -> None:
    task = build_task(DataConfig(p=p, operations=(op,), train_fraction=0.4))
    rows = _rows(task)
    expected_pairs = {(a, b) for a in range(p) for b in range(p) if op != "div" or b != 0}
    seen = [(x[0], x[1]) for x, _ in rows]
    assert len(seen) == len(set(seen)) == len(expected_pairs)  # every pair exactly once
    assert set(seen) == expected_pairs
    for (a, b, eq), c in rows:
        assert eq == p  # the '=' token
        assert c == _python_answer(op, a, b, p)
        if op == "div":
            assert (c * b) % p == a


@settings(max_examples=25, deadline=None)
@given(
    p=st.sampled_from(SMALL_PRIMES),
    op=st.sampled_from(["add", "sub", "mul", "div", "quad"]),
    seed=st.integers(0, 2**31),
    fraction=st.floats(0.05, 1.0),
)
def test_split_is_a_disjoint_cover_of_all_problems(
    p: int, op: str, seed: int, fraction: float
) -> None:
    n_all = p * p - (p if op == "div" else 0)
    if int(fraction * n_all) < 1:
        with pytest.raises(ConfigError, match=r"data\.train_fraction"):
            build_task(DataConfig(p=p, operations=(op,), train_fraction=fraction, split_seed=seed))
        return
    task = build_task(DataConfig(p=p, operations=(op,), train_fraction=fraction, split_seed=seed))
    train = {tuple(r) for r in task.train_x.tolist()}
    test = {tuple(r) for r in task.test_x.tolist()}
    assert len(train) == task.n_train and len(test) == task.n_test  # no duplicates
    assert not train & test
    assert task.n_train + task.n_test == n_all
    assert task.n_train == int(fraction * n_all)
    for (a, b, _), c in _rows(task):
        assert c == _python_answer(op, a, b, p)
    assert task.train_y.shape == (task.n_train, task.n_scored)
    assert task.test_y.shape == (task.n_test, task.n_scored)


@settings(max_examples=15, deadline=None)
@given(p=st.sampled_from([11, 13, 17, 23]), seed=st.integers(0, 2**31))
def test_split_reproducible_and_seed_dependent(p: int, seed: int) -> None:
    cfg = DataConfig(p=p, train_fraction=0.5, split_seed=seed)
    t1, t2 = build_task(cfg), build_task(cfg)
    assert torch.equal(t1.train_x, t2.train_x) and torch.equal(t1.test_x, t2.test_x)
    assert t1.split_hash == t2.split_hash
    other = build_task(DataConfig(p=p, train_fraction=0.5, split_seed=seed + 1))
    assert {tuple(r) for r in other.train_x.tolist()} != {tuple(r) for r in t1.train_x.tolist()}
    assert other.split_hash != t1.split_hash


def test_split_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    build_task(DataConfig(p=13, split_seed=5))
    assert torch.equal(torch.rand(3), before)


def test_nanda2023_split_sizes() -> None:
    task = build_task(DataConfig())  # p=113, 30% of all pairs
    assert (task.n_train, task.n_test) == (3_830, 8_939)
    assert task.n_ctx == 3 and task.n_scored == 1
    assert task.d_vocab == task.d_vocab_out == 114
    assert task.vocab[113] == "="


def test_training_size_as_a_count() -> None:
    task = build_task(DataConfig(p=13, train_size=100))
    assert (task.n_train, task.n_test) == (100, 69)
    task = build_task(DataConfig(p=13, train_size=169))
    assert task.n_test == 0


def test_training_count_larger_than_the_data_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"data\.train_size=170 .*at most 169"):
        build_task(DataConfig(p=13, train_size=170))
    with pytest.raises(ConfigError, match=r"data\.train_size=157 .*at most 156"):
        build_task(DataConfig(p=13, operations=("div",), train_size=157))


def test_fraction_giving_no_training_problem_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"data\.train_fraction"):
        build_task(DataConfig(p=5, train_fraction=0.01))


def test_sullivan2024_mixed_counts_tokens_and_subsets() -> None:
    task = build_modular(
        DataConfig(operations=("add", "mul"), shares=(0.65, 0.35), train_size=16_900)
    )
    p = 113
    assert task.n_ctx == 4
    assert task.vocab[p] == "=" and task.d_vocab == p + 3
    add_tok, mul_tok = p + 1, p + 2
    ops_train = Counter(task.train_x[:, 1].tolist())
    assert ops_train == {add_tok: 10_985, mul_tok: 5_915}
    assert task.n_train == 16_900
    assert task.n_test == 2 * p * p - 16_900
    # Op tokens: distinct from each other, from every number token and from '='.
    numbers = set(range(p))
    assert len({add_tok, mul_tok, p}) == 3 and not {add_tok, mul_tok, p} & numbers
    assert set(task.train_x[:, 0].tolist()) <= numbers
    assert set(task.train_x[:, 2].tolist()) <= numbers
    assert set(task.train_x[:, 3].tolist()) == {p}
    # Labels by op token.
    x, y = task.train_x, task.train_y[:, 0]
    is_add = x[:, 1] == add_tok
    assert torch.equal(y[is_add], (x[is_add, 0] + x[is_add, 2]) % p)
    assert torch.equal(y[~is_add], (x[~is_add, 0] * x[~is_add, 2]) % p)
    # test/add and test/mul partition the test set, each with its own op token.
    add_rows, mul_rows = task.subsets["test/add"].rows, task.subsets["test/mul"].rows
    assert task.subsets["test/add"].split == "test"
    all_rows = torch.cat([add_rows, mul_rows]).sort().values
    assert torch.equal(all_rows, torch.arange(task.n_test))
    assert set(task.test_x[add_rows, 1].tolist()) == {add_tok}
    assert set(task.test_x[mul_rows, 1].tolist()) == {mul_tok}
    assert len(add_rows) == p * p - 10_985 and len(mul_rows) == p * p - 5_915
    # Train subsets too.
    assert len(task.subsets["train/add"].rows) == 10_985


@settings(max_examples=15, deadline=None)
@given(
    p=st.sampled_from([5, 7, 11, 13]),
    ops=st.lists(
        st.sampled_from(["add", "sub", "mul", "div", "quad"]), min_size=2, max_size=5, unique=True
    ),
    weights=st.lists(st.integers(1, 10), min_size=5, max_size=5),
    seed=st.integers(0, 1000),
)
def test_mixed_operations_shares_and_tokens(
    p: int, ops: list[str], weights: list[int], seed: int
) -> None:
    w = weights[: len(ops)]
    shares = tuple(x / sum(w) for x in w)
    total = p * (p - 1) // 2
    task = build_task(
        DataConfig(p=p, operations=tuple(ops), shares=shares, train_size=total, split_seed=seed)
    )
    counts = Counter(task.train_x[:, 1].tolist())
    assert task.n_train == total
    for k, (op, s) in enumerate(zip(ops, shares, strict=True)):
        tok = p + 1 + k
        assert task.vocab[tok] != "=" and task.vocab[tok] not in {str(i) for i in range(p)}
        assert abs(counts.get(tok, 0) - s * total) < 1.0  # largest-remainder rounding
        rows = task.subsets[f"test/{op}"].rows
        assert set(task.test_x[rows, 1].tolist()) <= {tok}
        for (a, _, b, _), c in zip(
            task.train_x[task.train_x[:, 1] == tok].tolist(),
            task.train_y[task.train_x[:, 1] == tok, 0].tolist(),
            strict=True,
        ):
            assert c == _python_answer(op, a, b, p)
    assert len(set(task.vocab)) == task.d_vocab  # every token has its own name


def test_split_hash_changes_with_seed_and_data() -> None:
    h0 = build_task(DataConfig(p=23, split_seed=0)).split_hash
    assert h0 == build_task(DataConfig(p=23, split_seed=0)).split_hash
    assert h0 != build_task(DataConfig(p=23, split_seed=1)).split_hash
    assert h0 != build_task(DataConfig(p=23, split_seed=0, train_fraction=0.5)).split_hash
    assert len(h0) == 16


@pytest.mark.parametrize(("p", "frac", "seed"), [(113, 0.3, 0), (23, 0.5, 7)])
def test_published_split_is_pythons_random_shuffle_of_the_pairs(p, frac, seed) -> None:
    """data.split='published' is the published code's split, row for row and in order."""
    import random

    state = random.getstate()
    try:  # exactly what the published code runs, on the global generator
        pairs = [(i, j) for i in range(p) for j in range(p)]
        random.seed(seed)
        random.shuffle(pairs)
    finally:
        random.setstate(state)
    n = int(frac * len(pairs))
    before = random.getstate()
    t = build_task(DataConfig(p=p, train_fraction=frac, split="published", split_seed=seed))
    assert random.getstate() == before  # no global seeding in the library
    assert [tuple(r) for r in t.train_x[:, :2].tolist()] == pairs[:n]
    assert [tuple(r) for r in t.test_x[:, :2].tolist()] == pairs[n:]
    assert t.train_y.flatten().tolist() == [(a + b) % p for a, b in pairs[:n]]
    # groklab's default split of the same size is a different one.
    own = build_task(DataConfig(p=p, train_fraction=frac, split_seed=seed))
    assert own.n_train == n and own.split_hash != t.split_hash


def test_split_option_is_validated_in_one_line() -> None:
    with pytest.raises(
        ConfigError, match=r"^data\.split='paper' is not allowed; allowed: groklab, published$"
    ):
        DataConfig(split="paper")
    with pytest.raises(
        ConfigError,
        match=r"^data\.split='published' applies only to data\.task modular with one operation",
    ):
        DataConfig(operations=("add", "mul"), split="published")
    with pytest.raises(ConfigError, match=r"^data\.split='published' applies only"):
        DataConfig(task="digits", split="published")
    # The default spelled out is the default: same config, same hash, same split.
    assert DataConfig(split="groklab") == DataConfig()
