"""``.npz`` arrays: ``images`` (or ``arr_0``) uint8 NHWC or NHW, optional ``labels`` and
``class_names`` (a data set, :func:`load_npz`), and samples to score (:func:`load_samples_npz`).
Read with ``allow_pickle=False``: an object array is refused, never unpickled."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

__all__ = ["load_npz", "load_samples_npz"]

_MAX_CLASSES = 100_000        # an .npz label sets the class count: bound it (and the names list)


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
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


def load_samples_npz(path: str | os.PathLike) -> torch.Tensor:
    """Samples as FID tools and ``ddpmlab sample --npz`` store them, uint8 ``N x H x W x C``
    under ``arr_0``, as ``[N, C, H, W]``; stricter than :func:`load_npz` (one key, C 1 or 3),
    errors name the file. Never unpickles."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path}: samples must be an .npz (uint8 N x H x W x C under arr_0), "
                        f"got a {path.suffix or 'suffix-less'} file")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files") or "arr_0" not in f.files:
                raise DataError(f"{path}: no 'arr_0' array (expected uint8 N x H x W x C)")
            arr = f["arr_0"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read samples ({type(e).__name__}: {e})") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise DataError(f"{path}: 'arr_0' must be uint8 N x H x W x C (C = 1 or 3), got "
                        f"{arr.dtype} {arr.shape}")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
