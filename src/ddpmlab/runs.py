"""The run layer: one trained run directory, and everything done with it.

It composes the siblings that know nothing of each other: the trainer (:mod:`ddpmlab.train`),
the metrics (:mod:`ddpmlab.evaluate`) and the pictures (:mod:`ddpmlab.viz`), over the layout
of :mod:`ddpmlab.layout`:

* :func:`load_run` rebuilds a run's network from ``config.json`` and a checkpoint;
* :func:`sample_images` draws images reproducibly (:func:`sample_images_sharded` under
  ``torchrun``), :func:`save_npz` writes them as FID tools read them;
* :func:`train_run` builds the Trainer with its sample-grid hook, :func:`sample_grid` draws the
  end-of-training grid (one row per class for a conditional run);
* :func:`score_run` is ``ddpmlab eval``, :func:`run_figures` is ``ddpmlab figures``.

Sample k of a run depends only on (seed, k): each sample owns a generator seeded from both
(:func:`ddpmlab.samplers.per_sample_generators`), so the batch size, and the number of
processes sharing the work, change nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import schedules
from .config import OWN_GUIDE, Config
from .data import BUILTINS, load_dataset, to_model_range, to_uint8
from .data.npz import load_samples_npz
from .device import (
    ThreadGovernor,
    autocast_call,
    check_memory,
    inference_precision,
    resolve_precision,
)
from .errors import CheckpointError, ConfigError, DataError
from .evaluate import SmallSampleWarning, evaluate_samples, memorization
from .features import get_feature_extractor
from .io import (
    SOFTWARE,
    atomic_write_bytes,
    atomic_write_text,
    check_replaceable,
    load_tensors,
    write_problem,
)
from .layout import RunDir, step_name
from .likelihood import BitsPerDim, bits_per_dim
from .likelihood_ode import NLLS, ode_bits_per_dim
from .nn import UNet
from .objectives import build as build_objective
from .recipe import AUGMENT_P
from .samplers import SAMPLERS, images_per_evaluation, per_sample_generators, sample
from .train import Trainer
from .train.checkpoint import latest_checkpoint
from .train.events import Listener
from .viz import (
    class_rows_grid,
    denoising_chain,
    loss_plot,
    noising_strip,
    save_grid,
    save_memorization_figure,
    schedule_plot,
    sweep_plot,
    vlb_plot,
)


# ============================================================================ loading, sampling
def load_run(run_dir: str | os.PathLike, use_ema: bool = True,
             device: torch.device | str = "cpu",
             checkpoint: str | os.PathLike | None = None) -> tuple[nn.Module, Config, Path]:
    """Rebuild a run's network from ``config.json`` and the weights of ``checkpoint`` (a
    ``step_*`` folder of the run; default: its newest checkpoint)."""
    run = RunDir(run_dir)
    run_dir = run.root
    for note in run.recover():  # (a --force killed before its first checkpoint)
        warnings.warn(note, stacklevel=2)
    cfg = resolve_own_guide(run.read_config(), run_dir)
    cfg_path = run.config
    ckpt = latest_checkpoint(run_dir) if checkpoint is None else Path(checkpoint)
    if ckpt is None:
        raise CheckpointError(f"{run_dir}: holds no complete checkpoint (train it first)")
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: no such checkpoint folder")
    weights = ckpt / ("ema.safetensors" if use_ema else "model.safetensors")
    state = load_tensors(weights)
    bad = next((k for k, v in state.items() if v.is_floating_point()
                and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"{weights}: tensor {bad!r} holds NaN or infinite values (a "
                              "diverged or damaged checkpoint); refusing to sample from it")
    model = UNet(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().split("\n")[0]
        raise CheckpointError(f"{weights}: weights do not match {cfg_path} ({first})") from None
    return model.to(device).eval(), cfg, ckpt


def resolve_own_guide(cfg: Config, run_dir: str | os.PathLike,
                      guide: str | os.PathLike | None = None) -> Config:
    """``cfg`` (with ``sample.guide`` set to ``guide`` when one is given) whose ``"@F"`` guide
    (:meth:`~ddpmlab.config.Config.own_guide_step`) is replaced by the run's checkpoint
    folder at that step when it is on disk; otherwise ``cfg`` as it is (sampling then refuses
    the guide in one line unless its weight is 1)."""
    if guide is not None:
        cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample,
                                                                  guide=os.fspath(guide)))
    step = cfg.own_guide_step()
    if step is None:
        return cfg
    path = RunDir(run_dir).checkpoints / step_name(step)
    if not path.is_dir():
        return cfg
    return dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, guide=str(path)))


def without_guide(cfg: Config) -> Config:
    """``cfg`` without autoguidance (guide "", weight 1)."""
    return dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, guide="",
                                                               guide_weight=1.0))


def without_own_guide(cfg: Config) -> Config:
    """``cfg`` without its ``"@F"`` autoguidance (:func:`without_guide`): the drawings made
    while training (the grids every ``train.sample_every``, the copy watch) use none, so they
    compare across steps, before and after the guide's step alike."""
    return cfg if cfg.sample.own_guide() is None else without_guide(cfg)


def run_schedule(cfg: Config) -> schedules.Schedule:
    """The schedule a run's samplers, forward process and figures use: ``diffusion.schedule``
    for the ddpm objective, the objective's noise-level grid for edm and flow
    (:meth:`ddpmlab.objectives.Objective.schedule`)."""
    return build_objective(cfg.diffusion, cfg.model.learn_sigma).schedule()


def sampler_view(model: nn.Module, cfg: Config,
                 sched: schedules.Schedule) -> tuple[Any, str]:
    """(model, prediction) as the samplers take them: the network itself and
    ``diffusion.prediction`` for ddpm; for edm and flow the network wrapped into an x0
    predictor at the grid's noise levels (:meth:`ddpmlab.objectives.Objective.sampler_model`)."""
    objective = build_objective(cfg.diffusion, cfg.model.learn_sigma)
    return objective.sampler_model(model, sched), objective.sampler_prediction


def sampling_view(model: nn.Module, cfg: Config, sched: schedules.Schedule,
                  device: torch.device | str = "cpu",
                  precision: str | None = None) -> tuple[Any, str]:
    """:func:`sampler_view` with the network run in the precision sampling uses on ``device``
    (``precision``, default the run's ``train.precision``, resolved as training resolves it):
    what every drawing of samples (``sample_images``, the figures' and the report's chains)
    calls, so that all of them draw the same images. Likelihoods keep :func:`sampler_view`'s
    fp32."""
    net, prediction = sampler_view(model, cfg, sched)
    dev = torch.device(device)
    chosen = resolve_precision(inference_precision(precision or cfg.train.precision, dev), dev)
    return autocast_call(net, chosen, dev), prediction


def default_labels(cfg: Config, n: int) -> torch.Tensor | None:
    """The classes a conditional run draws when none is asked for: sample k gets class
    ``k % num_classes`` (a balanced mix, fixed by the sample's number like its noise), drawn
    with the run's guidance. None for an unconditional run."""
    c = cfg.model.num_classes
    return torch.arange(n) % c if c > 0 else None


def class_rows(num_classes: int, per: int) -> torch.Tensor:
    """Labels for a grid with one row of ``per`` samples per class: 0,0,..,1,1,.."""
    return torch.arange(num_classes).repeat_interleave(per)


def check_sample_memory(cfg: Config, n: int, batch_size: int | None = None) -> None:
    """One line, before anything is allocated, for a sample count this machine cannot hold:
    the result (float32 and uint8), the labels, and one batch's working set."""
    m = cfg.model
    shape = (m.in_channels, m.image_size, m.image_size)
    batch = min(n, batch_size or cfg.sample.batch_size)
    check_memory(5.0 * math.prod(shape) * n + 8.0 * n + 48.0 * math.prod(shape) * batch,
                 f"{n:,} samples of {'x'.join(map(str, shape))}")


