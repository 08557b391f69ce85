r"""``ddpmlab distill``: a few-step student of a trained run, written as a new run.

The math and one training routine per method are :mod:`ddpmlab.train.distill`'s; this module
loads the teacher, builds the student and its config, runs the stages in chunks between
checkpoints (progress bar and ``metrics.jsonl`` through the trainer's listeners), sizes them by
time, resumes, and records the teacher. The decisions:

**Progressive** (``--method progressive --to K``). The teacher walks 2S DDIM steps (``trailing``
indices) where S is the largest power of two with 2S <= its ``sample.steps`` (0: T); the first
student takes S steps, each next stage halves them, down to K (a power of two, K <= S). Every
student starts as a copy of its teacher's weights: stage 1 of the teacher run's EMA weights,
stage k + 1 of stage k's final student, which is then its teacher. What the student predicts:
a ``ddpm`` teacher predicting ``v`` or ``x0`` gives a student of the same prediction (its
weights are 1:1); an ``eps`` teacher gives a ``v`` student whose output head is
**reinterpreted**: the copied network's eps output is read as v (v = alpha eps - sigma x0
equals eps where alpha -> 1, so the student starts right at low noise and wrong at high noise,
which the first stage's loss teaches; eps cannot be a student's output, Salimans & Ho 2022
sec. 4). An ``edm`` / ``flow`` teacher gives a student of its own objective, distilled through
its x0 view (weights 1:1). Each stage has a fresh Adam whose learning rate falls linearly from
``--lr`` to 0 over the stage (``--lr-schedule linear``, the default for this method, measured
against a constant rate in BENCHMARKS.md §11: the last iterations' small steps average out the
noise of the earlier ones, as an EMA would; ``constant`` keeps ``--lr``); there is no EMA
(the checkpoint's ``ema.safetensors`` is the student). The student's config samples with
``ddim``, ``steps`` K, ``spacing`` trailing, eta 0: the very indices it was taught.

**Consistency** (``--method consistency --to K``): one stage of consistency distillation (Heun
teacher steps between adjacent levels of an 18-level Karras grid, EMA target with mu = 0.95,
pseudo-Huber loss, a constant ``--lr`` by default, as Song et al.), the student a
``diffusion.objective: consistency`` run with the teacher's T, sampled by the ``consistency``
sampler with ``steps`` K (1..T). The student's network F sees EDM's input (c_in x, ln(s) / 4),
so it starts from the teacher's weights only for an ``edm`` teacher (the same input and, above
sigma ~0.01, the same c_skip / c_out: 1:1); for a ``ddpm`` / ``flow`` teacher (another input
and time embedding) it starts fresh, initialised from ``--seed``. Its ``ema.safetensors`` is
the EMA target network (what ``sample`` reads).

A ``consistency`` teacher serves neither method (its f is no ODE denoiser): one line.

**Guidance** is distilled, not re-applied: the stage-1 teacher (and the consistency teacher) is
classifier-free guided at the run's ``sample.guidance`` w with each training image's label
(:func:`ddpmlab.train.distill.guided`); later stages' teachers are students that already carry
it. The student is conditional and samples with guidance 1 (one network evaluation per step);
``distill.json`` records w. The teacher's autoguidance settings are not distilled (the student's
``sample.guide`` is empty).

**Stage lengths.** ``--iterations N``: N optimizer steps per stage (default
:data:`DEFAULT_ITERATIONS`). ``--time-budget MIN``: every stage gets the same iterations, as many
as fit in the budget (``--iterations`` then caps them; default cap :data:`BUDGET_CAP`).
Iterations 5-40 of the first stage are timed. A later progressive stage's iteration costs less
when the first stage's teacher is guided: its two teacher steps are two network passes each
(conditional and unconditional), a later teacher (a student carrying the guidance) one. That
saving is timed too, right after iteration 40 (:meth:`Distillation._later_saving_s`: three
calls of the guided teacher against three unguided, on a batch drawn from a separate
generator, so the distillation's own draws are those of an unsized run), and the iterations
per stage are those whose time, stage 1 at its measured speed and the others at theirs, fills
the budget (:func:`iterations_per_stage`; on the main job's AMX machine: 0.51 s per iteration
in stage 1, 0.38 s later, 13% more iterations than an even split by stage 1's speed). The choice is
written to ``distill.json`` (time budget 0), so a resume and ``--iterations N`` repeat it.

**Files.** The new run is a normal run directory: ``config.json`` (the student's), the
trainer's checkpoint folders (model = the student, ema, the optimizer, the RNG states,
``state.json`` whose ``step`` counts iterations over all stages, with its stage), and
``metrics.jsonl``; plus ``distill.json`` (:class:`Plan`: the teacher's run, checkpoint and
sha256 of its EMA weights, the guidance, the stages, their length, and how many are complete)
and, past the first progressive stage, the stage's teacher in each checkpoint
(``train.checkpoint.TEACHER_WEIGHTS``). A checkpoint is written every ``--ckpt-every``
iterations and at each stage's end; ``--resume NEW`` continues from the newest exactly (a stage
boundary takes the path an uninterrupted run takes), after checking that the teacher's weights
are those recorded. SIGINT / SIGTERM finish the iteration, save and stop. The run directory's
lifecycle (lock, ``--force`` replacing only a run) is :class:`~ddpmlab.session.RunSession`'s, as
for ``train --out``; never the teacher itself.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import BUDGET_WINDOW, Config, DiffusionConfig
from .data import load_dataset, to_model_range
from .device import ThreadGovernor, check_memory, flush_denormal, governed_threads
from .errors import CheckpointError, ConfigError
from .forward import q_sample
from .io import atomic_write_text, read_json
from .layout import RunDir
from .nn import UNet
from .objectives import EDM_SIGMA_MAX
from .outputs import check_protected
from .runs import load_run, run_schedule, sampler_view
from .samplers import SAMPLERS
from .session import RunSession
from .train.budget import TimeBudget
from .train.checkpoint import (
    TEACHER_WEIGHTS,
    clean_partial,
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from .train.distill import (
    ConsistencySetup,
    Predictor,
    check_student_steps,
    consistency_stage,
    guided,
    halving_plan,
    progressive_stage,
    ve_denoiser,
)
from .train.events import Listener, Listeners, MetricsLog, ProgressBar
from .train.signals import stop_on_signals

METHODS = ("progressive", "consistency")
DEFAULT_ITERATIONS = 1000     # per stage, without --time-budget
BUDGET_CAP = 100_000          # per stage, with --time-budget and no --iterations
CD_LEVELS = 18                # consistency distillation's Karras grid (the paper's CIFAR-10 N)
LR_SCHEDULES = ("linear", "constant")
DEFAULT_LR_SCHEDULE = {"progressive": "linear", "consistency": "constant"}
LATER_FIELDS = {"lr_schedule"}  # Plan fields added after plans were written (absent: default)
SIGNALS = ("SIGINT", "SIGTERM")


# ============================================================================ request, result
@dataclass(frozen=True)
class DistillRequest:
    """``ddpmlab distill``: distil ``teacher`` (a run directory) by ``method`` to ``to`` steps
    into the new run ``out`` (default ``TEACHER-METHODK`` beside it), or continue the run
    ``resume`` (then ``teacher``, ``method``, ``to`` and the stage settings are its own). Left
    None: ``lr`` and ``batch_size`` are the teacher's ``train.*``, ``ckpt_every`` is
    ``iterations`` (one checkpoint per stage)."""

    teacher: str | os.PathLike | None = None
    method: str | None = None
    to: int | None = None
    out: str | os.PathLike | None = None
    resume: str | os.PathLike | None = None
    iterations: int | None = None
    time_budget: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    ckpt_every: int | None = None
    lr_schedule: str | None = None
    seed: int = 0
    force: bool = False
    progress: bool = True


@dataclass(frozen=True)
class DistillResult:
    """What :func:`distill_command` did: the new run, its newest checkpoint, the plan, the
    iteration it started from and reached, seconds, the last logged loss, and the signal that
    stopped it (None: complete)."""

    run: Path
    checkpoint: Path | None
    plan: Plan
    start: int
    step: int
    seconds: float
    loss: float
    stopped_by: str | None

    @property
    def nfe(self) -> int:
        """Network evaluations per image of the student's sampler at its steps."""
        sampler = "ddim" if self.plan.method == "progressive" else "consistency"
        return SAMPLERS[sampler].info.nfe(self.plan.to)


