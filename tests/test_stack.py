"""Stacking, an option of the executor: same-shape runs as one job, packed to a memory budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import tiny_config
from groklab.errors import ConfigError
from groklab.run import load_run
from groklab.sweep import run_many
from groklab.sweep import stack as sweep_stack
from groklab.train import ensemble
from helpers.interrupt import ctrl_c_at
from test_ensemble import _assert_same_run


def _seeds(k: int, **kw) -> list:
    """``k`` configs of one shape: seeds 0..k-1 (initialisation and split)."""
    return [
        tiny_config(
            name=f"m{s}",
            train={"steps": 20, **kw.get("train", {}), "seed": s},
            data={"split_seed": s},
            optim=kw.get("optim"),
        )
        for s in range(k)
    ]


@pytest.fixture
def stacks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each stack ``train_many`` trains in this process (a stack is one call)."""
    sizes: list[int] = []
    real = ensemble.train_many

    def counting(configs, outs, **kw):
        sizes.append(len(configs))
        return real(configs, outs, **kw)

    monkeypatch.setattr(ensemble, "train_many", counting)
    return sizes


def _manifest(out: Path) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


def test_stacked_runs_equal_runs_alone_and_are_one_job(tmp_path: Path, stacks: list[int]) -> None:
    cfgs = _seeds(3)
    alone = run_many(cfgs, [tmp_path / f"a{i}" for i in range(3)], progress=False)
    assert stacks == [] and all("stack" not in r for r in alone)
    outs = [tmp_path / f"s{i}" for i in range(3)]
    res = run_many(cfgs, outs, progress=False, stack=True, analyses=["summary"])
    assert stacks == [3]  # one job: one train_many call for the three runs
    assert [r["out"] for r in res] == [str(o.resolve()) for o in outs]
    assert all(r["status"] == "completed" and r["error"] is None for r in res)
    assert [r["action"] for r in res] == ["started"] * 3 and [r["stack"] for r in res] == [3] * 3
    assert all("summary" in r["analyses"] for r in res)  # each run's analyses ran
    assert [_manifest(o)["stack"]["index"] for o in outs] == [0, 1, 2]
    for i in range(3):
        _assert_same_run(load_run(tmp_path / f"a{i}"), load_run(outs[i]))


def test_the_budget_cuts_a_stack_into_chunks(tmp_path: Path) -> None:
    cfgs = _seeds(5)
    per_run = sweep_stack.run_bytes(cfgs[0])
    # the estimate: 64 B per parameter plus the four split tensors
    assert per_run > 64 * 1000
    base = sweep_stack._RUN_BASE_BYTES
    outs = [tmp_path / f"r{i}" for i in range(5)]
    for fit, sizes in ((2, [2, 2, 1]), (3, [3, 2]), (4, [3, 2]), (5, [5]), (1, [1] * 5)):
        budget = base + fit * per_run + per_run // 2  # room for fit runs, not for fit + 1
        assert sweep_stack.runs_per_stack(per_run, budget) == fit
        jobs = sweep_stack.plan_jobs(cfgs, outs, budget_bytes=budget)
        assert len(jobs) == math.ceil(5 / fit)
        assert [len(j) for j in jobs] == sizes
        assert sorted(i for j in jobs for i in j) == list(range(5))
    # a budget below one run still trains: one run per job
    assert sweep_stack.plan_jobs(cfgs, outs, budget_bytes=1) == [[i] for i in range(5)]
    # the default budget: one typical GPU on CUDA, 2 GiB on CPU
    assert sweep_stack.default_stack_budget("cuda:1") == 16 * 2**30
    assert sweep_stack.default_stack_budget("cpu") == 2 * 2**30
    assert sweep_stack.plan_jobs(cfgs, outs) == [list(range(5))]  # tiny runs: one stack
    with pytest.raises(ConfigError, match="stack_budget_bytes=0"):
        run_many(cfgs, outs, progress=False, stack=True, stack_budget_bytes=0)
    assert not any(o.exists() for o in outs)  # refused before anything was created


