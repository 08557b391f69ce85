"""The UNet noise predictor of Ho et al. 2020 (DDPM), built from a :class:`ModelConfig`.

The architecture follows the DDPM TF code (``diffusion_tf/models/unet.py``) as ported by
improved-diffusion:

- ``conv_in`` (3x3) to ``base_channels``;
- per level ``l`` (channels ``base * channel_mult[l]``): ``num_res_blocks`` ResBlocks, each
  followed by self-attention when the level's size is in ``attention_resolutions``; a stride-2
  3x3 conv between levels;
- the middle: ResBlock, attention, ResBlock;
- the up path, per level from the deepest: ``num_res_blocks + 1`` ResBlocks, each fed the
  concatenation with one saved down-path activation (and attention as on the way down); a
  nearest x2 upsample + 3x3 conv between levels;
- GroupNorm, SiLU, ``conv_out`` (3x3) to ``cfg.out_channels``: ``in_channels``, or twice as
  many for a model that also outputs its variance (``learn_sigma``; what the extra channels
  mean is the diffusion math's business, :func:`ddpmlab.reverse.split_output`).

ResBlock: ``GN -> SiLU -> conv3x3``, plus ``Linear(SiLU(temb))`` added per channel, then
``GN -> SiLU -> dropout -> conv3x3``; a 1x1 conv on the skip when the channel count changes.
Attention: ``GN -> qkv 1x1 -> scaled_dot_product_attention (num_heads heads) -> proj 1x1``,
residual. The time embedding is ``Linear(SiLU(Linear(sinusoid(t, base))))`` of width
``4 * base``; with ``num_classes > 0`` a class embedding (with a null class) is added to it,
and with ``augment_dim > 0`` a bias-free ``Linear(augment_dim, 4 * base)`` of the augmentation
labels (EDM's ``map_augment``; :mod:`ddpmlab.data.augment`): ``augment=None`` and all-zero
labels give the same network exactly, and every sampler passes none.

``conv_out``, each ResBlock's last conv and each attention ``proj`` start at zero
(improved-diffusion's practice), so a fresh net is exactly the zero function. The augmentation
map starts at zero too and is built last, so the other weights are initialised as without it.

**Sizes.** Any ``H x W`` works. With ``L = len(channel_mult)`` levels the input is zero-padded at
the bottom and right to the next multiple of ``2**(L-1)`` and the output is cropped back
(28x28 with 3 levels needs no padding: 28 -> 14 -> 7).

**Attention resolutions** name levels by size, computed from ``cfg.image_size`` without any
padding: level ``l`` has size ``ceil(image_size / 2**l)`` (what stride-2 convs would give the
unpadded image: 28, 14, 7 for MNIST; 32, 16, 8 for CIFAR; 30, 15, 8 for 30x30). A level gets
attention iff its size is listed; a listed size that matches no level is a ConfigError. The
choice is made once, at construction, from the config: an input of another size (sampling at a
larger resolution, say) runs the same layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError
from .embedding import ClassEmbedding, TimeEmbedding


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (each shared tensor counted once)."""
    return sum(p.numel() for p in module.parameters())