@dataclass
class Plan:
    """``distill.json``: what a distillation is and how far it got."""

    method: str
    to: int
    stages: list[int]            # each stage's student steps (consistency: [K])
    iterations: int              # per stage
    time_budget_min: float       # 0 once sized (or without a budget)
    lr: float
    batch_size: int
    ckpt_every: int
    seed: int
    guidance: float              # the teacher's CFG weight distilled into the student
    init: str                    # "teacher" (its weights) | "fresh" (seeded)
    teacher: dict[str, Any]      # run, checkpoint, sha256, objective, prediction, steps
    completed_stages: int = 0
    lr_schedule: str = "constant"  # | "linear": lr -> 0 over each stage (absent: constant)

    def lr_at(self, step: int) -> float:
        """Adam's learning rate for the iteration after ``step`` iterations in all (linear:
        ``lr (1 - j / iterations)`` after j iterations of the stage)."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * (1.0 - (step % self.iterations) / self.iterations)

    @property
    def total(self) -> int:
        return self.iterations * len(self.stages)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @classmethod
    def read(cls, path: Path) -> Plan:
        """Strictly: one line naming ``path`` for a missing file or anything else than what
        :meth:`to_json` writes."""
        if not path.is_file():
            raise CheckpointError(f"{path.parent}: not a distilled run (no {path.name}); a "
                                  "training run continues with ddpmlab train --resume")
        d = read_json(path)
        names = [f.name for f in dataclasses.fields(cls)]
        try:
            plan = cls(**{k: d[k] for k in names if k in d or k not in LATER_FIELDS})
            ok = (plan.method in METHODS and isinstance(plan.stages, list) and plan.stages
                  and plan.lr_schedule in LR_SCHEDULES
                  and all(isinstance(v, int) and v >= 1 for v in [*plan.stages, plan.iterations,
                                                                   plan.ckpt_every, plan.to])
                  and isinstance(plan.teacher, dict)
                  and {"run", "checkpoint", "sha256"} <= set(plan.teacher))
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise CheckpointError(f"{path}: not as ddpmlab distill writes it (it needs "
                                  f"{', '.join(names)})")
        return plan


# ============================================================================ the teacher
@dataclass
class Teacher:
    """The teacher run's EMA network (frozen), its config, checkpoint and weights' sha256."""

    net: nn.Module
    cfg: Config
    checkpoint: Path
    sha256: str

    def predictor(self, w: float, device: torch.device | str) -> tuple[Predictor, Any]:
        """(the teacher as the samplers see it, guided at ``w`` towards each image's label,
        its schedule on ``device``)."""
        sched = run_schedule(self.cfg)
        model, prediction = sampler_view(self.net, self.cfg, sched.to(device))
        if self.cfg.model.num_classes and w != 1.0:
            model = guided(model, w, self.cfg.model.null_class)
        return Predictor(model, prediction, self.cfg.model.learn_sigma), sched


def weights_sha256(ckpt: Path) -> str:
    """The sha256 of a checkpoint's EMA weights (what a distillation learns from)."""
    h = hashlib.sha256()
    with open(ckpt / "ema.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_teacher(run: str | os.PathLike, device: torch.device | str,
                 checkpoint: Path | None = None, sha256: str | None = None) -> Teacher:
    """The teacher's EMA weights (``checkpoint``: that folder; default its newest); with
    ``sha256``, one line when they are not the weights recorded."""
    net, cfg, ckpt = load_run(run, use_ema=True, device=device, checkpoint=checkpoint)
    digest = weights_sha256(ckpt)
    if sha256 is not None and digest != sha256:
        raise CheckpointError(f"{ckpt / 'ema.safetensors'}: not the teacher this distillation "
                              f"started from (sha256 {digest[:16]}..., recorded "
                              f"{sha256[:16]}...); start a new one with --force")
    return Teacher(net.eval().requires_grad_(False), cfg, ckpt, digest)