def test_run_many_packs_to_the_budget(tmp_path: Path, stacks: list[int]) -> None:
    cfgs = _seeds(3)
    budget = sweep_stack._RUN_BASE_BYTES + 2 * sweep_stack.run_bytes(cfgs[0])
    outs = [tmp_path / f"r{i}" for i in range(3)]
    res = run_many(cfgs, outs, progress=False, stack=True, stack_budget_bytes=budget)
    assert stacks == [2]  # a chunk of two; the chunk of one is a plain run
    assert [r.get("stack") for r in res] == [2, 2, None]
    assert all(r["status"] == "completed" for r in res)


def test_only_same_shape_runs_stack(tmp_path: Path) -> None:
    a, b = _seeds(2), _seeds(2, optim={"weight_decay": 0.3})
    cfgs = [a[0], b[0], a[1], b[1], _seeds(3, train={"steps": 10})[2]]
    outs = [tmp_path / f"r{i}" for i in range(5)]
    assert sweep_stack.plan_jobs(cfgs, outs) == [[0, 2], [1, 3], [4]]
    outs[1].mkdir()
    (outs[1] / "config.toml").write_text("")  # a run was started there: it is not fresh
    assert sweep_stack.plan_jobs(cfgs, outs) == [[0, 2], [1], [3], [4]]


def test_done_runs_are_skipped_and_a_killed_run_resumes_alone(
    tmp_path: Path, stacks: list[int]
) -> None:
    cfgs = _seeds(4)
    outs = [tmp_path / f"r{i}" for i in range(4)]
    run_many(cfgs[:1], outs[:1], progress=False)  # r0 completed
    with ctrl_c_at(12), pytest.raises(KeyboardInterrupt):
        run_many(cfgs[1:2], outs[1:2], progress=False)  # r1 killed at step 12
    assert _manifest(outs[1])["status"] == "interrupted"
    res = run_many(cfgs, outs, progress=False, stack=True)
    assert [r["action"] for r in res] == ["skipped", "resumed", "started", "started"]
    assert stacks == [2]  # only the two fresh runs were stacked
    assert [r.get("stack") for r in res] == [None, None, 2, 2]
    assert all(r["status"] == "completed" for r in res)
    assert "stack" not in _manifest(outs[1]) and _manifest(outs[1])["final_step"] == 20
    again = run_many(cfgs, outs, progress=False, stack=True)
    assert [r["action"] for r in again] == ["skipped"] * 4 and stacks == [2]


def test_a_failed_stack_fails_its_runs_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ensemble.train_many

    def fails_at_wd_03(configs, outs, **kw):
        if configs[0].optim.weight_decay == 0.3:
            raise RuntimeError("boom\nsecond line")
        return real(configs, outs, **kw)

    monkeypatch.setattr(ensemble, "train_many", fails_at_wd_03)
    cfgs = [*_seeds(2), *_seeds(2, optim={"weight_decay": 0.3})]
    res = run_many(cfgs, [tmp_path / f"r{i}" for i in range(4)], progress=False, stack=True)
    assert [r["status"] for r in res] == ["completed", "completed", "failed", "failed"]
    assert res[2]["error"].startswith("RuntimeError: boom") and "\n" not in res[2]["error"]


def test_stacks_in_two_worker_processes(tmp_path: Path) -> None:
    cfgs = [*_seeds(2), *_seeds(2, optim={"weight_decay": 0.3})]
    outs = [tmp_path / f"r{i}" for i in range(4)]
    res = run_many(cfgs, outs, workers=2, threads=1, progress=False, stack=True)
    assert all(r["status"] == "completed" and r["action"] == "started" for r in res)
    assert [r["stack"] for r in res] == [2] * 4
    runs = [_manifest(o)["stack"]["runs"] for o in outs]
    assert runs[0] == runs[1] != runs[2] == runs[3]  # two stacks of two