@dataclass(frozen=True)
class SamplingCall:
    """One run's call of :func:`ddpmlab.samplers.sample`: everything but the batch (its shape,
    labels, noise and callback), read from the run's config by :func:`sampling_call`.

    ``model`` is the sampler's view of the network (:func:`sampling_view`: an x0 predictor on
    the objective's grid for edm and flow, run in the sampling precision) and ``prediction``
    what it returns; ``options`` are the sampler options (``sample.churn``, ...); ``guide``
    the autoguidance network in the same view (None: none), ``guide_weight`` its weight and
    ``guidance_interval`` (sigma_lo, sigma_hi) where guidance applies (None: every level)."""

    model: Any
    schedule: schedules.Schedule
    sampler: str
    steps: int | None
    eta: float | None
    spacing: str | None
    variance: str
    prediction: str
    guidance: float
    clip_x0: bool
    null_class: int | None
    learn_sigma: bool
    device: torch.device | str
    options: dict[str, Any] = field(default_factory=dict)
    guide: Any = None
    guide_weight: float = 1.0
    guidance_interval: tuple[float, float] | None = None

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`ddpmlab.samplers.sample` (and of
        :func:`ddpmlab.viz.denoising_chain`) this call stands for."""
        return {"model": self.model, "schedule": self.schedule, "sampler": self.sampler,
                "steps": self.steps, "eta": self.eta, "variance": self.variance,
                "prediction": self.prediction, "guidance": self.guidance,
                "clip_x0": self.clip_x0, "null_class": self.null_class,
                "device": self.device, "spacing": self.spacing,
                "options": dict(self.options), "learn_sigma": self.learn_sigma,
                "guide": self.guide, "guide_weight": self.guide_weight,
                "guidance_interval": self.guidance_interval}

    def run(self, shape: Sequence[int], *, y: torch.Tensor | None = None,
            generator: Any = None, callback: Callable[[dict[str, Any]], None] | None = None,
            x_T: torch.Tensor | None = None) -> torch.Tensor:
        """``sample(shape=shape, y=y, generator=generator, callback=callback, x_T=x_T, ...)``
        with this call's arguments (``y`` is moved to the call's device)."""
        return sample(shape=tuple(shape), y=None if y is None else y.to(self.device),
                      generator=generator, callback=callback, x_T=x_T, **self.kwargs())

    def with_model(self, model: Any) -> SamplingCall:
        """The same call with another model (a thread-governed or counting wrapper)."""
        return dataclasses.replace(self, model=model)

    def edit_kwargs(self, **over: Any) -> dict[str, Any]:
        """The keyword arguments an editing operation of :mod:`ddpmlab.edit` takes after
        ``(model, schedule, images)``: :meth:`kwargs` without those two and the device (the
        images' device is the call's), with ``over`` laid on top (``y=``, ``guidance=``)."""
        kw = {k: v for k, v in self.kwargs().items() if k not in ("model", "schedule", "device")}
        return {**kw, **over}

    @property
    def nfe(self) -> int:
        """Network evaluations per image of one call (guidance's two halves count once: they
        run as one batch of twice the images)."""
        return SAMPLERS[self.sampler].info.nfe(self.steps or self.schedule.T)

    def images_per_evaluation(self, labelled: bool) -> int:
        """Images the networks see per sample and evaluation at a guided level
        (:func:`~ddpmlab.samplers.guidance.images_per_evaluation`; ``labelled``: called with
        labels)."""
        return images_per_evaluation(labelled, self.guidance, self.guide is not None,
                                     self.guide_weight)


def sampling_call(model: nn.Module, cfg: Config, device: torch.device | str = "cpu", *,
                  sampler: str | None = None, steps: int | None = None,
                  eta: float | None = None, spacing: str | None = None,
                  guidance: float | None = None, options: dict[str, Any] | None = None,
                  precision: str | None = None, guide: Any = None,
                  guide_weight: float | None = None,
                  guidance_interval: Sequence[float] | None = None) -> SamplingCall:
    """The one owner of "a run's sampling call": ``cfg.sample`` (sampler, steps, eta, spacing,
    variance, clip, guidance and the sampler options of
    :meth:`~ddpmlab.config.SampleConfig.sampler_options`, autoguidance and the guidance
    interval), the run's schedule through its objective, its prediction and learned variance,
    and the network in the sampling ``precision`` (:func:`sampling_view`). Every drawing of a
    run (``sample_images``, the figures' and the report's chains) goes through it, so a new
    sampler option flows from the config and the command line to every caller.

    Each override left None keeps the run's value; ``steps`` must be 1..T (the run's 0 means
    all T); ``spacing="auto"`` is the sampler's own; ``options`` (keys of ``sample``: churn,
    s_tmin, s_tmax, s_noise) are laid over the run's values and checked as the config's are.
    ``guide`` (``sample.guide``) is a run directory or checkpoint folder (:func:`load_guide`)
    or an ``nn.Module`` of this run's config; ``guidance_interval`` () means every level."""
    s = cfg.sample
    T = cfg.diffusion.timesteps
    steps = steps if steps is not None else (s.steps or None)
    if steps is not None and not 1 <= steps <= T:
        raise ConfigError(f"steps={steps}: the run has diffusion.timesteps={T}; give 1..{T}")
    if options:
        known = s.sampler_options()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"unknown sampler option(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(known)}")
        s = dataclasses.replace(s, **options)
    s.check_options("sampling options")
    spacing = spacing or s.spacing
    sched = run_schedule(cfg)
    net, prediction = sampling_view(model, cfg, sched, device, precision)
    guiding = _guidance(cfg, s, sched, device, precision, guide, guide_weight, guidance_interval)
    return SamplingCall(
        model=net, schedule=sched, sampler=sampler or s.sampler, steps=steps,
        eta=s.eta if eta is None else eta, spacing=None if spacing == "auto" else spacing,
        variance=s.variance, prediction=prediction,
        guidance=s.guidance if guidance is None else guidance, clip_x0=s.clip_x0,
        null_class=cfg.model.null_class, learn_sigma=cfg.model.learn_sigma, device=device,
        options=s.sampler_options(), **guiding)


def _guidance(cfg: Config, s: Any, sched: schedules.Schedule, device: torch.device | str,
              precision: str | None, guide: Any, weight: float | None,
              interval: Sequence[float] | None) -> dict[str, Any]:
    """The autoguidance and interval fields of :func:`sampling_call`: the overrides laid over
    ``s`` (``cfg.sample``) and checked as the config's are; the guide loaded
    (:func:`load_guide`) and seen as the samplers see the run's network, in its precision."""
    over: dict[str, Any] = {}
    if weight is not None:
        over["guide_weight"] = weight
    if interval is not None:
        over["guidance_interval"] = tuple(float(v) for v in interval)
    if guide is not None and not isinstance(guide, nn.Module):
        over["guide"] = os.fspath(guide)
    s = dataclasses.replace(s, **over)
    s.check_guidance("sampling options", guided=True if isinstance(guide, nn.Module) else None)
    if s.own_guide() is not None and not isinstance(guide, nn.Module):  # "@F", not on disk
        if s.guide_weight != 1.0:
            step = dataclasses.replace(cfg, sample=s).own_guide_step()
            missing = (f"sample.guide={s.guide}: the run has no checkpoint at step {step} "
                       f"({s.own_guide():.0%} of its {cfg.train.max_steps} steps)")
            if guide is not None:               # asked for here (--guide @F): refused
                raise ConfigError(f"{missing}: the trainer keeps it only for a run trained "
                                  "with that sample.guide that got so far; give --guide "
                                  "RUN|CHECKPOINT, or --guide-weight 1")
            warnings.warn(f"{missing}, the run stopped before it: sampling without "  # (the
                          "autoguidance", stacklevel=2)                  # run's own config)
        s = dataclasses.replace(s, guide="", guide_weight=1.0)
    net = None
    if isinstance(guide, nn.Module) or s.guide:
        module, gcfg = (guide, cfg) if isinstance(guide, nn.Module) else \
            load_guide(s.guide, cfg, device)
        net, _ = sampling_view(module, gcfg, sched, device, precision or cfg.train.precision)
    return {"guide": net, "guide_weight": s.guide_weight,
            "guidance_interval": tuple(s.guidance_interval) or None}


