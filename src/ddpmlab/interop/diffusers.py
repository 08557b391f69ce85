"""diffusers' formats: import a ``UNet2DModel`` (+ ``DDPMScheduler``) folder as a ddpmlab run,
export a run as a ``DDPMPipeline`` folder. The only module that knows diffusers' names.

Nothing here imports diffusers: both directions read and write its JSON configs and
safetensors files directly, so import and export work without it (the tests load the results
with diffusers itself).

**What maps.** ddpmlab's UNet is the DDPM network, which diffusers expresses as a
``UNet2DModel`` with ``DownBlock2D``/``AttnDownBlock2D`` levels (and the mirrored up blocks),
``UNetMidBlock2D`` with attention, ``time_embedding_type="positional"``, ``flip_sin_to_cos=False``
and ``freq_shift=1`` (sin first, ``exp(-ln(10000) i / (half - 1))``), SiLU, conv up/down
sampling, ``resnet_time_scale_shift="default"``, one head size for every attention block, and
GroupNorm groups that divide every channel count. ``downsample_padding`` 1 is
``model.downsample_pad="symmetric"``, 0 is ``"right"``. A class embedding
(``num_class_embeds = k + 1``) is a conditional run with k classes whose null class is the last
row. Anything else stops with one line naming the diffusers key and value. A run trained with
non-leaking augmentation (``model.augment_dim``) exports with its augmentation labels fixed at
zero, as ddpmlab samples it: the label map then adds nothing, and is left out.

**Weights.** Every tensor is mapped by name, used exactly once, and checked for shape; an
attention's ``to_q``/``to_k``/``to_v`` (or the older ``query``/``key``/``value``) are the three
thirds of ddpmlab's ``qkv`` 1x1 conv, ``to_out.0`` (``proj_attn``) its ``proj``.
``diffusion_pytorch_model.safetensors`` is read by safetensors; a ``.bin`` only through
``torch.load(weights_only=True)``, which refuses to run code.

**Scheduler.** ``num_train_timesteps``, ``beta_schedule`` (``linear`` with ddpmlab's ends,
1e-4 and 0.02 scaled by 1000/T; ``squaredcos_cap_v2`` = cosine), ``prediction_type``
(``epsilon``/``sample``/``v_prediction``), ``variance_type`` (``fixed_small`` = posterior,
``fixed_large`` = beta) and ``clip_sample``. Export writes a sigmoid schedule as
``trained_betas``.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .. import schedules
from ..config import (
    MAX_TIMESTEPS,
    Config,
    DataConfig,
    DiffusionConfig,
    ModelConfig,
    SampleConfig,
)
from ..device import check_memory
from ..errors import CheckpointError, DDPMLabError
from ..io import atomic_write_bytes, atomic_write_text, load_tensors, read_json, tensors_to_bytes
from ..layout import RunDir
from ..nn import UNet
from ..nn.unet import norm_groups
from ..outputs import MARK, check_protected, check_target, commit, discard, recover, staging
from ..runs import load_run
from ..train.checkpoint import FORMAT_VERSION, optimizer_to_tensors, save_checkpoint
from ..train.optim import make_optimizer

WEIGHTS = "diffusion_pytorch_model"
DIFFUSERS_VERSION = "0.30.0"   # written into exported configs: the oldest we test against

# UNet2DModel keys that must hold these values (anything else is another architecture)
_FIXED = {"act_fn": "silu", "time_embedding_type": "positional", "flip_sin_to_cos": False,
          "freq_shift": 1, "center_input_sample": False, "mid_block_type": "UNetMidBlock2D",
          "mid_block_scale_factor": 1, "resnet_time_scale_shift": "default",
          "add_attention": True, "downsample_type": "conv", "upsample_type": "conv",
          "class_embed_type": None, "attn_norm_num_groups": None}
_KNOWN = set(_FIXED) | {"sample_size", "in_channels", "out_channels", "down_block_types",
                        "up_block_types", "block_out_channels", "layers_per_block",
                        "downsample_padding", "dropout", "attention_head_dim", "norm_num_groups",
                        "norm_eps", "num_class_embeds", "time_embedding_dim",
                        "num_train_timesteps"}
_PREDICTION = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_VARIANCE = {"fixed_small": "small", "fixed_small_log": "small", "fixed_large": "large",
             "fixed_large_log": "large"}


class InteropError(DDPMLabError, ValueError):
    """A diffusers folder or a run that the other side cannot express."""


# ============================================================================ names
def _resnet(ours: str, theirs: str, has_skip: bool) -> list[tuple[str, str, str]]:
    pairs = [("norm1", "norm1"), ("conv1", "conv1"), ("emb_proj", "time_emb_proj"),
             ("norm2", "norm2"), ("conv2", "conv2")] + ([("skip", "conv_shortcut")] * has_skip)
    return [(f"{ours}.{a}", f"{theirs}.{b}", "same") for a, b in pairs]


def _attention(ours: str, theirs: str) -> list[tuple[str, str, str]]:
    return [(f"{ours}.norm", f"{theirs}.group_norm", "same"), (f"{ours}.qkv", theirs, "qkv"),
            (f"{ours}.proj", f"{theirs}.to_out.0", "proj")]


def module_map(net: UNet) -> list[tuple[str, str, str]]:
    """(ddpmlab module, diffusers module, how) for every parametrised module of ``net``:
    ``same`` (weight and bias as they are), ``qkv`` (split into to_q/to_k/to_v), ``proj``."""
    cfg = net.config
    levels, nrb = len(cfg.channel_mult), cfg.num_res_blocks
    out: list[tuple[str, str, str]] = [("time_embed.mlp.0", "time_embedding.linear_1", "same"),
                                       ("time_embed.mlp.2", "time_embedding.linear_2", "same"),
                                       ("conv_in", "conv_in", "same")]
    if net.class_embed is not None:
        out.append(("class_embed.embedding", "class_embedding", "same"))
    k = 0
    for lvl in range(levels):
        for j in range(nrb):
            st = net.down[k]
            out += _resnet(f"down.{k}.res", f"down_blocks.{lvl}.resnets.{j}",
                           not isinstance(st.res.skip, torch.nn.Identity))
            if st.attn is not None:
                out += _attention(f"down.{k}.attn", f"down_blocks.{lvl}.attentions.{j}")
            k += 1
        if lvl != levels - 1:
            out.append((f"down.{k}.conv", f"down_blocks.{lvl}.downsamplers.0.conv", "same"))
            k += 1
    out += _resnet("mid.res", "mid_block.resnets.0", False)
    out += _attention("mid.attn", "mid_block.attentions.0")
    out += _resnet("mid2", "mid_block.resnets.1", False)
    k = 0
    for i in range(levels):
        for j in range(nrb + 1):
            st = net.up[k]
            out += _resnet(f"up.{k}.res", f"up_blocks.{i}.resnets.{j}",
                           not isinstance(st.res.skip, torch.nn.Identity))
            if st.attn is not None:
                out += _attention(f"up.{k}.attn", f"up_blocks.{i}.attentions.{j}")
            if st.up is not None:
                out.append((f"up.{k}.up.conv", f"up_blocks.{i}.upsamplers.0.conv", "same"))
            k += 1
    out += [("norm_out", "conv_norm_out", "same"), ("conv_out", "conv_out", "same")]
    return out


_OLD_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _params(state: dict, module: str) -> list[str]:
    return [p for p in ("weight", "bias") if f"{module}.{p}" in state]


def to_diffusers_state(state: dict[str, torch.Tensor], net: UNet) -> dict[str, torch.Tensor]:
    """ddpmlab UNet weights -> UNet2DModel weights (every tensor used exactly once)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for ours, theirs, how in module_map(net):
        for p in _params(state, ours):
            t = state[f"{ours}.{p}"]
            used.add(f"{ours}.{p}")
            if how == "qkv":
                for name, part in zip(("to_q", "to_k", "to_v"), t.chunk(3, dim=0), strict=True):
                    out[f"{theirs}.{name}.{p}"] = part.flatten(1) if p == "weight" else part
            else:  # "same", or "proj" (a 1x1 conv -> a Linear)
                out[f"{theirs}.{p}"] = t.flatten(1) if how == "proj" and p == "weight" else t
    # the augmentation-label map (model.augment_dim): every sampling call gives zero labels,
    # where it adds nothing, so the exported network is the same function without it
    unused = sorted(k for k in set(state) - used if not k.startswith("augment_embed."))
    if unused:
        raise InteropError(f"ddpmlab weight {unused[0]!r} has no diffusers counterpart")
    return {k: v.contiguous() for k, v in out.items()}


