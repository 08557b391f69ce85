"""The in-memory data set (:class:`ImageData`) and the uint8 <-> model-range conversions."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import DataError

__all__ = ["ImageData", "describe", "to_model_range", "to_uint8"]


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

    def spread(self, n: int) -> ImageData:
        """``n`` of the images (``n`` <= ``len(self)``), evenly spaced over the set in its
        order: image ``floor(k len / n)`` for k = 0..n-1. A set stored in class order (MNIST's
        held-out split is sorted by digit, 50 of each) then gives every class its share: the
        first 100 would be 50 zeros and 50 ones, the spread 10 of each digit."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self):
            raise DataError(f"{self.source}: cannot spread {n!r} of {len(self)} images")
        pick = torch.arange(n) * len(self) // n
        return ImageData(self.images[pick], None if self.labels is None else self.labels[pick],
                         list(self.class_names), self.source)

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