def load_guide(guide: str | os.PathLike, cfg: Config,
               device: torch.device | str = "cpu") -> tuple[nn.Module, Config]:
    """The autoguidance network ``guide`` names (``sample.guide``, ``--guide``): a run
    directory (its newest checkpoint) or one of its ``checkpoints/step_*`` folders, with its
    EMA weights, loaded as :func:`load_run` loads a run; refused in one line (ConfigError)
    unless it models the same task as ``cfg``'s run: the same image shape, classes, objective,
    schedule, prediction and learned variance (so its view predicts the same quantity on the
    same noise levels)."""
    path = Path(guide)
    owner = RunDir(path.parent.parent)
    if not RunDir(path).is_run() and owner.is_run() and path.parent == owner.checkpoints:
        model, gcfg, _ = load_run(owner.root, use_ema=True, device=device, checkpoint=path)
    elif RunDir(path).is_run():
        model, gcfg, _ = load_run(path, use_ema=True, device=device)
    else:
        raise ConfigError(f"guide {path}: neither a run directory nor one of its "
                          "checkpoint folders")
    m, g = cfg.model, gcfg.model
    mine, theirs = (build_objective(c.diffusion, c.model.learn_sigma) for c in (cfg, gcfg))
    checks = (("image shape", (m.in_channels, m.image_size), (g.in_channels, g.image_size)),
              ("classes (model.num_classes)", m.num_classes, g.num_classes),
              ("diffusion.objective", cfg.diffusion.objective, gcfg.diffusion.objective),
              ("diffusion.timesteps", cfg.diffusion.timesteps, gcfg.diffusion.timesteps),
              ("prediction", mine.sampler_prediction, theirs.sampler_prediction),
              ("model.learn_sigma", m.learn_sigma, g.learn_sigma))
    for what, want, got in checks:
        if want != got:
            raise ConfigError(f"guide {path}: its {what} is {got}, the run's {want}; a guide "
                              "must model the same task (a smaller or shorter-trained run)")
    if not torch.equal(mine.schedule().alpha_bar, theirs.schedule().alpha_bar):
        raise ConfigError(f"guide {path}: its noise schedule differs from the run's (diffusion."
                          f"schedule {gcfg.diffusion.schedule} against {cfg.diffusion.schedule})")
    return model, gcfg


def sample_images(model: nn.Module, cfg: Config, n: int, seed: int = 0,
                  device: torch.device | str = "cpu", *, indices: list[int] | None = None,
                  sampler: str | None = None, steps: int | None = None,
                  eta: float | None = None, y: torch.Tensor | None = None,
                  guidance: float | None = None, batch_size: int | None = None,
                  spacing: str | None = None, progress: bool = False,
                  precision: str | None = None,
                  options: dict[str, Any] | None = None, guide: Any = None,
                  guide_weight: float | None = None,
                  guidance_interval: Sequence[float] | None = None) -> torch.Tensor:
    """``n`` samples (floats in [-1, 1], ``[n, C, H, W]``, on the CPU) of a trained model.

    The network runs in ``precision`` (default: the run's ``train.precision``, resolved on
    ``device`` as training resolves it: ``auto`` is bf16 autocast on CUDA and on CPUs with
    native bf16); the sampler's own arithmetic is always float32.

    Defaults come from ``cfg.sample`` through :func:`sampling_call` (which also takes the
    sampler ``options`` and the autoguidance ``guide``, ``guide_weight`` and
    ``guidance_interval``); ``indices`` (default ``range(n)``) are the sample numbers, which fix
    each sample's noise together with ``seed``. ``y`` gives one label per sample for a
    conditional model (None: the null class, i.e. unconditional).
    """
    call = sampling_call(model, cfg, device, sampler=sampler, steps=steps, eta=eta,
                         spacing=spacing, guidance=guidance, options=options,
                         precision=precision, guide=guide, guide_weight=guide_weight,
                         guidance_interval=guidance_interval)
    batch_size = batch_size or cfg.sample.batch_size
    m = cfg.model
    shape = (m.in_channels, m.image_size, m.image_size)
    check_sample_memory(cfg, n if indices is None else len(indices), batch_size)
    indices = list(range(n)) if indices is None else list(indices)
    if y is not None and m.null_class is None:
        raise CheckpointError("this run's model is unconditional: it cannot sample a class")
    governor = ThreadGovernor.for_device(device)  # threads follow the free cores
    if governor is not None:
        call = call.with_model(governor.governed(call.model))
    was_training = model.training
    model.eval()
    out = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), desc=f"sampling ({call.sampler})", unit="img")
    try:
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            gens = per_sample_generators(seed, idx, device=device)
            yb = None if y is None else y[start:start + len(idx)]
            x = call.run((len(idx), *shape), y=yb, generator=gens)
            out.append(x.float().cpu())
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
        if governor is not None:
            governor.restore()
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
    arr = to_uint8(images).permute(0, 2, 3, 1).numpy()
    buf = BytesIO()
    extra = {} if labels is None else {"labels": labels.cpu().numpy().astype(np.int64)}
    np.savez(buf, arr_0=arr, **extra, **{SOFTWARE: np.array("samples")})  # (the mark: io)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


# ============================================================================ training
GRID_MAX_ROWS = 10   # a conditional grid shows at most max(n, 10) classes (one row each)


