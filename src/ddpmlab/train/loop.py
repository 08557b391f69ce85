"""The Trainer: the training loop, and the machinery around the seed's step.

The arithmetic of a step is :func:`ddpmlab.train.step.training_losses`; around it this module
keeps the optimizer, EMA, mixed precision, gradient accumulation, DDP and checkpoints. The other
jobs a training run needs are one object each, entered together in :meth:`Trainer._train`:

* the run directory's lifecycle (lock, new / resume / ``--force``): :class:`ddpmlab.session.
  RunSession`;
* sizing a run by time: :class:`ddpmlab.train.budget.TimeBudget`;
* what the run reports (progress bar, ``metrics.jsonl``, TensorBoard): the listeners of
  :mod:`ddpmlab.train.events`;
* the data order: :class:`ddpmlab.train.order.BatchOrder`; the checks before the first
  allocation: :mod:`ddpmlab.train.setup`.

Conventions that make runs reproducible:

* ``train.batch_size`` is the **global** batch: per optimizer step, over every rank and every
  accumulation micro-batch. Each rank takes its own contiguous slice of it.
* The data order is a pure function of (seed, step) (:mod:`ddpmlab.train.order`).
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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..data import ImageData, load_dataset, to_model_range
from ..data.augment import apply_augment, encode
from ..device import (
    ThreadGovernor,
    autocast,
    flush_denormal,
    format_size,
    governed_threads,
    precision_reason,
    process_device,
    resolve_device,
    resolve_precision,
)
from ..errors import CheckpointError, DDPMLabError
from ..layout import RunDir
from ..losses import LossHistory, importance_weights
from ..objectives import build as build_objective
from ..recipe import after_sizing
from ..session import RunSession
from . import distributed as D
from .budget import RunWork, TimeBudget
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
from .events import Listener, Listeners, MetricsLog, ProgressBar, TensorBoardLog
from .optim import lr_at, make_optimizer
from .order import BatchOrder
from .phema import PhemaListener, snapshot_bytes
from .setup import (
    build_model,
    check_batch,
    check_same_run,
    check_tensorboard,
    check_training_memory,
    resolve_config,
)
from .signals import stop_on_signals
from .step import StepRandomness, draw, training_losses


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


class Trainer:
    """Train a UNet on ``cfg.data``; write everything to ``run_dir``.

    ``resume=True`` continues the newest complete checkpoint in ``run_dir`` exactly.
    ``force=True`` allows ``run_dir`` to hold another run (it is replaced once this run has a
    checkpoint). ``on_sample(trainer, step)`` is called on rank 0 every ``train.sample_every``
    steps (the run layer draws a grid there and returns its path, which the listeners get; the
    trainer itself draws nothing). ``listeners``: factories ``make(trainer) -> Listener`` of
    more outputs on the main process (the run layer's copy watch), entered with the others.
    """

    def __init__(self, cfg: Config, run_dir: str | os.PathLike, *, resume: bool = False,
                 force: bool = False, progress: bool = True, data: ImageData | None = None,
                 log: Callable[[str], None] = print,
                 on_sample: Callable[[Trainer, int], Path | None] | None = None,
                 listeners: tuple[Callable[[Trainer], Listener], ...] = ()):
        self.run = RunDir(run_dir)
        self.listener_factories = listeners  # the run layer's outputs: each gets the trainer
        self.run_dir = self.run.root
        self.progress = progress
        self.on_sample = on_sample
        self.device = resolve_device(cfg.train.device)
        self.dist = D.init(self.device.type)
        self.device = process_device(self.device, self.dist.world_size, self.dist.local_rank)
        self.log = log if self.dist.is_main else (lambda msg: None)
        self.session = RunSession(self.run, resume=resume, force=force, log=self.log,
                                  active=self.dist.is_main)
        problem = None
        try:
            self.session.check(prepare_resume=lambda: clean_partial(self.run_dir))
        except DDPMLabError as e:  # rank 0 alone inspects the folder; every rank learns why
            problem = e
        if (problem := D.broadcast_object(problem)) is not None:
            raise problem
        try:
            self._set_up(cfg, resume, data)
        except BaseException:
            self.close()
            raise

    def _set_up(self, cfg: Config, resume: bool, data: ImageData | None) -> None:
        self.data = data if data is not None else load_dataset(cfg.data, "train")
        cfg = resolve_config(cfg, self.data, self.log)
        if resume:
            check_same_run(self.run.read_config(), cfg, self.run.config)
        self.cfg = cfg
        check_batch(cfg, self.data, self.dist.world_size)
        check_training_memory(cfg, self.dist.world_size, self.device)
        if self.dist.is_main:
            check_tensorboard(cfg)
        self.objective = build_objective(cfg.diffusion, cfg.model.learn_sigma)
        self.schedule = self.objective.schedule()
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
        self.order = BatchOrder(cfg.train.seed, len(self.data), cfg.train.batch_size)
        self.step = 0
        self.skipped = 0
        self._stop: str | None = None
        self._saved: tuple[int, Path | None] | None = None  # (step, folder) of the newest save
        self._grid_step: int | None = None                  # the step of the newest grid
        self.events: Listener = Listeners([])
        if resume:
            self._load_latest()
            if self.dist.is_main:
                self.run.trim_metrics()
        else:
            # Only now, with the data read and the model built, is an old run (--force) moved
            # aside: a bad input fails above and leaves it as it was.
            self.session.start(cfg.to_json())
        D.barrier()

    def close(self) -> None:
        """Release the run directory (also done at the end of :meth:`train`); a run that
        --force replaced and that this one never superseded with a checkpoint is put back."""
        self.session.close()

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
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            raise CheckpointError(f"{self.run_dir}: holds no complete checkpoint to resume from")
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
        guide = self.cfg.own_guide_step()
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
                                   keep_last=self.cfg.train.keep_last,
                                   keep=() if guide is None else (guide,))
        D.barrier()
        self._saved = (self.step, path)
        if path is not None:  # superseded: a run --force replaced can go
            self.session.committed()
            self.events.checkpoint(self.step, path)
            if self.step == guide:
                self.events.note(f"ddpmlab: {path.name} kept as the autoguidance guide "
                                 f"(sample.guide={self.cfg.sample.guide})")
        return path

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        return autocast(self.precision, self.device)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the global batch; returns (loss, grad_norm) tensors."""
        tc = self.cfg.train
        B, world, accum = tc.batch_size, self.dist.world_size, tc.grad_accum
        idx = self.order.indices(self.step).to(self.device)
        shape = tuple(self.images.shape[1:])
        probs = self.loss_history.probs() if self.loss_history is not None else None
        rnd = draw(self.gen, B, shape, self.objective, self.device, self.cfg.data.p_uncond,
                   t_probs=probs, augment=tc.augment)
        weights = None if probs is None else importance_weights(probs, rnd.level)  # 1/(T p_t)
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
            x0, y, aug = self._micro_batch(idx[sl], r)
            if m == 0 and self._compile_pending:
                self._settle_compile(x0, r.level, y)
            sync = contextlib.nullcontext()
            if self.dist.enabled and m < accum - 1:
                sync = self.net.no_sync()
            with sync:
                with self._autocast():
                    per = training_losses(self.net, self.objective, self.sched_dev, x0,
                                          r.level, r.eps, y, aug)
                    loss = (per if weights is None else per * weights[sl].to(per.dtype)).mean()
                self.scaler.scale(loss / accum).backward()
            loss_sum = loss_sum + loss.detach() / accum
            per_sample.append(per.detach())
        if self.loss_history is not None:  # every rank's terms, in the global batch's order
            self._step_losses = (rnd.level, D.all_gather_cat(torch.cat(per_sample)))
        self.scaler.unscale_(self.opt)
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return loss_sum, gnorm

    def _micro_batch(self, idx: torch.Tensor, r: StepRandomness
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The images ``idx`` in the model's range (``data.hflip``'s flips, then the
        augmentation's transforms), their labels (some dropped to the null class) and their
        augmentation labels: given whenever the network takes them (zeros when nothing was
        drawn: under DDP every parameter must take part in every step)."""
        cfg = self.cfg
        x0 = to_model_range(self.images[idx])
        if cfg.data.hflip:
            x0 = torch.where(r.flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        aug = None
        if cfg.model.augment_dim:
            params = r.augment
            if params is None:       # augmentation off: every image "unchanged"
                params = torch.zeros((x0.shape[0], 4), dtype=torch.long, device=x0.device)
            else:
                x0 = apply_augment(x0, params)
            aug = encode(params, x0.shape[-1]).to(x0.device)
        if cfg.train.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        y = None
        if self.labels is not None:
            y = torch.where(r.drop, cfg.model.null_class, self.labels[idx])
        return x0, y, aug

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

    @property
    def _saved_step(self) -> int | None:
        return None if self._saved is None else self._saved[0]

    def _kept(self) -> str:
        if self._saved is not None and self._saved[1] is not None:
            return f"the last checkpoint {self._saved[1]} is intact"
        if self.session.replacing:
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
        t_start = time.perf_counter()
        budget = TimeBudget(self.cfg.train.time_budget_min, self.cfg.train.max_steps, self.step)
        if budget.skipped:
            self.log(budget.skipped)
        if not budget.active:   # (a budget not applied: the recipe's late keys by max_steps)
            self.cfg, decided = after_sizing(self.cfg)
            if decided:
                self.log(decided)
                if self.dist.is_main:
                    self.run.write_config(self.cfg.to_json())
        window = _LossWindow(self.device)
        stopped_by: str | None = None
        with contextlib.ExitStack() as stack:
            self.events = stack.enter_context(self._listeners(budget))
            stack.enter_context(self._signal_handlers())
            governor = stack.enter_context(governed_threads(self.device))
            stack.enter_context(flush_denormal(self.device))
            self.model.train()
            while self.step < self.cfg.train.max_steps:
                loss, gnorm = self.train_step()
                self._finish_step(loss, gnorm)
                window.add(loss)
                self.step += 1
                self.events.step(self.step)
                self._poll_threads(governor)
                self._poll_budget(budget, t_start)
                if window.due(self.step, self.cfg.train):
                    self.events.log(window.record(self, gnorm, t_start))
                self._maybe_sample()
                due = self.step % self.cfg.train.ckpt_every == 0 or \
                    self.step == self._guide_step(budget)
                if due and self._saved_step != self.step:  # (the timed one at step 40)
                    self.save()
                if (stopped_by := self._stopped_by(t_start)) is not None:
                    break
            # A run resumed at its last step (e.g. max_steps reached) already has this
            # checkpoint; the decision is the same on every rank (save() has a barrier). The
            # signal handlers stay until it is written: a SIGTERM now waits for the save.
            if self._saved_step != self.step:
                self.save()
            stopped_by = stopped_by or self._stop
        self.events = Listeners([])
        return TrainResult(self.run_dir, self.step, window.last_loss,
                           time.perf_counter() - t_start, self._saved[1], None, stopped_by,
                           self.skipped)

    # ------------------------------------------------------------------ the loop's parts
    @contextlib.contextmanager
    def _listeners(self, budget: TimeBudget) -> Iterator[Listener]:
        """The progress bar, ``metrics.jsonl``, (``train.tensorboard``) TensorBoard and
        (``train.phema``) the post-hoc EMA's snapshots, on the main process; the others report
        nothing."""
        listeners: list[Listener] = []
        if self.dist.is_main:
            listeners = [ProgressBar(self.progress, self.log), MetricsLog(self.run)]
            if self.cfg.train.tensorboard:
                listeners.append(TensorBoardLog(self.run.tensorboard))
            if self.cfg.train.phema:
                listeners.append(self._phema())
            listeners += [make(self) for make in self.listener_factories]
        events = Listeners(listeners)
        try:
            events.start(self.step, None if budget.active else self.cfg.train.max_steps,
                         {"setting": self.cfg.train.precision, "precision": self.precision,
                          "reason": self.precision_reason})
            yield events
        finally:
            events.close()

    def _phema(self) -> Listener:
        """The post-hoc EMA listener (:mod:`ddpmlab.train.phema`), its storage cost said once."""
        tr = self.cfg.train
        listener = PhemaListener(self.model, self.run, tr.phema_sigma_rels, tr.phema_every)
        count = math.ceil(tr.max_steps / tr.phema_every)
        self.log(f"post-hoc EMA: sigma_rel {', '.join(f'{s:g}' for s in tr.phema_sigma_rels)}, "
                 f"a snapshot every {tr.phema_every} steps and at each checkpoint: about "
                 f"{format_size(snapshot_bytes(self.model, len(tr.phema_sigma_rels)) * count)} "
                 f"in {self.run.phema} for {count} snapshots")
        return listener

    def _signal_handlers(self) -> contextlib.AbstractContextManager:
        """SIGINT and SIGTERM finish the current step, save, and stop."""
        return stop_on_signals(lambda name: setattr(self, "_stop", name))

    def _guide_step(self, budget: TimeBudget) -> int | None:
        """The step whose checkpoint ``sample.guide = "@F"`` names (kept past
        ``train.keep_last``), once ``max_steps`` is final (a time budget sizes it first)."""
        return None if budget.active else self.cfg.own_guide_step()

    def _poll_threads(self, governor: ThreadGovernor | None) -> None:
        if governor is not None and (threads := governor.poll()) is not None:
            self.events.note(governor.change_note(threads))

    def _poll_budget(self, budget: TimeBudget, t_start: float) -> None:
        """At the end of the timed steps, set ``max_steps`` (rank 0's clock, on every rank) and
        write it to ``config.json`` with ``time_budget_min`` 0: that file (or ``--max-steps
        N``) repeats the run step for step. The choice is printed and kept in the metrics."""
        sizing = budget.after_step(self.step, t_start, self.device)
        if sizing is None:
            return
        sizing = D.broadcast_object(sizing.with_work(self._timed_work(), time.perf_counter()
                                                     - t_start))
        tc = self.cfg.train
        self.cfg, decided = after_sizing(replace(
            self.cfg, train=replace(tc, max_steps=sizing.max_steps, time_budget_min=0.0)))
        self.events.resize(sizing)
        self.events.note(sizing.message)
        if decided:                     # (the recipe's keys that waited for the length)
            self.events.note(decided)
        guide = self.cfg.own_guide_step()
        if guide is not None and guide < self.step:
            self.events.note(f"ddpmlab: sample.guide={self.cfg.sample.guide} names step {guide}"
                             f" of {sizing.max_steps}, already passed while the steps were "
                             "timed: no guide checkpoint is kept (give a larger fraction)")
        if self.dist.is_main:
            self.run.write_config(self.cfg.to_json())

    def _timed_work(self) -> RunWork:
        """The work besides the steps, done once now (the last timed step) and timed: a
        checkpoint with its listeners, and a training grid when ``train.sample_every`` asks for
        them (:mod:`ddpmlab.train.budget`). Every rank saves (save() has a barrier); rank 0's
        clock sizes the run."""
        tc = self.cfg.train
        t0 = time.perf_counter()
        self.save()
        t1 = time.perf_counter()
        if tc.sample_every:
            self._maybe_sample(force=True)
        t2 = time.perf_counter()
        return RunWork(t1 - t0, tc.ckpt_every, self.cfg.own_guide_step,
                       t2 - t1 if tc.sample_every else 0.0, tc.sample_every)

    def _maybe_sample(self, force: bool = False) -> None:
        every = self.cfg.train.sample_every
        due = force or (every and self.step % every == 0 and self._grid_step != self.step)
        if due and self.on_sample is not None and self.dist.is_main:
            self._grid_step = self.step
            path = self.on_sample(self, self.step)
            if path is not None:
                self.events.samples(self.step, Path(path))

    def _stopped_by(self, t_start: float) -> str | None:
        """A signal's name, "time limit" past ``train.time_limit_min``, or None: go on."""
        if self._stop is not None:
            return self._stop
        limit = self.cfg.train.time_limit_min
        if limit and time.perf_counter() - t_start > limit * 60:
            return "time limit"
        return None


class _LossWindow:
    """The losses since the last log record, summed on the device (one host sync per record)."""

    def __init__(self, device: torch.device) -> None:
        self.sum = torch.zeros((), device=device)
        self.n = 0
        self.t0 = time.perf_counter()
        self.last_loss = float("nan")

    def add(self, loss: torch.Tensor) -> None:
        self.sum += loss.detach()
        self.n += 1

    def due(self, step: int, tc) -> bool:
        return step % tc.log_every == 0 or step == tc.max_steps

    def record(self, trainer: Trainer, gnorm: torch.Tensor, t_start: float) -> dict[str, Any]:
        """The metrics record of the window (a collective on every rank), then a new window."""
        tc = trainer.cfg.train
        mean_loss = float(D.all_reduce_mean(self.sum / self.n))
        dt = time.perf_counter() - self.t0
        rec = {"step": trainer.step, "loss": mean_loss, "lr": lr_at(trainer.step - 1, tc),
               "grad_norm": float(gnorm), "steps_per_s": self.n / dt,
               "images_per_s": self.n * tc.batch_size / dt,
               "elapsed_s": time.perf_counter() - t_start,
               "skipped_steps": trainer.skipped, "threads": torch.get_num_threads()}
        self.last_loss = mean_loss
        self.sum.zero_()
        self.n, self.t0 = 0, time.perf_counter()
        return rec
