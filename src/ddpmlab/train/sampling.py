"""Sampling from a trained run: load the run, draw images reproducibly, write PNG and .npz.

Sample k of a run depends only on (seed, k): each sample owns a generator seeded from both
(:func:`ddpmlab.samplers.per_sample_generators`), so the batch size, and the number of
processes sharing the work, change nothing.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import schedules
from ..config import Config
from ..errors import CheckpointError
from ..samplers import per_sample_generators, sample
from .checkpoint import atomic_write_bytes, latest_checkpoint, load_tensors


def load_run(run_dir: str | os.PathLike, use_ema: bool = True,
             device: torch.device | str = "cpu",
             checkpoint: str | os.PathLike | None = None) -> tuple[nn.Module, Config, Path]:
    """Rebuild a run's network from ``config.json`` and the weights of ``checkpoint`` (a
    ``step_*`` folder of the run; default: its newest checkpoint)."""
    from ..nn import UNet

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir}: not a ddpmlab run directory (no config.json)")
    cfg = Config.from_file(cfg_path)
    ckpt = latest_checkpoint(run_dir) if checkpoint is None else Path(checkpoint)
    if ckpt is None:
        raise CheckpointError(f"{run_dir}: holds no complete checkpoint (train it first)")
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: no such checkpoint folder")
    weights = ckpt / ("ema.safetensors" if use_ema else "model.safetensors")
    state = load_tensors(weights)
    model = UNet(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().split("\n")[0]
        raise CheckpointError(f"{weights}: weights do not match {cfg_path} ({first})") from None
    return model.to(device).eval(), cfg, ckpt


def default_labels(cfg: Config, n: int) -> torch.Tensor | None:
    """The classes a conditional run draws when none is asked for: sample k gets class
    ``k % num_classes`` (a balanced mix, fixed by the sample's number like its noise), drawn
    with the run's guidance. None for an unconditional run."""
    c = cfg.model.num_classes
    return torch.arange(n) % c if c > 0 else None


def class_rows(num_classes: int, per: int) -> torch.Tensor:
    """Labels for a grid with one row of ``per`` samples per class: 0,0,..,1,1,.."""
    return torch.arange(num_classes).repeat_interleave(per)


def sample_images(model: nn.Module, cfg: Config, n: int, seed: int = 0,
                  device: torch.device | str = "cpu", *, indices: list[int] | None = None,
                  sampler: str | None = None, steps: int | None = None,
                  eta: float | None = None, y: torch.Tensor | None = None,
                  guidance: float | None = None, batch_size: int | None = None,
                  progress: bool = False) -> torch.Tensor:
    """``n`` samples (floats in [-1, 1], ``[n, C, H, W]``, on the CPU) of a trained model.

    Defaults come from ``cfg.sample``; ``indices`` (default ``range(n)``) are the sample
    numbers, which fix each sample's noise together with ``seed``. ``y`` gives one label per
    sample for a conditional model (None: the null class, i.e. unconditional).
    """
    s = cfg.sample
    sampler = sampler or s.sampler
    steps = steps if steps is not None else (s.steps or None)
    eta = s.eta if eta is None else eta
    guidance = s.guidance if guidance is None else guidance
    batch_size = batch_size or s.batch_size
    indices = list(range(n)) if indices is None else list(indices)
    sched = schedules.get(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    m = cfg.model
    shape = (m.in_channels, m.image_size, m.image_size)
    null = m.num_classes if m.num_classes > 0 else None
    if y is not None and null is None:
        raise CheckpointError("this run's model is unconditional: it cannot sample a class")
    was_training = model.training
    model.eval()
    out = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), desc=f"sampling ({sampler})", unit="img")
    try:
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            gens = per_sample_generators(seed, idx, device=device)
            yb = None if y is None else y[start:start + len(idx)].to(device)
            x = sample(model, sched, (len(idx), *shape), sampler=sampler, steps=steps, eta=eta,
                       variance=s.variance, prediction=cfg.diffusion.prediction, y=yb,
                       guidance=guidance, generator=gens, clip_x0=s.clip_x0,
                       null_class=null, device=device)
            out.append(x.float().cpu())
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, *shape)


def sample_images_sharded(model: nn.Module, cfg: Config, n: int, seed: int = 0,
                          device: torch.device | str = "cpu", **kwargs) -> torch.Tensor | None:
    """:func:`sample_images` split over the ranks of a ``torchrun`` launch.

    Rank r draws samples r, r + W, r + 2W, ... (W = world size) with their own per-sample
    seeds; rank 0 gathers them back in order and returns all ``n`` (other ranks return None).
    The result equals one process drawing the same ``n`` with the same seed.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sample_images(model, cfg, n, seed, device, **kwargs)
    world, rank = dist.get_world_size(), dist.get_rank()
    mine = list(range(rank, n, world))
    y = kwargs.pop("y", None)
    part = sample_images(model, cfg, len(mine), seed, device, indices=mine,
                         y=None if y is None else y[mine], **kwargs)
    parts: list = [None] * world
    dist.all_gather_object(parts, (mine, part))  # in-memory tensors between our own processes
    if rank != 0:
        return None
    out = torch.empty(n, *part.shape[1:])
    for idx, images in parts:
        if idx:
            out[torch.tensor(idx)] = images
    return out


def save_npz(images: torch.Tensor, path: str | os.PathLike,
             labels: torch.Tensor | None = None) -> Path:
    """uint8 ``N x H x W x C`` images under ``arr_0`` (the layout FID tools read)."""
    from ..data import to_uint8

    arr = to_uint8(images).permute(0, 2, 3, 1).numpy()
    buf = io.BytesIO()
    extra = {} if labels is None else {"labels": labels.cpu().numpy().astype(np.int64)}
    np.savez(buf, arr_0=arr, **extra)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