def grid_labels(cfg: Config, n: int) -> tuple[torch.Tensor | None, int | None]:
    """(labels, images per row) of the grid of ``n`` samples: a conditional run gets one row
    per class, ``n // classes`` images each (at least 1), for at most ``max(n, 10)`` classes,
    so a data set with a huge class count never makes a huge grid; (None, None) otherwise."""
    classes = cfg.model.num_classes
    if classes == 0:
        return None, None
    nrow = max(1, n // classes)
    return class_rows(min(classes, max(n, GRID_MAX_ROWS)), nrow), nrow


def sample_grid(model: nn.Module, cfg: Config, path: str | os.PathLike, n: int | None = None,
                device: torch.device | str = "cpu") -> Path:
    """The end-of-training grid: ``n`` (default ``sample.n``) samples with the run's sampler;
    a conditional run gets one row per class, drawn with the run's guidance."""
    y, nrow = grid_labels(cfg, n or cfg.sample.n)
    n = len(y) if y is not None else (n or cfg.sample.n)
    images = sample_images(model, cfg, n=n, seed=0, device=device, y=y, progress=False)
    return save_grid(images, path, nrow=nrow, scale=2)


#: the copy watch warns when the share of near-copies exceeds both the held-out images' own
#: share and the previous checkpoint's by this much (2 of 100 samples: above chance wobble)
COPY_WATCH_MARGIN = 0.02


class CopyWatch(Listener):
    """``train.watch_copies``: at each checkpoint, that many EMA samples (the run's sampler,
    a balanced mix of classes, seed 0) and the share that are near-copies of a training image
    (:func:`~ddpmlab.evaluate.memorization` in pixel space, scaled by the held-out images'
    distances: the measure ``ddpmlab eval`` reports; data without a separate held-out split, a
    folder or an ``.npz``, are scaled leave-one-out as ``eval`` does), written to
    ``metrics.jsonl`` as a ``memorization`` event (``share``, ``heldout_share``: the held-out
    images' own share, the chance level); one warning line when the share rises above both the
    held-out images' own share and the previous checkpoint's by :data:`COPY_WATCH_MARGIN`.
    Data the measure cannot scale (most training images identical) are said once, and the
    watch stops: it never stops training. The recipe turns it on for small data sets."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.n = trainer.cfg.train.watch_copies
        held = load_dataset(trainer.cfg.data, "test").images
        train = trainer.data.images
        self.held = None if held.shape == train.shape and torch.equal(held, train) else held
        self.last: tuple[int, float] | None = None
        self.off = False

    def checkpoint(self, step: int, path: Path) -> None:
        tr, cfg = self.trainer, without_own_guide(self.trainer.cfg)
        if self.off:
            return
        x = to_uint8(sample_images(tr.ema, cfg, n=self.n, seed=0, device=tr.device,
                                   y=default_labels(cfg, self.n), progress=False))
        try:
            m = memorization(x, tr.data.images, self.held)
        except DataError as e:
            self.off = True
            tr.events.note(f"ddpmlab: the copy watch stops ({e})")
            return
        tr.run.append_metrics({"event": "memorization", "time": time.time(), "step": step,
                               "n": self.n, "share": m.share,
                               "heldout_share": m.reference_share})
        floor = max(m.reference_share, self.last[1] if self.last else 0.0)
        if m.share > floor + COPY_WATCH_MARGIN:
            before = f"; step {self.last[0]}: {self.last[1]:.1%}" if self.last else ""
            real = "held-out real images" if self.held is not None else "real images, leave-one-out"
            tr.events.note(f"ddpmlab: warning: {m.share:.1%} of {self.n} samples at step {step} "
                           f"are near-copies of training images ({real}: "
                           f"{m.reference_share:.1%}{before}): the model is starting to copy; "
                           f"more data, augmentation (train.augment={AUGMENT_P:g}, on a run "
                           "that has none) or an earlier checkpoint")
        self.last = (step, m.share)


def copy_watch(trainer: Trainer) -> Listener:
    """The trainer's :class:`CopyWatch` when its config (the recipe's choice included: the
    trainer's own ``cfg``, not the one it was given) asks for one, else a listener that does
    nothing."""
    return CopyWatch(trainer) if trainer.cfg.train.watch_copies else Listener()


def train_run(cfg: Config, run_dir: str | os.PathLike, **kwargs: Any) -> Trainer:
    """A :class:`~ddpmlab.train.Trainer` for ``run_dir`` whose ``train.sample_every`` hook
    writes an EMA grid to ``RUN/samples/step_XXXXXXXX.png`` (and returns its path, which the
    trainer's listeners get: TensorBoard shows it); ``kwargs`` go to the Trainer."""

    def on_sample(trainer: Trainer, step: int) -> Path:
        return sample_grid(trainer.ema, without_own_guide(trainer.cfg),
                           trainer.run.training_grid(step),
                           device=trainer.device)

    return Trainer(cfg, run_dir, on_sample=on_sample, listeners=(copy_watch,), **kwargs)


# ============================================================================ scoring
@dataclass(frozen=True)
class ScoreOptions:
    """What :func:`score_run` (``ddpmlab eval``) scores, and with how much work.

    Samples: ``samples_npz`` (uint8 ``N x H x W x C`` under ``arr_0``), or ``n`` new ones
    (None: the feature network's recommended N) drawn with ``sampler`` / ``steps`` (None: the
    run's) from ``seed``. Likelihood, by ``nll`` (:data:`ddpmlab.likelihood_ode.NLLS`):
    ``elbo``, the ELBO of ``bpd_images`` held-out images (the ``test`` split; 0: none) from
    ``bpd_timesteps`` stratified timesteps (None: all T, the exact sum); ``ode``, the
    probability-flow ODE bits/dim of ``ode_images`` images with ``ode_steps`` RK4 steps and
    ``ode_probes`` Hutchinson probes each; or ``both``. ``inception_weights``: the FID
    Inception-v3 weights file (data sets without a shipped feature network). ``seed`` also
    picks the held-out images and the likelihoods' noises. Checked when made (ConfigError)."""

    samples_npz: str | os.PathLike | None = None
    n: int | None = None
    sampler: str | None = None
    steps: int | None = None
    seed: int = 0
    nll: str = "elbo"
    bpd_images: int = 256
    bpd_timesteps: int | None = 100
    ode_images: int = 64
    ode_steps: int = 32
    ode_probes: int = 1
    inception_weights: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if self.nll not in NLLS:
            raise ConfigError(f"nll={self.nll!r}: choose one of {', '.join(NLLS)}")
        for name in ("ode_steps", "ode_probes"):
            v = getattr(self, name)
            if self.nll != "elbo" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{name}={v!r} must be an integer >= 1")

    def describe(self, cfg: Config, n: int) -> str:
        """Where the scored samples came from, in words (the ``samples`` of ``eval.json``)."""
        if self.samples_npz is not None:
            return str(self.samples_npz)
        steps = self.steps or cfg.sample.steps or cfg.diffusion.timesteps
        return f"{n} samples ({self.sampler or cfg.sample.sampler}, {steps} steps, seed {self.seed})"


def score_run(run_dir: str | os.PathLike, options: ScoreOptions | None = None, *,
              device: str | torch.device = "cpu", progress: bool = True,
              force: bool = False) -> dict:
    """Everything ``ddpmlab eval`` reports for a run, as one JSON-ready dict: the metrics of
    :func:`ddpmlab.evaluate.evaluate_samples` and the likelihoods ``options`` ask for
    (:class:`ScoreOptions`; default: all defaults).

    New samples are drawn with the run's EMA weights; a conditional run is scored on a balanced
    mix of its classes (:func:`default_labels`), with its guidance. Also writes
    ``RUN/figures/vlb.png`` (L_t against t) and ``RUN/figures/memorization.png`` (the closest
    samples beside their nearest training images), appends an ``{"event": "eval"}`` line to
    the run's metrics and writes the whole dict to ``RUN/eval.json`` (what ``ddpmlab report``
    shows); ``force`` lets those replace files ddpmlab did not write. The feature network is
    built once and each split is read once. The one warning silenced is
    :class:`~ddpmlab.evaluate.SmallSampleWarning`: the result carries its ``baseline``."""
    o = options if options is not None else ScoreOptions()
    run = RunDir(run_dir)
    model, cfg, ckpt = load_run(run.root, use_ema=True, device=device)
    check_outputs([run.figures / "memorization.png", run.figures / "vlb.png"], force)
    check_replaceable(run.eval_results, "json", force)  # replaced only if an eval wrote it
    train = load_dataset(cfg.data, "train")
    held = load_dataset(cfg.data, "test")
    data_name = cfg.data.dataset.strip().lower()
    ext = get_feature_extractor(data_name if data_name in BUILTINS else train.shape,
                                o.inception_weights)
    labels = None  # the class each new sample is drawn as (a conditional run): read as asked
    if o.samples_npz is not None:
        x = load_samples_npz(o.samples_npz)
    else:
        n = o.n or ext.recommended_n
        labels = default_labels(cfg, n)
        x = to_uint8(sample_images(model, cfg, n=n, seed=o.seed, device=device,
                                   sampler=o.sampler, steps=o.steps, y=labels,
                                   progress=progress))
    governor = ThreadGovernor.for_device(device)  # features, ELBO, ODE: threads follow the
    with (governor.hooked(model, ext.net) if governor is not None  # free cores, as sampling's
          else contextlib.nullcontext()):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=SmallSampleWarning)  # (the baseline)
            out = evaluate_samples(x, cfg.data, extractor=ext, reference=train, heldout=held,
                                   labels=labels, device=device, seed=o.seed)
        out["samples"] = o.describe(cfg, len(x))
        out["checkpoint"] = str(ckpt)
        run.figures.mkdir(exist_ok=True)
        worst = [(w["sample"], w["train"], w["ratio"]) for w in out["memorization"]["worst"]]
        if worst:
            out["memorization"]["figure"] = str(save_memorization_figure(
                x, train.images, worst, run.figures / "memorization.png"))
        out.update(_likelihoods(model, cfg, held, o, run, device, progress))
    run.append_metrics({"event": "eval", "time": time.time(), "n": out["n"],
                        **_eval_summary(out)})
    atomic_write_text(run.eval_results, json.dumps(out, indent=2) + "\n")  # for the report
    return out


def _likelihoods(model: nn.Module, cfg: Config, held: Any, o: ScoreOptions, run: RunDir,
                 device: str | torch.device, progress: bool) -> dict:
    """The ``bits_per_dim`` (ELBO; or the note that the objective has none), and
    ``bits_per_dim_ode`` entries of ``eval.json`` that ``o.nll`` asks for."""
    out: dict[str, Any] = {}
    elbo = o.nll != "ode" and o.bpd_images > 0
    if elbo and cfg.diffusion.objective != "ddpm":
        out["bits_per_dim_note"] = (f"ELBO bits/dim: not defined for objective "
                                    f"{cfg.diffusion.objective} (use the ODE likelihood)")
    elif elbo:
        out["bits_per_dim"] = elbo_bits_report(model, cfg, held, seed=o.seed,
                                               images=o.bpd_images, timesteps=o.bpd_timesteps,
                                               device=device, progress=progress,
                                               figure=run.figures / "vlb.png")
    if o.nll != "elbo" and o.ode_images > 0:
        out["bits_per_dim_ode"] = ode_bits_report(model, cfg, held, seed=o.seed,
                                                  images=o.ode_images, steps=o.ode_steps,
                                                  probes=o.ode_probes, device=device,
                                                  progress=progress)
    return out


def _eval_summary(out: dict) -> dict:
    """The headline numbers of a :func:`score_run` result (its line in the run's metrics)."""
    summary = {k: out[k] for k in ("fid", "kid_mean", "precision", "recall") if k in out}
    summary["memorization_share"] = out["memorization"]["share"]
    if (out.get("classifier") or {}).get("as_requested") is not None:
        summary["as_requested"] = out["classifier"]["as_requested"]
    if "bits_per_dim" in out:
        summary["bits_per_dim"] = out["bits_per_dim"]["total"]
    if "bits_per_dim_ode" in out:
        summary["bits_per_dim_ode"] = out["bits_per_dim_ode"]["total"]
    return summary


def heldout_elbo(model: nn.Module, cfg: Config, held: Any, *, seed: int = 0,
                 images: int = 256, timesteps: int | None = 100,
                 device: str | torch.device = "cpu",
                 progress: bool = False) -> tuple[torch.Tensor, BitsPerDim]:
    """The ELBO in bits/dim (:func:`ddpmlab.likelihood.bits_per_dim`) of ``images`` held-out
    images: (the images, in the model's range on ``device``; the result). One generator seeded
    with ``seed`` picks the images, then draws the stratified ``timesteps`` (None or >= T: all
    T, the exact sum) and the noises. The run's schedule, prediction, variance and learned
    variance; conditional runs are scored with y = None. The ELBO is the ddpm objective's: any
    other refuses (ConfigError)."""
    if cfg.diffusion.objective != "ddpm":
        raise ConfigError(f"ELBO bits/dim: not defined for objective {cfg.diffusion.objective} "
                          "(use the ODE likelihood)")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(held), generator=g)[:images]
    x0 = to_model_range(held.images[pick]).to(device)
    bpd = bits_per_dim(model, run_schedule(cfg), x0, prediction=cfg.diffusion.prediction,
                       variance=cfg.sample.variance, n_timesteps=timesteps, generator=g,
                       progress=progress, learn_sigma=cfg.model.learn_sigma)
    return x0, bpd


