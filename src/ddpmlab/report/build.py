"""Compute everything the report shows for one run, and write its pictures.

:func:`write_report` composes the run layer (:func:`ddpmlab.runs.load_run`,
:func:`~ddpmlab.runs.sample_images`, :func:`~ddpmlab.runs.sampling_call` with a
:class:`ddpmlab.viz.ChainRecorder` for the chains, :func:`~ddpmlab.runs.heldout_elbo` for the
ELBO terms), the math (:func:`ddpmlab.forward.q_sample` for the forward frames), the
memorization metric of :mod:`ddpmlab.evaluate` and the pictures of :mod:`ddpmlab.viz`;
:mod:`.page` turns the result into HTML. Every image is a PNG file under ``img/`` beside
``index.html``. The page is built by :data:`SECTIONS`, each a :class:`Section` that declares its
network evaluations; the progress bar's total is their sum (:func:`section_costs`).

Every sample drawn here depends only on (seed, sample number), as in ``ddpmlab sample``: the
chains, the checkpoint rows, the guidance sweep and the NFE table start from the same noises, so
the rows can be compared picture by picture.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data import ImageData, describe, load_dataset, to_model_range, to_uint8
from ..edit import INVERTERS, start_position
from ..edit.driver import levels
from ..edit_run import EditSettings, edit_cost, psnr, read_mask, run_edit
from ..errors import CheckpointError, ConfigError, DataError
from ..evaluate import memorization
from ..forward import q_posterior, q_sample
from ..io import atomic_write_text, eval_doc_problem, read_json
from ..layout import RunDir, step_of
from ..outputs import check_target, commit, staging
from ..runs import (
    COPY_WATCH_MARGIN,
    GRID_MAX_ROWS,
    SamplingCall,
    class_rows,
    default_labels,
    heldout_elbo,
    load_run,
    run_schedule,
    sample_images,
    sampling_call,
    without_guide,
)
from ..samplers import SAMPLERS, images_per_evaluation, per_sample_generators
from ..schedules import Schedule
from ..viz import (
    ChainRecorder,
    class_rows_grid,
    loss_plot,
    read_losses,
    save_grid,
    save_memorization_figure,
    vlb_plot,
)
from .page import GENERATOR, num, render
from .strings import STRINGS


@dataclass(frozen=True)
class ReportPlan:
    """How much the report draws (the defaults fit a few minutes on 2 CPU cores for the main
    job's 28x28 run; tests pass smaller ones)."""

    forward_images: int = 4          # training images of the forward slider
    forward_frames: int = 41         # t values of the forward slider, evenly spaced in [0, T)
    chain_samples: int = 4           # samples of the two chains (and of the NFE table)
    chain_frames: int = 51           # states kept of the all-T ancestral chain
    bpd_images: int = 8              # held-out images of the ELBO decomposition
    bpd_timesteps: int = 50          # timesteps evaluated (stratified; T = the exact sum)
    checkpoint_samples: int = 10     # samples per checkpoint row (one per class, up to this)
    max_checkpoints: int = 8         # checkpoint rows at most (evenly spaced, newest included)
    grid_per_class: int = 8          # images per class row
    grid_unconditional: int = 32     # images of an unconditional run's grid
    guidance: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0)
    nfe: tuple[int, ...] = (5, 10, 20)
    nfe_samplers: tuple[str, ...] = ("ddpm", "ddim", "dpm_solver", "unipc")
    nearest: int = 6                 # closest samples shown beside their nearest training image
    max_training_grids: int = 12     # grids drawn during training (RUN/samples/step_*.png)
    edit_images: int = 4             # held-out images of the editing section
    edit_strengths: tuple[float, ...] = (0.3, 0.6)   # img2img rows
    edit_jump: tuple[int, int] = (2, 3)              # RePaint's jump_length j, jump_n_sample r

    def check(self) -> None:
        for name in ("forward_images", "forward_frames", "chain_samples", "bpd_images",
                     "checkpoint_samples", "max_checkpoints", "grid_per_class",
                     "grid_unconditional", "nearest", "max_training_grids", "edit_images"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"report plan: {name}={v!r} must be an integer >= 1")
        if self.chain_frames < 2 or self.bpd_timesteps < 2:
            raise ConfigError("report plan: chain_frames and bpd_timesteps must be >= 2")
        if not self.guidance or any(not (w >= 0 and math.isfinite(w)) for w in self.guidance):
            raise ConfigError(f"report plan: guidance={self.guidance!r} must be numbers >= 0")
        if not self.nfe or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                               for k in self.nfe):
            raise ConfigError(f"report plan: nfe={self.nfe!r} must be integers >= 1")
        bad = [s for s in self.nfe_samplers if s not in SAMPLERS]
        if bad:
            raise ConfigError(f"report plan: unknown sampler(s) {', '.join(bad)}; choose from "
                              f"{', '.join(SAMPLERS)}")
        _check_edit_plan(self)