def from_diffusers_state(theirs: dict[str, torch.Tensor], net: UNet,
                         source: str) -> dict[str, torch.Tensor]:
    """UNet2DModel weights (new or old attention names) -> ddpmlab UNet weights; every tensor
    of ``theirs`` is used exactly once and every shape checked against ``net``."""
    want = net.state_dict()
    left = dict(theirs)

    def take(name: str) -> torch.Tensor:
        for cand in (name, *[name.replace(f".{new}.", f".{old}.") for new, old in
                             _OLD_ATTENTION.items() if f".{new}." in name]):
            if cand in left:
                return left.pop(cand)
        raise InteropError(f"{source}: no tensor {name!r} (the config promises one)")

    out: dict[str, torch.Tensor] = {}
    for ours, their, how in module_map(net):
        for p in _params(want, ours):
            if how == "same":
                t = take(f"{their}.{p}")
            elif how == "qkv":
                parts = [take(f"{their}.{n}.{p}") for n in ("to_q", "to_k", "to_v")]
                t = torch.cat(parts, 0)
            else:
                t = take(f"{their}.{p}")
            target = want[f"{ours}.{p}"]
            if t.numel() != target.numel() or (how == "same" and t.shape != target.shape):
                raise InteropError(f"{source}: tensor for {their}.{p} has shape "
                                   f"{tuple(t.shape)}, ddpmlab expects {tuple(target.shape)}")
            out[f"{ours}.{p}"] = t.reshape(target.shape).to(target.dtype).contiguous()
    if left:
        raise InteropError(f"{source}: tensor {sorted(left)[0]!r} is not used by the "
                           "architecture its config describes")
    return out


