"""Image classification tasks: scikit-learn's 8×8 digits and MNIST from local IDX files.

Both are *dense-input* tasks (``task.info["input"] == "dense"``), for the MLP with
``model.mlp_input="dense"`` (Omnigrok's setting):

- ``x``: float32 pixels ``[n, d_vocab]`` scaled to ``[0, 1]`` (digits: value / 16, MNIST:
  value / 255; no standardisation, as in Omnigrok), so ``d_vocab`` is the *feature count*
  (64 or 784) and ``vocab`` names the pixels (``r3c5`` = row 3, column 5);
- ``n_ctx = 1`` and ``n_scored = 1``: one input vector, one prediction;
- ``y``: class ids ``[n, 1]`` (long), ``d_vocab_out = 10``.

The split: every image the dataset has (digits: 1,797; MNIST: the 60,000 training plus the
10,000 test images) is shuffled by a generator seeded with ``data.split_seed``; the first
``data.train_size`` images train (default: 1,000 for MNIST, as in Omnigrok;
``data.train_fraction`` of the images for digits) and the rest are the test set, optionally cut
to ``data.test_size`` (still a seeded random subset) to make evaluations cheaper. Test subsets
``test/digit_0`` … ``test/digit_9`` score each class on its own.

MNIST is read from the four standard IDX files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
optionally gzipped as ``.gz``) in the folder ``data.data_dir``; nothing is downloaded.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from groklab.config import DataConfig, task_value
from groklab.errors import ConfigError
from groklab.tasks.base import EvalSubset, Task, tensor_hash

__all__ = [
    "MNIST_FILES",
    "MNIST_SOURCE",
    "build_digits",
    "build_mnist",
    "image_task",
    "load_digits_arrays",
    "load_mnist_arrays",
    "read_idx",
]

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_SOURCE = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/ "
    "(mirror of http://yann.lecun.com/exdb/mnist/)"
)

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped when the name ends in ``.gz``) into a numpy array.

    The format: two zero bytes, a type code (0x08 ubyte … 0x0E float64), the number of
    dimensions, each dimension as a big-endian int32, then the data in C order, big-endian.

    Raises:
        ConfigError: the file cannot be read or is not a well-formed IDX file.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ConfigError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ConfigError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()!r})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ConfigError(f"{path}: truncated IDX header ({ndim} dimensions announced)")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:head], dtype=">u4"))
    count = int(np.prod(shape)) if shape else 0
    if len(raw) - head != count * dtype.itemsize:
        raise ConfigError(
            f"{path}: IDX data has {len(raw) - head} bytes, header {shape} needs "
            f"{count * dtype.itemsize}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native byte order


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8×8 digits: pixels ``[1797, 64]`` in ``[0, 1]`` and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError(
            "data.task='digits' needs scikit-learn (the 8x8 digits ship inside it): "
            "pip install 'groklab[images]'"
        ) from None
    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def _find(folder: Path, stem: str) -> Path | None:
    # Some mirrors spell the files "train-images.idx3-ubyte"; accept both, raw or gzipped.
    for name in (stem, stem.replace("-idx", ".idx")):
        for cand in (folder / name, folder / f"{name}.gz"):
            if cand.is_file():
                return cand
    return None


def load_mnist_arrays(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """All 70,000 MNIST images from the IDX files in ``data_dir``: training images first.

    Returns:
        Pixels ``[n, rows * cols]`` in ``[0, 1]`` (float32), labels ``[n]`` (int64) and the
        image shape ``(rows, cols)``.

    Raises:
        ConfigError: a file is missing (the message says where to get them) or malformed.
    """
    folder = Path(data_dir)
    found = {stem: _find(folder, stem) for stem in MNIST_FILES}
    missing = [s for s, p in found.items() if p is None]
    if missing:
        raise ConfigError(
            f"data.data_dir={str(folder)!r}: MNIST file(s) {', '.join(missing)} (or .gz) not "
            f"found; download the four IDX files from {MNIST_SOURCE} into that folder"
        )
    xs, ys, shapes = [], [], []
    for part in ("train", "t10k"):
        img_path = found[f"{part}-images-idx3-ubyte"]
        lab_path = found[f"{part}-labels-idx1-ubyte"]
        assert img_path is not None and lab_path is not None
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ConfigError(
                f"{img_path}: images {images.shape} do not match labels {labels.shape} "
                f"in {lab_path.name} (need [n, rows, cols] and [n])"
            )
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ConfigError(f"{lab_path}: labels must be digits 0..9")
        shapes.append(images.shape[1:])
        xs.append(images.reshape(images.shape[0], -1).astype(np.float32) / 255.0)
        ys.append(labels.astype(np.int64))
    if shapes[0] != shapes[1]:
        raise ConfigError(
            f"{folder}: training images {shapes[0]} and test images {shapes[1]} differ"
        )
    return np.concatenate(xs), np.concatenate(ys), (int(shapes[0][0]), int(shapes[0][1]))


def image_task(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    cfg: DataConfig,
    *,
    image_shape: tuple[int, int],
    default_train_size: int,
    n_classes: int = 10,
) -> Task:
    """Split an image pool into a dense-input :class:`Task` (see the module docstring).

    Args:
        name: task name.
        x: pixels ``[n, rows * cols]`` in ``[0, 1]``.
        y: class ids ``[n]``.
        cfg: the data config (``train_size``, ``test_size``, ``split_seed``).
        image_shape: ``(rows, cols)``, for the pixel names and for plotting.
        default_train_size: training images when ``cfg.train_size`` is unset.
        n_classes: number of classes.
    """
    n, d = x.shape
    n_train = cfg.train_size if cfg.train_size is not None else default_train_size
    if not 1 <= n_train < n:
        raise ConfigError(
            f"data.train_size={n_train} is not allowed; must be in 1..{n - 1} "
            f"({name} has {n:,} images and the rest are the test set)"
        )
    gen = torch.Generator().manual_seed(cfg.split_seed)
    perm = torch.randperm(n, generator=gen)
    train_idx, test_idx = perm[:n_train], perm[n_train:]
    if cfg.test_size is not None:
        test_idx = test_idx[: cfg.test_size]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    train_x, test_x = xt[train_idx].contiguous(), xt[test_idx].contiguous()
    train_y, test_y = yt[train_idx].unsqueeze(1), yt[test_idx].unsqueeze(1)  # [n, n_scored=1]
    rows, cols = image_shape
    subsets = {
        f"test/digit_{k}": EvalSubset("test", rows=torch.nonzero(test_y[:, 0] == k)[:, 0])
        for k in range(n_classes)
    }
    return Task(
        name=name,
        vocab=tuple(f"r{i}c{j}" for i in range(rows) for j in range(cols)),
        d_vocab=d,
        d_vocab_out=n_classes,
        n_ctx=1,
        n_scored=1,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        subsets=subsets,
        split_hash=tensor_hash(train_x, train_y, test_x, test_y),
        info={
            "input": "dense",
            "dataset": name,
            "image_shape": image_shape,
            "pixel_range": (0.0, 1.0),
            "n_pool": n,
            "train_index": train_idx,
            "test_index": test_idx,
        },
    )


def build_digits(cfg: DataConfig) -> Task:
    """The 8×8 digits task (scikit-learn's copy of the UCI digits; no download)."""
    x, y = load_digits_arrays()
    default = max(1, min(len(x) - 1, round(cfg.train_fraction * len(x))))
    return image_task("digits", x, y, cfg, image_shape=(8, 8), default_train_size=default)


def build_mnist(cfg: DataConfig) -> Task:
    """MNIST from the IDX files in ``cfg.data_dir`` (1,000 training images by default)."""
    if cfg.data_dir is None:
        raise ConfigError(
            "data.data_dir is not set; MNIST needs a folder with the four IDX files "
            f"({MNIST_FILES[0]}, ...; get them from {MNIST_SOURCE}): "
            "--set data.data_dir=/path/to/mnist"
        )
    x, y, shape = load_mnist_arrays(Path(cfg.data_dir).expanduser())
    return image_task(
        "mnist", x, y, cfg, image_shape=shape, default_train_size=task_value(cfg, "train_size")
    )
