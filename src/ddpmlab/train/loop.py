"""The Trainer: data, model, optimizer, EMA, mixed precision, logging, checkpoints, resume, DDP.

The arithmetic of a step is :func:`ddpmlab.train.step.training_loss`; this module is the
machinery around it. Conventions that make runs reproducible:

* ``train.batch_size`` is the **global** batch: per optimizer step, over every rank and every
  accumulation micro-batch. Each rank takes its own contiguous slice of it.
* The data order is a pure function of (seed, step): epoch ``e`` is the permutation drawn from
  ``seed`` and ``e``; step ``s`` takes batch ``s mod (N // B)`` of epoch ``s // (N // B)``
  (the last incomplete batch of an epoch is dropped).
* Timesteps, noise, label drops and flips are drawn for the whole global batch from one
  generator on every rank, then sliced, so 1 process and N processes (or 1 and k accumulation
  steps) see the same numbers. Its state is saved in every checkpoint: a resumed run continues
  with exactly the random numbers an uninterrupted one would have used.
* ``diffusion.loss=vlb`` draws t from the importance distribution of a
  :class:`~ddpmlab.losses.LossHistory`, which records every rank's per-sample losses of each
  applied step in the global batch's order and is saved in every checkpoint beside the RNG
  states (``loss_history.safetensors``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..config import BUDGET_WINDOW, Config
from ..data import ImageData, load_dataset, to_model_range
from ..device import (
    ThreadGovernor,
    autocast,
    check_memory,
    precision_reason,
    resolve_device,
    resolve_precision,
)
from ..errors import CheckpointError, ConfigError, DataError, DDPMLabError
from ..layout import RunDir
from ..losses import LossHistory, importance_weights
from ..nn import UNet
from ..objectives import schedule_for
from . import distributed as D
from .checkpoint import (
    LOSS_HISTORY,
    clean_partial,
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from .ema import ema_decay_at, ema_update
from .step import draw, training_losses


class TrainingError(DDPMLabError):
    """Training cannot go on (a non-finite loss or gradient)."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    loss: float
    seconds: float
    checkpoint: Path | None
    samples: Path | None
    stopped_by: str | None = None       # "SIGINT", "SIGTERM", "time limit" or None
    skipped_steps: int = 0


def resolve_config(cfg: Config, data: ImageData) -> Config:
    """Fill the model's data-dependent fields (channels, size, classes) from the data."""
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
    out.validate("resolved config")
    return out


def build_model(cfg: Config) -> UNet:
    return UNet(cfg.model)


def check_same_run(stored: Config, new: Config, path: Path) -> None:
    """On resume, everything but the ``train`` and ``sample`` sections must match the run's."""
    a, b = stored.to_dict(), new.to_dict()
    for section in ("model", "diffusion", "data"):
        for key, value in a[section].items():
            if b[section][key] != value:
                raise CheckpointError(
                    f"{path}: {section}.{key}={value!r} in the run, but {b[section][key]!r} now; "
                    "a resumed run must keep its model, diffusion and data settings"
                )


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then constant or cosine to 0."""
    lr = cfg.lr
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "cosine":
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        frac = min(1.0, (step - cfg.warmup_steps) / span)
        return lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    return lr


#: the share of a time budget's remaining seconds that its steps are planned to fill: a
#: machine's speed drifts by a few percent after the timed steps (measured: 1.90 steps/s over
#: steps 5-40 of the main job, 1.70-1.93 in its later logging windows)
BUDGET_MARGIN = 0.95


def steps_within(budget_s: float, elapsed_s: float, step: int, seconds_per_step: float,
                 cap: int) -> int:
    """``max_steps`` for a run at ``step`` after ``elapsed_s`` of a ``budget_s`` budget, its steps
    taking ``seconds_per_step``: the steps that fit in :data:`BUDGET_MARGIN` of what is left, at
    least ``step`` and at most ``cap``."""
    left = BUDGET_MARGIN * max(0.0, budget_s - elapsed_s)
    fit = int(left / seconds_per_step + 1e-9) if seconds_per_step > 0 else cap
    return max(step, min(cap, step + fit))


def make_optimizer(params: list[torch.nn.Parameter], tc) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch has one for the parameters' device (CUDA;
    the CPU since torch 2.4: 5x faster than the default per-tensor loop on the main job's model,
    about 2.5% of its step), else the default implementation. Both compute the same update."""
    kw = dict(lr=tc.lr, betas=(0.9, 0.999), weight_decay=tc.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kw)