# ============================================================================ helpers
def _scale(size: int, target: int) -> int:
    """Integer enlargement so an image side of ``size`` pixels shows at about ``target``."""
    return max(1, int(math.ceil(target / size)))


def _sampler_steps(cfg: Config) -> int:
    return cfg.sample.steps or cfg.diffusion.timesteps


def _evals(cfg: Config, n: int, sampler: str, steps: int, labelled: bool, w: float,
           autoguided: bool) -> int:
    """Images times network evaluations of one sampling call (guidance with w not 0 or 1
    runs both halves, an autoguidance guide one pass more:
    :func:`~ddpmlab.samplers.guidance.images_per_evaluation`)."""
    per = images_per_evaluation(labelled, w, autoguided, cfg.sample.guide_weight)
    return n * SAMPLERS[sampler].info.nfe(steps) * per


def _steps_for_nfe(sampler: str, nfe: int, T: int) -> int:
    """The most steps whose network evaluations do not exceed ``nfe`` (at least 1)."""
    info = SAMPLERS[sampler].info
    best = 1
    for s in range(1, T + 1):
        if info.nfe(s) > nfe:
            break
        best = s
    return best


class _Progress:
    """One bar over the whole report, in images times network evaluations."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="report", unit="eval", unit_scale=True)

    def stage(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=True)

    def add(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Images:
    """Writes the report's PNGs under ``root/img`` and returns their relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "img").mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> tuple[Path, str]:
        return self.root / "img" / name, f"img/{name}"

    def grid(self, name: str, images: torch.Tensor, nrow: int | None, scale: int) -> str:
        path, rel = self.path(name)
        save_grid(images, path, nrow=nrow, scale=scale)
        return rel

    def copy(self, name: str, src: Path) -> str:
        path, rel = self.path(name)
        shutil.copyfile(src, path)
        return rel


