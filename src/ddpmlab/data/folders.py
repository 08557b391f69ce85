"""Image folders: scan (recursive, sorted, hidden entries ignored), classes from first-level
subfolders, decode with Pillow and normalise the mode to grey or RGB; the folder policies are
in the package docstring.

Pillow only decodes (EXIF orientation, palettes, transparency onto white, 16-bit grey): each
image then goes, at its native size, through the same :func:`~.transforms.convert_and_resize`
as the array sources, so a folder of PNGs and an ``.npz`` of the same images give identical
pixels. Each image is converted and resized right after decoding, in the decoding thread, so a
folder of large photos never sits in memory at full size.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..config import DataConfig
from ..errors import DataError
from .container import ImageData
from .transforms import auto_size, convert_and_resize, convert_channels

__all__ = ["IMAGE_EXTENSIONS", "load_folder"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)


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
            if not p.is_file():   # a FIFO, socket or device named *.png would block the read
                skipped.append(p)
                continue
            (images if p.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(p)
    return sorted(images), skipped


def _class_of(root: Path, p: Path) -> str | None:
    rel = p.relative_to(root).parts
    return rel[0] if len(rel) > 1 else None


UNREADABLE_SHARE = 0.10     # unreadable image files skipped up to this share, refused above
_SHOWN = 3                  # file names a message lists


def load_folder(path: Path, split: str, cfg: DataConfig, source: str) -> ImageData:
    roots, files = _collect(path, split)
    paths = [p for r in roots for p in files[r]]
    if not paths:
        where = " or ".join(str(r) for r in roots)
        raise DataError(f"{where}: no images found (extensions: "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    class_names = _class_names(files)
    index = {c: i for i, c in enumerate(class_names)}
    classes = [_class_of(r, p) for r in roots for p in files[r]]

    size, channels = cfg.image_size, cfg.channels
    if size == 0:
        size = _auto_size(path, paths)
    decoded = _map(lambda p: _read_or_none(p, channels, size), paths)
    bad = [(p, why) for p, (_, why) in zip(paths, decoded, strict=True) if why]
    _account_unreadable(path, bad, len(paths))
    kept = [i for i, (x, _) in enumerate(decoded) if x is not None]
    paths = [paths[i] for i in kept]
    images = [decoded[i][0] for i in kept]
    if channels == 0:
        images = _same_channels(path, images)
    labels = None
    if class_names:
        labels = torch.tensor([index[classes[i]] for i in kept], dtype=torch.int64)
        if split == "train":   # what a model learns from (a held-out split only measures)
            _warn_single_image_classes(path, class_names, labels)
    return ImageData(torch.stack(images).contiguous(), labels, class_names, source)


def _collect(path: Path, split: str) -> tuple[list[Path], dict[Path, list[Path]]]:
    """The split's roots and every root's image files (skipped files warned about once)."""
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
        warnings.warn(f"{path}: skipped {len(skipped)} file(s) without an image extension or "
                      f"not regular files (e.g. {rel}); image extensions: "
                      f"{', '.join(sorted(IMAGE_EXTENSIONS))}",
                      stacklevel=4)
    return roots, files


def _class_names(files: dict[Path, list[Path]]) -> list[str]:
    """The first-level subfolders holding images, sorted; images both at the top level and in
    subfolders of one root are ambiguous (an error)."""
    classes_seen: set[str] = set()
    for r, fs in files.items():
        top = next((p for p in fs if _class_of(r, p) is None), None)
        nested = next((p for p in fs if _class_of(r, p) is not None), None)
        if top is not None and nested is not None:
            raise DataError(f"{r}: images both at the top level ({top.name}) and in subfolders "
                            f"({nested.relative_to(r)}); put every image in a class subfolder, "
                            "or all at the top level for unlabelled data")
        classes_seen.update(c for c in (_class_of(r, p) for p in fs) if c is not None)
    return sorted(classes_seen)


def _map(fn, paths: list[Path]) -> list:
    """``fn`` over ``paths`` in order, in a few threads when there are many (Pillow decodes
    without the GIL)."""
    workers = max(1, min(8, os.cpu_count() or 1, len(paths) // 64 + 1))
    if workers == 1:
        return [fn(p) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, paths))


def _auto_size(path: Path, paths: list[Path]) -> int:
    """``data.image_size`` 0 on a folder: :func:`~.transforms.auto_size` of the files' header
    sizes (0: keep the native size), said in one warning when it resizes."""
    size, why = auto_size([s for s in _map(_header_size, paths) if s is not None])
    if why:
        warnings.warn(f"{path}: {why}", stacklevel=4)
    return size


def _header_size(p: Path) -> tuple[int, int] | None:
    """(W, H) from the file's header without decoding the pixels (EXIF rotation swaps them,
    which changes neither the shorter side nor squareness); None when unreadable."""
    try:
        with Image.open(p) as im:
            w, h = im.size
        return (w, h) if w >= 1 and h >= 1 else None
    except Exception:  # noqa: BLE001 - any failure: the decode pass reports it
        return None


def _read_or_none(p: Path, channels: int, size: int) -> tuple[torch.Tensor | None, str]:
    try:
        return _read_fitted(p, channels, size), ""
    except DataError as e:
        return None, str(e).removeprefix(f"{p}: ")


def _account_unreadable(path: Path, bad: list[tuple[Path, str]], total: int) -> None:
    """Unreadable image files: skipped, with the count and the first few names, up to
    :data:`UNREADABLE_SHARE` of the image files; refused (DataError) above it."""
    if not bad:
        return
    names = "; ".join(f"{p.relative_to(path)} ({why})" for p, why in bad[:_SHOWN])
    more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    share = f"{len(bad)} of {total} image files cannot be decoded"
    if len(bad) > UNREADABLE_SHARE * total:
        raise DataError(f"{path}: {share}, more than {UNREADABLE_SHARE:.0%}: refused (is this "
                        f"the right folder?): {names}{more}")
    warnings.warn(f"{path}: skipped {share} (at most {UNREADABLE_SHARE:.0%} are skipped): "
                  f"{names}{more}", stacklevel=4)


def _same_channels(path: Path, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """``data.channels`` 0: grey and colour images mixed are all used as RGB (grey repeated
    into three planes, as ``data.channels=3`` does), said in one warning."""
    gray = sum(1 for x in images if x.shape[0] == 1)
    if gray == 0 or gray == len(images):
        return images
    warnings.warn(f"{path}: {gray} grayscale and {len(images) - gray} colour images: all are "
                  "used as RGB (set data.channels=1 to train in grayscale, 3 to say so)",
                  stacklevel=4)
    return [convert_channels(x[None], 3)[0] for x in images]


def _warn_single_image_classes(path: Path, class_names: list[str], labels: torch.Tensor
                               ) -> None:
    counts = torch.bincount(labels, minlength=len(class_names)).tolist()
    ones = [c for c, n in zip(class_names, counts, strict=True) if n <= 1]
    if ones:
        shown = ", ".join(ones[:_SHOWN]) + (", ..." if len(ones) > _SHOWN else "")
        warnings.warn(f"{path}: {len(ones)} class folder(s) with one image or none ({shown}): "
                      "a conditional model can at best copy that image", stacklevel=4)


def _read_fitted(path: Path, channels: int, size: int) -> torch.Tensor:
    """One file -> uint8 [C, H, W] through the shared transform (channels 0: as stored)."""
    arr = _read_image(path)
    return convert_and_resize(torch.from_numpy(arr).permute(2, 0, 1)[None], channels, size)[0]


def _read_image(path: Path) -> np.ndarray:
    """Decode one file at its native size to uint8 HxWx1 (grey) or HxWx3 (colour)."""
    try:
        with Image.open(path) as im:
            im.load()
            img = ImageOps.exif_transpose(im)
            img = _normalise_mode(img)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one
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