# ============================================================================ configs
def _bad(source: str, key: str, value: Any, why: str = "") -> InteropError:
    tail = f": {why}" if why else ""
    name = key if key.isprintable() and len(key) <= 60 else repr(key[:60])  # (one line)
    return InteropError(f"{source}: {name}={_show(value)} is not supported by ddpmlab's "
                        f"UNet{tail}")


def _show(value: Any) -> str:
    """A value for a message, cut to 80 characters (JSON when it can be)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


MAX_CHANNELS = 65536         # per level
MAX_LEVELS = 16              # block_out_channels entries
MAX_BLOCKS = 4096            # residual blocks in all (levels x (2 layers_per_block + 1))
MAX_CLASSES = 100_000        # num_class_embeds (as a .npz label set allows)
MAX_SAMPLE_SIZE = 16384


def _int(c: dict, source: str, key: str, default: int | None, lo: int, hi: int) -> int:
    """``c[key]`` (or ``default``) as an integer in ``lo..hi`` (a bool, a float or a string
    is refused: a number written as text is a config ddpmlab would misread)."""
    v = c.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(source, key, v, f"must be an integer in {lo}..{hi:,}")
    return v


def _float(c: dict, source: str, key: str, default: float, lo: float, hi: float) -> float:
    v = c.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise _bad(source, key, v, f"must be a number in [{lo:g}, {hi:g}]")
    return float(v)


def _choice(c: dict, source: str, key: str, default: str, choices: Any) -> str:
    v = c.get(key, default)
    if not isinstance(v, str) or v not in choices:
        raise _bad(source, key, v, f"one of {', '.join(choices)}")
    return v


def _list(c: dict, source: str, key: str, kind: type) -> list:
    v = c.get(key)
    if v is None:
        return []
    if not isinstance(v, list) or len(v) > MAX_LEVELS or any(
            isinstance(x, bool) or not isinstance(x, kind) for x in v):
        raise _bad(source, key, v, f"must be a list of at most {MAX_LEVELS} "
                   f"{'integers' if kind is int else 'names'}")
    return v


def _architecture(c: dict, source: str) -> tuple[list[int], list[bool]]:
    """The channels per level and which levels have attention."""
    chans = _list(c, source, "block_out_channels", int)
    downs = _list(c, source, "down_block_types", str)
    ups = _list(c, source, "up_block_types", str)
    if not chans or len(downs) != len(chans) or len(ups) != len(chans):
        raise _bad(source, "block_out_channels", chans, "needs one entry per down/up block")
    if any(not 1 <= ch <= MAX_CHANNELS for ch in chans):
        raise _bad(source, "block_out_channels", chans, f"each must be in 1..{MAX_CHANNELS:,}")
    if any(ch % chans[0] for ch in chans):
        raise _bad(source, "block_out_channels", chans, "each must be a multiple of the first")
    attn = []
    for key, blocks, names in (("down_block_types", downs, ("DownBlock2D", "AttnDownBlock2D")),
                               ("up_block_types", ups, ("UpBlock2D", "AttnUpBlock2D"))):
        for b in blocks:
            if b not in names:
                raise _bad(source, key, blocks, f"{b} is not one of {', '.join(names)}")
        flags = [b.startswith("Attn") for b in blocks]
        attn.append(flags if key == "down_block_types" else flags[::-1])
    if attn[0] != attn[1]:
        raise _bad(source, "up_block_types", ups, "attention must mirror down_block_types")
    return chans, attn[0]


def _sample_size(c: dict, source: str) -> int:
    size = c.get("sample_size")
    if isinstance(size, list):
        if len(size) != 2 or size[0] != size[1]:
            raise _bad(source, "sample_size", size, "ddpmlab's UNet is square")
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SAMPLE_SIZE:
        raise _bad(source, "sample_size", size, f"needs the image size (1..{MAX_SAMPLE_SIZE})")
    return size


def _heads(c: dict, source: str, attn_ch: list[int]) -> int:
    head_dim = c.get("attention_head_dim", 8)
    if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(head_dim, int)
                                 or head_dim < 1):
        raise _bad(source, "attention_head_dim", head_dim, "must be an integer >= 1 or null")
    heads = {1 if head_dim is None else ch // head_dim for ch in attn_ch}
    if len(heads) != 1 or 0 in heads or (head_dim is not None
                                         and any(ch % head_dim for ch in attn_ch)):
        raise _bad(source, "attention_head_dim", head_dim,
                   "ddpmlab uses one head count for every attention block")
    return heads.pop()


def model_config_from_diffusers(c: dict, source: str) -> ModelConfig:
    """A ``UNet2DModel`` config -> :class:`ModelConfig`, or an error naming the key at fault
    (every value type-checked and bounded: nothing is built from it here)."""
    if c.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise _bad(source, "_class_name", c["_class_name"], "only UNet2DModel maps onto it")
    for key in sorted(set(c) - _KNOWN):
        if not key.startswith("_") and c[key] not in (None, False):
            raise _bad(source, key, c[key], "an option ddpmlab does not know")
    for key, value in _FIXED.items():
        if key in c and (c[key] != value or isinstance(c[key], bool) != isinstance(value, bool)):
            raise _bad(source, key, c[key], f"ddpmlab's is {json.dumps(value)}")
    chans, attn = _architecture(c, source)
    base = chans[0]
    size = _sample_size(c, source)
    in_ch = _int(c, source, "in_channels", 3, 1, 4096)
    if _int(c, source, "out_channels", in_ch, 1, 4096) != in_ch:
        raise _bad(source, "out_channels", c.get("out_channels"), "must equal in_channels")
    if c.get("time_embedding_dim") is not None and c["time_embedding_dim"] != 4 * base:
        raise _bad(source, "time_embedding_dim", c["time_embedding_dim"], f"must be {4 * base}")
    nrb = _int(c, source, "layers_per_block", 2, 1, MAX_BLOCKS)
    if len(chans) * (2 * nrb + 1) > MAX_BLOCKS:
        raise _bad(source, "layers_per_block", nrb, f"{len(chans)} levels of {2 * nrb + 1} "
                   f"residual blocks exceed {MAX_BLOCKS:,}")
    sizes = [math.ceil(size / 2**lvl) for lvl in range(len(chans))]
    heads = _heads(c, source, [ch for ch, a in zip(chans, attn, strict=True) if a] + [chans[-1]])
    groups = _int(c, source, "norm_num_groups", 32, 1, MAX_CHANNELS)
    if any(norm_groups(ch, groups) != groups for ch in chans):
        raise _bad(source, "norm_num_groups", groups, "must divide every channel count")
    pad = _int(c, source, "downsample_padding", 1, 0, 1)
    classes = c.get("num_class_embeds")
    classes = 0 if classes is None else _int(c, source, "num_class_embeds", 0, 0, MAX_CLASSES)
    if classes == 1:
        raise _bad(source, "num_class_embeds", classes, "needs at least one class and the null")
    return ModelConfig(
        in_channels=in_ch, image_size=size, base_channels=base,
        channel_mult=tuple(ch // base for ch in chans), num_res_blocks=nrb,
        attention_resolutions=tuple(s for s, a in zip(sizes, attn, strict=True) if a),
        num_heads=heads, dropout=_float(c, source, "dropout", 0.0, 0.0, 0.999),
        norm_groups=groups, norm_eps=_float(c, source, "norm_eps", 1e-5, 1e-12, 0.5),
        num_classes=max(classes - 1, 0), downsample_pad="right" if pad == 0 else "symmetric")


def model_config_to_diffusers(m: ModelConfig, net: UNet) -> dict:
    """:class:`ModelConfig` -> a ``UNet2DModel`` config, or an error naming what diffusers
    cannot express."""
    if m.learn_sigma:
        raise InteropError("model.learn_sigma=true: exporting a learned-variance model (2C "
                           "output channels, diffusers' variance_type 'learned_range') is not "
                           "supported yet")
    levels = len(m.channel_mult)
    if m.image_size % 2 ** (levels - 1):
        raise InteropError(f"model.image_size={m.image_size} with {levels} levels: diffusers' "
                           f"UNet2DModel needs a multiple of {2 ** (levels - 1)} (ddpmlab pads)")
    chans = [m.base_channels * k for k in m.channel_mult]
    if any(norm_groups(ch, m.norm_groups) != m.norm_groups for ch in chans):
        raise InteropError(f"model.norm_groups={m.norm_groups} does not divide every channel "
                           f"count {chans}: diffusers uses one group count")
    attn = [s in m.attention_resolutions for s in net.level_sizes]
    attn_ch = {ch for ch, a in zip(chans, attn, strict=True) if a} | {chans[-1]}
    if m.num_heads > 1 and len({ch // m.num_heads for ch in attn_ch}) != 1:
        raise InteropError(f"model.num_heads={m.num_heads} over attention blocks of "
                           f"{sorted(attn_ch)} channels: diffusers has one head size")
    head_dim = None if m.num_heads == 1 else chans[-1] // m.num_heads
    out = {"_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
           "sample_size": m.image_size, "in_channels": m.in_channels,
           "out_channels": m.in_channels, "block_out_channels": chans,
           "layers_per_block": m.num_res_blocks,
           "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
           "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
           "attention_head_dim": head_dim, "norm_num_groups": m.norm_groups,
           "norm_eps": m.norm_eps, "dropout": m.dropout,
           "downsample_padding": 0 if m.downsample_pad == "right" else 1, **_FIXED}
    if m.num_classes:
        out["num_class_embeds"] = m.num_classes + 1
    return out


def diffusion_from_scheduler(s: dict, source: str) -> tuple[DiffusionConfig, SampleConfig]:
    """A ``DDPMScheduler``-style config -> (diffusion, sample) sections (every value
    type-checked; a number written as a string is refused)."""
    T = _int(s, source, "num_train_timesteps", 1000, 1, MAX_TIMESTEPS)
    if s.get("trained_betas") is not None:
        raise _bad(source, "trained_betas", "[...]", "ddpmlab builds its schedules by name")
    kind = _choice(s, source, "beta_schedule", "linear", ("linear", "squaredcos_cap_v2"))
    if kind == "linear":
        for key, want in (("beta_start", 1e-4 * 1000 / T), ("beta_end", 0.02 * 1000 / T)):
            got = _float(s, source, key, {"beta_start": 1e-4, "beta_end": 0.02}[key], 0.0, 1.0)
            if not math.isclose(got, want, rel_tol=1e-6):
                raise _bad(source, key, got, f"ddpmlab's linear schedule has {want:g} at T={T}")
        schedule = "linear"
    else:
        schedule = "cosine"
    pred = _choice(s, source, "prediction_type", "epsilon", _PREDICTION)
    var = s.get("variance_type", "fixed_small")
    if not isinstance(var, str) or var not in _VARIANCE:
        raise _bad(source, "variance_type", var, "a fixed variance (fixed_small/fixed_large)")
    clip = s.get("clip_sample", True)
    if not isinstance(clip, bool):
        raise _bad(source, "clip_sample", clip, "must be true or false")
    if clip and _float(s, source, "clip_sample_range", 1.0, 0.0, 1e6) != 1.0:
        raise _bad(source, "clip_sample_range", s["clip_sample_range"], "ddpmlab clips to 1")
    return (DiffusionConfig(timesteps=T, schedule=schedule, prediction=_PREDICTION[pred]),
            SampleConfig(sampler="ddpm", variance=_VARIANCE[var], clip_x0=clip))


def scheduler_config(cfg: Config) -> dict:
    d, T = cfg.diffusion, cfg.diffusion.timesteps
    out = {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
           "num_train_timesteps": T, "beta_start": 1e-4 * 1000 / T, "beta_end": 0.02 * 1000 / T,
           "beta_schedule": {"linear": "linear", "cosine": "squaredcos_cap_v2"}.get(
               d.schedule, "linear"),
           "trained_betas": None,
           "prediction_type": {v: k for k, v in _PREDICTION.items()}[d.prediction],
           "variance_type": "fixed_small" if cfg.sample.variance == "small" else "fixed_large",
           "clip_sample": cfg.sample.clip_x0, "clip_sample_range": 1.0}
    if d.schedule not in ("linear", "cosine"):  # any other schedule travels as its betas
        out["trained_betas"] = schedules.get(d.schedule, T).betas.tolist()
    return out


# ============================================================================ files
def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    st = folder / f"{WEIGHTS}.safetensors"
    if st.is_file():
        return load_tensors(st)
    binf = folder / f"{WEIGHTS}.bin"
    if not binf.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS}.safetensors (or .bin) weights file")
    try:   # torch's restricted unpickler: tensors and containers only, never code
        state = torch.load(binf, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a refused file
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"{binf}: refused by the weights-only loader ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{binf}: not a mapping of tensor names to tensors")
    return state


def _unet_folder(src: Path) -> tuple[Path, Path | None]:
    """(the UNet folder, the scheduler config or None) of a pipeline or a bare UNet folder. A
    scheduler config that is there but is not a regular file (a FIFO, a dangling link) is
    read, and refused, never replaced by the defaults."""
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such folder (give a diffusers pipeline or UNet folder)")
    if os.path.lexists(src / "unet" / "config.json"):
        sched = src / "scheduler" / "scheduler_config.json"
        return src / "unet", sched if os.path.lexists(sched) else None
    if os.path.lexists(src / "config.json"):
        return src, None
    raise CheckpointError(f"{src}: neither a pipeline folder (unet/config.json) nor a UNet "
                          "folder (config.json)")


MAX_CONFIG_BYTES = 1 << 20   # a diffusers config.json is a few KiB


def _read_config(path: Path) -> dict:
    """A diffusers JSON config: a regular file of at most 1 MiB, bounded JSON, an object."""
    doc = read_json(path, MAX_CONFIG_BYTES, InteropError)
    if not isinstance(doc, dict):
        raise InteropError(f"{path}: not a JSON object")
    return doc


def _check_size(model: ModelConfig, unet_dir: Path) -> None:
    """Before any network is built: the parameters the config describes (counted on torch's
    meta device, as ``train`` does) must fit the weights file and this machine's memory."""
    st = unet_dir / f"{WEIGHTS}.safetensors"
    size = st.stat().st_size if st.is_file() else None   # (a .bin is read by torch: no bound)
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in UNet(model).parameters())
    except (RuntimeError, ValueError) as e:
        raise InteropError(f"{unet_dir / 'config.json'}: describes a network that cannot be "
                           f"built ({' '.join(str(e).split())[:120]})") from None
    if size is not None and 2 * n > size:   # (at least 2 bytes a weight: fp16)
        raise InteropError(f"{unet_dir / 'config.json'}: block_out_channels, "
                           f"layers_per_block and num_class_embeds describe a network of {n:,} "
                           f"parameters, more than its weights file ({size:,} bytes) holds")
    check_memory(12.0 * n + (size or 0), f"importing this network ({n:,} parameters)")


