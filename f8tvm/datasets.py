"""Real datasets for accuracy measurements: Fashion-MNIST from its IDX files.

Debian ships Fashion-MNIST as the package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/*.gz``: 60 000 training and 10 000 test images, 28 x 28
grey, 10 classes).  ``F8TVM_FASHION_MNIST`` may point to another directory holding the same four
files.  NumPy only.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .data import DataNotFoundError

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIRS", "fashion_mnist"]

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _find_dir() -> Path:
    cands = [os.environ.get("F8TVM_FASHION_MNIST")] + list(FASHION_MNIST_DIRS)
    for c in cands:
        if c and all((Path(c) / f).is_file() for pair in _FILES.values() for f in pair):
            return Path(c)
    raise DataNotFoundError(
        "Fashion-MNIST not found (looked in "
        + ", ".join(c for c in cands if c)
        + "); install it with: apt-get install dataset-fashion-mnist "
        "(or set F8TVM_FASHION_MNIST to a directory with the four .gz IDX files)")


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (big-endian header: magic with the dtype code and rank, then the dims)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} values for shape {dims}")
    return data.reshape(dims)


def fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load a split of Fashion-MNIST.

    Parameters
    ----------
    split : {'train', 'test'}

    Returns
    -------
    images : numpy.ndarray
        ``uint8``, shape ``(N, 1, 28, 28)``.
    labels : numpy.ndarray
        ``int64``, shape ``(N,)``, class indices 0..9 (see :data:`FASHION_MNIST_CLASSES`).

    Raises
    ------
    DataNotFoundError
        The files are not installed (the message gives the install command).
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = _find_dir()
    img_file, lab_file = _FILES[split]
    images = _read_idx(root / img_file)
    labels = _read_idx(root / lab_file).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"Fashion-MNIST {split}: {images.shape[0]} images, {labels.shape[0]} "
                         "labels")
    return images[:, None, :, :], labels
