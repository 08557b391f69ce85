"""The one rank-agnostic broadcast helper (k-diffusion's ``append_dims``, lucidrains' ``extract``)."""

from __future__ import annotations

import torch


def expand_like(per_sample: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample tensor ``[N]`` to ``[N, 1, ..., 1]`` so it broadcasts against ``x``.

    The result has ``x``'s dtype and device. ``x`` may have any rank ``>= 1``: images
    ``[N, C, H, W]`` and 2-D toy points ``[N, 2]`` go through the same code.
    """
    if per_sample.ndim != 1:
        raise ValueError(f"expected a per-sample tensor of shape [N], got {tuple(per_sample.shape)}")
    if per_sample.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"per-sample tensor has {per_sample.shape[0]} entries but x has batch {x.shape[0]}"
        )
    return per_sample.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def gather(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``table[t]`` (a float64 schedule column), broadcast against ``x`` in ``x``'s dtype.

    The lookup happens in float64 on the table's device; only the gathered values are cast.
    """
    t = torch.as_tensor(t, device=table.device)
    if t.is_floating_point():
        raise ValueError("gather takes integer indices; a fractional index t has no table entry "
                         "(use ddpmlab.forward.alpha_bar_at, which interpolates log sigma)")
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return expand_like(table[t.long()], x)
