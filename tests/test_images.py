"""Image tasks (8×8 digits, MNIST from IDX files) and the dense-input MLP."""

from __future__ import annotations

import gzip
import struct
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from groklab.config import DataConfig, ModelConfig, RunConfig, apply_overrides
from groklab.errors import ConfigError
from groklab.models import MLP, build_model
from groklab.tasks import build_task
from groklab.tasks.images import read_idx

DENSE = ModelConfig(arch="mlp", n_layers=3, d_mlp=200, mlp_input="dense")


def _idx_bytes(array: np.ndarray, code: int, dtype: str) -> bytes:
    """IDX by hand: 0, 0, type code, ndim, big-endian int32 dims, big-endian data."""
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.astype(dtype).tobytes()


def _write_mnist(folder: Path, n_train: int, n_test: int, *, gz: bool) -> np.ndarray:
    """Four tiny IDX files of 4×4 images; returns the pixels of all images in pool order."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_train + n_test, 4, 4), dtype=np.uint8)
    labels = (np.arange(n_train + n_test) % 10).astype(np.uint8)
    parts = {"train": slice(0, n_train), "t10k": slice(n_train, None)}
    for part, sl in parts.items():
        for kind, arr, code in (("images-idx3", images[sl], 0x08), ("labels-idx1", labels[sl], 8)):
            data = _idx_bytes(arr, code, ">u1")
            name = f"{part}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return images


# ----------------------------------------------------------------------------- digits


def test_digits_task_shapes_scale_and_split() -> None:
    task = build_task(DataConfig(task="digits", train_size=300, split_seed=1))
    assert task.train_x.shape == (300, 64) and task.train_x.dtype == torch.float32
    assert task.test_x.shape == (1797 - 300, 64)
    assert task.train_y.shape == (300, 1) and task.train_y.dtype == torch.long
    assert (task.d_vocab, task.n_ctx, task.n_scored, task.d_vocab_out) == (64, 1, 1, 10)
    assert len(task.vocab) == 64 and task.vocab[9] == "r1c1"
    both = torch.cat([task.train_x, task.test_x])
    assert float(both.min()) == 0.0 and float(both.max()) == 1.0  # pixel / 16
    tr, te = task.info["train_index"], task.info["test_index"]
    assert len(set(tr.tolist()) | set(te.tolist())) == 1797  # disjoint, covers the pool
    assert set(task.train_y[:, 0].tolist()) == set(range(10))
    # per-class test subsets partition the test set
    rows = [task.subsets[f"test/digit_{k}"].rows for k in range(10)]
    assert sum(len(r) for r in rows) == task.n_test
    assert all(bool((task.test_y[r, 0] == k).all()) for k, r in enumerate(rows))


def test_digits_split_is_seeded() -> None:
    a = build_task(DataConfig(task="digits", train_size=100, split_seed=3))
    b = build_task(DataConfig(task="digits", train_size=100, split_seed=3))
    c = build_task(DataConfig(task="digits", train_size=100, split_seed=4))
    assert a.split_hash == b.split_hash and torch.equal(a.train_x, b.train_x)
    assert a.split_hash != c.split_hash


def test_digits_default_size_and_test_cap() -> None:
    task = build_task(DataConfig(task="digits", train_fraction=0.5))
    assert task.n_train == round(0.5 * 1797)
    capped = build_task(DataConfig(task="digits", train_size=100, test_size=250))
    assert (capped.n_train, capped.n_test) == (100, 250)


def test_digits_train_size_too_large() -> None:
    with pytest.raises(ConfigError, match=r"data\.train_size=1797 .*1\.\.1796"):
        build_task(DataConfig(task="digits", train_size=1797))


def test_digits_without_sklearn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now fails
    with pytest.raises(ConfigError, match=r"pip install 'groklab\[images\]'") as e:
        build_task(DataConfig(task="digits"))
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- IDX / MNIST


def test_read_idx_known_arrays(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(a, 0x08, ">u1"))
    assert np.array_equal(read_idx(tmp_path / "a"), a)
    b = np.array([-5, 70000, 3], dtype=np.int32)  # big-endian int32 on disk
    (tmp_path / "b.gz").write_bytes(gzip.compress(_idx_bytes(b, 0x0C, ">i4")))
    got = read_idx(tmp_path / "b.gz")
    assert got.tolist() == [-5, 70000, 3] and got.dtype == np.int32


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "magic").write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(ConfigError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    a = np.arange(10, dtype=np.uint8)
    (tmp_path / "short").write_bytes(_idx_bytes(a, 0x08, ">u1")[:-3])
    with pytest.raises(ConfigError, match="needs 10"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_tiny_idx_files(tmp_path: Path, gz: bool) -> None:
    images = _write_mnist(tmp_path, n_train=12, n_test=5, gz=gz)
    task = build_task(DataConfig(task="mnist", data_dir=str(tmp_path), train_size=7, split_seed=2))
    assert (task.n_train, task.n_test, task.d_vocab, task.n_ctx) == (7, 10, 16, 1)
    assert task.info["image_shape"] == (4, 4) and task.info["n_pool"] == 17
    pool = torch.from_numpy(images.reshape(17, 16).astype(np.float32) / 255)
    idx = task.info["train_index"]
    assert torch.equal(task.train_x, pool[idx])  # pixels / 255, train files first
    assert torch.equal(task.train_y[:, 0], idx % 10)


def test_mnist_missing_files_say_where_to_get_them(tmp_path: Path) -> None:
    _write_mnist(tmp_path, 3, 2, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError) as e:
        build_task(DataConfig(task="mnist", data_dir=str(tmp_path)))
    msg = str(e.value)
    assert "\n" not in msg and "t10k-labels-idx1-ubyte" in msg and "https://" in msg
    assert "train-images" not in msg  # only the missing file is named
    with pytest.raises(ConfigError, match=r"data\.data_dir is not set.*https://") as e:
        build_task(DataConfig(task="mnist"))
    assert "\n" not in str(e.value)


def test_mnist_default_train_size_is_1000(tmp_path: Path) -> None:
    _write_mnist(tmp_path, 1000, 10, gz=True)
    task = build_task(DataConfig(task="mnist", data_dir=str(tmp_path)))
    assert (task.n_train, task.n_test) == (1000, 10)


# ----------------------------------------------------------------------------- config / model


def test_image_task_needs_the_dense_mlp() -> None:
    with pytest.raises(ConfigError, match="mlp_input='dense'"):
        RunConfig(data=DataConfig(task="digits"))
    # overrides can switch the model first, then the task
    cfg = apply_overrides(
        RunConfig(),
        ["model.n_layers=3", "model.arch=mlp", "model.mlp_input=dense", "data.task=digits"],
    )
    assert cfg.data.task == "digits"
    # a dense model on a token task is refused when the model is built
    modular = build_task(DataConfig(p=7))
    with pytest.raises(ConfigError, match="token model"):
        build_model(DENSE, modular)


def test_dense_mlp_forward_and_init_scale() -> None:
    task = build_task(DataConfig(task="digits", train_size=50))
    m1 = build_model(DENSE, task, seed=5)
    m3 = build_model(replace(DENSE, init_scale=3.0), task, seed=5)
    assert isinstance(m1, MLP)
    names = [n for n, _ in m1.named_parameters()]
    assert names == [
        "embed.W_E", "layers.0.b", "layers.1.W", "layers.1.b", "unembed.W_U", "unembed.b_U"
    ]  # fmt: skip
    assert m1.embed.W_E.shape == (64, 200)
    for (_, p1), (_, p3) in zip(m1.named_parameters(), m3.named_parameters(), strict=True):
        torch.testing.assert_close(p3, 3 * p1)  # alpha multiplies every initial tensor
    # PyTorch Linear default bounds: U(±1/sqrt(fan_in))
    w_max = float(m1.embed.W_E.detach().abs().max())
    assert 0.12 < w_max <= 1 / 8
    x = task.train_x[:5]
    logits = m1(x, n_scored=1)
    assert logits.shape == (5, 1, 10)
    h = torch.relu(x @ m1.embed.W_E + m1.layers[0].b)
    h = torch.relu(h @ m1.layers[1].W + m1.layers[1].b)
    torch.testing.assert_close(logits[:, 0], h @ m1.unembed.W_U + m1.unembed.b_U)