def _epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) + 1)
    return torch.randperm(n, generator=g)


class Trainer:
    """Train a UNet noise predictor on ``cfg.data``; write everything to ``run_dir``.

    ``resume=True`` continues the newest complete checkpoint in ``run_dir`` exactly.
    ``force=True`` allows ``run_dir`` to hold another run (its checkpoints are replaced).
    ``on_sample(trainer, step)`` is called on rank 0 every ``train.sample_every`` steps (the run
    layer draws a grid there; the trainer itself draws nothing).
    """

    def __init__(self, cfg: Config, run_dir: str | os.PathLike, *, resume: bool = False,
                 force: bool = False, progress: bool = True, data: ImageData | None = None,
                 log: Callable[[str], None] = print,
                 on_sample: Callable[[Trainer, int], None] | None = None):
        self.run = RunDir(run_dir)
        self.run_dir = self.run.root
        self.progress = progress
        self.on_sample = on_sample
        self.device = resolve_device(cfg.train.device)
        self.dist = D.init(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.log = log if self.dist.is_main else (lambda msg: None)
        self._lock = None
        self._aside: Path | None = None  # the run --force moved aside (until our 1st checkpoint)
        self._check_run_dir(resume, force)
        try:
            self._set_up(cfg, resume, force, data)
        except BaseException:
            self.close()
            raise

    def _set_up(self, cfg: Config, resume: bool, force: bool, data: ImageData | None) -> None:
        self.data = data if data is not None else load_dataset(cfg.data, "train")
        cfg = resolve_config(cfg, self.data)
        if resume:
            check_same_run(self.run.read_config(), cfg, self.run.config)
        self.cfg = cfg
        self._check_batch()
        self._check_memory()
        self.schedule = schedule_for(cfg.diffusion.objective, cfg.diffusion.schedule,
                                     cfg.diffusion.timesteps)
        self.sched_dev = self.schedule.to(self.device)
        self._build_model()
        self.opt = make_optimizer(list(self.model.parameters()), cfg.train)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.precision_reason = precision_reason(cfg.train.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.train.seed + 17)
        # diffusion.loss=vlb draws t by importance sampling from this history (saved with the
        # RNG states in every checkpoint: a resumed run draws the same t)
        self.loss_history = LossHistory(self.schedule.T) if cfg.diffusion.loss == "vlb" else None
        self._step_losses: tuple[torch.Tensor, torch.Tensor] | None = None
        self.images = self.data.images.to(self.device)
        self.labels = None
        if cfg.model.num_classes > 0 and self.data.labels is not None:
            self.labels = self.data.labels.to(self.device)
        self.step = 0
        self.skipped = 0
        self._perm_cache: tuple[int, torch.Tensor] | None = None
        self._stop: str | None = None
        self._saved: tuple[int, Path | None] | None = None  # (step, folder) of the newest save
        if resume:
            self._load_latest()
            if self.dist.is_main:
                self.run.trim_metrics()
        elif self.dist.is_main:
            # Only now, with the data read and the model built, is an old run (--force) moved
            # aside: a bad input fails above and leaves it as it was. It is deleted once this
            # run has a complete checkpoint, and put back if this run fails before.
            self._take_lock("train --force" if force else "train")
            self.run.check_new(force)  # (again, locked: another process may have been first)
            self._aside = self.run.create(cfg.to_json(), force)
        D.barrier()

    def close(self) -> None:
        """Release the run directory (also done at the end of :meth:`train`); a run that
        --force replaced and that this one never superseded with a checkpoint is put back."""
        if self._aside is not None:
            aside, self._aside = self._aside, None
            self.run.put_back(aside)
            self.log(f"ddpmlab: no checkpoint was written; the run that --force replaced is "
                     f"back in {self.run_dir}")
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------ set-up helpers
    def _check_run_dir(self, resume: bool, force: bool) -> None:
        """Rank 0 alone inspects the run directory; every rank learns the verdict."""
        problem = None
        if self.dist.is_main:
            try:
                if resume:
                    self.run.check_resume()
                    self._take_lock("train --resume")
                    clean_partial(self.run_dir)  # (may put back a checkpoint a crash moved aside)
                    if latest_checkpoint(self.run_dir) is None:
                        raise CheckpointError(
                            f"{self.run_dir}: holds no complete checkpoint to resume from")
                else:  # (locked in _set_up, once the data are read: a bad input leaves
                    self.run.check_new(force)  # no lock file behind)
            except DDPMLabError as e:
                problem = e
                self.close()
        problem = D.broadcast_object(problem)
        if problem is not None:
            raise problem

    def _take_lock(self, command: str) -> None:
        self._lock = self.run.lock(command)
        for note in ([self._lock.stale] if self._lock.stale else []) + self.run.recover_aside():
            self.log(f"ddpmlab: {note}")

    def _check_batch(self) -> None:
        tc = self.cfg.train
        if tc.batch_size % (self.dist.world_size * tc.grad_accum):
            raise ConfigError(
                f"train.batch_size={tc.batch_size} must be divisible by world size "
                f"{self.dist.world_size} x train.grad_accum={tc.grad_accum}")
        if len(self.data) < tc.batch_size:
            raise ConfigError(f"train.batch_size={tc.batch_size} is larger than the data set "
                              f"({len(self.data)} images in {self.data.source})")

    def _check_memory(self) -> None:
        """One line, before allocating, for a model or batch this machine cannot hold: the
        weights, their EMA copy, gradients and two Adam moments (the network is built on the
        meta device to count them), the schedule, and a lower estimate of the activations."""
        m, tc = self.cfg.model, self.cfg.train
        try:
            with torch.device("meta"):
                n_params = sum(p.numel() for p in build_model(self.cfg).parameters())
        except RuntimeError as e:  # e.g. "Storage size calculation overflowed"
            raise ConfigError(f"model.base_channels={m.base_channels}, model.num_classes="
                              f"{m.num_classes}: the network is too large to allocate "
                              f"({str(e)[:120]})") from None
        micro = tc.batch_size // (self.dist.world_size * tc.grad_accum)
        act = (4.0 * micro * m.base_channels * m.image_size**2 * 4 * m.num_res_blocks
               * len(m.channel_mult))
        check_memory(20.0 * n_params + act + 160.0 * self.cfg.diffusion.timesteps,
                     f"training this model ({n_params:,} parameters, batch {micro} of "
                     f"{m.in_channels}x{m.image_size}x{m.image_size})", self.device)

    def _build_model(self) -> None:
        """The network (seeded), its EMA copy, and the callable that trains (compiled, DDP)."""
        tc = self.cfg.train
        torch.manual_seed(tc.seed)  # network initialisation (and dropout's global RNG)
        self.model = build_model(self.cfg).to(self.device)
        if tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.net: Any = self.model
        self._compile_pending = False
        self.compiled = False
        if tc.compile:
            self.net = torch.compile(self.model)  # compiles at the first call: see train_step
            self._compile_pending = True
        self._wrap_ddp()

    def _load_latest(self) -> None:
        clean_partial(self.run_dir)
        ckpt = latest_checkpoint(self.run_dir)
        assert ckpt is not None
        files = load_checkpoint(ckpt)
        try:
            self.model.load_state_dict(files["model.safetensors"])
            self.ema.load_state_dict(files["ema.safetensors"])
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt}: weights do not match the model ({e})".split("\n")[0])\
                from None
        optimizer_from_tensors(self.opt, files["optimizer.safetensors"], files["optimizer.json"])
        rng = files["rng.safetensors"]
        self.gen.set_state(rng["train_generator"])
        torch.set_rng_state(rng["torch_cpu"])
        if "torch_cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["torch_cuda"], self.device)
        if self.loss_history is not None:
            if LOSS_HISTORY not in files:
                raise CheckpointError(f"{ckpt / LOSS_HISTORY}: missing (diffusion.loss=vlb "
                                      "resumes its importance sampler's loss history)")
            try:
                self.loss_history.load_state_dict(files[LOSS_HISTORY])
            except ValueError as e:
                raise CheckpointError(f"{ckpt / LOSS_HISTORY}: {e}") from None
        state = files["state.json"]
        self.step = int(state["step"])
        self.skipped = int(state.get("skipped_steps", 0))
        self._saved = (self.step, ckpt)
        self.log(f"resumed {self.run_dir} at step {self.step} from {ckpt.name}")

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 only); returns its folder."""
        path = None
        if self.dist.is_main:
            opt_tensors, opt_meta = optimizer_to_tensors(self.opt)
            rng = {"train_generator": self.gen.get_state(), "torch_cpu": torch.get_rng_state()}
            if self.device.type == "cuda":
                rng["torch_cuda"] = torch.cuda.get_rng_state(self.device)
            state = {"format_version": 1, "step": self.step, "skipped_steps": self.skipped,
                     "world_size": self.dist.world_size, "time": time.time()}
            files = {
                "model.safetensors": self.model.state_dict(),
                "ema.safetensors": self.ema.state_dict(),
                "optimizer.safetensors": opt_tensors,
                "optimizer.json": opt_meta,
                "rng.safetensors": rng,
                "state.json": state,
            }
            if self.loss_history is not None:
                files[LOSS_HISTORY] = self.loss_history.state_dict()
            path = save_checkpoint(self.run_dir, self.step, files,
                                   keep_last=self.cfg.train.keep_last)
        D.barrier()
        self._saved = (self.step, path)
        if self._aside is not None and path is not None:  # superseded: the old run can go
            aside, self._aside = self._aside, None
            if (msg := self.run.drop_aside(aside)) is not None:
                self.log(f"ddpmlab: warning: {msg}")
        return path

    # ------------------------------------------------------------------ one step
    def _batch_indices(self, step: int) -> torch.Tensor:
        n, b = len(self.data), self.cfg.train.batch_size
        per_epoch = n // b
        epoch, pos = divmod(step, per_epoch)
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            self._perm_cache = (epoch, _epoch_permutation(self.cfg.train.seed, epoch, n))
        return self._perm_cache[1][pos * b:(pos + 1) * b].to(self.device)

    def _autocast(self):
        return autocast(self.precision, self.device)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the global batch; returns (loss, grad_norm) tensors."""
        cfg, tc = self.cfg, self.cfg.train
        B, world, accum = tc.batch_size, self.dist.world_size, tc.grad_accum
        idx = self._batch_indices(self.step)
        shape = tuple(self.images.shape[1:])
        dif = cfg.diffusion
        probs = self.loss_history.probs() if self.loss_history is not None else None
        rnd = draw(self.gen, B, shape, self.schedule.T, self.device, self.cfg.data.p_uncond,
                   t_probs=probs, objective=dif.objective, flow_t=dif.flow_t,
                   p_mean=dif.p_mean, p_std=dif.p_std)
        weights = None if probs is None else importance_weights(probs, rnd.t)  # 1 / (T p_t)
        per_sample: list[torch.Tensor] = []
        self._step_losses = None
        local = B // world
        micro = local // accum
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, tc)
        loss_sum = torch.zeros((), device=self.device)
        for m in range(accum):
            start = self.dist.rank * local + m * micro
            sl = slice(start, start + micro)
            r = rnd.slice(sl)
            x0 = to_model_range(self.images[idx[sl]])
            if cfg.data.hflip:
                x0 = torch.where(r.flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
            if tc.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            y = None
            if self.labels is not None:
                y = torch.where(r.drop, cfg.model.null_class, self.labels[idx[sl]])
            if m == 0 and self._compile_pending:
                self._settle_compile(x0, r.t, y)
            sync = contextlib.nullcontext()
            if self.dist.enabled and m < accum - 1:
                sync = self.net.no_sync()
            with sync:
                with self._autocast():
                    per = training_losses(self.net, self.sched_dev, x0, r.t, r.eps, y,
                                          dif.prediction, dif.loss_weighting, dif.min_snr_gamma,
                                          dif.loss, cfg.model.learn_sigma, dif.vlb_weight,
                                          dif.objective, dif.sigma_data)
                    loss = (per if weights is None else per * weights[sl].to(per.dtype)).mean()
                self.scaler.scale(loss / accum).backward()
            loss_sum = loss_sum + loss.detach() / accum
            per_sample.append(per.detach())
        if self.loss_history is not None:  # every rank's terms, in the global batch's order
            self._step_losses = (rnd.t, D.all_gather_cat(torch.cat(per_sample)))
        self.scaler.unscale_(self.opt)
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return loss_sum, gnorm

    def _wrap_ddp(self) -> None:
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.net, device_ids=ids)

    def _settle_compile(self, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> None:
        """``torch.compile`` compiles at the first call, so a platform without a working
        compiler fails there, not at ``torch.compile``. Run one forward and backward of the
        compiled network on the first micro-batch (RNG state restored, gradients dropped); on
        any failure, say why and train eager. The same decision on every rank."""
        self._compile_pending = False
        compiled = self.net.module if self.dist.enabled else self.net
        ok = True
        try:
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                with self._autocast():
                    out = compiled(x0, t, y)
                out.float().square().mean().backward()
        except Exception as e:  # noqa: BLE001 - any backend failure means: train eager
            first = (str(e).strip().splitlines() or [""])[0][:200]
            self.log(f"torch.compile failed at its first call ({type(e).__name__}: {first}); "
                     "training without it")
            ok = False
        finally:
            self.opt.zero_grad(set_to_none=True)
        if self.dist.enabled:
            flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            ok = bool(flag.item())
        if not ok:
            self.net = self.model
            self._wrap_ddp()
        self.compiled = ok

    def _finish_step(self, loss: torch.Tensor, gnorm: torch.Tensor) -> bool:
        """Apply the update if the loss and gradient are finite; returns whether it did."""
        finite = bool(torch.isfinite(loss) & torch.isfinite(gnorm))
        if not finite:
            self.opt.zero_grad(set_to_none=True)
            if not self.cfg.train.skip_nonfinite:
                raise TrainingError(
                    f"non-finite {'loss' if not torch.isfinite(loss) else 'gradient'} at step "
                    f"{self.step} (loss={float(loss):.4g}, grad norm={float(gnorm):.4g}); "
                    f"training stopped; {self._kept()}. Lower train.lr, or set "
                    "train.skip_nonfinite=true to skip such steps")
            self.skipped += 1
            self.scaler.update()
            return False
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        tc = self.cfg.train
        ema_update(self.ema, self.model, ema_decay_at(tc.ema_decay, self.step, tc.ema_warmup))
        if self.loss_history is not None and self._step_losses is not None:
            self.loss_history.record(*self._step_losses)  # (a skipped step records nothing)
        return True

    def _kept(self) -> str:
        if self._saved is not None and self._saved[1] is not None:
            return f"the last checkpoint {self._saved[1]} is intact"
        if self._aside is not None:
            return "no checkpoint was written; the run that --force replaced is put back"
        return f"no checkpoint was written to {self.run_dir}"

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        """Train to ``train.max_steps`` (or a signal / the time limit), save, and release the
        run directory. An error before the first checkpoint puts a run that --force replaced
        back in place."""
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> TrainResult:
        tc = self.cfg.train
        t_start = time.perf_counter()
        handlers = self._install_signal_handlers()
        # train.time_budget_min: a new run times its steps 5-40, then sets max_steps (a resumed
        # run keeps the max_steps its config.json has)
        sizing = bool(tc.time_budget_min) and self.step == 0 and BUDGET_WINDOW[1] < tc.max_steps
        if tc.time_budget_min and not sizing:
            why = ("this run was stopped before its steps were timed" if self.step else
                   f"max_steps={tc.max_steps} ends before the timed steps")
            self.log(f"ddpmlab: train.time_budget_min={tc.time_budget_min:g} not applied: {why}; "
                     f"training to step {tc.max_steps}")
        if self.dist.is_main:  # which precision, and why (auto differs from machine to machine)
            self.run.append_metrics({"event": "precision", "time": time.time(), "step": self.step,
                                     "setting": tc.precision, "precision": self.precision,
                                     "reason": self.precision_reason})
        bar = None
        if self.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=None if sizing else tc.max_steps, initial=self.step,
                       desc="training", unit="step", dynamic_ncols=True, smoothing=0.05)
        window_loss = torch.zeros((), device=self.device)
        window_n, window_t0 = 0, time.perf_counter()
        last_loss = float("nan")
        stopped_by: str | None = None
        self.model.train()
        # Denormal floats (tiny Adam moments and weights) can slow x86 arithmetic sharply; flush
        # them to zero while training (restored afterwards). A precaution, not measured here.
        flushing = torch.set_flush_denormal(True) if self.device.type == "cpu" else None
        marks: dict[int, float] = {}
        governor = ThreadGovernor.for_device(self.device)  # threads follow the free cores
        try:
            while self.step < tc.max_steps:
                loss, gnorm = self.train_step()
                self._finish_step(loss, gnorm)
                window_loss += loss.detach()
                window_n += 1
                self.step += 1
                if bar is not None:
                    bar.update(1)
                if governor is not None and (threads := governor.poll()) is not None:
                    note = (f"ddpmlab: other processes use {governor.changes[-1][2]:.1f} of "
                            f"{governor.cores} cores: training on {threads} thread"
                            f"{'s' if threads > 1 else ''} (DDPMLAB_THREADS=fixed keeps "
                            f"{governor.max_threads})")
                    (bar.write if bar is not None else self.log)(note)
                if sizing and self.step in BUDGET_WINDOW:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    marks[self.step] = time.perf_counter()
                    if self.step == BUDGET_WINDOW[1]:
                        self._size_by_time(marks, t_start, bar)
                        tc = self.cfg.train
                        sizing = False
                if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                    mean_loss = float(D.all_reduce_mean(window_loss / window_n))
                    dt = time.perf_counter() - window_t0
                    rec = {"step": self.step, "loss": mean_loss, "lr": lr_at(self.step - 1, tc),
                           "grad_norm": float(gnorm), "steps_per_s": window_n / dt,
                           "images_per_s": window_n * tc.batch_size / dt,
                           "elapsed_s": time.perf_counter() - t_start,
                           "skipped_steps": self.skipped, "threads": torch.get_num_threads()}
                    last_loss = mean_loss
                    if self.dist.is_main:
                        self.run.append_metrics(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4f}")
                    window_loss.zero_()
                    window_n, window_t0 = 0, time.perf_counter()
                if (tc.sample_every and self.step % tc.sample_every == 0
                        and self.on_sample is not None and self.dist.is_main):
                    self.on_sample(self, self.step)
                if self.step % tc.ckpt_every == 0:
                    self.save()
                if tc.time_limit_min and time.perf_counter() - t_start > tc.time_limit_min * 60:
                    stopped_by = "time limit"
                if self._stop is not None:
                    stopped_by = self._stop
                if stopped_by is not None:
                    break
            # A run resumed at its last step (e.g. max_steps reached) already has this
            # checkpoint; the decision is the same on every rank (save() has a barrier). The
            # signal handlers stay until it is written: a SIGTERM now waits for the save.
            if self._saved is None or self._saved[0] != self.step:
                self.save()
            if stopped_by is None and self._stop is not None:
                stopped_by = self._stop
        finally:
            if bar is not None:
                bar.close()
            self._restore_signal_handlers(handlers)
            if governor is not None:
                governor.restore()
            if flushing:
                torch.set_flush_denormal(False)
        ckpt = self._saved[1]
        return TrainResult(self.run_dir, self.step, last_loss, time.perf_counter() - t_start,
                           ckpt, None, stopped_by, self.skipped)

    def _size_by_time(self, marks: dict[int, float], t_start: float, bar) -> None:
        """Set ``max_steps`` from the timed steps (rank 0's clock, on every rank) and write it
        to ``config.json`` with ``time_budget_min`` 0: that file (or ``--max-steps N``) repeats
        the run step for step. The choice is printed and kept in the run's metrics."""
        tc = self.cfg.train
        a, b = BUDGET_WINDOW
        per_step = (marks[b] - marks[a]) / (b - a)
        elapsed = marks[b] - t_start
        n = steps_within(tc.time_budget_min * 60, elapsed, self.step, per_step, tc.max_steps)
        n = int(D.broadcast_object(n))
        self.cfg = replace(self.cfg, train=replace(tc, max_steps=n, time_budget_min=0.0))
        capped = " (the max_steps cap)" if n == tc.max_steps else ""
        msg = (f"ddpmlab: time budget {tc.time_budget_min:g} min: {1 / per_step:.2f} steps/s "
               f"(steps {a}-{b}) -> max_steps {n}{capped}; --max-steps {n} repeats this run")
        if bar is not None:  # (rank 0 only)
            bar.total = n
            bar.refresh()
        (bar.write if bar is not None else self.log)(msg)
        if self.dist.is_main:
            self.run.write_config(self.cfg.to_json())
            self.run.append_metrics({"event": "time_budget", "time": time.time(),
                                     "budget_min": tc.time_budget_min, "timed_steps": [a, b],
                                     "steps_per_s": 1 / per_step, "elapsed_s": elapsed,
                                     "max_steps": n, "cap": tc.max_steps})

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self._stop = signal.Signals(signum).name

        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in old:
            signal.signal(s, handler)
        return old

    def _restore_signal_handlers(self, old) -> None:
        if old:
            for s, h in old.items():
                signal.signal(s, h)
