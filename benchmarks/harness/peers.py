"""The benchmark settings and the peers' networks matched to ddpmlab's in each.

* ``diffusers``: ``UNet2DModel`` written as ddpmlab's architecture (same levels, ResBlocks,
  attention, heads, GroupNorm groups), its width searched for the closest parameter count (for
  ``cifar``: the google/ddpm-cifar10-32 configuration, the same network parameter for parameter);
* ``lucidrains`` (denoising-diffusion-pytorch): ``Unet(dim, dim_mults)``, a different structure,
  its ``dim`` (and ``dim_mults``) searched for the closest parameter count.

The peers are imported only when a network is built, so that the scripts import without them.
"""

from __future__ import annotations

import math

import torch

LIBS = ("ddpmlab", "diffusers", "lucidrains")
SETTINGS = ("mnist", "cifar", "cifar_small")
TOL = 0.10  # parameter-count matching tolerance (lucidrains: ddpmlab's dim_mults if within it)


# --------------------------------------------------------------------------- ddpmlab
def ddpmlab_model(setting: str, quick: bool = False) -> dict:
    """ddpmlab's model section of a setting, as the JSON-ready dict of ``Config.to_dict``."""
    from ddpmlab.config import load_config

    d = load_config("mnist" if setting == "mnist" else "cifar10").to_dict()["model"]
    if setting != "mnist":
        if quick:  # harness check: tiny widths, same structure
            d["base_channels"] = {"cifar": 32, "cifar_small": 16}[setting]
        elif setting == "cifar_small":  # the DDPM CIFAR-10 architecture at a quarter width
            d["base_channels"] //= 4
    return d


def ddpmlab_config(model: dict):
    """A model dict (``ddpmlab_model``, a spec's ``model``) -> ``ddpmlab.config.ModelConfig``."""
    from ddpmlab.config import Config

    return Config.from_dict({"model": model}, source="benchmark model").model


def ddpmlab_net(model: dict):
    """ddpmlab's UNet of a model dict (on torch's default device: use ``torch.device("meta")``
    around it to count parameters without memory)."""
    from ddpmlab.nn import UNet

    return UNet(ddpmlab_config(model))


# --------------------------------------------------------------------------- peers
def run_size(image_size: int, levels: int) -> int:
    """Smallest size >= image_size that a peer UNet with ``levels`` levels accepts."""
    f = 2 ** (levels - 1)
    return math.ceil(image_size / f) * f


def diffusers_kwargs(net, width: int) -> dict:
    """UNet2DModel kwargs for ddpmlab's UNet ``net`` (its config and ``level_sizes``) at base
    width ``width``.

    Same levels, ResBlocks per level (diffusers' up path has layers_per_block + 1, as DDPM),
    attention where ddpmlab has it, the same head count, GroupNorm groups as ddpmlab's
    ``norm_groups`` gives them; the DDPM-style details follow google/ddpm-cifar10-32 (norm_eps
    1e-6, freq_shift 1, flip_sin_to_cos False, downsample_padding 0).
    """
    from ddpmlab.nn.unet import norm_groups

    cfg = net.config
    attn = [s in cfg.attention_resolutions for s in net.level_sizes]
    chans = [width * m for m in cfg.channel_mult]
    heads = cfg.num_heads
    attn_ch = [c for c, a in zip(chans, attn, strict=True) if a] or [chans[-1]]
    head_dim = None if heads == 1 else attn_ch[0] // heads
    return dict(
        sample_size=run_size(cfg.image_size, len(chans)), in_channels=cfg.in_channels,
        out_channels=cfg.in_channels, block_out_channels=chans,
        layers_per_block=cfg.num_res_blocks,
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        attention_head_dim=head_dim, norm_num_groups=norm_groups(width, cfg.norm_groups),
        norm_eps=1e-6, freq_shift=1, flip_sin_to_cos=False, downsample_padding=0,
        dropout=cfg.dropout, act_fn="silu", mid_block_scale_factor=1,
        time_embedding_type="positional",
    )


def lucidrains_kwargs(net, dim: int, mults) -> dict:
    """``Unet`` kwargs at ``dim``/``dim_mults`` for the data and dropout of ddpmlab's ``net``."""
    return dict(dim=dim, dim_mults=list(mults), channels=net.config.in_channels,
                dropout=net.config.dropout)


