"""The small rules every part of the product shares, each written once: the first step a
metric reaches a threshold, the checkpoints ``--every``/``--steps`` select, a ``--seeds``
list, a task's defaults, and the "this directory holds a different run" error."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from groklab.config import (
    MAX_SEED,
    MAX_SEEDS,
    TASK_DEFAULTS,
    DataConfig,
    config_to_dict,
    parse_seeds,
    task_value,
)
from groklab.errors import ConfigError, RunExistsError
from groklab.run import first_step_at, select_steps
from groklab.store import different_run_error
from groklab.tasks import build_task

# ------------------------------------------------------------------ first step at a threshold


def test_first_step_at_counts_reaching_the_threshold() -> None:
    m = pd.DataFrame({"step": [0, 10, 20, 30], "test/acc": [0.1, 0.98, 0.99, 1.0]})
    assert first_step_at(m, "test/acc") == 20  # >=: exactly 0.99 counts
    assert first_step_at(m, "test/acc", 0.5) == 10
    assert first_step_at(m, "test/acc", 0.1) == 0  # the first evaluated row can be the step
    assert first_step_at(m, "test/acc", 1.01) is None


def test_first_step_at_skips_missing_values_and_unsorted_rows() -> None:
    nan = math.nan
    m = pd.DataFrame({"step": [30, 0, 10, 20], "acc": [1.0, nan, 0.995, nan]})
    assert first_step_at(m, "acc") == 10  # the smallest step that reaches it, not the first row
    rows = [{"step": 0, "acc": 0.2}, {"step": 5}, {"step": 10, "acc": None}, {"step": 15, "acc": 1}]
    assert first_step_at(pd.DataFrame(rows), "acc") == 15  # a row without the value never counts
    assert first_step_at(pd.DataFrame({"step": [0], "acc": [nan]}), "acc", -1.0) is None


def test_first_step_at_without_the_column_or_rows() -> None:
    assert first_step_at(pd.DataFrame({"step": [0, 1]}), "test/acc") is None
    assert first_step_at(pd.DataFrame(), "test/acc") is None
    assert first_step_at(pd.DataFrame({"step": [], "test/acc": []}), "test/acc") is None


def test_every_user_of_the_rule_agrees() -> None:
    """The trainer's manifest, the run summary, the phases, Omnigrok's classification and the
    search's outcome all read the same step off the same metrics."""
    from groklab.analysis import omnigrok, phases
    from groklab.run import summarize_metrics

    m = pd.DataFrame(
        {
            "step": [0, 100, 200, 300, 400],
            "train/acc": [0.1, 0.99, 1.0, 1.0, 1.0],
            "test/acc": [0.0, 0.2, math.nan, 0.99, 1.0],
        }
    )
    assert summarize_metrics(m)["grokking_step"] == 300
    assert summarize_metrics(m)["memorisation_step"] == 100
    table = pd.DataFrame({"step": m["step"], "add/test_acc": m["test/acc"]})
    assert phases.grokking_step(table, "add") == 300
    assert phases.grokking_step(table, "add", metrics=m) == 300
    d = omnigrok.delay_summary(m, gen_acc=0.99)
    assert (d["train_99"], d["test_gen"], d["test_50"]) == (100, 300, 300)