# ============================================================================ pictures
def _forward(imgs: _Images, sched: Schedule, train: ImageData, plan: ReportPlan,
             g: torch.Generator) -> dict[str, Any]:
    """The forward slider: x_t = q_sample(x0, t, eps) with one eps per image for every t."""
    T = sched.T
    pick = torch.randperm(len(train), generator=g)[:plan.forward_images]
    x0 = to_model_range(train.images[pick])
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    ts = sorted({int(round(v)) for v in np.linspace(0, T - 1, plan.forward_frames)})
    scale = _scale(x0.shape[-1], 96)
    frames = []
    for k, t in enumerate(ts):
        xt = q_sample(sched, x0, torch.full((len(x0),), t, dtype=torch.long), noise=eps)
        frames.append(imgs.grid(f"forward_{k:03d}.png", xt, len(x0), scale))
    ab = sched.alpha_bar.cpu()
    a = [float(ab[t].sqrt()) for t in ts]
    s = [float((1 - ab[t]).sqrt()) for t in ts]
    snr = [float(ab[t] / (1 - ab[t])) for t in ts]
    return {
        "n": len(x0), "ts": ts, "frames": frames,
        "x0": imgs.grid("forward_x0.png", x0, len(x0), scale),
        "eps": imgs.grid("forward_eps.png", eps.clamp(-1, 1), len(x0), scale),
        "sqrt_ab": a, "sqrt_1mab": s, "snr": snr,
        "curve_a": sched.sqrt_alpha_bar.cpu().tolist(),
        "curve_s": sched.sqrt_one_minus_alpha_bar.cpu().tolist(),
        "start": min(len(ts) - 1, len(ts) // 4),
    }


def _chain(imgs: _Images, tag: str, cfg: Config, call: SamplingCall, n: int, seed: int,
           y: torch.Tensor | None, n_frames: int | None, measure_noise: bool,
           prog: _Progress) -> dict[str, Any]:
    """One sampling chain of ``call`` (:func:`ddpmlab.runs.sampling_call`: the same noise and
    arguments as :func:`ddpmlab.runs.sample_images` for samples 0..n-1), keeping x_t and
    x0_hat of the chosen states (:class:`ddpmlab.viz.ChainRecorder`, with the last step's
    input); state i < S is x before step i, state S the output. With ``measure_noise``
    (consecutive ancestral steps) each kept step's added noise is measured as the std of
    x_next - mean, the mean being the posterior q(x_{t-1} | x_t, x0_hat)."""
    m = cfg.model
    shape = (n, m.in_channels, m.image_size, m.image_size)
    per_eval = call.images_per_evaluation(y is not None)
    dev_sched = call.schedule.to(call.device)
    done = [0]   # network evaluations so far (for the progress bar)
    sig: dict[int, float] = {}

    def on_step(info: dict[str, Any]) -> None:
        i = int(info["i"])
        if measure_noise and i in rec.keep:
            tt = torch.full((n,), int(info["t"]), dtype=torch.long, device=info["x"].device)
            mean, _, _ = q_posterior(dev_sched, info["x0_hat"], info["x"], tt)
            sig[i] = float((info["x_next"] - mean).float().std())
        prog.add(n * per_eval * (int(info["nfe"]) - done[0]))
        done[0] = int(info["nfe"])

    rec = ChainRecorder(n_frames, last_step=True, on_step=on_step)
    gens = per_sample_generators(seed, list(range(n)), device=call.device)
    rec.finish(call.run(shape, y=y, generator=gens, callback=rec))
    total = rec.total
    scale = _scale(m.image_size, 72)
    frames, t_text, step_text, sigma_text = [], [], [], []
    for k, j in enumerate(rec.keep):
        both = torch.cat([rec.xs[j], rec.hats[j]])
        frames.append(imgs.grid(f"chain_{tag}_{k:03d}.png", both, n, scale))
        step_text.append(f"{j} / {total}")
        t = rec.ts.get(j)
        t_text.append(None if j == total else (f"{t:g}" if isinstance(t, float) else str(t)))
        if measure_noise:
            sigma_text.append(None if j == total else num(sig[j], 3))
    return {"frames": frames, "t": t_text, "step": step_text,
            "sigma": sigma_text if measure_noise else None, "states": total + 1,
            "output": rec.xs[total], "start": len(rec.keep) - 1}


def _objective(imgs: _Images, model: nn.Module, cfg: Config, held: ImageData,
               plan: ReportPlan, seed: int, device: Any) -> dict[str, Any]:
    """The ELBO of a few held-out images, term by term (:func:`ddpmlab.runs.heldout_elbo`,
    with ``seed + 1``)."""
    x0, bpd = heldout_elbo(model, cfg, held, seed=seed + 1, images=plan.bpd_images,
                           timesteps=plan.bpd_timesteps, device=device)
    path, rel = imgs.path("vlb.png")
    vlb_plot(bpd.terms, path, total=bpd.total)
    scale = _scale(held.shape[-1], 48)
    return {"plot": rel, "n": len(x0), "k": int(len(bpd.timesteps)),
            "total": bpd.total, "prior": bpd.prior, "decoder": bpd.decoder,
            "diffusion": bpd.diffusion, "D": int(np.prod(held.shape)),
            "images": [imgs.grid(f"heldout_{j:02d}.png", x0[j:j + 1].cpu(), 1, scale)
                       for j in range(len(x0))],
            "per_image": [float(v) for v in bpd.per_sample]}


def _pick_checkpoints(ckpts: list[Path], k: int) -> list[Path]:
    if len(ckpts) <= k:
        return ckpts
    idx = sorted({int(round(v)) for v in np.linspace(0, len(ckpts) - 1, k)})
    return [ckpts[i] for i in idx]


def _step_of(ckpt: Path) -> int:
    return int(step_of(ckpt.name))  # (RunDir.checkpoint_dirs lists only well-named folders)


def _eval_results(run: RunDir) -> tuple[dict | None, bool]:
    """The run's last ``ddpmlab eval`` results: the whole JSON when the run has one, else the
    summary line of its metrics file (``summary_only`` True), else None."""
    path = run.eval_results
    if path.is_file():
        try:
            doc = read_json(path)
        except CheckpointError as e:
            doc, why = None, str(e)
        else:
            why = None if (bad := eval_doc_problem(doc)) is None else f"{path}: {bad}"
        if why is None:
            return doc, False
        warnings.warn(f"{why}; the report leaves it out (run ddpmlab eval again)", stacklevel=2)
    lines = [r for r in run.read_metrics() if r.get("event") == "eval"]
    return (lines[-1], True) if lines else (None, False)


# ============================================================================ the report
def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                 lang: str = "en", seed: int = 0, device: str | torch.device = "cpu",
                 progress: bool = True, plan: ReportPlan | None = None) -> Path:
    """Write the run's report folder (default ``RUN/report``) and return its ``index.html``.

    The folder holds ``index.html`` (text in ``lang``: ``"en"`` or ``"zh"``; styles, script
    and data inline) and ``img/`` (every picture as a PNG); it opens from disk with no network.
    A previous report in the folder is replaced as a whole (the new one is written beside it
    and renamed); any other non-empty folder is refused.
    """
    t_start = time.perf_counter()
    if lang not in STRINGS:
        raise ConfigError(f"--lang {lang!r}: choose one of {', '.join(STRINGS)}")
    plan = plan or ReportPlan()
    plan.check()
    run = RunDir(run_dir)
    cfg = run.read_config()
    ckpts = run.checkpoint_dirs()
    if not ckpts:
        raise CheckpointError(f"{run.root}: holds no complete checkpoint (train it first)")
    out = Path(out_dir) if out_dir is not None else run.report
    _check_out(out)
    model, cfg, newest = load_run(run.root, use_ema=True, device=device)
    tmp = staging(out, "report")   # (marked: a killed report's leftover is removed next time)
    try:
        data = _build(run, cfg, model, newest, ckpts, _Images(tmp), plan, seed, device,
                      progress, t_start)
        atomic_write_text(tmp / "index.html", render(data, lang))
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "index.html"