# ============================================================================ the plan
def teacher_steps(cfg: Config) -> int:
    """The steps the teacher run samples with (``sample.steps``; 0: all T)."""
    return cfg.sample.steps or cfg.diffusion.timesteps


def check_method(method: str | None, cfg: Config, run: Path) -> str:
    """``method`` if it applies to the teacher run ``cfg``, else one line."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if cfg.diffusion.objective == "consistency":
        raise ConfigError(f"--method {method}: {run} is a consistency model (diffusion."
                          "objective=consistency), no ODE teacher; distil the run it came from")
    if method == "consistency":
        s_max = float(run_schedule(cfg).sigmas[-1])
        if s_max < EDM_SIGMA_MAX * (1 - 1e-9):
            raise ConfigError(f"--method consistency: {run}'s noise levels end at sigma "
                              f"{s_max:.4g}, below the consistency student's {EDM_SIGMA_MAX:g}"
                              " (EDM's sigma_max, where its one step starts)")
    return method


def plan_stages(method: str, K: Any, cfg: Config) -> list[int]:
    """The students' steps, one per stage (module docstring), or one line for ``--to K``."""
    T = cfg.diffusion.timesteps
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ConfigError(f"--to {K!r}: give the student's steps, an integer >= 1")
    if method == "consistency":
        if K > T:
            raise ConfigError(f"--to {K}: more steps than the student's T={T} noise levels")
        return [K]
    try:
        check_student_steps(K, T)
    except ValueError as e:
        raise ConfigError(f"--to {K}: {e}") from None
    steps = teacher_steps(cfg)
    first = 1 << int(math.log2(steps // 2)) if steps >= 2 else 0
    if K > first:
        fix = f"give --to {first} or fewer" if first else "nothing to halve"
        raise ConfigError(f"--to {K}: the teacher samples with {steps} step(s) (sample.steps), "
                          f"so its first student takes {first} (half the largest power of two "
                          f"<= {steps}); {fix}")
    return halving_plan(first, K)


def student_config(cfg: Config, method: str, K: int) -> Config:
    """The student's config (module docstring): the teacher's, with the prediction or
    objective the method needs and ``sample`` set so that ``ddpmlab sample`` draws K steps
    with guidance 1."""
    sample = replace(cfg.sample, steps=K, spacing="trailing", guidance=1.0, guide="",
                     guide_weight=1.0, guidance_interval=())
    if method == "progressive":
        dif = cfg.diffusion
        if dif.objective == "ddpm" and dif.prediction == "eps":
            dif = replace(dif, prediction="v")
        out = replace(cfg, diffusion=dif, sample=replace(sample, sampler="ddim", eta=0.0))
    else:
        dif = DiffusionConfig(timesteps=cfg.diffusion.timesteps, objective="consistency",
                              sigma_data=cfg.diffusion.sigma_data)
        out = replace(cfg, model=replace(cfg.model, learn_sigma=False), diffusion=dif,
                      sample=replace(sample, sampler="consistency", eta=None))
    return Config.from_dict(out.to_dict(), "the student's config")


def check_distill_memory(cfg: Config, batch: int, device: torch.device | str) -> None:
    """One line, before anything is allocated: teacher, student, gradients, Adam's moments and
    the EMA / stage teacher (24 bytes a parameter) and twice the training activations."""
    m = cfg.model
    with torch.device("meta"):
        n_params = sum(p.numel() for p in UNet(m).parameters())
    act = 4.0 * batch * m.base_channels * m.image_size ** 2 * 4 * m.num_res_blocks \
        * len(m.channel_mult)
    check_memory(24.0 * n_params + 2 * act,
                 f"distilling this model ({n_params:,} parameters: teacher and student, batch "
                 f"{batch} of {m.in_channels}x{m.image_size}x{m.image_size})", device)


def _check_numbers(req: DistillRequest) -> None:
    for flag, v in (("--iterations", req.iterations), ("--batch-size", req.batch_size),
                    ("--ckpt-every", req.ckpt_every)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{flag}={v} must be an integer >= 1")
    for flag, v in (("--lr", req.lr), ("--time-budget", req.time_budget)):
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"{flag}={v} must be a finite number > 0")
    if req.lr_schedule is not None and req.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"--lr-schedule={req.lr_schedule} must be one of "
                          f"{', '.join(LR_SCHEDULES)}")


def iterations_per_stage(fit: int, first_s: float, later_s: float, stages: int,
                         done: int) -> int:
    """Iterations per stage under a time budget (module docstring, Stage lengths): ``fit``
    first-stage iterations fit in the budget from iteration 0 (the budget's ``max_steps``, of
    which ``done`` are done); the first stage's take ``first_s`` seconds each, every later
    stage's ``later_s``. The most N with (N - done) first_s + (stages - 1) N later_s <=
    (fit - done) first_s, at least ``done``."""
    per = fit * first_s / (first_s + (stages - 1) * later_s)
    return max(done, int(per + 1e-9))


def make_plan(req: DistillRequest, teacher: RunDir, cfg: Config) -> Plan:
    """The plan of a new distillation from the request and the teacher's config (every input
    checked, nothing read but the config)."""
    _check_numbers(req)
    method = check_method(req.method, cfg, teacher.root)
    stages = plan_stages(method, req.to, cfg)
    budget = req.time_budget or 0.0
    iterations = req.iterations or (BUDGET_CAP if budget else DEFAULT_ITERATIONS)
    w = cfg.sample.guidance if cfg.model.num_classes else 1.0
    init = "teacher" if method == "progressive" or (
        cfg.diffusion.objective == "edm" and not cfg.model.learn_sigma) else "fresh"
    return Plan(method=method, to=req.to, stages=stages, iterations=iterations,
                time_budget_min=budget, lr=req.lr or cfg.train.lr,
                batch_size=req.batch_size or cfg.train.batch_size,
                ckpt_every=req.ckpt_every or iterations, seed=req.seed, guidance=w, init=init,
                lr_schedule=req.lr_schedule or DEFAULT_LR_SCHEDULE[method],
                teacher={"run": str(teacher.root.resolve()), "checkpoint": "", "sha256": "",
                         "objective": cfg.diffusion.objective,
                         "prediction": cfg.diffusion.prediction, "steps": teacher_steps(cfg)})


# ============================================================================ the loop
class _Session(RunSession):
    """The run session, named as this command in the lock's owner file."""

    @property
    def command(self) -> str:
        return "distill --resume" if self.resume else "distill --force" if self.force \
            else "distill"


def data_fn(cfg: Config, device: torch.device | str) -> Callable:
    """``data(generator, n) -> (x0, y or None)``: n training images of the teacher's data drawn
    with replacement from ``generator`` (CPU), flipped as the run trained (``data.hflip``)."""
    data = load_dataset(cfg.data, "train")
    m = cfg.model
    if tuple(data.shape) != (m.in_channels, m.image_size, m.image_size):
        raise ConfigError(f"{data.source}: images are {'x'.join(map(str, data.shape))}, the "
                          f"teacher's network takes {m.in_channels}x{m.image_size}x"
                          f"{m.image_size}")
    images = data.images
    labels = data.labels if m.num_classes > 0 else None

    def draw(g: torch.Generator, n: int):
        idx = torch.randint(0, len(images), (n,), generator=g)
        x0 = to_model_range(images[idx])
        if cfg.data.hflip:
            flip = torch.rand(n, generator=g) < 0.5
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        return x0.to(device), None if labels is None else labels[idx].to(device)

    return draw


class Distillation:
    """One distillation's loop (module docstring): its stages in order, each in chunks that end
    at a checkpoint, a stage's end or a signal."""

    def __init__(self, plan: Plan, run: RunDir, session: RunSession, teacher: Teacher,
                 cfg: Config, data: Callable, device: torch.device, progress: bool,
                 log: Callable[[str], None]) -> None:
        self.plan, self.run, self.session, self.teacher = plan, run, session, teacher
        self.cfg, self.data, self.device, self.progress, self.log = cfg, data, device, \
            progress, log
        self.sched = run_schedule(cfg).to(device)
        self.gen = torch.Generator().manual_seed(plan.seed + 17)
        self.step = 0
        self.stop: str | None = None
        self.governor: ThreadGovernor | None = None
        self.saved: Path | None = None
        self.window: list[float] = []
        self.last_loss = float("nan")
        self.events: Listener = Listeners([])
        self.student: nn.Module = nn.Module()
        self.target: nn.Module | None = None      # consistency: the EMA target
        self.stage_teacher: nn.Module | None = None  # progressive, past stage 1
        self.opt: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------ networks
    def _net(self, state: dict[str, torch.Tensor] | None, where: Path | None = None) -> nn.Module:
        torch.manual_seed(self.plan.seed)         # (a fresh student's initialisation)
        net = UNet(self.cfg.model).to(self.device)
        if state is not None:
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise CheckpointError(f"{where}: weights do not match the student's config "
                                      f"({str(e).strip().splitlines()[0]})") from None
        return net

    def _adam(self) -> None:
        self.opt = torch.optim.Adam(self.student.parameters(), lr=self.plan.lr_at(self.step))

    def _set_lr(self) -> None:
        """The plan's learning rate for the next iteration (Plan.lr_at)."""
        for group in self.opt.param_groups:
            group["lr"] = self.plan.lr_at(self.step)

    def begin(self) -> None:
        """The networks at iteration 0."""
        if self.plan.init == "teacher":
            self.student = copy.deepcopy(self.teacher.net).requires_grad_(True).train()
        else:
            self.student = self._net(None).train()
        if self.plan.method == "consistency":
            self.target = copy.deepcopy(self.student).requires_grad_(False).eval()
        self._adam()

    def next_stage(self) -> None:
        """A progressive stage boundary: the student becomes the teacher of a copy of itself."""
        self.stage_teacher = self.student.requires_grad_(False).eval()
        self.student = copy.deepcopy(self.stage_teacher).requires_grad_(True).train()
        self._adam()
        self.run.append_metrics({"event": "distill_stage", "time": time.time(),
                                 "step": self.step, "stage": self.step // self.plan.iterations,
                                 "steps": self.plan.stages[self.step // self.plan.iterations]})

    def restore(self, ckpt: Path) -> None:
        """The state of checkpoint ``ckpt`` (a stage boundary continues as an uninterrupted run
        does: :meth:`next_stage`)."""
        files = load_checkpoint(ckpt)
        self.step = int(files["state.json"]["step"])
        self.student = self._net(files["model.safetensors"], ckpt).train()
        if self.plan.method == "consistency":
            self.target = self._net(files["ema.safetensors"], ckpt).requires_grad_(False).eval()
        if TEACHER_WEIGHTS in files:
            self.stage_teacher = self._net(files[TEACHER_WEIGHTS], ckpt).requires_grad_(False)
            self.stage_teacher.eval()
        rng = files["rng.safetensors"]
        self.gen.set_state(rng["train_generator"])
        torch.set_rng_state(rng["torch_cpu"])
        if "torch_cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["torch_cuda"], self.device)
        self.saved = ckpt
        self._adam()
        boundary = self.step % self.plan.iterations == 0
        if self.plan.method == "progressive" and boundary and self.step < self.plan.total:
            self.next_stage()
        elif not boundary:
            optimizer_from_tensors(self.opt, files["optimizer.safetensors"],
                                   files["optimizer.json"])
            self._set_lr()
        self.log(f"ddpmlab: resumed {self.run.root} at iteration {self.step} (stage "
                 f"{min(self.step // self.plan.iterations, len(self.plan.stages) - 1) + 1} of "
                 f"{len(self.plan.stages)}) from {ckpt.name}")

    # ------------------------------------------------------------------ one chunk of a stage
    def _stage(self, k: int, n: int, callback: Callable[[int, float], bool]) -> None:
        """Up to ``n`` iterations of stage ``k`` (the library's routine; ``callback`` may stop
        it early)."""
        p, B = self.plan, self.plan.batch_size
        if p.method == "consistency":
            teacher, sched = self.teacher.predictor(p.guidance, self.device)
            D = ve_denoiser(teacher, sched.to(self.device))
            setup = ConsistencySetup.karras(CD_LEVELS, sigma_data=self.cfg.diffusion.sigma_data)
            consistency_stage(self.student, self.target, D, self.data, self.opt, setup, n, B,
                              self.gen, callback=callback)
            return
        learn_sigma = self.cfg.model.learn_sigma
        if self.stage_teacher is None:
            teacher = self.teacher.predictor(p.guidance, self.device)[0]
        else:
            teacher = Predictor(*sampler_view(self.stage_teacher, self.cfg, self.sched),
                                learn_sigma)
        student = Predictor(*sampler_view(self.student, self.cfg, self.sched), learn_sigma)
        progressive_stage(student, teacher, self.sched, self.data, p.stages[k], self.opt, n, B,
                          self.gen, callback=callback)

    def _chunk(self, k: int, budget: TimeBudget, t0: float) -> None:
        """Stage ``k`` from here to its end, the next checkpoint or a signal."""
        every = self.plan.ckpt_every
        end = min((k + 1) * self.plan.iterations, (self.step // every + 1) * every)
        log_every = self.cfg.train.log_every
        t_window = time.perf_counter()

        def callback(i: int, loss: float) -> bool:
            nonlocal t_window
            self.step += 1
            self.window.append(loss)
            self.events.step(self.step)
            self._set_lr()
            if self.governor is not None and (threads := self.governor.poll()) is not None:
                self.events.note(self.governor.change_note(threads, "distilling"))
            self._poll_budget(budget, t0)
            stage_end = (k + 1) * self.plan.iterations
            if self.step % log_every == 0 or self.step in (stage_end, end):
                now = time.perf_counter()
                self.events.log(self._record(k, now - t_window, now - t0))
                t_window = now
            return self.stop is not None or self.step >= min(stage_end, end)

        self._stage(k, end - self.step, callback)

    def _record(self, k: int, dt: float, elapsed: float) -> dict[str, Any]:
        """A ``metrics.jsonl`` line over the iterations since the last one."""
        n = len(self.window)
        self.last_loss = sum(self.window) / n
        self.window = []
        return {"step": self.step, "loss": self.last_loss, "lr": self.plan.lr_at(self.step - 1),
                "stage": k, "student_steps": self.plan.stages[k],
                "steps_per_s": n / dt if dt > 0 else 0.0,
                "images_per_s": n * self.plan.batch_size / dt if dt > 0 else 0.0,
                "elapsed_s": elapsed, "threads": torch.get_num_threads()}

    def _poll_budget(self, budget: TimeBudget, t0: float) -> None:
        """At iteration 40, the iterations per stage that fit in the budget (module docstring),
        written to ``distill.json``."""
        sizing = budget.after_step(self.step, t0, self.device)
        if sizing is None:
            return
        stages = len(self.plan.stages)
        first_s = 1 / sizing.steps_per_s
        saving_s = self._later_saving_s()
        later_s = max(first_s - saving_s, first_s / 4)   # (a floor against a noisy timing)
        per = min(self.plan.iterations, iterations_per_stage(sizing.max_steps, first_s,
                                                             later_s, stages, self.step))
        minutes = self.plan.time_budget_min
        self.plan.iterations, self.plan.time_budget_min = per, 0.0
        self.plan.ckpt_every = min(self.plan.ckpt_every, per)
        self.write_plan()
        self.events.resize(replace(sizing, max_steps=per * stages))
        later = (f", later stages {1 / later_s:.2f} (an unguided teacher)") if saving_s \
            else ""
        self.events.note(f"ddpmlab: time budget {minutes:g} min over {stages} stage(s): "
                         f"{sizing.steps_per_s:.2f} iterations/s (iterations 5-40){later} -> "
                         f"{per} iterations per stage; --iterations {per} repeats this "
                         "distillation")

    def _later_saving_s(self, calls: int = 3) -> float:
        """Seconds per iteration a later progressive stage saves over the first (module
        docstring, Stage lengths): twice (two teacher steps) the median guided teacher call
        less the median unguided one, on a batch of the plan's size at the middle index; 0
        where every stage costs the same (consistency, one stage, an unguided teacher)."""
        p = self.plan
        if p.method != "progressive" or len(p.stages) < 2 or p.guidance == 1.0 \
                or not self.cfg.model.num_classes:
            return 0.0
        g = torch.Generator().manual_seed(p.seed + 29)  # (not self.gen: the run's own draws)
        x0, y = self.data(g, p.batch_size)
        t = torch.full((len(x0),), self.cfg.diffusion.timesteps // 2, dtype=torch.long,
                       device=self.device)
        z = q_sample(self.sched, x0, t, torch.randn(x0.shape, generator=g).to(x0))

        def median_s(w: float) -> float:
            pred = self.teacher.predictor(w, self.device)[0]
            times = []
            with torch.no_grad():
                for _ in range(calls):
                    start = time.perf_counter()
                    pred.x0_eps(self.sched, z, t, y)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    times.append(time.perf_counter() - start)
            return statistics.median(times)

        return 2 * max(0.0, median_s(p.guidance) - median_s(1.0))

    # ------------------------------------------------------------------ checkpoints
    def write_plan(self) -> None:
        atomic_write_text(self.run.distill, self.plan.to_json())

    def save(self) -> Path:
        """A checkpoint of this iteration in the trainer's format (module docstring)."""
        ot, om = optimizer_to_tensors(self.opt)
        rng = {"train_generator": self.gen.get_state(), "torch_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        stage = min((self.step - 1) // self.plan.iterations, len(self.plan.stages) - 1)
        ema = self.target if self.target is not None else self.student
        files = {"model.safetensors": self.student.state_dict(),
                 "ema.safetensors": ema.state_dict(),
                 "optimizer.safetensors": ot, "optimizer.json": om,
                 "rng.safetensors": rng,
                 "state.json": {"format_version": 1, "step": self.step, "skipped_steps": 0,
                                "world_size": 1, "time": time.time(),
                                "distill": {"method": self.plan.method, "stage": stage,
                                            "student_steps": self.plan.stages[stage]}}}
        if self.stage_teacher is not None:
            files[TEACHER_WEIGHTS] = self.stage_teacher.state_dict()
        self.saved = save_checkpoint(self.run.root, self.step, files, keep_last=2)
        self.session.committed()
        done = self.step // self.plan.iterations
        if done != self.plan.completed_stages:
            self.plan.completed_stages = done
            self.write_plan()
        self.events.checkpoint(self.step, self.saved)
        return self.saved

    # ------------------------------------------------------------------ the loop
    def run_stages(self) -> float:
        """Every stage to its end (or a signal); returns the seconds it took."""
        t0 = time.perf_counter()
        p = self.plan
        timed = p.iterations > BUDGET_WINDOW[1]      # (the timed iterations lie in stage 1)
        budget = TimeBudget(p.time_budget_min if timed else 0.0, p.total, self.step)
        if p.time_budget_min and not budget.active:
            why = "stopped before they were timed" if timed else \
                f"--iterations {p.iterations} ends before them"
            self.log(f"ddpmlab: the time budget was not applied (iterations 5-40 time it; {why})"
                     f": {p.iterations} iterations per stage")
        with contextlib.ExitStack() as stack:
            self.events = stack.enter_context(self._listeners(budget))
            stack.enter_context(self._signal_handlers())
            self.governor = stack.enter_context(governed_threads(self.device))
            stack.enter_context(flush_denormal(self.device))
            while self.step < self.plan.total and self.stop is None:
                k = self.step // self.plan.iterations
                self._chunk(k, budget, t0)
                boundary = self.step % self.plan.iterations == 0
                if boundary or self.stop is not None or self.step % self.plan.ckpt_every == 0:
                    self.save()
                if boundary and self.step < self.plan.total and self.stop is None:
                    self.next_stage()
        self.events = Listeners([])
        return time.perf_counter() - t0

    @contextlib.contextmanager
    def _listeners(self, budget: TimeBudget) -> Iterator[Listener]:
        """The trainer's progress bar and ``metrics.jsonl`` listeners."""
        events = Listeners([ProgressBar(self.progress, self.log), MetricsLog(self.run)])
        try:
            events.start(self.step, None if budget.active else self.plan.total,
                         {"setting": "fp32", "precision": "fp32",
                          "reason": "ddpmlab distill runs teacher and student in fp32"})
            yield events
        finally:
            events.close()

    def _signal_handlers(self) -> contextlib.AbstractContextManager:
        """SIGINT and SIGTERM finish the current iteration, save, and stop."""
        return stop_on_signals(lambda name: setattr(self, "stop", name))


# ============================================================================ the command
def _new(req: DistillRequest, device: torch.device, log: Callable[[str], None]) -> DistillResult:
    """A new distillation: every input checked before anything is written (module docstring)."""
    if req.teacher is None:
        raise ConfigError("distill: give the teacher run (RUN) and --method, --to; or --resume "
                          "NEW")
    src = RunDir(req.teacher)
    cfg = src.read_config()
    plan = make_plan(req, src, cfg)
    if latest_checkpoint(src.root) is None:
        raise CheckpointError(f"{src.root}: holds no complete checkpoint (train it first)")
    scfg = student_config(cfg, plan.method, plan.to)
    check_distill_memory(scfg, plan.batch_size, device)
    out = Path(req.out) if req.out else src.root.with_name(
        f"{src.root.name}-{plan.method}{plan.to}")
    dest = RunDir(check_protected(out, "a run", inputs=[src.root]))
    with _Session(dest, force=req.force, log=log) as session:
        session.check()
        teacher = load_teacher(src.root, device)
        plan.teacher.update(checkpoint=teacher.checkpoint.name, sha256=teacher.sha256)
        job = Distillation(plan, dest, session, teacher, scfg, data_fn(cfg, device), device,
                           req.progress, log)
        job.begin()
        session.start(scfg.to_json())
        job.write_plan()
        log(f"ddpmlab: distilling {src.root} ({teacher.checkpoint.name}) by {plan.method} to "
            f"{plan.to} step(s): {_describe(plan)}; run directory {dest.root}")
        seconds = job.run_stages()
    return DistillResult(dest.root, job.saved, plan, 0, job.step, seconds, job.last_loss,
                         job.stop)


def _resume(req: DistillRequest, device: torch.device,
            log: Callable[[str], None]) -> DistillResult:
    """Continue ``req.resume`` from its newest checkpoint with its recorded plan."""
    given = [flag for flag, v in (("RUN", req.teacher), ("--method", req.method),
                                  ("--to", req.to), ("--iterations", req.iterations),
                                  ("--time-budget", req.time_budget), ("--lr", req.lr),
                                  ("--batch-size", req.batch_size),
                                  ("--ckpt-every", req.ckpt_every),
                                  ("--lr-schedule", req.lr_schedule)) if v is not None]
    if given:
        raise ConfigError(f"--resume continues {req.resume} with its recorded plan "
                          f"(distill.json); drop {', '.join(given)}")
    dest = RunDir(req.resume)
    with _Session(dest, resume=True, log=log) as session:
        session.check(prepare_resume=lambda: clean_partial(dest.root))
        plan = Plan.read(dest.distill)
        cfg = dest.read_config()
        t = plan.teacher
        teacher = load_teacher(t["run"], device, RunDir(t["run"]).checkpoints / t["checkpoint"],
                               t["sha256"])
        job = Distillation(plan, dest, session, teacher, cfg, data_fn(teacher.cfg, device),
                           device, req.progress, log)
        job.restore(latest_checkpoint(dest.root))
        start = job.step
        dest.trim_metrics()
        seconds = job.run_stages()
    return DistillResult(dest.root, job.saved, plan, start, job.step, seconds, job.last_loss,
                         job.stop)


def _describe(plan: Plan) -> str:
    length = (f"of {plan.iterations} iterations each" if not plan.time_budget_min else
              f"sharing a {plan.time_budget_min:g}-minute budget")
    how = (" -> ".join(map(str, plan.stages)) + " student steps" if plan.method == "progressive"
           else f"an EMA target, {CD_LEVELS} levels, {plan.init} start")
    lr = f"lr {plan.lr:g}" + (" falling linearly to 0 in each stage"
                              if plan.lr_schedule == "linear" else "")
    return (f"{len(plan.stages)} stage(s) ({how}) {length}, batch {plan.batch_size}, {lr}, "
            f"guidance {plan.guidance:g} distilled")


def distill_command(req: DistillRequest, device: torch.device,
                    log: Callable[[str], None] = print) -> DistillResult:
    """``ddpmlab distill``: a new distillation (``req.teacher``, ``method``, ``to``, ``out``)
    or the continuation of one (``req.resume``); see the module docstring."""
    if req.resume is not None:
        return _resume(req, device, log)
    return _new(req, device, log)


def format_distill(r: DistillResult) -> str:
    """The lines ``ddpmlab distill`` ends with."""
    p = r.plan
    span = f"iterations {r.start} -> {r.step}" if r.start else f"{r.step} iterations"
    lines = [f"ddpmlab: distilled {p.teacher['run']} by {p.method}: {span} in "
             f"{r.seconds / 60:.1f} min, last loss {r.loss:.4g}",
             f"  run directory : {r.run}",
             f"  checkpoint    : {r.checkpoint}",
             f"  sample it     : ddpmlab sample {r.run}   ({p.to} step(s) = {r.nfe} network "
             f"evaluation(s) per image, guidance 1)"]
    return "\n".join(lines)


__all__ = ["DEFAULT_ITERATIONS", "METHODS", "DistillRequest", "DistillResult",
           "Plan", "distill_command", "format_distill", "load_teacher", "student_config"]
