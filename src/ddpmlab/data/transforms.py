"""The one transform every source goes through: channel conversion, then resize and centre crop.

Built-ins, ``.npz`` files, CIFAR-10 batches and image folders all reach :func:`convert_and_resize`
as uint8 ``[N, C, H, W]`` (a folder one decoded image at a time, see :mod:`.folders`), so the same
pixels stored either way come out identical:

* channels: grey -> RGB repeats the plane; RGB -> grey is ITU-R 601-2 luma in Pillow's
  fixed-point form (:func:`luma`, what ``convert("L")`` computes). RGB -> grey runs before
  resizing and grey -> RGB after (less work either way).
* size: the shorter side -> ``size`` (bicubic, antialiased when shrinking, in float32 torch;
  within a few grey levels of Pillow's resampling), then the centre ``size`` x ``size`` crop.
  Each image is resized on its own (the result does not depend on what else is in the batch).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from ..device import check_memory

__all__ = ["AUTO_MAX_SIZE", "auto_size", "convert_and_resize", "convert_channels", "luma",
           "resize"]

_RESIZE_CHUNK = 4096          # images per batched torch resize (bounds the float32 copy)
AUTO_MAX_SIZE = 128           # data.image_size 0 never trains above this size (the largest
                              # the recipe sizes a network for, ddpmlab.recipe)


def auto_size(sizes: list[tuple[int, int]]) -> tuple[int, str]:
    """The size ``data.image_size`` 0 means for images of these ``(W, H)`` sizes, and why.

    One square size of at most :data:`AUTO_MAX_SIZE`: ``(0, "")`` (native, nothing to say).
    Otherwise (several sizes, not square, or larger) the most common shorter side (ties: the
    smaller), at most :data:`AUTO_MAX_SIZE`, and the sentence that says so."""
    kinds = Counter(sizes)
    if not kinds:
        return 0, ""
    w, h = sizes[0]
    if len(kinds) == 1 and w == h and w <= AUTO_MAX_SIZE:
        return 0, ""
    sides = Counter(min(s) for s in sizes)
    common = max(sides.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    size = min(common, AUTO_MAX_SIZE)
    why = "the most common shorter side" if size == common else \
        f"the most common shorter side is {common}; at most {AUTO_MAX_SIZE} unless asked"
    shown = ", ".join(f"{a}x{b}" for (a, b), _ in kinds.most_common(3))
    more = ", ..." if len(kinds) > 3 else ""
    return size, (f"{len(kinds)} image size(s) ({shown}{more} WxH): every image's shorter side "
                  f"is resized to {size} and the centre {size}x{size} cropped ({why}); set "
                  "data.image_size to choose")


def convert_and_resize(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> ``channels`` (0: as stored) and, with ``size`` > 0, the shorter
    side resized to ``size`` and centre-cropped to a square (0: native size)."""
    grow = channels > x.shape[1]  # grey -> RGB after resizing (less work), RGB -> grey before
    if not grow:
        x = convert_channels(x, channels)
    if size > 0:
        x = resize(x, size)
    if grow:
        x = convert_channels(x, channels)
    return x


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` (C 1 or 3) -> ``channels`` planes (0 or C: unchanged)."""
    c = x.shape[1]
    if channels == 0 or channels == c:
        return x
    if channels == 3:  # grey -> RGB
        return x.expand(-1, 3, -1, -1).clone()
    return torch.from_numpy(luma(x.numpy()))


def luma(rgb: np.ndarray) -> np.ndarray:
    """uint8 [N, 3, H, W] -> [N, 1, H, W] with Pillow's ITU-R 601-2 fixed-point formula."""
    r, g, b = (rgb[:, i : i + 1].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W]: shorter side -> ``size`` (bicubic, antialiased), centre crop."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    n, c = x.shape[:2]
    check_memory(n * c * size * size + 8.0 * min(n, _RESIZE_CHUNK) * c * nh * nw,
                 f"resizing {n:,} images to {size}x{size}")
    out = torch.empty(x.shape[0], x.shape[1], size, size, dtype=torch.uint8)
    for i in range(0, x.shape[0], _RESIZE_CHUNK):
        # one memory layout whatever the input's strides (an NHWC view, a decoded HWC image)
        chunk = x[i : i + _RESIZE_CHUNK].to(torch.float32, memory_format=torch.contiguous_format)
        chunk = F.interpolate(chunk, size=(nh, nw), mode="bicubic", antialias=True,
                              align_corners=False)
        out[i : i + _RESIZE_CHUNK] = chunk[..., top : top + size, left : left + size] \
            .round().clamp(0, 255).to(torch.uint8)
    return out