def _check_out(out: Path) -> None:
    """Refuse (:func:`ddpmlab.outputs.check_target`) a file, a run, an input, HOME, the current
    folder, or a non-empty folder holding anything but an earlier report's own files (its
    mark, or a report written before marks: ``index.html`` and ``img/*.png``); finish what a
    killed report left beside ``out``; check writability."""
    check_target(out, "report", replace=True, is_run=lambda p: RunDir(p).is_run()
                 or RunDir(p).checkpoints.is_dir(), legacy=_legacy_report,
                 not_ours="{out}: is not empty and holds no ddpmlab report; refusing to "
                 "replace it (choose another --out)")


def _legacy_report(folder: Path) -> bool:
    """A report written before output folders carried ddpmlab's mark: ``index.html`` with the
    generator's name and ``img/`` of ddpmlab's PNGs, nothing else."""
    try:
        names = {p.name for p in folder.iterdir()}
        img = folder / "img"
        pngs = list(img.iterdir()) if img.is_dir() and not img.is_symlink() else []
        index = folder / "index.html"
        ours = (not index.is_symlink() and index.is_file()
                and GENERATOR in index.read_text(encoding="utf-8", errors="replace")[:2000])
    except OSError:
        return False
    return (ours and names <= {"index.html", "img"}
            and all(p.suffix == ".png" and not p.is_symlink() and p.is_file() for p in pngs))


def _replace(tmp: Path, out: Path) -> None:
    """Swap the complete new report in (:func:`ddpmlab.outputs.commit`): the old one is
    renamed aside first and deleted last, only if it is still ours."""
    if msg := commit(tmp, out, "report", _legacy_report):
        warnings.warn(msg, stacklevel=3)


# ============================================================================ the sections
_Job = tuple[tuple | None, int]   # (a shared draw's key, or None; images x network evaluations)


class _Context:
    """What the sections share: the run, its model and data, the plan and what follows from
    it; the report's draws (``memo``: each drawn once, keyed by :meth:`key`), the progress bar
    and the page's data ``out``, which each section fills."""

    def __init__(self, run: RunDir, cfg: Config, model: nn.Module, newest: Path,
                 ckpts: list[Path], imgs: _Images, plan: ReportPlan, seed: int,
                 device: Any) -> None:
        self.run, self.cfg, self.model, self.newest, self.ckpts = run, cfg, model, newest, ckpts
        self.imgs, self.plan, self.seed, self.device = imgs, plan, seed, device
        m, s, T = cfg.model, cfg.sample, cfg.diffusion.timesteps
        self.T, self.sched = T, run_schedule(cfg)
        self.objective = getattr(cfg.diffusion, "objective", "ddpm")
        self.conditional = m.null_class is not None
        self.rows = min(m.num_classes, GRID_MAX_ROWS)
        self.run_steps = _sampler_steps(cfg)
        self.w_run = s.guidance if self.conditional else 1.0
        # (an "@F" guide left unresolved, not on disk, is dropped by sampling_call)
        self.autoguided = bool(s.guide) and s.guide_weight != 1.0 and s.own_guide() is None
        self.cfg_unguided = without_guide(cfg)
        self.n_chain = plan.chain_samples
        self.chain_y = default_labels(cfg, self.n_chain)
        self.picked = _pick_checkpoints(ckpts, plan.max_checkpoints)
        self.n_ck = (min(m.num_classes, plan.checkpoint_samples) if self.conditional
                     else plan.checkpoint_samples)
        self.ck_y = torch.arange(self.n_ck) if self.conditional else None
        self.grid_y = class_rows(self.rows, plan.grid_per_class) if self.conditional else None
        self.n_grid = len(self.grid_y) if self.grid_y is not None else plan.grid_unconditional
        self.sweep_y = torch.arange(self.rows) if self.conditional else None
        self.nfe_samplers = list(dict.fromkeys([s.sampler, *plan.nfe_samplers]))
        self.nfe_targets = sorted({min(k, T) for k in plan.nfe})
        # data (a run whose data set cannot be read still gets every model section)
        self.data_error: str | None = None
        self.train: ImageData | None = None
        self.held: ImageData | None = None
        try:
            self.train = load_dataset(cfg.data, "train")
            self.held = load_dataset(cfg.data, "test")
        except DataError as e:
            self.data_error = str(e)
        self.separate = (self.train is not None and self.held is not None
                         and not (len(self.held) == len(self.train)
                                  and torch.equal(self.held.images, self.train.images)))
        self.prog = _Progress(0, False)
        self.out: dict[str, Any] = {}
        self.memo: dict[tuple, torch.Tensor] = {}
        self.grid: torch.Tensor | None = None   # the sampling section's grid (for evaluation)

    def key(self, ckpt: Path, n: int, y: torch.Tensor | None, w: float | None = None,
            sampler: str | None = None, steps: int | None = None,
            autoguided: bool = True) -> tuple:
        """A draw of samples 0..n-1: (checkpoint, n, labels, w, sampler, steps, autoguided);
        the run's w, sampler and steps unless given; ``autoguided=False`` draws without the
        run's autoguidance guide (the checkpoint rows, which compare across steps)."""
        return (str(ckpt), n, None if y is None else tuple(y.tolist()),
                float(self.w_run if w is None else w), sampler or self.cfg.sample.sampler,
                steps or self.run_steps, autoguided and self.autoguided)

    def evals(self, key: tuple) -> int:
        """Images times network evaluations of the draw ``key``."""
        _, n, _, w, sampler, steps, autoguided = key
        return _evals(self.cfg, n, sampler, steps, self.conditional, w, autoguided)

    def job(self, key: tuple) -> _Job:
        return key, self.evals(key)

    def draw(self, net: nn.Module, key: tuple) -> torch.Tensor:
        """``sample_images`` of the draw ``key``, each drawn once: the newest checkpoint's row
        is the guidance sweep's row at the run's w, the run's sampler at its own steps is the
        chain of section 2. The bar advances only when the draw is made."""
        if key not in self.memo:
            _, n, y, w, sampler, steps, autoguided = key
            s = self.cfg.sample
            own = (sampler, steps) == (s.sampler, self.run_steps)
            self.memo[key] = sample_images(
                net, self.cfg if autoguided else self.cfg_unguided, n, self.seed, self.device,
                y=None if y is None else torch.tensor(y), guidance=w, sampler=sampler,
                steps=(s.steps or None) if own else steps)   # (what sample_images does with
            self.prog.add(self.evals(key))                   # the run's own steps)
        return self.memo[key]