def elbo_bits_report(model: nn.Module, cfg: Config, held: Any, *, seed: int = 0,
                     images: int = 256, timesteps: int | None = 100,
                     device: str | torch.device = "cpu", progress: bool = False,
                     figure: str | os.PathLike | None = None) -> dict:
    """:func:`heldout_elbo` as ``eval`` reports it (the ``bits_per_dim`` of ``eval.json``): the
    total and its prior, decoder and diffusion parts, how many images of which split, the
    timesteps evaluated and each one's mean term L_t; with ``figure``, L_t against t is drawn
    there (:func:`ddpmlab.viz.vlb_plot`) and its path reported. :func:`ode_bits_report` is
    its ODE twin."""
    x0, bpd = heldout_elbo(model, cfg, held, seed=seed, images=images, timesteps=timesteps,
                           device=device, progress=progress)
    rep: dict[str, Any] = {
        "total": bpd.total, "prior": bpd.prior, "decoder": bpd.decoder,
        "diffusion": bpd.diffusion, "images": int(len(x0)), "split": held.source,
        "timesteps_evaluated": int(len(bpd.timesteps)),
        "terms": {int(t): float(bpd.terms[t]) for t in bpd.timesteps.tolist()}}
    if figure is not None:
        rep["figure"] = str(vlb_plot(bpd.terms, Path(figure), total=bpd.total))
    return rep