def norm_groups(channels: int, max_groups: int) -> int:
    """The largest divisor of ``channels`` that is ``<= max_groups``."""
    for g in range(min(channels, max_groups), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _norm(channels: int, max_groups: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels, max_groups), channels, eps=eps)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """DDPM residual block; ``forward(x, emb)`` takes the *activated* embedding ``SiLU(temb)``."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, groups: int,
                 eps: float = 1e-5):
        super().__init__()
        self.norm1 = _norm(in_ch, groups, eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_ch, out_ch)
        self.norm2 = _norm(out_ch, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions, residual."""

    def __init__(self, channels: int, num_heads: int, groups: int, eps: float = 1e-5):
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(channels, groups, eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        n, c, h, w = x.shape
        heads = self.num_heads
        # [N, 3C, H, W] -> [N, HW, 3, heads, d] -> [3, N, heads, HW, d]; a view when the tensor is
        # channels_last, one copy otherwise. d is the fastest dimension, as SDPA wants.
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(n, h * w, 3, heads, c // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)                     # [N, heads, HW, d]
        a = a.transpose(1, 2).reshape(n, h, w, c).permute(0, 3, 1, 2)   # [N, C, H, W] (NHWC mem)
        return x + self.proj(a)


class Downsample(nn.Module):
    """Stride-2 3x3 conv: ``H -> ceil(H / 2)``. ``pad="symmetric"`` pads 1 on every side;
    ``"right"`` pads 0 on the left/top and 1 on the right/bottom (TF's "SAME" for even sizes,
    as the DDPM paper's code and diffusers' ``downsample_padding=0`` do)."""

    def __init__(self, channels: int, pad: str = "symmetric"):
        super().__init__()
        self.right = pad == "right"
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.right else 1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        if self.right:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 upsample, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """One ResBlock, optional attention, optional upsample: one entry of the down or up path."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None, up: Upsample | None = None):
        super().__init__()
        self.res = res
        self.attn = attn
        self.up = up

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.up is not None:
            x = self.up(x)
        return x


class UNet(nn.Module):
    """DDPM UNet ``(x[N,C,H,W], t[N] int64, y[N] int64 | None) -> [N, cfg.out_channels, H, W]``.

    ``y`` is used only when ``cfg.num_classes > 0``: labels ``0..num_classes-1``, or
    ``num_classes`` (``self.null_class``) for the null class; ``y=None`` means the null class for
    the whole batch. See the module docstring for the padding and attention-resolution rules.
    """

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = ModelConfig() if cfg is None else cfg
        self.config = cfg
        base, groups, heads = cfg.base_channels, cfg.norm_groups, cfg.num_heads
        levels = len(cfg.channel_mult)
        emb_ch = 4 * base
        sizes = [math.ceil(cfg.image_size / 2**lvl) for lvl in range(levels)]
        unknown = sorted(set(cfg.attention_resolutions) - set(sizes))
        if unknown:
            raise ConfigError(
                f"model.attention_resolutions={list(cfg.attention_resolutions)}: {unknown} match "
                f"no level; with model.image_size={cfg.image_size} and {levels} levels the level "
                f"sizes are {sizes}"
            )
        level_ch = [base * m for m in cfg.channel_mult]
        for lvl, ch in enumerate(level_ch):
            attn_here = sizes[lvl] in cfg.attention_resolutions or lvl == levels - 1
            if attn_here and ch % heads:
                raise ConfigError(
                    f"model.num_heads={heads} does not divide the {ch} channels of the "
                    f"attention at level {lvl} (size {sizes[lvl]})"
                )
        self.level_sizes = tuple(sizes)
        self.pad_multiple = 2 ** (levels - 1)
        self.null_class = cfg.num_classes

        self.time_embed = TimeEmbedding(base, emb_ch)
        self.class_embed = ClassEmbedding(cfg.num_classes, emb_ch) if cfg.num_classes else None

        eps = cfg.norm_eps

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_ch, cfg.dropout, groups, eps)

        def attn(ch: int, lvl: int) -> AttentionBlock | None:
            return AttentionBlock(ch, heads, groups, eps) \
                if sizes[lvl] in cfg.attention_resolutions else None

        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        skip_ch = [base]
        ch = base
        for lvl, out in enumerate(level_ch):
            for _ in range(cfg.num_res_blocks):
                self.down.append(Stage(res(ch, out), attn(out, lvl)))
                ch = out
                skip_ch.append(ch)
            if lvl != levels - 1:
                self.down.append(Downsample(ch, cfg.downsample_pad))
                skip_ch.append(ch)

        self.mid = Stage(res(ch, ch), AttentionBlock(ch, heads, groups, eps))
        self.mid2 = res(ch, ch)

        self.up = nn.ModuleList()
        for lvl in reversed(range(levels)):
            out = level_ch[lvl]
            for i in range(cfg.num_res_blocks + 1):
                last = i == cfg.num_res_blocks and lvl != 0
                up = Upsample(out) if last else None
                self.up.append(Stage(res(ch + skip_ch.pop(), out), attn(out, lvl), up))
                ch = out

        self.norm_out = _norm(ch, groups, eps)
        self.conv_out = _zero(nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        # last, so that every other weight is drawn as in a network without it
        self.augment_embed = (_zero(nn.Linear(cfg.augment_dim, emb_ch, bias=False))
                              if cfg.augment_dim else None)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None,
                augment: Tensor | None = None) -> Tensor:
        """:param x: ``[N, C, H, W]`` noisy images; :param t: ``[N]`` timestep indices in
        ``[0, T)``; :param y: ``[N]`` class labels or None; :param augment: ``[N, augment_dim]``
        augmentation labels (training only) or None, which means zeros: no transform.
        :return: ``[N, out_channels, H, W]`` (``C``, or ``2C`` with ``learn_sigma``)."""
        self._check(x, t, y)
        self._check_augment(x, augment)
        n, _, height, width = x.shape
        pad_h, pad_w = -height % self.pad_multiple, -width % self.pad_multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))

        emb = self.time_embed(t)
        if self.class_embed is not None:
            if y is None:
                y = torch.full((n,), self.null_class, dtype=torch.long, device=x.device)
            emb = emb + self.class_embed(y)
        if augment is not None and self.augment_embed is not None:
            emb = emb + self.augment_embed(augment.to(self.augment_embed.weight.dtype))
        emb = F.silu(emb)  # every ResBlock starts its projection with SiLU: do it once

        h = self.conv_in(x)
        hs = [h]
        for stage in self.down:
            h = stage(h, emb)
            hs.append(h)
        h = self.mid2(self.mid(h, emb), emb)
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), emb)
        h = self.conv_out(F.silu(self.norm_out(h)))

        if pad_h or pad_w:
            h = h[:, :, :height, :width]
        return h

    def _check(self, x: Tensor, t: Tensor, y: Tensor | None) -> None:
        c = self.config.in_channels
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"UNet: x must have shape [N, {c}, H, W], got {list(x.shape)}")
        n = x.shape[0]
        if not isinstance(t, Tensor) or t.shape != (n,):
            got = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"UNet: t must have shape [N] = [{n}], got {got}")
        if y is None:
            return
        if self.class_embed is None:
            raise ValueError(
                "UNet: class labels y were given to an unconditional model "
                "(model.num_classes=0); pass y=None or build the model with num_classes > 0"
            )
        if not isinstance(y, Tensor) or y.shape != (n,):
            got = list(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"UNet: y must have shape [N] = [{n}], got {got}")

    def _check_augment(self, x: Tensor, augment: Tensor | None) -> None:
        if augment is None:
            return
        dim = self.config.augment_dim
        if not dim:
            raise ValueError("UNet: augmentation labels were given to a model without them "
                             "(model.augment_dim=0); pass augment=None")
        if not isinstance(augment, Tensor) or augment.shape != (x.shape[0], dim):
            got = list(augment.shape) if isinstance(augment, Tensor) else type(augment).__name__
            raise ValueError(f"UNet: augment must have shape [N, {dim}] = "
                             f"[{x.shape[0]}, {dim}], got {got}")