@dataclass(frozen=True)
class Section:
    """One section of the page: ``cost(ctx)`` declares its network evaluations as jobs (a
    draw another section may already have made names its key and is counted once);
    ``draw(ctx)`` computes it into ``ctx.out``. The progress bar's total is their sum
    (:func:`section_costs`), so it is never kept in sync by hand."""

    name: str
    cost: Callable[[_Context], list[_Job]]
    draw: Callable[[_Context], None]


def _no_cost(ctx: _Context) -> list[_Job]:
    return []


def _forward_section(ctx: _Context) -> None:
    ctx.prog.stage("forward process")
    if ctx.train is not None:
        ctx.out["forward"] = _forward(ctx.imgs, ctx.sched, ctx.train, ctx.plan,
                                      torch.Generator().manual_seed(ctx.seed))


def _reverse_cost(ctx: _Context) -> list[_Job]:
    run_chain = ctx.job(ctx.key(ctx.newest, ctx.n_chain, ctx.chain_y))
    return [run_chain, (None, _evals(ctx.cfg, ctx.n_chain, "ddpm", ctx.T, ctx.conditional,
                                     ctx.w_run, ctx.autoguided))]


def _reverse_section(ctx: _Context) -> None:
    """The run's sampler, then the paper's all-T ancestral chain."""
    s, out = ctx.cfg.sample, ctx.out
    ctx.prog.stage(f"chain ({s.sampler})")
    call = sampling_call(ctx.model, ctx.cfg, ctx.device)
    out["chain_run"] = _chain(ctx.imgs, "run", ctx.cfg, call, ctx.n_chain, ctx.seed,
                              ctx.chain_y, None, False, ctx.prog)
    ctx.memo[ctx.key(ctx.newest, ctx.n_chain, ctx.chain_y)] = out["chain_run"]["output"]
    info = SAMPLERS[s.sampler].info
    out["chain_run"]["stochastic"] = info.stochastic
    out["chain_run"]["eta"] = s.eta if s.eta is not None else info.eta
    ctx.prog.stage(f"chain (ddpm, {ctx.T} steps)")
    ddpm = sampling_call(ctx.model, ctx.cfg, ctx.device, sampler="ddpm", steps=ctx.T)
    out["chain_ddpm"] = _chain(ctx.imgs, "ddpm", ctx.cfg, ddpm, ctx.n_chain, ctx.seed,
                               ctx.chain_y, ctx.plan.chain_frames, True, ctx.prog)
    out["chain_n"] = ctx.n_chain


def _objective_cost(ctx: _Context) -> list[_Job]:
    if ctx.held is None or ctx.objective != "ddpm":   # (the ELBO is the ddpm objective's)
        return []
    images = min(ctx.plan.bpd_images, len(ctx.held))
    return [(None, images * min(ctx.plan.bpd_timesteps, ctx.T))]