@pytest.mark.slow  # starts a Ray instance (a few seconds on an idle machine)
def test_a_stack_is_one_ray_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    submitted: list[tuple[str, dict, int]] = []  # (entry point, resources, runs) per task
    real_remote = ray.remote

    def spying_remote(*args, **kw):
        fn = args[0] if len(args) == 1 and not kw else None
        if not getattr(fn, "__module__", "").startswith("groklab."):
            return real_remote(*args, **kw)  # Ray's own uses
        remote = real_remote(fn)

        class Spy:
            def options(self, **resources):
                bound = remote.options(**resources)

                class Submit:
                    def remote(self, configs, *args):
                        k = len(configs) if isinstance(configs, list) else 1
                        submitted.append((fn.__name__, resources, k))
                        return bound.remote(configs, *args)

                return Submit()

        return Spy()

    monkeypatch.setattr(ray, "remote", spying_remote)
    cpu = _seeds(3)
    cuda = [tiny_config(name=f"g{s}", train={"seed": s, "device": "cuda"}) for s in (0, 1)]
    outs = [tmp_path / f"r{i}" for i in range(5)]
    try:
        # inside the try: a failed start still shuts down the processes it launched
        ray.init(
            address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False
        )
        res = run_many([*cpu, *cuda], outs, backend="ray", progress=False, stack=True)
    finally:
        ray.shutdown()
    # two tasks: the CPU stack of three and the CUDA stack of two, which asks for
    # min(1, 2 × 1/16) of the GPU (this tiny model's share per run is the floor, 1/16)
    # (the receiver actor that delivers the runs is submitted too; only the tasks count)
    retry = {"max_retries": 3, "retry_exceptions": False}
    tasks = [t for t in submitted if t[0].startswith("_run")]
    assert sorted(tasks, key=lambda s: s[2]) == [
        ("_run_stack_delivered", {**retry, "num_cpus": 1, "num_gpus": 2 / 16}, 2),
        ("_run_stack_delivered", {**retry, "num_cpus": 1}, 3),
    ]
    assert [r["status"] for r in res[:3]] == ["completed"] * 3
    assert [r["stack"] for r in res[:3]] == [3] * 3 and all(r["gpu_ids"] == [] for r in res[:3])
    assert len({tuple(_manifest(o)["stack"]["runs"]) for o in outs[:3]}) == 1
    # the CUDA stack failed on its worker (no CUDA here): its runs only, with the GPU Ray gave
    assert [r["status"] for r in res[3:]] == ["failed"] * 2
    assert all("no CUDA device" in r["error"] and r["gpu_ids"] == ["0"] for r in res[3:])


SPEC = """
name = "tiny-stack"
seeds = [0, 1]
{stack}

[base.data]
p = 11
train_fraction = 0.5

[base.model]
d_model = 16
n_heads = 2
d_head = 8
d_mlp = 32

[base.train]
steps = 10
eval_every = 5
checkpoint_every = 10
device = "cpu"
"""


def test_the_spec_key_and_the_cli_flag(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from groklab import sweep as sw
    from groklab.cli import app

    assert sw.parse_spec({"name": "s"}).stack is False  # default: each run alone
    assert sw.parse_spec({"name": "s", "stack": True}).stack is True
    with pytest.raises(ConfigError, match="stack='yes' is not allowed; must be true or false"):
        sw.parse_spec({"name": "s", "stack": "yes"})

    def stacked(out: Path) -> list[bool]:
        return ["stack" in _manifest(d) for d in sorted(out.glob("seed=*"))]

    runner = CliRunner()
    cases = [("stack = true", [], [True, True]), ("stack = true", ["--no-stack"], [False, False])]
    cases += [("", ["--stack"], [True, True]), ("", [], [False, False])]
    for i, (key, flag, expect) in enumerate(cases):
        spec = tmp_path / f"spec{i}.toml"
        spec.write_text(SPEC.format(stack=key))
        out = tmp_path / f"out{i}"
        r = runner.invoke(app, ["sweep", str(spec), "-o", str(out), "-w", "1", "-q", *flag])
        assert r.exit_code == 0, r.output
        assert stacked(out) == expect, (key, flag)


def test_a_stack_retried_after_its_process_died_resumes_run_by_run(tmp_path: Path) -> None:
    cfgs = _seeds(2)
    outs = [tmp_path / f"r{i}" for i in range(2)]
    with ctrl_c_at(12), pytest.raises(KeyboardInterrupt):
        sweep_stack._run_stack(cfgs, [str(o) for o in outs], (), {}, None)
    res = sweep_stack._run_stack(cfgs, [str(o) for o in outs], (), {}, None)  # the retry
    assert [(r["action"], r["status"]) for r in res] == [("resumed", "completed")] * 2
    assert [_manifest(o)["final_step"] for o in outs] == [20, 20]
