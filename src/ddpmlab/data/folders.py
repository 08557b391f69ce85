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
from .transforms import convert_and_resize

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


def load_folder(path: Path, split: str, cfg: DataConfig, source: str) -> ImageData:
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

    # channels=0 keeps each image's stored channels (checked for a grey/colour mix below)
    size, channels = cfg.image_size, cfg.channels
    workers = max(1, min(8, os.cpu_count() or 1, len(paths) // 64 + 1))
    if workers == 1:
        decoded = [_read_fitted(p, channels, size) for p in paths]
    else:
        with ThreadPoolExecutor(workers) as pool:
            decoded = list(pool.map(lambda p: _read_fitted(p, channels, size), paths))

    if size == 0:
        first = decoded[0].shape[-2:]
        for p, x in zip(paths, decoded, strict=True):
            if x.shape[-2:] != first:
                raise DataError(
                    f"{p}: size {x.shape[-1]}x{x.shape[-2]} differs from {paths[0].name}'s "
                    f"{first[1]}x{first[0]} (WxH); set data.image_size to resize every image")
    if channels == 0:
        gray = next((p for p, x in zip(paths, decoded, strict=True) if x.shape[0] == 1), None)
        colour = next((p for p, x in zip(paths, decoded, strict=True) if x.shape[0] == 3),
                      None)
        if gray is not None and colour is not None:
            raise DataError(f"{path}: mixes grayscale ({gray}) and colour ({colour}) images; "
                            "set data.channels to 1 or 3")
    return ImageData(torch.stack(decoded).contiguous(),
                     None if labels is None else torch.from_numpy(labels), class_names, source)


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