def _objective_section(ctx: _Context) -> None:
    jobs = _objective_cost(ctx)
    if jobs and ctx.held is not None:
        ctx.prog.stage("bits/dim")
        ctx.out["objective"] = _objective(ctx.imgs, ctx.model, ctx.cfg, ctx.held, ctx.plan,
                                          ctx.seed, ctx.device)
        ctx.out["objective"]["separate"] = ctx.separate
        ctx.prog.add(sum(n for _, n in jobs))


def _training_cost(ctx: _Context) -> list[_Job]:
    return [ctx.job(ctx.key(c, ctx.n_ck, ctx.ck_y, autoguided=False)) for c in ctx.picked]


def _training_section(ctx: _Context) -> None:
    """The loss, the checkpoints, the grids drawn during training."""
    run, cfg, imgs = ctx.run, ctx.cfg, ctx.imgs
    ctx.prog.stage("checkpoints")
    try:
        steps_logged, losses = read_losses(run.metrics)
        path, rel = imgs.path("loss.png")
        loss_plot(run.metrics, path)
        ctx.out["loss"] = {"plot": rel, "n": len(steps_logged), "last": float(losses[-1]),
                           "step": int(steps_logged[-1])}
    except DataError as e:
        ctx.out["loss"] = {"missing": str(e)}
    ck_scale = _scale(cfg.model.image_size, 48)
    ck_rows = []
    for c in ctx.picked:
        net = (ctx.model if c == ctx.newest
               else load_run(run.root, device=ctx.device, checkpoint=c)[0])
        x = ctx.draw(net, ctx.key(c, ctx.n_ck, ctx.ck_y, autoguided=False))
        ck_rows.append({"step": _step_of(c),
                        "image": imgs.grid(f"ckpt_{_step_of(c):08d}.png", x, ctx.n_ck,
                                           ck_scale)})
    grids = [p for _, p in run.training_grids()]
    grids = _pick_checkpoints(grids, ctx.plan.max_training_grids)
    ctx.out["watch"] = copy_watch_rows(run.read_metrics())
    ctx.out["augment"] = {"p": cfg.train.augment, "dim": cfg.model.augment_dim}
    ctx.out["training"] = {
        "rows": ck_rows, "autoguided": ctx.autoguided, "saved": len(ctx.ckpts),
        "keep_last": cfg.train.keep_last,
        "ckpt_every": cfg.train.ckpt_every, "sample_every": cfg.train.sample_every,
        "grids": [{"name": p.stem, "image": imgs.copy(f"train_{p.name}", p)}
                  for p in grids],
        "grids_path": str(run.samples)}