def build_peer_net(lib: str, kw: dict):
    """A peer's network from its (JSON) kwargs: ``diffusers`` or ``lucidrains``."""
    kw = dict(kw)
    if lib == "diffusers":
        from diffusers import UNet2DModel

        for k in ("block_out_channels", "down_block_types", "up_block_types"):
            kw[k] = tuple(kw[k])
        return UNet2DModel(**kw)
    from denoising_diffusion_pytorch import Unet

    kw["dim_mults"] = tuple(kw["dim_mults"])
    return Unet(**kw)


def peer_params(lib: str, kw: dict) -> int:
    """Parameter count of a peer network built on the meta device (no memory, no compute)."""
    from ddpmlab.nn import count_parameters

    with torch.device("meta"):
        return count_parameters(build_peer_net(lib, kw))


# --------------------------------------------------------------------------- the plan
def plan_setting(setting: str, libs, quick: bool = False) -> list[dict]:
    """The model of each library in ``setting``: kwargs, run size, parameter count, how chosen."""
    from ddpmlab.nn import count_parameters

    d = ddpmlab_model(setting, quick)
    with torch.device("meta"):
        net = ddpmlab_net(d)
    target = count_parameters(net)
    out = []
    if "ddpmlab" in libs:
        out.append(dict(lib="ddpmlab", model=d, size=d["image_size"], params=target,
                        how="ddpmlab config" + (" (width/4 for --quick)" if quick else "")))
    base = d["base_channels"]
    if "diffusers" in libs:
        if setting == "cifar":
            kw = diffusers_kwargs(net, base)
            how = "google/ddpm-cifar10-32 configuration (same architecture)"
        else:
            best = None
            for w in range(4, 4 * base + 1, 4):
                kw_w = diffusers_kwargs(net, w)
                rel = peer_params("diffusers", kw_w) / target - 1
                if best is None or abs(rel) < abs(best[1]):
                    best = (kw_w, rel)
                if rel > 0.5:  # counts grow with the width: nothing closer beyond
                    break
            kw = best[0]
            how = ("ddpmlab's architecture as UNet2DModel; block_out_channels searched "
                   "(multiples of 4) for the closest parameter count")
        out.append(dict(lib="diffusers", model=kw, size=kw["sample_size"],
                        params=peer_params("diffusers", kw), how=how))
    if "lucidrains" in libs:
        if setting == "cifar":
            kw = lucidrains_kwargs(net, base, (1, 2, 2, 2))
            how = "Unet(dim=128, dim_mults=(1,2,2,2)): the closest config to DDPM's CIFAR-10 model"
            if quick:
                how += " (width/4 for --quick)"
        else:
            own = tuple(d["channel_mult"])
            alts = [own] + [m for m in ((1, 2, 4), (1, 2, 2, 2), (1, 2, 4, 8)) if m != own]
            best_own, best_any = None, None
            for mults in alts:
                for dim in range(4, 4 * base + 1, 2):
                    kw_d = lucidrains_kwargs(net, dim, mults)
                    rel = peer_params("lucidrains", kw_d) / target - 1
                    if best_any is None or abs(rel) < abs(best_any[1]):
                        best_any = (kw_d, rel)
                    if mults == own and (best_own is None or abs(rel) < abs(best_own[1])):
                        best_own = (kw_d, rel)
                    if rel > 0.5:
                        break
            kw = best_own[0] if abs(best_own[1]) <= TOL else best_any[0]
            how = ("Unet(dim, dim_mults) searched (even dim, dim_mults "
                   f"{[list(m) for m in alts]}, ddpmlab's preferred) for the closest parameter "
                   "count; other arguments at lucidrains' defaults")
        out.append(dict(lib="lucidrains", model=kw, size=run_size(d["image_size"], len(kw["dim_mults"])),
                        params=peer_params("lucidrains", kw), how=how))
    for spec in out:
        spec["setting"] = setting
        spec["channels"] = d["in_channels"]
        spec["params_rel_to_ddpmlab"] = spec["params"] / target - 1
    return out