def test_the_trainer_and_the_search_read_the_same_steps(tmp_path) -> None:
    from conftest import tiny_config
    from groklab.dcrit import run_outcome
    from groklab.run import load_run, summarize_metrics
    from groklab.train.loop import run_training

    out = run_training(tiny_config(train={"steps": 40}), tmp_path / "run", progress=False)
    run = load_run(out)
    m = run.metrics
    summary = summarize_metrics(m)
    assert run.manifest["memorisation_step"] == summary["memorisation_step"]
    assert run.manifest["grokking_step"] == summary["grokking_step"]
    thr = float(m["test/acc"].iloc[len(m) // 2])  # a threshold some row reaches
    assert run_outcome(out, threshold=thr)["grokking_step"] == first_step_at(m, "test/acc", thr)
    assert run_outcome(out, threshold=thr)["grokking_step"] is not None


# ------------------------------------------------------------------ --every / --steps


def test_select_steps_every_counts_steps() -> None:
    avail = [0, 100, 200, 300, 400, 500]
    assert select_steps(avail) == avail
    assert select_steps(avail, every=1) == avail
    assert select_steps(avail, every=200) == [0, 200, 400, 500]  # + first and last
    assert select_steps([5, 100, 150, 200], every=100) == [5, 100, 200]
    # an off-grid final checkpoint and log-spaced early ones do not set the spacing
    assert select_steps([0, 1, 2, 4, 1000, 2000, 3000, 3500], every=2000) == [0, 2000, 3500]


def test_select_steps_refuses_an_every_below_the_checkpoint_spacing() -> None:
    with pytest.raises(ConfigError, match=r"--every=3 .* saved every 100 steps.* --every 300"):
        select_steps([0, 100, 200, 300], every=3)
    with pytest.raises(ConfigError, match="--every=0"):
        select_steps([0, 100], every=0)
    assert select_steps([0], every=7) == [0]  # one checkpoint: nothing to misread


def test_select_steps_steps_lists_checkpoints() -> None:
    avail = [0, 3, 10, 100]
    assert select_steps(avail, steps=[100, 3, 3]) == [3, 100]
    assert select_steps(avail, every=50, steps=[10]) == [10]  # --steps overrides --every
    with pytest.raises(ConfigError, match=r"--steps: no checkpoint at step 7; available: 0\.\.100"):
        select_steps(avail, steps=[7])


# ------------------------------------------------------------------ --seeds


def test_parse_seeds_lists_and_ranges() -> None:
    assert parse_seeds("3") == [3]
    assert parse_seeds("0,1,2,3") == [0, 1, 2, 3]
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    assert parse_seeds(" 7, 2 - 3 ") == [7, 2, 3]
    assert parse_seeds(f"{MAX_SEED}") == [MAX_SEED]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "distinct seeds"),
        ("a", "seeds like"),
        ("1,1", "distinct"),
        ("0-3,2", "distinct"),
        ("-2", "distinct seeds >= 0"),
        ("3-x", "seeds like"),
        (f"0-{MAX_SEEDS}", f"at most {MAX_SEEDS}"),
        (f"{MAX_SEED + 1}", "at most"),
    ],
)
def test_parse_seeds_refuses_bad_lists(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        parse_seeds(text, flag="--split-seeds")
    assert str(e.value).startswith(f"--split-seeds {text!r}")


# ------------------------------------------------------------------ task defaults


def test_task_defaults_live_in_one_table() -> None:
    d = DataConfig(task="repeat-subseq")
    assert task_value(d, "seq_len") == 85 == TASK_DEFAULTS["repeat-subseq"]["seq_len"]
    assert task_value(DataConfig(task="repeat-subseq", seq_len=40), "seq_len") == 40
    assert task_value(DataConfig(task="max-element"), "seq_len") == 10
    assert task_value(DataConfig(), "seq_len") is None  # modular: no such default
    # zipf_alpha = 0 is a value, not "unset"
    assert task_value(DataConfig(task="sparse-parity", zipf_alpha=0.0), "zipf_alpha") == 0.0


@pytest.mark.parametrize(
    ("task", "check"),
    [
        ("max-element", lambda t: t.n_ctx == TASK_DEFAULTS["max-element"]["seq_len"] + 2),
        ("digit-add", lambda t: t.n_test == TASK_DEFAULTS["digit-add"]["test_size"]),
        ("sparse-parity", lambda t: t.n_test == TASK_DEFAULTS["sparse-parity"]["test_size"]),
    ],
)
def test_tasks_use_the_table(task: str, check) -> None:
    assert check(build_task(DataConfig(task=task)))


def test_config_checks_use_the_table() -> None:
    # repeat_len alone is checked against the default seq_len (85): 43 * 2 > 85
    with pytest.raises(ConfigError, match=r"seq_len=85 .* >= 2 \* repeat_len \(86\)"):
        DataConfig(task="repeat-subseq", repeat_len=43)
    with pytest.raises(ConfigError, match=r"parity_k=51 .* <= n_bits \(50\)"):
        DataConfig(task="sparse-parity", parity_k=51)


# ------------------------------------------------------------------ a different run


def test_different_run_error_names_the_first_differing_field() -> None:
    from conftest import tiny_config

    a = config_to_dict(tiny_config())
    b = config_to_dict(tiny_config(optim={"lr": 0.5}))
    e = different_run_error("runs/x", a, b)
    assert isinstance(e, RunExistsError)
    assert str(e) == (
        "runs/x: already holds a different run (optim.lr: 0.01 there, 0.5 here); "
        "choose another --out"
    )
    assert "(unreadable config)" in str(different_run_error("runs/x", None, b))