def copy_watch_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The copy watch's ``memorization`` events of a run's metrics (``runs.CopyWatch``), one
    row per step (a resumed run's later line wins), in step order: ``step``, ``n``, ``share``,
    ``heldout_share`` and ``rise`` (where the watch warned: above both the held-out share and
    the previous row's by ``COPY_WATCH_MARGIN``). Lines without finite numbers are skipped."""
    by_step: dict[int, dict[str, Any]] = {}
    for rec in records:
        if rec.get("event") != "memorization":
            continue
        vals = [rec.get(k) for k in ("step", "n", "share", "heldout_share")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in vals) or not 0 <= vals[0] <= 1e12:
            continue
        by_step[int(vals[0])] = {"step": int(vals[0]), "n": int(vals[1]),
                                 "share": float(vals[2]), "heldout_share": float(vals[3])}
    rows, last = [], None
    for step in sorted(by_step):
        row = by_step[step]
        floor = max(row["heldout_share"], last if last is not None else 0.0)
        row["rise"] = row["share"] > floor + COPY_WATCH_MARGIN
        rows.append(row)
        last = row["share"]
    return rows


def _sampling_cost(ctx: _Context) -> list[_Job]:
    keys = [ctx.key(ctx.newest, ctx.n_grid, ctx.grid_y)]
    if ctx.conditional:
        keys += [ctx.key(ctx.newest, ctx.rows, ctx.sweep_y, w) for w in ctx.plan.guidance]
    keys += [ctx.key(ctx.newest, ctx.n_chain, ctx.chain_y, sampler=name,
                     steps=_steps_for_nfe(name, k, ctx.T))
             for name in ctx.nfe_samplers for k in ctx.nfe_targets]
    return [ctx.job(k) for k in keys]


def _sampling_section(ctx: _Context) -> None:
    """Per class (or a plain grid), the guidance sweep, samples against NFE."""
    imgs, m, out, plan = ctx.imgs, ctx.cfg.model, ctx.out, ctx.plan
    ctx.prog.stage("sampling")
    grid = ctx.grid = ctx.draw(ctx.model, ctx.key(ctx.newest, ctx.n_grid, ctx.grid_y))
    if ctx.conditional:
        names = _class_names(ctx)[:ctx.rows]
        path, rel = imgs.path("classes.png")
        class_rows_grid(list(grid.split(plan.grid_per_class)), path, names)
        sweep = []
        for k, w in enumerate(plan.guidance):
            ctx.prog.stage(f"guidance w={w:g}")
            x = ctx.draw(ctx.model, ctx.key(ctx.newest, ctx.rows, ctx.sweep_y, w))
            sweep.append({"w": w, "image": imgs.grid(f"guidance_{k:02d}.png", x, ctx.rows,
                                                     _scale(m.image_size, 40))})
        out["sampling"] = {"grid": rel, "sweep": sweep, "rows": ctx.rows, "names": names}
    else:
        out["sampling"] = {"grid": imgs.grid("samples.png", grid, 8, _scale(m.image_size, 48)),
                           "n": ctx.n_grid}
    nfe_rows = []
    cell_scale = _scale(m.image_size, 40)
    for name in ctx.nfe_samplers:
        cells = []
        for k in ctx.nfe_targets:
            steps = _steps_for_nfe(name, k, ctx.T)
            ctx.prog.stage(f"{name}, {steps} steps")
            x = ctx.draw(ctx.model, ctx.key(ctx.newest, ctx.n_chain, ctx.chain_y,
                                            sampler=name, steps=steps))
            cells.append({"nfe": SAMPLERS[name].info.nfe(steps),
                          "image": imgs.grid(f"nfe_{name}_{k:04d}.png", x, ctx.n_chain,
                                             cell_scale)})
        nfe_rows.append({"sampler": name, "cells": cells})
    out["nfe"] = {"rows": nfe_rows,
                  "reference": imgs.grid("nfe_reference.png", out["chain_ddpm"]["output"],
                                         ctx.n_chain, cell_scale)}


def _class_names(ctx: _Context) -> list[str]:
    train = ctx.train
    return (train.class_names if train is not None and train.class_names else
            [str(k) for k in range(ctx.cfg.model.num_classes)])


def _evaluation_section(ctx: _Context) -> None:
    """The run's own evaluation, and the nearest training images of this report's samples."""
    ctx.prog.stage("evaluation")
    results, summary_only = _eval_results(ctx.run)
    ev: dict[str, Any] = {"results": results, "summary_only": summary_only}
    ctx.out["eval"] = ev
    fig = None
    if results is not None and not summary_only:
        f = (results.get("memorization") or {}).get("figure")
        if f and Path(f).is_file():
            fig = ctx.imgs.copy("eval_memorization.png", Path(f))
    ev["figure"] = fig
    if ctx.train is not None and ctx.grid is not None:
        u8 = to_uint8(ctx.grid)
        held = ctx.held.images if ctx.separate and ctx.held is not None else None
        mem = memorization(u8, ctx.train.images, held,
                           top_k=min(ctx.plan.nearest, len(u8)), seed=ctx.seed)
        path, rel = ctx.imgs.path("nearest.png")
        save_memorization_figure(u8, ctx.train.images, mem, path)
        ctx.out["nearest"] = {"image": rel, "n": len(u8), "flagged": mem.n_flagged,
                              "threshold": mem.threshold}


# ============================================================================ editing
def _check_edit_plan(plan: ReportPlan) -> None:
    if not plan.edit_strengths or any(isinstance(v, bool) or not 0.0 <= v <= 1.0
                                      for v in plan.edit_strengths):
        raise ConfigError(f"report plan: edit_strengths={plan.edit_strengths!r} must be numbers "
                          "in [0, 1]")
    if len(plan.edit_jump) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                       for v in plan.edit_jump):
        raise ConfigError(f"report plan: edit_jump={plan.edit_jump!r} must be two integers >= 1")


def _edit_jobs(ctx: _Context) -> list[tuple[str, SamplingCall, EditSettings]]:
    """The editing section's rows: inpainting the right half by replacement and by RePaint,
    img2img at each plan strength, an inversion and (a conditional run) a translation to each
    class shown, all on the first ``edit_images`` held-out images."""
    if ctx.held is None:
        return []
    right = read_mask("right", ctx.cfg.model.image_size)
    run_call = sampling_call(ctx.model, ctx.cfg, ctx.device)
    inv = ctx.cfg.sample.sampler if ctx.cfg.sample.sampler in INVERTERS else "ddim"
    inv_call = sampling_call(ctx.model, ctx.cfg, ctx.device, sampler=inv, guidance=1.0)
    j, r = ctx.plan.edit_jump
    jobs = [("replacement", run_call, EditSettings("inpaint", mask=right)),
            ("repaint", run_call, EditSettings("inpaint", mask=right, jump_length=j,
                                               jump_n_sample=r))]
    jobs += [("img2img", run_call, EditSettings("img2img", strength=float(s)))
             for s in ctx.plan.edit_strengths]
    jobs.append(("invert", inv_call, EditSettings("invert")))
    if ctx.conditional and ctx.held.labels is not None:
        jobs.append(("translate", inv_call,
                     EditSettings("translate", targets=tuple(range(ctx.rows)))))
    return jobs


def _edit_inputs(ctx: _Context, key: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The held-out images a row edits (translation: two of them), evenly spaced over the
    split (:meth:`~ddpmlab.data.ImageData.spread`), and their labels."""
    assert ctx.held is not None
    n = min(ctx.plan.edit_images, len(ctx.held), 2 if key == "translate" else len(ctx.held))
    some = ctx.held.spread(n)
    y = some.labels if ctx.conditional else None
    return to_model_range(some.images).to(ctx.device), y


def _editing_cost(ctx: _Context) -> list[_Job]:
    out = []
    for key, call, s in _edit_jobs(ctx):
        x, y = _edit_inputs(ctx, key)
        out.append((None, edit_cost(call, s, len(x), y is not None)))
    return out


def _editing_section(ctx: _Context) -> None:
    """Each row of :func:`_edit_jobs` (:func:`ddpmlab.edit_run.run_edit`): one image per grid
    row, its columns (input, masked input, result; x_T and the reconstruction; each class)."""
    if ctx.held is None:
        ctx.out["editing"] = None
        return
    rows = []
    for key, call, s in _edit_jobs(ctx):
        ctx.prog.stage(f"editing: {key}")
        x, y = _edit_inputs(ctx, key)
        res = run_edit(call, s, x, y, seed=ctx.seed + 3)
        cols = res.columns
        grid = torch.stack(cols, 1).flatten(0, 1)
        name = f"edit_{key}_{len(rows):02d}.png"
        ts = levels(call.schedule, call.sampler, call.steps, call.spacing)
        p0 = start_position(len(ts), s.strength)
        row = {"key": key, "n": len(x), "sampler": call.sampler, "steps": len(ts),
               "t": str(ts[p0]) if p0 < len(ts) else "-",
               "image": ctx.imgs.grid(name, grid, len(cols), _scale(ctx.cfg.model.image_size, 48)),
               "nfe": edit_cost(call, s, 1, False), "strength": s.strength,
               "j": s.jump_length, "r": s.jump_n_sample, "classes": list(s.targets)}
        if key == "invert":
            row["psnr"] = float(psnr(cols[0], cols[2]).mean())
        rows.append(row)
        ctx.prog.add(edit_cost(call, s, len(x), y is not None))
    ctx.out["editing"] = {"rows": rows, "guided": ctx.conditional and ctx.w_run not in (0.0, 1.0)}


#: The page's sections, in order (the order the page shows them and the bar walks them).
SECTIONS: tuple[Section, ...] = (
    Section("forward", _no_cost, _forward_section),
    Section("reverse", _reverse_cost, _reverse_section),
    Section("objective", _objective_cost, _objective_section),
    Section("training", _training_cost, _training_section),
    Section("sampling", _sampling_cost, _sampling_section),
    Section("evaluation", _no_cost, _evaluation_section),
    Section("editing", _editing_cost, _editing_section),
)


def section_costs(ctx: _Context, sections: Sequence[Section] = SECTIONS) -> dict[str, int]:
    """Each section's images x network evaluations, in order; a draw an earlier section makes
    (the same key) costs a later one nothing, as :meth:`_Context.draw` draws it once."""
    seen: set[tuple] = set()
    costs = {}
    for sec in sections:
        total = 0
        for key, n in sec.cost(ctx):
            if key is None or key not in seen:
                total += n
                if key is not None:
                    seen.add(key)
        costs[sec.name] = total
    return costs


def _build(run: RunDir, cfg: Config, model: nn.Module, newest: Path, ckpts: list[Path],
           imgs: _Images, plan: ReportPlan, seed: int, device: Any, progress: bool,
           t_start: float) -> dict[str, Any]:
    ctx = _Context(run, cfg, model, newest, ckpts, imgs, plan, seed, device)
    m, s, d = cfg.model, cfg.sample, cfg.diffusion
    ctx.out.update({"run": str(run.root), "T": ctx.T, "schedule": d.schedule,
                    "prediction": d.prediction, "conditional": ctx.conditional,
                    "classes": m.num_classes, "sampler": s.sampler, "steps": ctx.run_steps,
                    "guidance": ctx.w_run, "device": str(device), "data_error": ctx.data_error,
                    "params": sum(p.numel() for p in model.parameters()),
                    "checkpoint": str(newest), "step": _step_of(newest),
                    "data": describe(ctx.train) if ctx.train is not None else cfg.data.dataset,
                    "ema": cfg.train.ema_decay, "objective_name": ctx.objective})
    ctx.prog = _Progress(sum(section_costs(ctx).values()), progress)
    try:
        for sec in SECTIONS:
            sec.draw(ctx)
    finally:
        ctx.prog.close()
    ctx.out["seconds"] = time.perf_counter() - t_start
    return ctx.out
