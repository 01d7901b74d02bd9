"""The Ray backend, on a local Ray instance started here, gives the same sweep as the local one.

Ray is the ``ray`` extra (installed by ``pip install -e '.[all]'``, as CI does).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import ray

from groklab import sweep as sw
from groklab.config import RunConfig
from groklab.sweep.executor import _ray_resources, gpus_per_run_for, resolve_ray_device

SPEC = {
    "name": "tiny-ray",
    "seeds": [0, 1],
    "analyses": ["summary"],
    "base": {
        "data": {"p": 11, "train_fraction": 0.6},
        "model": {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        "train": {"steps": 80, "eval_every": 10, "checkpoint_every": 40, "device": "cpu"},
    },
    "grid": {"optim.weight_decay": [1.0, 0.3]},
}


@pytest.fixture(scope="module")
def ray_gpu() -> Iterator[None]:
    """One local Ray instance for the module, with one logical GPU (no real one needed)."""
    try:
        # inside the try: a failed start still shuts down the processes it launched
        ray.init(
            address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False
        )
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow  # starts a Ray instance (a few seconds on an idle machine)
def test_ray_backend_gives_the_local_summary(tmp_path: Path, ray_gpu: None) -> None:
    spec = sw.parse_spec(SPEC)
    local = sw.run_sweep(spec, tmp_path / "local", workers=1, progress=False)
    assert local.n_failed == 0

    res = sw.run_sweep(spec, tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert ray.is_initialized()  # run_many leaves a Ray instance it did not start running
    assert all(r["gpu_ids"] == [] for r in res.results)  # a CPU run asks for no GPU

    assert res.n_failed == 0 and [r["action"] for r in res.results] == ["started"] * 4
    # the same directory layout ...
    names = sorted(p.name for p in (tmp_path / "local").iterdir() if p.is_dir())
    assert names == sorted(p.name for p in (tmp_path / "ray").iterdir() if p.is_dir())
    assert len(names) == 4
    # ... the same runs, bit for bit ...
    for n in names:
        a = pd.read_parquet(tmp_path / "local" / n / "metrics.parquet")
        b = pd.read_parquet(tmp_path / "ray" / n / "metrics.parquet")
        pd.testing.assert_frame_equal(a, b)
        mark = json.loads((tmp_path / "ray" / n / "analysis" / "sweep-summary.json").read_text())
        assert mark["status"] == "ok"
    # ... and the same summary tables
    for f in (sw.SUMMARY_FILE, sw.POINTS_FILE):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "local" / f), pd.read_parquet(tmp_path / "ray" / f)
        )


def _cfg(device: str) -> RunConfig:
    base = sw.parse_spec(SPEC).base
    return replace(base, train=replace(base.train, device=device))


def test_gpus_per_run_rule() -> None:
    assert gpus_per_run_for(0) == 1 / 16  # the 0.5 GiB base alone: the floor
    assert gpus_per_run_for(2**23) == 1 / 16  # 0.5 GiB + 0.5 GiB: exactly 1/16
    assert gpus_per_run_for(2**23 + 1) == 2 / 16  # one more parameter: the next 1/16
    assert gpus_per_run_for(2**27) == 9 / 16  # 0.5 GiB + 8 GiB: 8.5/16, rounded up
    assert gpus_per_run_for(10**9) == 1.0  # clamped to one GPU


def test_ray_resources_of_a_run() -> None:
    assert _ray_resources(_cfg("cpu"), 0.5, 1) == {"num_cpus": 1}
    assert _ray_resources(_cfg("cpu"), None, 3) == {"num_cpus": 3}
    assert _ray_resources(_cfg("cuda"), 0.25, 1) == {"num_cpus": 1, "num_gpus": 0.25}
    assert _ray_resources(_cfg("cuda:1"), 0.5, 2) == {"num_cpus": 2, "num_gpus": 0.5}
    # the default comes from the model's size: this tiny model gets the floor, 1/16
    assert _ray_resources(_cfg("cuda"), None, 1) == {"num_cpus": 1, "num_gpus": 1 / 16}


def test_auto_resolves_from_the_cluster_gpus() -> None:
    assert resolve_ray_device("auto", 1.0) == "cuda"
    assert resolve_ray_device("auto", 0.5) == "cuda"
    assert resolve_ray_device("auto", 0) == "cpu"
    assert resolve_ray_device("cpu", 4) == "cpu"
    assert resolve_ray_device("cuda:1", 0) == "cuda:1"


@pytest.mark.slow
def test_cuda_runs_on_ray_ask_for_the_gpu(tmp_path: Path, ray_gpu: None) -> None:
    """--device cuda on Ray: no driver-side CUDA check, each run scheduled onto the (logical)
    GPU with its fraction; the worker, which has no CUDA here, fails the run itself."""
    raw = {**SPEC, "seeds": [0], "analyses": [], "grid": {"optim.weight_decay": [1.0, 0.3]}}
    spec = replace(sw.parse_spec(raw), base=_cfg("cuda"))
    res = sw.run_sweep(
        spec, tmp_path / "s", backend="ray", workers=2, progress=False, gpus_per_run=0.5
    )
    assert [r["gpu_ids"] for r in res.results] == [["0"], ["0"]]
    assert all("train.device='cuda'" in r["error"] for r in res.results)
    assert all("no CUDA device" in r["error"] for r in res.results)


@pytest.mark.slow
def test_auto_on_ray_resolves_once_in_the_driver(tmp_path: Path, ray_gpu: None) -> None:
    raw = {**SPEC, "seeds": [0], "analyses": [], "grid": {"optim.weight_decay": [1.0]}}
    spec = replace(sw.parse_spec(raw), base=_cfg("auto"))
    res = sw.run_sweep(spec, tmp_path / "s", backend="ray", progress=False)
    # the cluster has a (logical) GPU: auto became cuda for the run (the worker, which has no
    # CUDA, names the resolved value), and the run asked Ray for the GPU
    assert res.results[0]["gpu_ids"] == ["0"]
    assert "train.device='cuda'" in res.results[0]["error"]
    # the resolved device is the one recorded for the run
    assert (
        json.loads((tmp_path / "s" / "sweep.json").read_text())["base"]["train"]["device"] == "cuda"
    )