def _read_import(src: Path, dataset: str) -> tuple[Config, dict[str, torch.Tensor]]:
    """The config and the ddpmlab weights of the diffusers folder ``src``, every check done
    (sizes before any network is built, every tensor finite)."""
    unet_dir, sched_path = _unet_folder(src)
    ucfg = _read_config(unet_dir / "config.json")
    model = model_config_from_diffusers(ucfg, str(unet_dir / "config.json"))
    if sched_path is not None:
        diffusion, samp = diffusion_from_scheduler(_read_config(sched_path), str(sched_path))
    else:  # a bare UNet: the DDPM paper's process
        diffusion, samp = DiffusionConfig(), SampleConfig(sampler="ddpm")
    data = DataConfig(dataset=dataset, conditional="true" if model.num_classes else "false")
    cfg = Config(model=model, diffusion=diffusion, data=data, sample=samp)
    cfg.validate(str(src))
    _check_size(model, unet_dir)
    net = UNet(model)
    state = from_diffusers_state(_read_weights(unet_dir), net, str(unet_dir))
    bad = next((k for k, v in state.items() if v.is_floating_point()
                and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"{unet_dir}: weight {bad!r} holds NaN or infinite values; "
                              "refusing to import it")
    net.load_state_dict(state)
    return cfg, state


def _write_imported(root: Path, cfg: Config, state: dict[str, torch.Tensor], src: Path) -> Path:
    """Write ``config.json`` and the checkpoint ``step_00000000`` of an imported run."""
    atomic_write_text(RunDir(root).config, cfg.to_json())
    net = UNet(cfg.model)
    opt_tensors, opt_meta = optimizer_to_tensors(make_optimizer(list(net.parameters()),
                                                                cfg.train))
    rng = {"train_generator": torch.Generator().manual_seed(cfg.train.seed + 17).get_state(),
           "torch_cpu": torch.Generator().manual_seed(cfg.train.seed).get_state()}
    return save_checkpoint(root, 0, {
        "model.safetensors": state, "ema.safetensors": state,
        "optimizer.safetensors": opt_tensors, "optimizer.json": opt_meta,
        "rng.safetensors": rng,
        "state.json": {"format_version": FORMAT_VERSION, "step": 0, "skipped_steps": 0,
                       "world_size": 1, "time": time.time(), "imported_from": str(src)},
    }, keep_last=cfg.train.keep_last)


def import_diffusers(src: str | os.PathLike, out: str | os.PathLike, *, dataset: str = "",
                     force: bool = False) -> Path:
    """Write the diffusers folder ``src`` as a ddpmlab run in ``out`` (config.json and one
    checkpoint, ``step_00000000``, whose model and EMA weights are the imported ones, with a
    fresh optimizer state so that ``train --resume`` fine-tunes it). Returns the checkpoint.

    A new run is written aside (``.tmp-NAME.PID/``) and renamed into place when complete, so a
    killed import leaves nothing in ``out`` (the next import removes the leftover). ``force``
    replaces a run already in ``out`` as ``train --force`` does (its own entries moved aside,
    deleted once the new checkpoint exists); never ``src`` or a parent of it, HOME, the current
    folder, or a folder that holds anything but a run."""
    src = Path(src)
    cfg, state = _read_import(src, dataset)
    if os.fspath(out) != "":
        for note in recover(out, "import"):
            warnings.warn(note, stacklevel=2)
    out = check_protected(out, "a run", inputs=[src])
    run = RunDir(out)
    if run.is_run() or any(out.glob(".replaced-*")):
        return _replace_run(run, cfg, state, src, force)
    if out.is_dir() and any(p.name not in (".ddpmlab.lock", ".ddpmlab.lock.json")
                            for p in out.iterdir()):
        raise CheckpointError(f"{out}: is not empty and holds no ddpmlab run; refusing to "
                              "write into it (choose a new or empty --out)")
    tmp = staging(out, "import")
    try:
        ckpt = _write_imported(tmp, cfg, state, src)
        commit(tmp, out, "import")
        (out / MARK).unlink(missing_ok=True)   # a run, no longer an output in the making
    finally:
        discard(tmp, "import")
    return out / ckpt.relative_to(tmp)


def _replace_run(run: RunDir, cfg: Config, state: dict[str, torch.Tensor], src: Path,
                 force: bool) -> Path:
    """``import --force`` onto a run: under the run's lock, its entries moved aside and
    deleted only once the imported checkpoint is complete (put back on any failure)."""
    run.check_new(force)
    lock = run.lock("import")
    try:
        run.recover_aside()
        run.check_new(force)
        aside = run.create(cfg.to_json(), force)
        try:
            ckpt = _write_imported(run.root, cfg, state, src)
        except BaseException:
            if aside is not None:
                run.put_back(aside)
            raise
        if aside is not None and (msg := run.drop_aside(aside)):
            warnings.warn(msg, stacklevel=2)
        return ckpt
    finally:
        lock.release()


_README = """# {name}: a ddpmlab run in diffusers' format

Exported by `ddpmlab export` from `{run}` ({which} weights of `{ckpt}`).

```python
from diffusers import DDPMPipeline, UNet2DModel
pipe = DDPMPipeline.from_pretrained("{name}")
```
{conditional}
"""

_CONDITIONAL = """
This model is class-conditional: `num_class_embeds` = {k} + 1, labels 0..{last} are the
classes and label {k} is the *null* class (the unconditional model it was trained to be too).
`DDPMPipeline` passes no labels, so sample it with your own loop: call
`unet(x, t, class_labels=y)` and, for classifier-free guidance with weight w, use
`eps_null + w * (eps_y - eps_null)` with `eps_null = unet(x, t, class_labels=torch.full_like(y, {k}))`.
"""


def export_diffusers(run_dir: str | os.PathLike, out: str | os.PathLike, *, use_ema: bool = True,
                     force: bool = False) -> Path:
    """Write a run as a ``DDPMPipeline`` folder (``unet/``, ``scheduler/``,
    ``model_index.json``, a README); everything is checked before anything is written."""
    model, cfg, ckpt = load_run(run_dir, use_ema=use_ema)
    if cfg.diffusion.objective != "ddpm":
        raise InteropError(f"diffusion.objective={cfg.diffusion.objective}: diffusers' "
                           "DDPMPipeline holds a DDPM model only; exporting an edm or flow run "
                           "is not supported")
    ucfg = model_config_to_diffusers(cfg.model, model)
    weights = to_diffusers_state(model.state_dict(), model)
    out = check_target(out, "export", replace=force, inputs=[run_dir], is_run=_is_run,
                       busy="{out}: exists and is not empty; refusing to write into it (use "
                       "--force, or another --out)", legacy=_legacy_export)
    tmp = staging(out, "export")
    try:
        _write_export(tmp, out.name, ucfg, weights, cfg, run_dir, use_ema, ckpt)
        if msg := commit(tmp, out, "export", _legacy_export):
            warnings.warn(msg, stacklevel=2)
    finally:
        discard(tmp, "export")
    return out


def _is_run(folder: Path) -> bool:
    run = RunDir(folder)
    return run.is_run() or run.checkpoints.is_dir()


def _write_export(folder: Path, name: str, ucfg: dict, weights: dict[str, torch.Tensor],
                  cfg: Config, run_dir: str | os.PathLike, use_ema: bool, ckpt: Path) -> None:
    """The files of a ``DDPMPipeline`` folder, written into ``folder``."""
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler").mkdir(exist_ok=True)
    atomic_write_text(folder / "unet" / "config.json", json.dumps(ucfg, indent=2) + "\n")
    atomic_write_bytes(folder / "unet" / f"{WEIGHTS}.safetensors",
                       tensors_to_bytes(weights, {"format": "pt"}))
    atomic_write_text(folder / "scheduler" / "scheduler_config.json",
                      json.dumps(scheduler_config(cfg), indent=2) + "\n")
    atomic_write_text(folder / "model_index.json", json.dumps({
        "_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]},
        indent=2) + "\n")
    k = cfg.model.num_classes
    atomic_write_text(folder / "README.md", _README.format(
        name=name, run=run_dir, which="EMA" if use_ema else "raw", ckpt=ckpt.name,
        conditional=_CONDITIONAL.format(k=k, last=k - 1) if k else ""))


_EXPORT_FILES = {"unet/config.json", f"unet/{WEIGHTS}.safetensors",
                 "scheduler/scheduler_config.json", "model_index.json", "README.md"}


def _legacy_export(folder: Path) -> bool:
    """An export written before output folders carried ddpmlab's mark: exactly the files
    :func:`export_diffusers` writes, its README saying so."""
    try:
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
                 if not p.is_dir() or p.is_symlink()}
        dirs = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
                if p.is_dir() and not p.is_symlink()}
        readme = (folder / "README.md").read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return False
    return (files == _EXPORT_FILES and dirs == {"unet", "scheduler"}
            and "Exported by `ddpmlab export`" in readme)