def ode_bits_report(model: nn.Module, cfg: Config, held: Any, *, seed: int = 0,
                    images: int = 64, steps: int = 32, probes: int = 1,
                    device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """The probability-flow ODE bits/dim (:mod:`ddpmlab.likelihood_ode`) of ``images``
    held-out images (the first ones of the ELBO's pick for the same seed), with the run's
    objective through :func:`sampler_view` (every objective is a model on the run's noise-level
    grid), RK4 over ``steps`` steps in log sigma and Hutchinson's trace with ``probes``
    Rademacher probes. It is computed again at ``steps // 2`` with the same dequantization noise
    and probes: for a fourth-order solver the change estimates ~15x the error at ``steps``.
    Conditional runs are scored with y = None, as the ELBO is."""
    pick = torch.randperm(len(held), generator=torch.Generator().manual_seed(seed))[:images]
    x0 = to_model_range(held.images[pick]).to(device)
    sched = run_schedule(cfg)
    net, prediction = sampler_view(model, cfg, sched)

    def at(n: int):
        return ode_bits_per_dim(net, sched, x0, steps=n, prediction=prediction,
                                learn_sigma=cfg.model.learn_sigma, probes=probes,
                                generator=torch.Generator().manual_seed(seed + 1),
                                batch_size=64, progress=progress)

    full = at(steps)
    per = full.per_sample
    rep = {"total": full.total,
           "sem": float(per.std() / math.sqrt(len(per))) if len(per) > 1 else None,
           "images": int(len(pick)), "split": held.source, "steps": steps,
           "nfe": full.nfe, "solver": "rk4 in log sigma", "trace": full.trace,
           "probes": full.probes, "halved_steps": None, "halved_total": None,
           "step_halving_change": None}
    if steps >= 2:
        half = at(steps // 2)
        rep.update(halved_steps=steps // 2, halved_total=half.total,
                   step_halving_change=full.total - half.total)
    return rep


# ============================================================================ figures
FIGURE_NAMES = ("noising_strip.png", "denoising_chain.png", "schedule.png", "loss.png",
                "samples_by_class.png", "samples.png", "decided_when.png")
DECIDED_AT = (0.25, 0.5, 0.75, 1.0)   # the figure's levels t = round(f T) - 1
DECIDED_SAMPLES = 6                   # samples from each level's one x_t


def decided_when_figure(call: SamplingCall, held: Any, path: Path, seed: int = 0,
                        n_per: int = DECIDED_SAMPLES,
                        at: Sequence[float] = DECIDED_AT) -> Path:
    """The DDPM paper's Fig. 7 (:func:`ddpmlab.edit.decided_when`): one held-out image x0
    (picked by ``seed``; with its class and the call's guidance on a conditional run), noised
    once to each t of ``at`` with one noise, and ``n_per`` samples of p(x0 | x_t) from each:
    a row per t (x_t, then the samples) under the row of x0."""
    from .edit import decided_when
    from .forward import q_sample

    g = torch.Generator().manual_seed(seed + 7)
    k = int(torch.randint(len(held), (1,), generator=g))
    x0 = to_model_range(held.images[k:k + 1]).to(call.device)
    y = None
    if call.null_class is not None and held.labels is not None:
        y = int(held.labels[k])
    T = call.schedule.T
    ts = sorted({min(T - 1, max(0, round(f * T) - 1)) for f in at})
    noise = torch.randn(x0.shape, generator=g).to(x0)
    draws = torch.Generator(device=call.device).manual_seed(seed + 8)
    rows = decided_when(call.model, call.schedule, x0, ts, n_per, generator=draws, noise=noise,
                        **call.edit_kwargs(y=y))
    sched = call.schedule.to(x0.device)
    x_ts = [q_sample(sched, x0, torch.full((1,), t, dtype=torch.long, device=x0.device), noise)
            for t in ts]
    images = [x0.cpu()] + [torch.cat([xt, r]).float().cpu() for xt, r in zip(x_ts, rows,
                                                                            strict=True)]
    return class_rows_grid(images, path, ["x0"] + [f"t = {t}" for t in ts])


def check_outputs(paths: list[Path], force: bool) -> None:
    """Refuse (before any work) to replace a PNG that ddpmlab did not write, unless ``force``."""
    for p in paths:
        check_replaceable(p, "png", force)


def run_figures(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                seed: int = 0, device: str | torch.device = "cpu",
                chain_steps: int | None = None, force: bool = False) -> list[Path]:
    """Every figure of the tutorial for a trained run, written to ``out_dir`` (default
    ``RUN/figures``): the noising strip of real training images, the denoising chain of the
    EMA model (ancestral DDPM over all T steps unless ``chain_steps``), the schedule plot, the
    loss curve, a sample grid (one row per class for a conditional run), and what is decided
    when (:func:`decided_when_figure`, the DDPM paper's Fig. 7, with the chain's sampler)."""
    run = RunDir(run_dir)
    model, cfg, _ = load_run(run.root, use_ema=True, device=device)
    T = cfg.diffusion.timesteps
    if chain_steps is not None and not 1 <= chain_steps <= T:
        raise ConfigError(f"chain_steps={chain_steps}: the run has diffusion.timesteps={T}; "
                          f"give 1..{T}")
    out = Path(out_dir) if out_dir is not None else run.figures
    check_outputs([out / name for name in FIGURE_NAMES], force)
    out.mkdir(parents=True, exist_ok=True)
    sched = run_schedule(cfg)       # (edm, flow: the forward process on the objective's grid)
    g = torch.Generator().manual_seed(seed)
    written = []
    data = load_dataset(cfg.data, "train")
    pick = torch.randperm(len(data), generator=g)[:4]
    written.append(noising_strip(to_model_range(data.images[pick]), sched,
                                 path=out / "noising_strip.png", generator=g))
    m = cfg.model
    null = m.null_class
    # A conditional run's chain denoises towards classes 0, 1, 2 with the run's guidance.
    chain_y = default_labels(cfg, 3)
    call = sampling_call(model, cfg, device, sampler="ddpm", steps=chain_steps or T)
    written.append(denoising_chain(
        shape=(3, m.in_channels, m.image_size, m.image_size), path=out / "denoising_chain.png",
        y=chain_y, generator=g, **call.kwargs()))
    held = load_dataset(cfg.data, "test")     # (Fig. 7: one held-out image, several t)
    written.append(decided_when_figure(call, held, out / "decided_when.png", seed))
    written.append(schedule_plot(out / "schedule.png", T=cfg.diffusion.timesteps))
    if run.metrics.is_file():
        written.append(loss_plot(run.metrics, out / "loss.png"))
    if null is not None:
        per = 8
        y = class_rows(m.num_classes, per)
        imgs = sample_images(model, cfg, n=len(y), seed=seed, device=device, y=y)
        names = data.class_names or [str(k) for k in range(m.num_classes)]
        written.append(class_rows_grid(list(imgs.split(per)), out / "samples_by_class.png",
                                       names))
    else:
        imgs = sample_images(model, cfg, n=64, seed=seed, device=device)
        written.append(save_grid(imgs, out / "samples.png", scale=2))
    return written


# ============================================================================ the commands
# What ``ddpmlab``'s commands call, one function each (cli.py parses, builds the settings,
# makes that one call and prints what it returns). The decisions a command makes beyond the
# library above live here: which labels ``sample --class`` draws, the device of a process under
# torchrun (:func:`ddpmlab.device.process_device`), where an output may be written.
SIGNALS = ("SIGINT", "SIGTERM")   # the ``stopped_by`` of a training a signal interrupted


def check_output(path: str | os.PathLike, kind: str, force: bool) -> None:
    """Before any work: refuse to overwrite a user's file (:func:`ddpmlab.io.check_replaceable`)
    and make sure ``path``'s folder is writable (made when missing)."""
    from .errors import DDPMLabError

    path = Path(path)
    check_replaceable(path, kind, force)
    if (why := write_problem(path.parent, make=True)) is not None:
        raise DDPMLabError(f"{path}: cannot write there ({why})")


def parse_classes(text: str, num_classes: int) -> list[int]:
    """``--class`` as class numbers: ``all``, one number, or a list like ``3,5``; each in
    0..num_classes-1."""
    if text == "all":
        return list(range(num_classes))
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--class {text!r}: give a class number, a list like 3,5, or all")\
            from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or not classes:
        raise ConfigError(f"--class {text!r}: classes must be in 0..{num_classes - 1}")
    return classes


def class_labels(cfg: Config, n: int, classes: str | None,
                 run: str | os.PathLike = "") -> tuple[torch.Tensor | None, int | None]:
    """The labels ``ddpmlab sample`` draws for ``--class`` ``classes``, and the grid's images per
    row (None: the grid's own square layout). None: a conditional run's balanced mix
    (:func:`default_labels`), nothing for an unconditional one; ``none``: the null class (the
    model's unconditional distribution); ``all``: one row of ``max(1, n // C)`` samples per
    class; ``K`` or ``K1,K2,...``: sample k gets the (k mod count)-th of them. A class for an
    unconditional ``run`` is refused (ConfigError naming it)."""
    if classes is None:
        return default_labels(cfg, n), None
    num = cfg.model.num_classes
    if classes.strip().lower() == "none":
        if num == 0:
            raise ConfigError(f"--class none: the run {run} is unconditional already; "
                              "drop --class")
        return None, None
    if num == 0:
        raise ConfigError(f"--class: the run {run} was trained unconditionally "
                          "(train with --conditional to choose classes)")
    chosen = parse_classes(classes, num)
    if classes == "all":
        per = max(1, n // num)
        return class_rows(num, per), per
    return torch.tensor([chosen[k % len(chosen)] for k in range(n)]), None


@dataclass(frozen=True)
class SampleRequest:
    """``ddpmlab sample``: draw ``n`` images of ``run`` from ``seed`` and write a PNG grid
    (``out``; default :meth:`~ddpmlab.layout.RunDir.sample_grid` in ``RUN/samples/``) and,
    with ``npz``, the uint8 array. ``classes`` is ``--class`` (:func:`class_labels`); the
    sampling settings left None are the run's (:func:`sample_images`); ``force`` replaces
    outputs ddpmlab did not write."""

    run: str | os.PathLike
    n: int = 64
    seed: int = 0
    classes: str | None = None
    sampler: str | None = None
    steps: int | None = None
    eta: float | None = None
    spacing: str | None = None
    guidance: float | None = None
    options: dict[str, Any] | None = None
    guide: str | os.PathLike | None = None        # autoguidance (see sampling_call)
    guide_weight: float | None = None
    guidance_interval: tuple[float, ...] | None = None
    batch_size: int | None = None
    precision: str | None = None
    use_ema: bool = True
    out: str | os.PathLike | None = None
    npz: str | os.PathLike | None = None
    force: bool = False
    progress: bool = True


@dataclass(frozen=True)
class SampleResult:
    """What :func:`sample_command` drew and wrote (rank 0 of a torchrun launch)."""

    n: int
    sampler: str
    steps: int
    nfe: int               # network evaluations per image
    precision: str         # why the network ran in its precision, in words
    checkpoint: Path
    grid: Path
    npz: Path | None


def sample_command(req: SampleRequest, device: torch.device) -> SampleResult | None:
    """``ddpmlab sample``: outputs checked first, then the run loaded on this process's device
    (:func:`~ddpmlab.device.process_device`: its own GPU under torchrun) and the images drawn,
    split over the processes (:func:`sample_images_sharded`). Rank 0 writes the files and gets
    the result; other ranks get None."""
    from .device import precision_reason, process_device
    from .train import distributed as D

    if D.env_info().is_main:  # rank 0 writes the files: check them before sampling
        for path, kind in ((req.out, "png"), (req.npz, "npz")):
            if path is not None:
                check_output(path, kind, req.force)
        if req.out is None and RunDir(req.run).is_run():   # the default grid's folder too
            check_replaceable(RunDir(req.run).sample_grid("check", 1, req.seed), "png", True)
    info = D.init(device.type)
    device = process_device(device, info.world_size, info.local_rank)
    try:
        model, cfg, ckpt = load_run(req.run, use_ema=req.use_ema, device=device)
        guide = req.guide
        if guide is not None and os.fspath(guide).startswith(OWN_GUIDE):
            cfg = resolve_own_guide(cfg, req.run, guide)
            guide = None if cfg.sample.own_guide() is None else guide  # (not kept: refused)
        T = cfg.diffusion.timesteps
        if req.steps is not None and req.steps > T:
            raise ConfigError(f"--steps={req.steps} exceeds the run's diffusion.timesteps={T}")
        check_sample_memory(cfg, req.n, req.batch_size)  # (before any label is made)
        y, nrow = class_labels(cfg, req.n, req.classes, req.run)
        n = req.n if y is None else len(y)
        images = sample_images_sharded(
            model, cfg, n=n, seed=req.seed, device=device, sampler=req.sampler, steps=req.steps,
            eta=req.eta, y=y, spacing=req.spacing, guidance=req.guidance, options=req.options,
            guide=guide, guide_weight=req.guide_weight,
            guidance_interval=req.guidance_interval, batch_size=req.batch_size,
            precision=req.precision,
            progress=req.progress and info.is_main)
    finally:
        D.cleanup()
    if images is None:  # not rank 0: rank 0 writes the files
        return None
    name = req.sampler or cfg.sample.sampler
    steps = req.steps or cfg.sample.steps or T
    out = Path(req.out) if req.out else RunDir(req.run).sample_grid(name, steps, req.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, out, nrow=nrow, scale=2)
    why = precision_reason(inference_precision(req.precision or cfg.train.precision, device),
                           device)
    npz = save_npz(images, req.npz, labels=y) if req.npz else None
    return SampleResult(n, name, steps, SAMPLERS[name].info.nfe(steps), why, ckpt, out, npz)


def eval_command(run: str | os.PathLike, options: ScoreOptions, device: torch.device, *,
                 json_out: str | os.PathLike | None = None, progress: bool = True,
                 force: bool = False) -> dict:
    """``ddpmlab eval``: :func:`score_run`, and its results also written to ``json_out`` (checked
    before the evaluation: a user's file, or the run's own, is never replaced)."""
    if json_out:
        check_output(json_out, "json", force)
    results = score_run(run, options, device=device, progress=progress, force=force)
    if json_out:
        atomic_write_text(json_out, json.dumps(results, indent=2) + "\n")
    return results


def _check_sigma_rel(sigma_rel: float) -> float:
    from .config import MAX_SIGMA_REL

    s = float(sigma_rel)
    if not 0 < s < MAX_SIGMA_REL:
        raise ConfigError(f"--sigma-rel={sigma_rel} must lie in (0, {MAX_SIGMA_REL:.4f}) (the "
                          "relative std of a power-function EMA; EDM2 tracks 0.05 and 0.10)")
    return s


def _phema_files(run: RunDir, sigma_rel: float) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``run`` and its files (name -> tensors or JSON) with the EMA's
    parameters replaced by the post-hoc average of length ``sigma_rel`` at its step
    (:func:`ddpmlab.train.phema.reconstruct_run`; the buffers stay the checkpoint EMA's)."""
    from .io import read_json
    from .train.checkpoint import CHECKPOINT_FILES, OPTIONAL_FILES
    from .train.phema import reconstruct_run

    if not run.is_run():
        raise CheckpointError(f"{run.root}: not a ddpmlab run directory (no config.json)")
    ckpt = latest_checkpoint(run.root)
    if ckpt is None:
        raise CheckpointError(f"{run.root}: holds no complete checkpoint (train it first)")
    params = reconstruct_run(run, sigma_rel, step=_checkpoint_step(ckpt))
    names = [n for n in (*CHECKPOINT_FILES, *OPTIONAL_FILES) if (ckpt / n).is_file()]
    files: dict[str, Any] = {n: load_tensors(ckpt / n) if n.endswith(".safetensors")
                             else read_json(ckpt / n) for n in names}
    ema = files["ema.safetensors"]
    wrong = next((n for n, v in params.items() if n not in ema or ema[n].shape != v.shape), None)
    if wrong is not None:
        raise CheckpointError(f"{run.phema}: snapshot tensor {wrong!r} does not match "
                              f"{ckpt / 'ema.safetensors'}")
    ema.update({n: v.to(ema[n].dtype) for n, v in params.items()})
    files["state.json"] = {**files["state.json"], "phema": {
        "sigma_rel": sigma_rel, "run": str(run.root), "checkpoint": ckpt.name}}
    return ckpt, files


def ema_command(run: str | os.PathLike, sigma_rel: float, out: str | os.PathLike | None = None,
                *, force: bool = False) -> Path:
    """``ddpmlab ema RUN --sigma-rel S``: a new run directory ``out`` (default ``RUN-emaS``
    beside RUN) holding a copy of RUN's ``config.json`` and one checkpoint, at the step of
    RUN's newest, whose EMA weights are the post-hoc average of length S reconstructed from
    RUN's snapshots (``train.phema``); its model, optimizer and RNG files are that
    checkpoint's, so ``sample``, ``eval``, ``figures`` and ``report`` read it as any run.
    ``out`` follows ``train --out``'s rules (a run there needs ``force``: it is moved aside and
    deleted once the new checkpoint is complete; a non-empty folder that is no run is refused;
    never RUN itself or a folder holding it). Returns the checkpoint written."""
    from .outputs import check_protected
    from .train.checkpoint import save_checkpoint

    s = _check_sigma_rel(sigma_rel)
    src = RunDir(run)
    dest_dir = Path(out) if out else src.root.with_name(f"{src.root.name}-ema{s:g}")
    dest = RunDir(check_protected(dest_dir, "a run", inputs=[src.root]))
    ckpt, files = _phema_files(src, s)            # (every input read before anything is written)
    dest.check_new(force)
    lock = dest.lock("ema")
    try:
        dest.recover_aside()
        dest.check_new(force)
        aside = dest.create(_copied_config(src), force)
        try:
            written = save_checkpoint(dest.root, _checkpoint_step(ckpt), files)
        except BaseException:
            if aside is not None:
                dest.put_back(aside)
            raise
        if aside is not None and (msg := dest.drop_aside(aside)):
            warnings.warn(msg, stacklevel=2)
    finally:
        lock.release()
    return written


def _copied_config(src: RunDir) -> str:
    """RUN's ``config.json`` for a run made of RUN's weights (``ema``): as it is, but an
    ``"@F"`` guide becomes RUN's own checkpoint folder (the new run keeps no such step)."""
    cfg = src.read_config()
    if cfg.sample.own_guide() is None:
        return src.config.read_text(encoding="utf-8")
    return resolve_own_guide(cfg, src.root).to_json()


def _checkpoint_step(ckpt: Path) -> int:
    from .layout import step_of

    step = step_of(ckpt.name)
    assert step is not None  # (latest_checkpoint returns strictly named folders only)
    return step


def ema_sweep(run: str | os.PathLike, sigma_rels: Sequence[float], options: ScoreOptions,
              device: torch.device | str = "cpu", *, plot: str | os.PathLike | None = None,
              force: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """``ddpmlab ema RUN --sweep S1,S2,...``: each post-hoc EMA length scored with the project's
    FID (:func:`score_run` with ``options``, on a temporary run written by the rules of
    :func:`ema_command`), one row per S (``sigma_rel``, ``fid``, the classifier's
    ``confident_share`` where the data have one, ``n``, ``step``); the rows are appended to
    RUN's ``metrics.jsonl`` (``{"event": "phema_sweep"}``) and drawn to ``plot`` (default
    ``RUN/figures/phema_sweep.png``; a PNG ddpmlab did not write needs ``force``)."""
    import tempfile

    from .train.checkpoint import save_checkpoint

    sigmas = [_check_sigma_rel(s) for s in sigma_rels]
    if not sigmas or len(set(sigmas)) != len(sigmas):
        raise ConfigError(f"--sweep {','.join(map(str, sigma_rels))}: give distinct values")
    src = RunDir(run)
    plot = Path(plot) if plot else src.figures / "phema_sweep.png"
    check_output(plot, "png", force)
    rows = []
    for s in sigmas:
        ckpt, files = _phema_files(src, s)
        with tempfile.TemporaryDirectory(prefix="ddpmlab-ema-") as tmp:
            scratch = RunDir(Path(tmp) / "run")
            scratch.create(_copied_config(src), False)
            save_checkpoint(scratch.root, _checkpoint_step(ckpt), files)
            r = score_run(scratch.root, options, device=device, progress=progress)
        share = (r.get("classifier") or {}).get("confident_share")
        rows.append({"sigma_rel": s, "fid": r["fid"], "confident_share": share, "n": r["n"],
                     "step": _checkpoint_step(ckpt)})
    src.append_metrics({"event": "phema_sweep", "time": time.time(), "rows": rows})
    sweep_plot([r["sigma_rel"] for r in rows], [r["fid"] for r in rows], plot,
               xlabel="sigma_rel (post-hoc EMA length)", ylabel=f"FID ({rows[0]['n']} samples)",
               title=f"post-hoc EMA sweep of {src.root.name} at step {rows[0]['step']}")
    return rows


@dataclass(frozen=True)
class TrainOutcome:
    """What :func:`train_command` did: the Trainer's ``result`` (step, seconds, loss,
    checkpoint, ``stopped_by``), the step it started from (a resumed run's), where its metrics
    and end-of-training grid went, and whether this process is rank 0 (the one that
    reports)."""

    result: Any
    start: int
    run: RunDir
    grid: Path | None
    is_main: bool

    @property
    def interrupted(self) -> bool:
        """Stopped by SIGINT or SIGTERM (a checkpoint was saved; ``--resume`` continues)."""
        return self.result.stopped_by in SIGNALS


def train_config(preset: str | None, overrides: dict[str, str], *, resume: str | None = None,
                 out: str | None = None, log: Callable[[str], None] = print
                 ) -> tuple[Config, Path]:
    """The config and run directory of ``ddpmlab train``: the run's own config for ``resume``
    (with what a killed ``--force`` left recovered), else ``preset`` (default ``mnist``); the
    ``overrides`` on top, then a preset's time limit moved out of the way of a run length the
    user asked for (said through ``log``). The run directory is ``resume``, else ``out``, else
    ``runs/<data set>``."""
    from .config import load_config
    from .layout import default_run_dir
    from .session import read_resume_config
    from .train.budget import respect_run_length

    if out is not None and not out.strip():
        raise ConfigError("--out '' names no folder (leave --out out for runs/DATASET)")
    if resume:
        if out and Path(out) != Path(resume):
            raise ConfigError("--resume DIR continues DIR; do not also give a different --out")
        if preset:
            raise ConfigError("--resume takes the run's own config.json; drop --config")
        cfg = read_resume_config(resume, log)
    else:
        cfg = load_config(preset or "mnist")
    cfg, note = respect_run_length(cfg.override(overrides), set(overrides))
    if note:
        log(note)
    return cfg, Path(resume or out or default_run_dir(cfg.data.dataset))


def train_command(cfg: Config, run_dir: str | os.PathLike, *, resume: bool = False,
                  force: bool = False, progress: bool = True, grid: bool = True,
                  log: Callable[[str], None] = print) -> TrainOutcome:
    """``ddpmlab train``: :func:`train_run`, trained to its end, then (rank 0, unless ``grid``
    is False or a signal stopped it) the end-of-training grid with the EMA weights
    (:func:`sample_grid`). What it is about to do goes to ``log`` as it goes (rank 0)."""
    from .train.distributed import cleanup

    trainer = train_run(cfg, run_dir, resume=resume, force=force, progress=progress)
    main = trainer.dist.is_main
    try:
        if main:
            _log_start(trainer, log)
        start = trainer.step  # (a resumed run starts at its checkpoint's step)
        result = trainer.train()
        path = None
        if main and grid and result.stopped_by not in SIGNALS:
            rc = resolve_own_guide(trainer.cfg, trainer.run.root)  # (classes from the data)
            if rc.sample.own_guide() is not None:
                if rc.sample.guide_weight != 1.0:
                    log(f"ddpmlab: sample.guide={rc.sample.guide}: the run stopped before its "
                        "guide's step; the grid is drawn without autoguidance")
                rc = without_own_guide(rc)
            how = f", one row per class, guidance {rc.sample.guidance:g}" \
                if rc.model.num_classes else ""
            if rc.sample.guide and rc.sample.guide_weight != 1.0:
                how += f", autoguided by {Path(rc.sample.guide).name} at {rc.sample.guide_weight:g}"
            y_grid, _ = grid_labels(rc, rc.sample.n)
            count = rc.sample.n if y_grid is None else len(y_grid)
            log(f"ddpmlab: drawing {count} samples with the EMA weights "
                f"({rc.sample.sampler}{how})...")
            path = sample_grid(trainer.ema, rc, trainer.run.grid, device=trainer.device)
    finally:
        cleanup()
    return TrainOutcome(result, start, trainer.run, path, main)


def _log_start(trainer: Trainer, log: Callable[[str], None]) -> None:
    """The two lines ``ddpmlab train`` starts with: the data and conditioning; the model, its
    device and precision, the run directory."""
    from .data import describe

    classes = trainer.cfg.model.num_classes
    how = f"conditional on {classes} classes (guidance-ready)" if classes else "unconditional"
    log(f"ddpmlab: training on {describe(trainer.data)}; {how}")
    n_params = sum(p.numel() for p in trainer.model.parameters())
    log(f"ddpmlab: model {n_params / 1e6:.2f}M parameters on {trainer.device} "
        f"({trainer.precision_reason}); run directory {trainer.run.root}")
