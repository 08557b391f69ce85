"""What a run is before its first step: the config resolved from the data, and the checks that
must pass before anything is allocated or written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from ..config import Config
from ..data import ImageData
from ..data.augment import AUGMENT_DIM
from ..device import check_memory
from ..errors import CheckpointError, ConfigError, DataError
from ..nn import UNet
from ..recipe import DataStats, apply_recipe, check_fit


def resolve_config(cfg: Config, data: ImageData,
                   log: Callable[[str], None] | None = None) -> Config:
    """Fill the model's data-dependent fields (channels, size, classes) from the data, then
    the keys of ``data.recipe`` by the recipe (:mod:`ddpmlab.recipe`: its one line goes to
    ``log``), then the augmentation-label input ``train.augment`` needs; a preset's attention
    levels that fit no level of this data's network are one line naming the key."""
    c, h, w = data.shape
    if h != w:
        raise DataError(f"{data.source}: images are {h}x{w}; ddpmlab trains on square images "
                        "(set data.image_size to resize and centre-crop)")
    num_classes = cfg.model.num_classes
    mode = cfg.data.conditional
    if mode == "true" or num_classes > 0 or (mode == "auto" and data.labels is not None):
        if data.labels is None:
            raise DataError(f"{data.source}: conditional training needs labels, and this data "
                            "set has none (use class subfolders or an .npz 'labels' array, or train "
                            "unconditionally: --unconditional / data.conditional=false)")
        if num_classes not in (0, data.num_classes):
            raise ConfigError(f"model.num_classes={num_classes} but {data.source} has "
                              f"{data.num_classes} classes")
        num_classes = data.num_classes
    model = replace(cfg.model, in_channels=c, image_size=h, num_classes=num_classes)
    data_cfg = replace(cfg.data, conditional="true" if num_classes > 0 else "false")
    out = replace(cfg, model=model, data=data_cfg)
    out, line = apply_recipe(out, DataStats(h, c, len(data), data.num_classes))
    if line and log is not None:
        log(line)
    out = _augment_input(out)
    check_fit(out, cfg.model.image_size)
    out.validate("resolved config")
    return out


def _augment_input(cfg: Config) -> Config:
    """``train.augment`` > 0 gives the network its augmentation-label input
    (``model.augment_dim`` = :data:`~ddpmlab.data.augment.AUGMENT_DIM`); a run that has it
    keeps it with the augmentation off (its labels are then zero). Another length is one line
    naming the key."""
    dim = cfg.model.augment_dim
    if dim not in (0, AUGMENT_DIM):
        raise ConfigError(f"model.augment_dim={dim} must be 0 (no augmentation labels) or "
                          f"{AUGMENT_DIM} (the labels of ddpmlab.data.augment); it is set by "
                          "train.augment")
    if cfg.train.augment > 0 and not dim:
        return replace(cfg, model=replace(cfg.model, augment_dim=AUGMENT_DIM))
    return cfg


def build_model(cfg: Config) -> UNet:
    return UNet(cfg.model)


def check_same_run(stored: Config, new: Config, path) -> None:
    """On resume, everything but the ``train`` and ``sample`` sections must match the run's."""
    a, b = stored.to_dict(), new.to_dict()
    for section in ("model", "diffusion", "data"):
        for key, value in a[section].items():
            if b[section][key] != value:
                raise CheckpointError(
                    f"{path}: {section}.{key}={value!r} in the run, but {b[section][key]!r} now; "
                    "a resumed run must keep its model, diffusion and data settings"
                )


def check_batch(cfg: Config, data: ImageData, world_size: int) -> None:
    """The global batch splits evenly over ranks and accumulation steps and fits the data."""
    tc = cfg.train
    if tc.batch_size % (world_size * tc.grad_accum):
        raise ConfigError(
            f"train.batch_size={tc.batch_size} must be divisible by world size "
            f"{world_size} x train.grad_accum={tc.grad_accum}")
    if len(data) < tc.batch_size:
        raise ConfigError(f"train.batch_size={tc.batch_size} is larger than the data set "
                          f"({len(data)} images in {data.source})")


def check_training_memory(cfg: Config, world_size: int, device: torch.device) -> None:
    """One line, before allocating, for a model or batch this machine cannot hold: the
    weights, their EMA copy, gradients and two Adam moments (the network is built on the
    meta device to count them), the schedule, and a lower estimate of the activations."""
    m, tc = cfg.model, cfg.train
    try:
        with torch.device("meta"):
            n_params = sum(p.numel() for p in build_model(cfg).parameters())
    except RuntimeError as e:  # e.g. "Storage size calculation overflowed"
        raise ConfigError(f"model.base_channels={m.base_channels}, model.num_classes="
                          f"{m.num_classes}: the network is too large to allocate "
                          f"({str(e)[:120]})") from None
    micro = tc.batch_size // (world_size * tc.grad_accum)
    act = (4.0 * micro * m.base_channels * m.image_size**2 * 4 * m.num_res_blocks
           * len(m.channel_mult))
    check_memory(20.0 * n_params + act + 160.0 * cfg.diffusion.timesteps,
                 f"training this model ({n_params:,} parameters, batch {micro} of "
                 f"{m.in_channels}x{m.image_size}x{m.image_size})", device)


def check_tensorboard(cfg: Config) -> None:
    """``train.tensorboard: true`` needs the tensorboard package: one line if it is missing."""
    if cfg.train.tensorboard:
        from .events import tensorboard_available

        if not tensorboard_available():
            raise ConfigError("train.tensorboard=true needs the tensorboard package: "
                              "pip install 'ddpmlab[tensorboard]' (or set it to false)")
