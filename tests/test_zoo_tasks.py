"""The phase-change task zoo: digit addition, repeated subsequences, max element, sparse parity."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from groklab.analysis.induction import induction_scores, induction_scores_from_patterns
from groklab.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from groklab.errors import ConfigError
from groklab.presets import PRESETS, get_preset
from groklab.tasks import build_task
from groklab.tasks.digit_add import EQUALS, PLUS
from groklab.tasks.max_element import END, START
from groklab.tasks.sparse_parity import task_frequencies

ZOO = ("digit-add", "repeat-subseq", "max-element", "sparse-parity")


def _number(digits: list[int]) -> int:
    return int("".join(map(str, digits)))


# ----------------------------------------------------------------------------- digit-add


@pytest.mark.parametrize("n", [1, 3, 5, 12])
def test_digit_add_sums_are_right(n: int) -> None:
    task = build_task(DataConfig(task="digit-add", n_digits=n, train_size=50, test_size=40))
    assert task.n_ctx == 3 * n + 2 and task.n_scored == n + 1
    for x, y in zip(
        task.train_x.tolist() + task.test_x.tolist(),
        task.train_y.tolist() + task.test_y.tolist(),
        strict=True,
    ):
        a, b = _number(x[:n]), _number(x[n + 1 : 2 * n + 1])
        assert x[n] == PLUS and x[2 * n + 1] == EQUALS
        assert _number(y) == a + b  # z0 (the carry) first
        assert x[2 * n + 2 :] == y[:-1]  # teacher forcing: the input holds z0..z(n-1)


def test_digit_add_splits_and_subsets() -> None:
    fixed = build_task(DataConfig(task="digit-add", n_digits=2, train_size=700, test_size=300))
    key = lambda x: tuple(x[:5].tolist())  # noqa: E731
    train = {key(x) for x in fixed.train_x}
    assert len(train) == 700  # few problems: drawn without replacement
    assert not train & {key(x) for x in fixed.test_x}
    assert fixed.sampler is None
    assert set(fixed.subsets) == {f"{s}/digit_{i}" for s in ("train", "test") for i in range(3)}
    assert fixed.subsets["test/digit_2"].position == 2
    inf = build_task(DataConfig(task="digit-add", test_size=100))
    assert inf.sampler is not None and inf.n_train == 100
    assert set(inf.subsets) == {f"test/digit_{i}" for i in range(6)}
    x1, y1 = inf.sampler(torch.Generator().manual_seed(3), 8)
    x2, y2 = inf.sampler(torch.Generator().manual_seed(3), 8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (8, 17)
    with pytest.raises(ConfigError, match="more than the 100 distinct"):
        build_task(DataConfig(task="digit-add", n_digits=1, train_size=90, test_size=20))


# ----------------------------------------------------------------------------- repeat-subseq


def test_repeat_subseq_copies_an_earlier_stretch() -> None:
    cfg = DataConfig(task="repeat-subseq", vocab_size=20, seq_len=30, repeat_len=6, train_size=64)
    task = build_task(cfg)
    assert task.n_ctx == 29 and task.n_scored == 5 and task.d_vocab == task.d_vocab_out == 20
    start = task.info["repeat_start"]
    assert start == 24
    for x, y, s in zip(task.train_x, task.train_y, task.info["train_source"], strict=True):
        full = torch.cat([x, y[-1:]])  # the whole 30-token sequence
        s = int(s)
        assert 0 <= s <= 30 - 12
        assert torch.equal(full[start:], full[s : s + 6])
        assert torch.equal(y, full[start + 1 :])


def test_induction_score_of_known_patterns() -> None:
    # 2 rows, repeat of R=4 starting at position 10; sources 2 and 5.
    src = torch.tensor([2, 5])
    n_pos, heads = 14, 3
    pat = torch.full((2, heads, n_pos, n_pos), 0.0)
    pat[:, 2] = torch.eye(n_pos)  # head 2 attends to itself: neither score
    for b in range(2):
        for j in range(3):
            q = 10 + j
            pat[b, 0, q, int(src[b]) + j + 1] = 1.0  # head 0: a perfect induction head
            pat[b, 1, q, q - 1] = 0.5  # head 1: half on the previous token
            pat[b, 1, q, 0] = 0.5
    s = induction_scores_from_patterns(pat, src, repeat_start=10, repeat_len=4)
    assert torch.allclose(s["induction"], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(s["prev_token"], torch.tensor([0.0, 0.5, 0.0]))


def test_induction_scores_of_a_model_have_one_row_per_layer() -> None:
    from groklab.models import build_model

    task = build_task(
        DataConfig(task="repeat-subseq", vocab_size=16, seq_len=20, repeat_len=4, test_size=8)
    )
    model = build_model(
        ModelConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, attn_only=True), task, seed=0
    )
    s = induction_scores(model, task, rows=8)
    assert s["induction"].shape == (2, 2) and s["prev_token"].shape == (2, 2)
    # An untrained causal head spreads attention: the score is a probability in (0, 1).
    assert bool(((s["induction"] > 0) & (s["induction"] < 1)).all())


# ----------------------------------------------------------------------------- max-element


def test_max_element_has_exactly_one_large_entry() -> None:
    task = build_task(DataConfig(task="max-element", seq_len=6, train_size=200, test_size=300))
    assert task.n_ctx == 8 and task.n_scored == 1
    for x, y in zip(
        task.train_x.tolist() + task.test_x.tolist(),
        task.train_y.tolist() + task.test_y.tolist(),
        strict=True,
    ):
        assert x[0] == START and x[-1] == END
        big = [v for v in x[1:-1] if v >= 10]
        assert big == [y[0]] and 10 <= y[0] <= 19
    # Per-answer subsets hold exactly the rows with that answer.
    rows = task.subsets["test/max_13"].rows
    assert rows.numel() > 0 and bool((task.test_y[rows, 0] == 13).all())
    assert sum(task.subsets[f"test/max_{v}"].rows.numel() for v in range(10, 20)) == task.n_test
    train = {tuple(r) for r in task.train_x.tolist()}
    assert not train & {tuple(r) for r in task.test_x.tolist()}


# ----------------------------------------------------------------------------- sparse-parity


def test_sparse_parity_labels_and_frequencies() -> None:
    cfg = DataConfig(
        task="sparse-parity", n_tasks=5, n_bits=8, parity_k=3, zipf_alpha=1.0, test_size=50
    )
    task = build_task(cfg)
    t, n = 5, 8
    assert task.n_ctx == 1 + n and task.d_vocab == t + 2 * n and task.d_vocab_out == 2
    subsets = task.info["bit_subsets"]
    assert subsets.shape == (t, 3)
    for x, y in zip(task.test_x.tolist(), task.test_y.tolist(), strict=True):
        i = x[0]
        bits = [(tok - t) % 2 for tok in x[1:]]
        assert [(tok - t) // 2 for tok in x[1:]] == list(range(n))  # one token per (bit, value)
        assert y[0] == sum(bits[j] for j in subsets[i].tolist()) % 2
    # stratified test split: 10 per subtask, in per-subtask subsets
    for i in range(t):
        rows = task.subsets[f"test/task_{i}"].rows
        assert rows.numel() == 10 and bool((task.test_x[rows, 0] == i).all())
    # Zipfian training mix: p_i ∝ 1/(i+1)
    freq = task_frequencies(t, 1.0)
    assert torch.allclose(freq * freq.new_tensor([1, 2, 3, 4, 5]), freq[0].expand(5))
    x, _ = task.sampler(torch.Generator().manual_seed(0), 20_000)
    counts = Counter(x[:, 0].tolist())
    share = torch.tensor([counts[i] / 20_000 for i in range(t)], dtype=torch.float64)
    assert torch.allclose(share, freq, atol=0.01)


# ----------------------------------------------------------------------------- config and presets


def test_zoo_fields_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"data\.n_digits applies only to data\.task digit-add"):
        DataConfig(n_digits=3)
    with pytest.raises(ConfigError, match=r"data\.seq_len"):
        DataConfig(task="repeat-subseq", seq_len=20, repeat_len=16)
    with pytest.raises(ConfigError, match=r"data\.parity_k"):
        DataConfig(task="sparse-parity", n_bits=4, parity_k=5)
    with pytest.raises(ConfigError, match=r"data\.n_tasks"):
        DataConfig(task="sparse-parity", n_tasks=0)


@pytest.mark.parametrize("task", ZOO)
def test_each_zoo_task_has_presets_that_build(task: str) -> None:
    names = [p for p in PRESETS if get_preset(p).data.task == task]
    assert names, f"no preset for {task}"
    for name in names:
        cfg = get_preset(name)
        t = build_task(cfg.data)
        assert t.n_train > 0 and t.n_test > 0


@pytest.mark.parametrize("task", ZOO)
@pytest.mark.parametrize("infinite", [True, False])
def test_zoo_tasks_train_end_to_end(tmp_path, task: str, infinite: bool) -> None:
    import groklab

    small = {
        "digit-add": {"n_digits": 2},
        "repeat-subseq": {"vocab_size": 12, "seq_len": 16, "repeat_len": 4},
        "max-element": {"seq_len": 4},
        "sparse-parity": {"n_tasks": 3, "n_bits": 6},
    }[task]
    data = DataConfig(task=task, test_size=30, train_size=None if infinite else 40, **small)
    model = (
        ModelConfig(arch="mlp", n_layers=2, d_mlp=16)
        if task == "sparse-parity"
        else ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32)
    )
    cfg = RunConfig(
        name=f"zoo-{task}",
        data=data,
        model=model,
        optim=OptimConfig(lr=1e-2),
        train=TrainConfig(steps=6, batch_size=8, eval_every=3, checkpoint_every=3, device="cpu"),
    )
    run = groklab.train(cfg, out=tmp_path / "run")
    m = run.metrics
    assert list(m["step"]) == [0, 3, 6]
    subset_cols = [c for c in m.columns if c.endswith("/loss") and c.count("/") == 2]
    assert subset_cols, "per-component loss columns missing"
    # every subset that holds rows is scored (a small sample can leave a class empty: NaN)
    filled = [
        f"{name}/loss"
        for name, s in run.task.subsets.items()
        if s.rows is None or s.rows.numel() > 0
    ]
    assert filled and set(filled) <= set(subset_cols)
    assert m[["train/loss", "test/loss", *filled]].notna().all().all()
    if task == "repeat-subseq":  # `groklab show` adds the best induction head
        from groklab.commands.zoo import _task_lines

        lines = _task_lines(run)
        assert len(lines) == 2 and lines[0].startswith("best induction score (")
        assert "at step 6: 0." in lines[0] and "(layer " in lines[0]


def test_subtask_learning_orders_subtasks_by_their_drops(tmp_path) -> None:
    import numpy as np
    import pandas as pd

    from groklab.analysis.subtasks import subtask_learning
    from groklab.config import save_config
    from groklab.run import load_run
    from groklab.store import atomic_write_text

    # A run directory whose per-subtask losses drop at known steps: subtask i at 10^(2.5+0.3i),
    # except subtask 3, which never drops.
    cfg = RunConfig(data=DataConfig(task="sparse-parity", n_tasks=4, n_bits=5, test_size=8))
    atomic_write_text(tmp_path / "config.toml", save_config(cfg))
    steps = np.arange(0, 20_001, 50)
    x = np.log10(np.maximum(steps, 1))
    cols = {"step": steps}
    for i in range(4):
        drop = 0.69 / (1 + np.exp((x - (2.5 + 0.3 * i)) / 0.03))
        cols[f"test/task_{i}/loss"] = drop if i < 3 else np.full(len(steps), 0.69)
    pd.DataFrame(cols).to_parquet(tmp_path / "metrics.parquet")
    table, rho = subtask_learning(load_run(tmp_path))
    assert list(table["subtask"]) == [0, 1, 2, 3]
    assert table["frequency"].is_monotonic_decreasing
    mids = np.log10(table["midpoint"].to_numpy()[:3])
    assert np.allclose(mids, [2.5, 2.8, 3.1], atol=0.03)
    assert np.isnan(table["midpoint"].iloc[3])
    assert rho == pytest.approx(1.0)
    from groklab.commands.zoo import _task_lines

    assert _task_lines(load_run(tmp_path)) == [
        "subtasks with a phase change: 3 of 4; Spearman(frequency rank, learning step) = "
        "1.000 (positive: more frequent subtasks learned first)"
    ]
