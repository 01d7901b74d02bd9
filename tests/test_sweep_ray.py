"""The Ray backend, on a local Ray instance started here, gives the same sweep as the local one.

Ray is the ``ray`` extra (installed by ``pip install -e '.[all]'``, as CI does).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import ray

from groklab import sweep as sw

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


@pytest.mark.slow  # starts a Ray instance (a few seconds on an idle machine)
def test_ray_backend_gives_the_local_summary(tmp_path: Path) -> None:
    spec = sw.parse_spec(SPEC)
    local = sw.run_sweep(spec, tmp_path / "local", workers=1, progress=False)
    assert local.n_failed == 0

    try:
        # inside the try: a failed start still shuts down the processes it launched
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        res = sw.run_sweep(spec, tmp_path / "ray", backend="ray", workers=2, progress=False)
        assert ray.is_initialized()  # run_many leaves a Ray instance it did not start running
    finally:
        ray.shutdown()

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
