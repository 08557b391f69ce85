"""Compute everything the report shows for one run, and write its pictures.

:func:`write_report` composes the run layer (:func:`ddpmlab.runs.load_run`,
:func:`~ddpmlab.runs.sample_images`), the math (:func:`ddpmlab.forward.q_sample` for the forward
frames, :func:`ddpmlab.samplers.sample` with a callback for the chains,
:func:`ddpmlab.likelihood.bits_per_dim` for the ELBO terms), the memorization metric of
:mod:`ddpmlab.evaluate` and the pictures of :mod:`ddpmlab.viz`; :mod:`.page` turns the result
into HTML. Every image is a PNG file under ``img/`` beside ``index.html``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data import ImageData, describe, load_dataset, to_model_range, to_uint8
from ..errors import CheckpointError, ConfigError, DataError
from ..evaluate import memorization, save_memorization_figure
from ..forward import q_posterior, q_sample
from ..io import atomic_write_text, read_json
from ..layout import RunDir, step_of
from ..likelihood import bits_per_dim
from ..outputs import check_target, commit, staging
from ..runs import (
    GRID_MAX_ROWS,
    class_rows,
    default_labels,
    load_run,
    run_schedule,
    sample_images,
    sampling_view,
)
from ..samplers import SAMPLERS, per_sample_generators, sample
from ..schedules import Schedule
from ..viz import class_rows_grid, loss_plot, read_losses, save_grid, vlb_plot
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

    def check(self) -> None:
        for name in ("forward_images", "forward_frames", "chain_samples", "bpd_images",
                     "checkpoint_samples", "max_checkpoints", "grid_per_class",
                     "grid_unconditional", "nearest", "max_training_grids"):
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


# ============================================================================ helpers
def _scale(size: int, target: int) -> int:
    """Integer enlargement so an image side of ``size`` pixels shows at about ``target``."""
    return max(1, int(math.ceil(target / size)))


def _sampler_steps(cfg: Config) -> int:
    return cfg.sample.steps or cfg.diffusion.timesteps


def _evals(cfg: Config, n: int, sampler: str, steps: int, guided: bool, w: float) -> int:
    """Images times network evaluations of one sampling call (guidance with w not 0 or 1
    runs both halves: twice the images)."""
    halves = 2 if guided and w not in (0.0, 1.0) else 1
    return n * SAMPLERS[sampler].info.nfe(steps) * halves


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


# ============================================================================ sections
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


def _chain(imgs: _Images, tag: str, model: nn.Module, cfg: Config, sched: Schedule,
           n: int, seed: int, device: Any, sampler: str, steps: int | None,
           y: torch.Tensor | None, n_frames: int | None, measure_noise: bool,
           prog: _Progress) -> dict[str, Any]:
    """One sampling chain with the run's settings (the same noise and arguments as
    :func:`ddpmlab.runs.sample_images` for samples 0..n-1), keeping x_t and x0_hat of the
    chosen states; state i < S is x before step i, state S the output. With
    ``measure_noise`` (consecutive ancestral steps) each kept step's added noise is measured
    as the std of x_next - mean, the mean being the posterior q(x_{t-1} | x_t, x0_hat)."""
    s = cfg.sample
    m = cfg.model
    shape = (n, m.in_channels, m.image_size, m.image_size)
    spacing = None if s.spacing == "auto" else s.spacing
    guided = y is not None
    w = s.guidance if guided else 1.0
    halves = 2 if guided and w not in (0.0, 1.0) else 1
    dev_sched = sched.to(device)
    done = [0]   # network evaluations so far (for the progress bar)
    keep: list[int] = []
    xs: dict[int, torch.Tensor] = {}
    hats: dict[int, torch.Tensor] = {}
    ts: dict[int, Any] = {}
    sig: dict[int, float] = {}

    def callback(info: dict[str, Any]) -> None:
        i, total = int(info["i"]), int(info["steps"])
        if not keep:
            if n_frames is None or n_frames >= total + 1:
                keep.extend(range(total + 1))
            else:   # evenly spaced, always with the last step's input and the output
                keep.extend(sorted({int(round(v)) for v in np.linspace(0, total - 1,
                                                                       n_frames - 1)}
                                   | {total - 1, total}))
        if i in keep:
            xs[i] = info["x"].detach().float().cpu().clone()
            hats[i] = info["x0_hat"].detach().float().cpu().clone()
            ts[i] = info["t"]
            if measure_noise:
                tt = torch.full((n,), int(info["t"]), dtype=torch.long, device=info["x"].device)
                mean, _, _ = q_posterior(dev_sched, info["x0_hat"], info["x"], tt)
                sig[i] = float((info["x_next"] - mean).float().std())
        if i == total - 1:
            hats[total] = info["x0_hat"].detach().float().cpu().clone()
        prog.add(n * halves * (int(info["nfe"]) - done[0]))
        done[0] = int(info["nfe"])

    gens = per_sample_generators(seed, list(range(n)), device=device)
    net, prediction = sampling_view(model, cfg, sched, device)
    out = sample(net, dev_sched, shape, sampler=sampler, steps=steps, eta=s.eta,
                 variance=s.variance, prediction=prediction,
                 y=None if y is None else y.to(device), guidance=w, generator=gens,
                 clip_x0=s.clip_x0, null_class=m.null_class, device=device, spacing=spacing,
                 callback=callback, learn_sigma=m.learn_sigma)
    total = keep[-1]
    xs[total] = out.detach().float().cpu()
    scale = _scale(m.image_size, 72)
    frames, t_text, step_text, sigma_text = [], [], [], []
    for k, j in enumerate(keep):
        both = torch.cat([xs[j], hats[j]])
        frames.append(imgs.grid(f"chain_{tag}_{k:03d}.png", both, n, scale))
        step_text.append(f"{j} / {total}")
        t = ts.get(j)
        t_text.append(None if j == total else (f"{t:g}" if isinstance(t, float) else str(t)))
        if measure_noise:
            sigma_text.append(None if j == total else num(sig[j], 3))
    return {"frames": frames, "t": t_text, "step": step_text,
            "sigma": sigma_text if measure_noise else None, "states": total + 1,
            "output": xs[total], "start": len(keep) - 1}


def _objective(imgs: _Images, model: nn.Module, cfg: Config, sched: Schedule,
               held: ImageData, plan: ReportPlan, seed: int, device: Any) -> dict[str, Any]:
    """The ELBO of a few held-out images, term by term (:func:`bits_per_dim`)."""
    T = sched.T
    g = torch.Generator().manual_seed(seed + 1)
    pick = torch.randperm(len(held), generator=g)[:plan.bpd_images]
    x0 = to_model_range(held.images[pick]).to(device)
    k = None if plan.bpd_timesteps >= T else plan.bpd_timesteps
    bpd = bits_per_dim(model, sched, x0, prediction=cfg.diffusion.prediction,
                       variance=cfg.sample.variance, n_timesteps=k, generator=g,
                       learn_sigma=cfg.model.learn_sigma)
    path, rel = imgs.path("vlb.png")
    vlb_plot(bpd.terms, path, total=bpd.total)
    scale = _scale(held.shape[-1], 48)
    return {"plot": rel, "n": len(pick), "k": int(len(bpd.timesteps)),
            "total": bpd.total, "prior": bpd.prior, "decoder": bpd.decoder,
            "diffusion": bpd.diffusion, "D": int(np.prod(held.shape)),
            "images": [imgs.grid(f"heldout_{j:02d}.png", x0[j:j + 1].cpu(), 1, scale)
                       for j in range(len(pick))],
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
        except CheckpointError:
            doc = None
        if isinstance(doc, dict) and "fid" in doc:
            return doc, False
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


def _build(run: RunDir, cfg: Config, model: nn.Module, newest: Path, ckpts: list[Path],
           imgs: _Images, plan: ReportPlan, seed: int, device: Any, progress: bool,
           t_start: float) -> dict[str, Any]:
    m, s, d = cfg.model, cfg.sample, cfg.diffusion
    T = d.timesteps
    sched = run_schedule(cfg)
    objective = getattr(d, "objective", "ddpm")
    conditional = m.null_class is not None
    n_classes = m.num_classes
    rows = min(n_classes, GRID_MAX_ROWS)
    run_steps = _sampler_steps(cfg)
    w_run = s.guidance if conditional else 1.0

    # data (a run whose data set cannot be read still gets every model section)
    data_error = None
    train = held = None
    try:
        train = load_dataset(cfg.data, "train")
        held = load_dataset(cfg.data, "test")
    except DataError as e:
        data_error = str(e)
    separate = (train is not None and held is not None
                and not (len(held) == len(train) and torch.equal(held.images, train.images)))

    # the plan, in images x network evaluations, for the progress bar
    n_chain = plan.chain_samples
    chain_y = default_labels(cfg, n_chain)
    picked = _pick_checkpoints(ckpts, plan.max_checkpoints)
    n_ck = min(n_classes, plan.checkpoint_samples) if conditional else plan.checkpoint_samples
    grid_y = class_rows(rows, plan.grid_per_class) if conditional else None
    n_grid = len(grid_y) if grid_y is not None else plan.grid_unconditional
    nfe_samplers = list(dict.fromkeys([s.sampler, *plan.nfe_samplers]))
    nfe_targets = sorted({min(k, T) for k in plan.nfe})
    ev = lambda n, sampler, steps, w=w_run: _evals(cfg, n, sampler, steps, conditional, w)  # noqa: E731
    total = (ev(n_chain, s.sampler, run_steps) + ev(n_chain, "ddpm", T)
             + (plan.bpd_images * min(plan.bpd_timesteps, T)
                if held is not None and objective == "ddpm" else 0)
             + len(picked) * ev(n_ck, s.sampler, run_steps) + ev(n_grid, s.sampler, run_steps)
             + (sum(ev(rows, s.sampler, run_steps, w) for w in plan.guidance)
                if conditional else 0)
             + sum(ev(n_chain, name, _steps_for_nfe(name, k, T))
                   for name in nfe_samplers for k in nfe_targets))
    prog = _Progress(total, progress)
    out: dict[str, Any] = {"run": str(run.root), "T": T, "schedule": d.schedule,
                           "prediction": d.prediction, "conditional": conditional,
                           "classes": n_classes, "sampler": s.sampler, "steps": run_steps,
                           "guidance": w_run, "device": str(device), "data_error": data_error,
                           "params": sum(p.numel() for p in model.parameters()),
                           "checkpoint": str(newest), "step": _step_of(newest),
                           "data": describe(train) if train is not None else cfg.data.dataset,
                           "ema": cfg.train.ema_decay, "objective_name": objective}
    memo: dict[tuple, torch.Tensor] = {}
    steps_arg = s.steps or None   # what sample_images does with the run's own steps

    def draw(net: nn.Module, ckpt: Path, n: int, y: torch.Tensor | None, w: float = w_run,
             sampler: str = s.sampler, steps: int = run_steps) -> torch.Tensor:
        """``sample_images`` of samples 0..n-1, each (checkpoint, n, labels, w, sampler,
        steps) drawn once: the newest checkpoint's row is the guidance sweep's row at the
        run's w, the run's sampler at its own steps is the chain of section 2."""
        key = (str(ckpt), n, None if y is None else tuple(y.tolist()), float(w), sampler,
               steps)
        if key not in memo:
            memo[key] = sample_images(net, cfg, n, seed, device, y=y, guidance=w,
                                      sampler=sampler,
                                      steps=steps_arg if (sampler, steps) == (s.sampler,
                                                                              run_steps)
                                      else steps)
        prog.add(ev(n, sampler, steps, w))
        return memo[key]

    names = (train.class_names if train is not None and train.class_names else
             [str(k) for k in range(n_classes)])
    try:
        # 1. forward
        prog.stage("forward process")
        if train is not None:
            out["forward"] = _forward(imgs, sched, train, plan, torch.Generator().manual_seed(seed))

        # 2. reverse: the run's sampler, then the paper's all-T ancestral chain
        prog.stage(f"chain ({s.sampler})")
        out["chain_run"] = _chain(imgs, "run", model, cfg, sched, n_chain, seed, device,
                                  s.sampler, steps_arg, chain_y, None, False, prog)
        memo[(str(newest), n_chain, None if chain_y is None else tuple(chain_y.tolist()),
              float(w_run), s.sampler, run_steps)] = out["chain_run"]["output"]
        info = SAMPLERS[s.sampler].info
        out["chain_run"]["stochastic"] = info.stochastic
        out["chain_run"]["eta"] = s.eta if s.eta is not None else info.eta
        prog.stage(f"chain (ddpm, {T} steps)")
        out["chain_ddpm"] = _chain(imgs, "ddpm", model, cfg, sched, n_chain, seed, device,
                                   "ddpm", None, chain_y, plan.chain_frames, True, prog)
        out["chain_n"] = n_chain

        # 3. objective
        if held is not None and objective == "ddpm":   # (the ELBO is the ddpm objective's)
            prog.stage("bits/dim")
            out["objective"] = _objective(imgs, model, cfg, sched, held, plan, seed, device)
            out["objective"]["separate"] = separate
            prog.add(plan.bpd_images * min(plan.bpd_timesteps, T))

        # 4. training: the loss, the checkpoints, the grids drawn during training
        prog.stage("checkpoints")
        try:
            steps_logged, losses = read_losses(run.metrics)
            path, rel = imgs.path("loss.png")
            loss_plot(run.metrics, path)
            out["loss"] = {"plot": rel, "n": len(steps_logged), "last": float(losses[-1]),
                           "step": int(steps_logged[-1])}
        except DataError as e:
            out["loss"] = {"missing": str(e)}
        ck_y = torch.arange(n_ck) if conditional else None
        ck_scale = _scale(m.image_size, 48)
        ck_rows = []
        for c in picked:
            net = model if c == newest else load_run(run.root, device=device, checkpoint=c)[0]
            x = draw(net, c, n_ck, ck_y)
            ck_rows.append({"step": _step_of(c),
                            "image": imgs.grid(f"ckpt_{_step_of(c):08d}.png", x, n_ck,
                                               ck_scale)})
        grids = [p for _, p in run.training_grids()]
        grids = _pick_checkpoints(grids, plan.max_training_grids)
        out["training"] = {
            "rows": ck_rows, "saved": len(ckpts), "keep_last": cfg.train.keep_last,
            "ckpt_every": cfg.train.ckpt_every, "sample_every": cfg.train.sample_every,
            "grids": [{"name": p.stem, "image": imgs.copy(f"train_{p.name}", p)}
                      for p in grids],
            "grids_path": str(run.samples)}

        # 5. sampling: per class (or a plain grid), the guidance sweep, samples against NFE
        prog.stage("sampling")
        grid = draw(model, newest, n_grid, grid_y)
        if conditional:
            path, rel = imgs.path("classes.png")
            class_rows_grid(list(grid.split(plan.grid_per_class)), path, names[:rows])
            sweep_y = torch.arange(rows)
            sweep = []
            for k, w in enumerate(plan.guidance):
                prog.stage(f"guidance w={w:g}")
                x = draw(model, newest, rows, sweep_y, w)
                sweep.append({"w": w, "image": imgs.grid(f"guidance_{k:02d}.png", x, rows,
                                                         _scale(m.image_size, 40))})
            out["sampling"] = {"grid": rel, "sweep": sweep, "rows": rows,
                               "names": names[:rows]}
        else:
            out["sampling"] = {"grid": imgs.grid("samples.png", grid, 8,
                                                 _scale(m.image_size, 48)),
                               "n": n_grid}
        nfe_rows = []
        cell_scale = _scale(m.image_size, 40)
        for name in nfe_samplers:
            cells = []
            for k in nfe_targets:
                steps = _steps_for_nfe(name, k, T)
                prog.stage(f"{name}, {steps} steps")
                x = draw(model, newest, n_chain, chain_y, sampler=name, steps=steps)
                cells.append({"nfe": SAMPLERS[name].info.nfe(steps),
                              "image": imgs.grid(f"nfe_{name}_{k:04d}.png", x, n_chain,
                                                 cell_scale)})
            nfe_rows.append({"sampler": name, "cells": cells})
        out["nfe"] = {"rows": nfe_rows,
                      "reference": imgs.grid("nfe_reference.png", out["chain_ddpm"]["output"],
                                             n_chain, cell_scale)}

        # 6. evaluation: the run's own, and the nearest training images of this report's samples
        prog.stage("evaluation")
        results, summary_only = _eval_results(run)
        out["eval"] = {"results": results, "summary_only": summary_only}
        fig = None
        if results is not None and not summary_only:
            f = (results.get("memorization") or {}).get("figure")
            if f and Path(f).is_file():
                fig = imgs.copy("eval_memorization.png", Path(f))
        out["eval"]["figure"] = fig
        if train is not None:
            u8 = to_uint8(grid)
            mem = memorization(u8, train.images, held.images if separate else None,
                               top_k=min(plan.nearest, len(u8)), seed=seed)
            path, rel = imgs.path("nearest.png")
            save_memorization_figure(u8, train.images, mem, path)
            out["nearest"] = {"image": rel, "n": len(u8), "flagged": mem.n_flagged,
                              "threshold": mem.threshold}
    finally:
        prog.close()
    out["seconds"] = time.perf_counter() - t_start
    return out
