"""A Ray sweep on a multi-node cluster with no shared filesystem: each node trains in its own
scratch directory and delivers its runs to the driver through the receiver; a node removed
mid-run and a driver killed mid-sweep both end in the runs an uninterrupted local training
gives, bit for bit.

One ``ray.cluster_utils.Cluster`` serves the module: a head with no CPUs (the driver and the
receiver live there) and two worker nodes with one CPU and their own scratch root each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from safetensors.torch import load_file

from conftest import import_extra
from groklab import sweep as sw
from groklab.store import read_manifest
from groklab.sweep.delivery import SCRATCH_ENV
from groklab.train.loop import run_training

ray = import_extra("ray", "ray")
# a cluster of three nodes and a dozen runs: over a minute on a busy 2-core machine
pytestmark = pytest.mark.slow
cluster_utils = import_extra("ray.cluster_utils", "ray")

SPEC = {
    "name": "tiny-cluster",
    "seeds": [0, 1],
    "base": {
        "data": {"p": 11, "train_fraction": 0.6},
        "model": {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        # long enough (a few seconds a run) to lose a node while a run is mid-training
        "train": {"steps": 400, "eval_every": 25, "checkpoint_every": 50, "device": "cpu"},
    },
    "grid": {"optim.weight_decay": [1.0, 0.3]},
}


_STORE_BYTES = 100 * 2**20  # Ray's object store per node: small (runs send a few kB)


class _Cluster:
    def __init__(self, cluster: Any, roots: dict[str, Path]) -> None:
        self.cluster, self.roots = cluster, roots  # worker node id -> its scratch root

    def node(self, node_id: str) -> Any:
        return next(n for n in self.cluster.list_all_nodes() if n.node_id == node_id)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Cluster]:
    base = tmp_path_factory.mktemp("nodes")
    c = None
    try:
        c = cluster_utils.Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "include_dashboard": False,
                "object_store_memory": _STORE_BYTES,
                # notice a removed node within about a second
                "_system_config": {
                    "health_check_initial_delay_ms": 0,
                    "health_check_period_ms": 200,
                    "health_check_failure_threshold": 3,
                },
                "env_vars": {SCRATCH_ENV: str(base / "head")},
            },
        )
        roots = {}
        for i in range(2):
            root = base / f"worker{i}"
            node = c.add_node(
                num_cpus=1, object_store_memory=_STORE_BYTES, env_vars={SCRATCH_ENV: str(root)}
            )
            roots[node.node_id] = root
        ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
        yield _Cluster(c, roots)
    finally:
        ray.shutdown()
        if c is not None:
            c.shutdown()


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each run of the spec trained here on CPU, uninterrupted, with run_training."""
    root = tmp_path_factory.mktemp("local")
    return {
        r.name: run_training(r.config, root / r.name, progress=False)
        for r in sw.expand(sw.parse_spec(SPEC))
    }


def _assert_same_run(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(
        pd.read_parquet(a / "metrics.parquet"), pd.read_parquet(b / "metrics.parquet")
    )
    ckpts = sorted(p.name for p in (a / "checkpoints").iterdir())
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ckpts
    for f in ["state.safetensors", *(f"checkpoints/{n}" for n in ckpts)]:
        ta, tb = load_file(a / f), load_file(b / f)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert ta[k].equal(tb[k]), (b / f, k)


def _assert_delivered_once(sweep: Path, names: list[str]) -> None:
    dirs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert dirs == sorted(names)  # no .partial left, nothing twice
    for n in names:
        assert read_manifest(sweep / n)["status"] == "completed"
        assert not list((sweep / n).rglob(".*"))  # no lock file, no temporary file


def _wait_for(cond: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _mid_run(cl: _Cluster, sweep: Path) -> tuple[str, str] | None:
    """(node id, run) of a run training on a worker node that has delivered its state at step
    100 and is not finished: its scratch directory on that node exists, its .partial holds
    the step-100 checkpoint and says running."""
    for nid, root in cl.roots.items():
        for d in (root / nid).glob("*/*"):
            part = sweep / f"{d.name}.partial"
            if (part / "checkpoints" / "step_000100.safetensors").exists() and (
                read_manifest(part).get("status") == "running"
            ):
                return nid, d.name
    return None


def test_a_lost_node_is_survived_and_every_run_delivered_once(
    cluster: _Cluster, local_runs: dict[str, Path], tmp_path: Path
) -> None:
    spec = sw.parse_spec(SPEC)
    sweep = tmp_path / "sweep"
    out: dict[str, Any] = {}

    def drive() -> None:
        try:
            out["res"] = sw.run_sweep(spec, sweep, backend="ray", workers=0, progress=False)
        except BaseException as e:  # pragma: no cover - reported below
            out["err"] = e

    t = threading.Thread(target=drive)
    t.start()
    lost, run = _wait_for(lambda: _mid_run(cluster, sweep), "a run mid-training on a worker")
    cluster.cluster.remove_node(cluster.node(lost))
    t.join(timeout=600)
    assert not t.is_alive() and "err" not in out, out.get("err")
    res = out["res"]
    assert res.n_failed == 0, [r["error"] for r in res.results]
    _assert_delivered_once(sweep, list(local_runs))
    by = {Path(r["out"]).name: r for r in res.results}
    # the lost run was retried on the other node and resumed from its last delivered state
    assert by[run]["action"] == "resumed" and by[run]["node_id"] != lost
    assert read_manifest(sweep / run)["resumed_from_step"] >= 100
    for r in res.results:
        # every run trained in its node's own scratch root, under its node id: the task
        # never had the sweep's path (it came back only through the receiver)
        nid, scratch = r["node_id"], Path(r["scratch"])
        assert scratch.is_relative_to(cluster.roots[nid] / nid)
        assert not scratch.is_relative_to(sweep)
        assert not scratch.exists()  # removed after delivery
        assert r["out"] == str(sweep.resolve() / Path(r["out"]).name)
    for name, ref in local_runs.items():
        _assert_same_run(ref, sweep / name)


_DRIVER = """
import sys
import ray
from groklab import sweep as sw
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False)
sw.run_sweep(sw.parse_spec({spec!r}), sys.argv[2], backend="ray", workers=0, progress=False)
"""


def test_a_killed_driver_is_continued_by_the_next_launch(
    cluster: _Cluster, local_runs: dict[str, Path], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER.format(spec=SPEC), cluster.cluster.address, str(sweep)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        _wait_for(lambda: _mid_run(cluster, sweep), "a run mid-training", timeout=180)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = [p.name for p in sweep.glob("*.partial")]
    assert partial  # the killed driver left runs mid-delivery
    res = sw.run_sweep(sw.parse_spec(SPEC), sweep, backend="ray", workers=0, progress=False)
    assert res.n_failed == 0, [r["error"] for r in res.results]
    by = {Path(r["out"]).name: r for r in res.results}
    for p in partial:
        assert by[p.removesuffix(".partial")]["action"] == "resumed"
    _assert_delivered_once(sweep, list(local_runs))
    for name, ref in local_runs.items():
        _assert_same_run(ref, sweep / name)
