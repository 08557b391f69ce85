"""Non-leaking augmentation (Karras et al. 2022, EDM, Appendix C.4; NVlabs/edm
``training/augment.py``): each training image x0 may be transformed before it is noised, and
the network is *told* which transform was applied through a label vector (its extra
conditioning, ``model.augment_dim``). At sampling every label is zero, "no transform", so the
model draws images of the data's own kind: the transforms cannot leak into the samples. An
augmentation without the labels (``data.hflip``) can leak: use it only where the data are
symmetric.

**The transforms** (``train.augment`` = p; each one drawn for each image independently with
probability p, applied in this order):

=================  =====================================================  ===============
transform          applied when drawn                                     labels (5 in all)
=================  =====================================================  ===============
x-flip             mirror left-right                                      ``[f]``, f = 1
90-degree turn     ``torch.rot90`` by k quarter turns, k uniform in 1..3  ``[cos(k pi/2) - 1,
                   (counter-clockwise as displayed; square images only)     sin(k pi/2)]``
integer shift      circular shift by (tx, ty) pixels, each uniform in     ``[tx / m, ty / m]``
                   -m..m, m = :func:`shift_range` (1/8 of the side,
                   EDM's ``translate_int_max``); +tx moves right, +ty down
=================  =====================================================  ===============

so the label vector is ``[f, cos - 1, sin, tx / m, ty / m]`` and is zero exactly when the image
is unchanged (a drawn shift of (0, 0) is no shift). With x-flip and the quarter turns every
one of the square's 8 symmetries is reachable.

**Why these.** Each is a permutation of the pixels: nothing is interpolated or invented, so a
transform is exactly invertible (:func:`invert`) and its labels decode to it (:func:`decode`).
EDM's pipe also scales, rotates by any angle and stretches, through a resampling filter; at our
28-32 px a resampling blur is a visible change of the image statistics the small network would
spend capacity on, and those are the transforms least needed for the few-hundred-image sets
this is for. The shift wraps around (EDM reflects at the border): on our data (digits and
clothes on black, emoji on white) the border is background, so the wrap is nearly invisible
and the shift stays a permutation.

The random numbers (:func:`draw_augment`) come from the trainer's generator, drawn for the
whole global batch like the step's other draws (``train.step.draw``), so DDP and gradient
accumulation see the same transforms; nothing is drawn when p = 0.
"""

from __future__ import annotations

import math

import torch

__all__ = ["AUGMENT_DIM", "SHIFT_MAX", "apply_augment", "decode", "draw_augment",
           "encode", "invert", "shift_range"]

#: the length of the label vector: [flip, cos(turn) - 1, sin(turn), tx / m, ty / m]
AUGMENT_DIM = 5
#: the largest shift, as a share of the image side (EDM's translate_int_max)
SHIFT_MAX = 0.125


def shift_range(size: int) -> int:
    """m: shifts are -m..m pixels for an image side of ``size`` (1/8 of it, at least 1)."""
    return max(1, round(size * SHIFT_MAX))


def draw_augment(generator: torch.Generator, batch: int, size: int, p: float,
                 device: torch.device | None = None) -> torch.Tensor:
    """Each image's transform, ``[batch, 4]`` int64 columns (flip 0/1, quarter turns k in 0..3,
    tx, ty), each transform drawn with probability ``p``. The same 6 numbers per image are
    drawn from ``generator`` whatever is applied (3 uniforms that decide, k, then tx and ty),
    so the stream does not depend on which transforms were drawn."""
    gdev = generator.device
    u = torch.rand((batch, 3), generator=generator, device=gdev)          # apply each?
    k = torch.randint(1, 4, (batch,), generator=generator, device=gdev)
    m = shift_range(size)
    t = torch.randint(-m, m + 1, (batch, 2), generator=generator, device=gdev)
    on = u < p
    out = torch.stack([on[:, 0].long(), torch.where(on[:, 1], k, 0),
                       torch.where(on[:, 2], t[:, 0], 0), torch.where(on[:, 2], t[:, 1], 0)],
                      dim=1)
    return out if device is None else out.to(device)


def encode(params: torch.Tensor, size: int) -> torch.Tensor:
    """The label vectors ``[N, AUGMENT_DIM]`` (float32) of transforms ``params`` ``[N, 4]``
    (:func:`draw_augment`'s columns) on images of side ``size``."""
    flip, k, tx, ty = params.unbind(1)
    angle = k.double() * (math.pi / 2)
    m = shift_range(size)
    cos = torch.round(torch.cos(angle)) - 1            # exact -1/0/1 (cos(pi/2) is 6e-17)
    sin = torch.round(torch.sin(angle))
    return torch.stack([flip.double(), cos, sin, tx.double() / m, ty.double() / m],
                       dim=1).float()


def decode(labels: torch.Tensor, size: int) -> torch.Tensor:
    """The transforms ``[N, 4]`` int64 that label vectors ``[N, AUGMENT_DIM]`` encode (the
    inverse of :func:`encode`)."""
    if labels.ndim != 2 or labels.shape[1] != AUGMENT_DIM:
        raise ValueError(f"augmentation labels must be [N, {AUGMENT_DIM}], got "
                         f"{list(labels.shape)}")
    v = labels.double()
    flip = (v[:, 0] > 0.5).long()
    k = torch.round(torch.atan2(v[:, 2], v[:, 1] + 1) / (math.pi / 2)).long() % 4
    m = shift_range(size)
    return torch.stack([flip, k, torch.round(v[:, 3] * m).long(),
                        torch.round(v[:, 4] * m).long()], dim=1)


def _check(x: torch.Tensor, params: torch.Tensor) -> None:
    if x.ndim != 4 or params.shape != (x.shape[0], 4):
        raise ValueError(f"augmentation: images must be [N, C, H, W] and transforms [N, 4], got "
                         f"{list(x.shape)} and {list(params.shape)}")
    if x.shape[-1] != x.shape[-2] and bool((params[:, 1] != 0).any()):
        raise ValueError(f"augmentation: quarter turns need square images, got "
                         f"{x.shape[-2]}x{x.shape[-1]}")


def _turn(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each image turned by its own ``k`` quarter turns (counter-clockwise as displayed)."""
    out = x
    for q in (1, 2, 3):        # (all three, whatever k holds: no device-to-host sync)
        out = torch.where((k % 4 == q).view(-1, 1, 1, 1), torch.rot90(x, q, dims=(-2, -1)), out)
    return out


def _shift(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Each image shifted circularly by its own (tx, ty): out[i, j] = x[i - ty, j - tx]."""
    n, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None, :] - ty[:, None].to(x.device)) % h   # [N, H]
    cols = (torch.arange(w, device=x.device)[None, :] - tx[:, None].to(x.device)) % w   # [N, W]
    x = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def apply_augment(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Images ``[N, C, H, W]`` transformed by ``params`` ``[N, 4]``: flip, then turn, then
    shift (see the module docstring); an all-zero row leaves its image unchanged."""
    _check(x, params)
    flip, k, tx, ty = params.to(x.device).unbind(1)
    x = torch.where(flip.bool().view(-1, 1, 1, 1), x.flip(-1), x)
    return _shift(_turn(x, k), tx, ty)


def invert(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The images :func:`apply_augment` was given, from its result (exact: every transform
    is a permutation of the pixels)."""
    _check(x, params)
    flip, k, tx, ty = params.to(x.device).unbind(1)
    x = _turn(_shift(x, -tx, -ty), -k)
    return torch.where(flip.bool().view(-1, 1, 1, 1), x.flip(-1), x)
