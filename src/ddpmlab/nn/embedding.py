"""Timestep and class embeddings of the UNet.

The sinusoidal embedding is the one of Ho et al.'s TF code (``get_timestep_embedding`` in
``diffusion_tf/nn.py``), which improved-diffusion and lucidrains also use up to the order of the
two halves. Ours is **sin first, then cos**::

    half    = dim // 2
    freq_i  = exp(-ln(max_period) * i / (half - 1)),      i = 0 .. half-1
    emb(t)  = [sin(t * freq_0), ..., sin(t * freq_{half-1}),
               cos(t * freq_0), ..., cos(t * freq_{half-1})]   (+ one 0 when dim is odd)

so the first frequency is 1 and the last is 1 / max_period. ``t`` is the timestep index in
``[0, T)`` as the network receives it (index ``t`` is the paper's step ``t + 1``); nothing is
rescaled. diffusers reproduces this with ``flip_sin_to_cos=False, downscale_freq_shift=1``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[N] -> [N, dim]`` (float32), sin half first, then cos half.

    :param t: ``[N]`` timestep indices (int64 in ``[0, T)``; floats are accepted as they are).
    :param dim: embedding width; when odd, the last column is 0. ``dim == 1`` gives a zero column.
    :param max_period: the longest period; ``freq_i = exp(-ln(max_period) * i / (half - 1))``
        (with ``half == 1`` the single frequency is 1).
    :return: ``[N, dim]`` float32 ``cat([sin(t * freqs), cos(t * freqs)])`` on ``t``'s device.

    The arguments ``t * freq`` are formed in float64 (except on MPS, which lacks it) so that
    large ``t`` keeps full float32 accuracy; the cost is negligible next to the network.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding: t must have shape [N], got {list(t.shape)}")
    if dim < 1:
        raise ValueError(f"timestep_embedding: dim must be >= 1, got {dim}")
    half = dim // 2
    wide = torch.float32 if t.device.type == "mps" else torch.float64
    i = torch.arange(half, device=t.device, dtype=wide)
    freqs = torch.exp(i * (-math.log(max_period) / max(half - 1, 1)))
    args = t.to(wide)[:, None] * freqs[None, :]                      # [N, half]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1).to(torch.float32)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """``t -> Linear(SiLU(Linear(sinusoid(t))))``: ``[N] -> [N, out_dim]`` (DDPM's ``temb``).

    :param dim: width of the sinusoid (DDPM: the base channel count).
    :param out_dim: width of the result (DDPM: 4 x base channels); defaults to ``4 * dim``.
    """

    def __init__(self, dim: int, out_dim: int | None = None, max_period: float = 10000.0):
        super().__init__()
        out_dim = 4 * dim if out_dim is None else out_dim
        self.dim = dim
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.dim, self.max_period)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class ClassEmbedding(nn.Module):
    """Class labels ``y[N] -> [N, dim]`` with ``num_classes + 1`` rows.

    Labels are ``0 .. num_classes - 1``; index ``num_classes`` (:attr:`null_index`) is the
    *null* class: the label of an unconditional sample, used for classifier-free guidance
    (labels dropped in training) and whenever the UNet is called with ``y=None``.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"ClassEmbedding: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)

    @property
    def null_index(self) -> int:
        return self.num_classes

    def forward(self, y: Tensor) -> Tensor:
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise ValueError(f"class labels y must be integers, got dtype {y.dtype}")
        if not _is_compiling() and y.numel() and bool(((y < 0) | (y > self.num_classes)).any()):
            bad = y[(y < 0) | (y > self.num_classes)][0].item()
            raise ValueError(
                f"class label {bad} out of range: expected 0..{self.num_classes - 1} "
                f"or {self.num_classes} (the null class)"
            )
        return self.embedding(y)


def _is_compiling() -> bool:
    """True inside ``torch.compile`` tracing (data-dependent checks are skipped there)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return False
