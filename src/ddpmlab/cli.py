"""The ``ddpmlab`` command: train | sample | eval | ema | figures | report | import | export | edit |
distill | samplers.

Each command parses its arguments, builds its settings (a config, a request), makes one library
call (:mod:`ddpmlab.runs`' commands, :func:`~ddpmlab.report.write_report`, ...) and prints what
it returns; every choice a flag offers is read from its owner (the registries, the preset files,
the built-in data sets). Errors caused by the user's input
(:class:`~ddpmlab.errors.DDPMLabError`) and by the environment (an ``OSError``: disk full, no
permission) print one line and exit with status 2; ``--debug`` shows the traceback instead. See
RELIABILITY.md for every case.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys

from .errors import ConfigError, DDPMLabError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}


# ----------------------------------------------------------------------------- parsing
def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"command line: override {item!r} must look like section.key=value")
        out[key.strip()] = value.strip()
    return out


def _train_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The config overrides of ``train``: the ``section.key=value`` ones, then its flags'."""
    ov = _overrides(args.set)
    if args.dataset:
        ov["data.dataset"] = args.dataset
    if args.max_steps is not None:  # exactly N steps: no time budget (unless one is given too;
        ov["train.max_steps"] = str(args.max_steps)  # then N is its most)
        ov.setdefault("train.time_budget_min", "0")
    if args.time_budget is not None:
        ov["train.time_budget_min"] = str(args.time_budget)
    if args.seed is not None:   # (its range: the config's train.seed check)
        ov["train.seed"] = str(args.seed)
    if args.device:
        ov["train.device"] = args.device
    if args.conditional and args.unconditional:
        raise ConfigError("--conditional and --unconditional: give one of them")
    if args.conditional or args.unconditional:
        ov["data.conditional"] = "true" if args.conditional else "false"
    if args.time_limit is not None:
        ov["train.time_limit_min"] = str(args.time_limit)
    return ov


MAX_SEED = 2**63 - 1
# The number flags checked before any work, with the flag in the message. The library checks
# what needs the run (a step count against its T) and train's flags (through the config).
_FLAG_RULES = {
    **dict.fromkeys(("n", "batch_size", "steps", "bpd_timesteps", "ode_images", "ode_steps",
                     "ode_probes", "chain_steps"), ("must be >= 1", lambda v: v >= 1)),
    **dict.fromkeys(("eta", "churn"), ("must be a finite number >= 0",
                                        lambda v: v >= 0 and math.isfinite(v))),
    **dict.fromkeys(("guidance", "guide_weight"), (
        "must be a finite number in 0..10,000 (config.MAX_GUIDANCE)", lambda v: 0 <= v <= 1e4)),
    "seed": ("must be in 0..2**63-1", lambda v: 0 <= v <= MAX_SEED),
}


def _check_flags(args: argparse.Namespace) -> None:
    """Each flag of :data:`_FLAG_RULES` the command has and was given must keep its rule:
    one line naming it (``--n=0 must be >= 1``) otherwise."""
    for dest, (rule, ok) in _FLAG_RULES.items():
        value = getattr(args, dest, None)
        if value is not None and not ok(value):
            raise ConfigError(f"--{dest.replace('_', '-')}={value} {rule}")


def _device(args: argparse.Namespace):
    from .device import resolve_device

    return resolve_device(args.device or "auto", key="--device")


def _say(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from .runs import train_command, train_config

    cfg, run_dir = train_config(args.config, _train_overrides(args), resume=args.resume,
                                out=args.out, log=_say)
    done = train_command(cfg, run_dir, resume=bool(args.resume), force=args.force,
                         progress=not args.no_progress, grid=not args.no_samples, log=_say)
    if done.interrupted:
        if done.is_main:
            r = done.result
            print(f"\nddpmlab: stopped by {r.stopped_by} at step {r.step}; checkpoint saved to "
                  f"{r.checkpoint}.\nResume with: ddpmlab train --resume {run_dir}",
                  file=sys.stderr)
        return EXIT_INTERRUPTED[done.result.stopped_by]
    if done.is_main:
        print(format_training(done))
    return 0


def format_training(done) -> str:
    """The lines ``ddpmlab train`` ends with (a :class:`~ddpmlab.runs.TrainOutcome`)."""
    r, start, root = done.result, done.start, done.run.root
    why = " (time limit reached)" if r.stopped_by == "time limit" else ""
    span = f"{r.step - start} steps (step {start} -> {r.step})" if start else f"{r.step} steps"
    lines = [f"ddpmlab: trained {span} in {r.seconds / 60:.1f} min{why}, final loss {r.loss:.4f}",
             f"  run directory : {root}",
             f"  checkpoint    : {r.checkpoint}",
             f"  metrics       : {done.run.metrics}"]
    if done.grid is not None:
        lines.append(f"  sample grid   : {done.grid}")
    lines.append(f"  more samples  : ddpmlab sample --run {root}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- sample
def cmd_sample(args: argparse.Namespace) -> int:
    from .runs import SampleRequest, sample_command

    _check_flags(args)
    request = SampleRequest(
        run=args.run, n=args.n, seed=args.seed, classes=args.class_, sampler=args.sampler,
        steps=args.steps, eta=args.eta, spacing=args.spacing, guidance=args.guidance,
        options=None if args.churn is None else {"churn": args.churn}, guide=args.guide,
        guide_weight=args.guide_weight, guidance_interval=_interval(args.guidance_interval),
        batch_size=args.batch_size, precision=args.precision, use_ema=not args.no_ema,
        out=args.out, npz=args.npz, force=args.force, progress=not args.no_progress)
    r = sample_command(request, _device(args))
    if r is not None:  # (rank 0 of a torchrun launch writes and reports)
        print(f"ddpmlab: {r.n} samples ({r.sampler}, {r.steps} steps = {r.nfe} network "
              f"evaluations each; {r.precision}) from {r.checkpoint} -> {r.grid}")
        if r.npz is not None:
            print(f"ddpmlab: uint8 NxHxWxC array (key arr_0) -> {r.npz}")
    return 0


def _interval(text: str | None) -> tuple[float, ...] | None:
    """``--guidance-interval LO,HI`` as two floats (None: the run's sample.guidance_interval)."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo >= 0):
        raise ConfigError(f"--guidance-interval {text!r}: give LO,HI, two noise levels sigma "
                          "with 0 <= LO (guided where LO < sigma <= HI; LO >= HI: nowhere)")
    return lo, hi


# ----------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from .runs import ScoreOptions, eval_command

    _check_flags(args)
    options = ScoreOptions(
        samples_npz=args.samples, n=args.n, sampler=args.sampler, steps=args.steps,
        seed=args.seed, nll=args.nll, bpd_images=args.bpd_images,
        bpd_timesteps=args.bpd_timesteps, ode_images=args.ode_images,
        ode_steps=args.ode_steps, ode_probes=args.ode_probes,
        inception_weights=args.inception_weights)
    results = eval_command(args.run, options, _device(args), json_out=args.json,
                           progress=not args.no_progress, force=args.force)
    print(format_report(results))
    return 0


def format_report(r: dict) -> str:
    """The table ``ddpmlab eval`` prints (a :func:`~ddpmlab.runs.score_run` result)."""
    lines = [f"samples        : {r.get('samples', r['n'])}",
             f"features       : {r['features']['name']} ({r['features']['dim']}-d)",
             f"FID            : {r['fid']:.3f}" + (
                 f"   (real-vs-real at n={r['baseline']['n']}: "
                 f"{r['baseline']['fid_mean']:.3f}; recommended n >= {r['recommended_n']})"
                 if r.get("baseline") else ""),
             f"KID            : {r['kid_mean']:.5f} +- {r['kid_std']:.5f}",
             f"precision      : {r['precision']:.3f}   recall: {r['recall']:.3f}"]
    m = r["memorization"]
    lines.append(f"memorization   : {m['share'] * 100:.2f}% near-copies (ratio < "
                 f"{m['threshold']:.2f}; held-out real images: "
                 f"{(m['reference_share'] or 0) * 100:.2f}%), min ratio {m['ratio_min']:.3f}")
    c = r.get("classifier")
    if c:
        real = c["real_confident_share"]
        lines.append(f"classifier     : {c['confident_share'] * 100:.1f}% of samples classified "
                     f"with confidence >= {c['confidence']}"
                     + (f" (real held-out: {real * 100:.1f}%)" if real is not None else ""))
        lines.append(f"class counts   : {c['class_counts']}")
        if c.get("as_requested") is not None:
            acc = f"; its held-out accuracy: {float(c['accuracy']) * 100:.1f}%" \
                if c.get("accuracy") else ""
            lines.append(f"read as asked  : {c['as_requested'] * 100:.1f}% of samples classified "
                         f"as the class they were drawn as{acc}")
    lines += _likelihood_lines(r)
    return "\n".join(lines)


def _likelihood_lines(r: dict) -> list[str]:
    lines = []
    b = r.get("bits_per_dim")
    if b:
        lines.append(f"bits/dim       : {b['total']:.4f} (prior {b['prior']:.5f}, decoder "
                     f"{b['decoder']:.4f}, diffusion {b['diffusion']:.4f}; {b['images']} "
                     f"held-out images, {b['timesteps_evaluated']} timesteps)")
    o = r.get("bits_per_dim_ode")
    if o:   # right under the ELBO's line when both were computed
        half = (f"; {o['halved_steps']} steps: {o['halved_total']:.4f}"
                if o.get("halved_total") is not None else "")
        sem = f" +- {o['sem']:.4f}" if o.get("sem") is not None else ""
        probes = f"{o['probes']} probe(s)" if o["trace"] == "hutchinson" else "exact trace"
        lines.append(f"bits/dim (ODE) : {o['total']:.4f}{sem} (probability-flow ODE, {o['solver']}, "
                     f"{o['steps']} steps{half}; Hutchinson, {probes}; {o['images']} "
                     f"held-out images)")
    if r.get("bits_per_dim_note"):
        lines.append(r["bits_per_dim_note"])
    return lines


# ----------------------------------------------------------------------------- ema
def cmd_ema(args: argparse.Namespace) -> int:
    from .runs import ScoreOptions, ema_command, ema_sweep

    _check_flags(args)
    if (args.sigma_rel is None) == (args.sweep is None):
        raise ConfigError("ema: give --sigma-rel S (write a run with that EMA) or --sweep "
                          "S1,S2,... (score each)")
    if args.sigma_rel is not None:
        ckpt = ema_command(args.run, args.sigma_rel, args.out, force=args.force)
        print(f"ddpmlab: post-hoc EMA of {args.run} with sigma_rel {args.sigma_rel:g} -> "
              f"{ckpt}\n  sample it : ddpmlab sample {ckpt.parent.parent}")
        return 0
    try:
        sigmas = [float(v) for v in args.sweep.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sweep {args.sweep!r}: give numbers like 0.05,0.1,0.15") from None
    options = ScoreOptions(n=args.n, seed=args.seed, bpd_images=0,
                           inception_weights=args.inception_weights)
    rows = ema_sweep(args.run, sigmas, options, _device(args), plot=args.out, force=args.force,
                     progress=not args.no_progress)
    print(format_sweep(rows, args.run))
    return 0


def format_sweep(rows: list[dict], run: str) -> str:
    """The table ``ddpmlab ema --sweep`` prints (:func:`~ddpmlab.runs.ema_sweep`'s rows)."""
    lines = [f"{'sigma_rel':>9}  {'FID':>9}  confident", *(
        f"{r['sigma_rel']:>9g}  {r['fid']:>9.4f}  " + (
            "-" if r["confident_share"] is None else f"{r['confident_share'] * 100:.1f}%")
        for r in rows)]
    best = min(rows, key=lambda r: r["fid"])
    lines.append(f"best FID at sigma_rel {best['sigma_rel']:g} ({best['n']} samples, step "
                 f"{best['step']}): ddpmlab ema {run} --sigma-rel {best['sigma_rel']:g}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures
def cmd_figures(args: argparse.Namespace) -> int:
    from .runs import run_figures

    _check_flags(args)
    for path in run_figures(args.run, args.out, seed=args.seed, device=_device(args),
                            chain_steps=args.chain_steps, force=args.force):
        print(f"ddpmlab: wrote {path}")
    return 0


# ----------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    _check_flags(args)
    index = write_report(args.run, args.out, lang=args.lang, seed=args.seed,
                         device=_device(args), progress=not args.no_progress)
    print(f"ddpmlab: wrote {index} (open it in any browser; it needs no network)")
    return 0


# ----------------------------------------------------------------------------- interop
def cmd_import(args: argparse.Namespace) -> int:
    from .interop import import_diffusers

    ckpt = import_diffusers(args.src, args.out, dataset=args.dataset or "", force=args.force)
    print(f"ddpmlab: imported {args.src} -> {ckpt}\n  sample it : ddpmlab sample {args.out}"
          + ("" if args.dataset else "\n  (set data.dataset in its config.json, or import "
                                       "with --dataset, before eval/figures/fine-tuning)"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .interop import export_diffusers

    out = export_diffusers(args.run, args.out, use_ema=not args.no_ema, force=args.force)
    print(f"ddpmlab: exported {args.run} -> {out} (DDPMPipeline.from_pretrained({str(out)!r}))")
    return 0


# ----------------------------------------------------------------------------- edit
def cmd_edit(args: argparse.Namespace) -> int:
    from .edit_run import EditRequest, edit_command

    _check_flags(args)
    request = EditRequest(
        run=args.run, operation=args.operation, input=args.input, held_out=args.held_out,
        mask=args.mask, strength=args.strength, jump_length=args.jump_length,
        jump_n_sample=args.jump_n_sample, source_class=args.source_class,
        target_class=args.target_class, sampler=args.sampler, steps=args.steps,
        guidance=args.guidance, seed=args.seed, batch_size=args.batch_size,
        precision=args.precision, use_ema=not args.no_ema, out=args.out, npz=args.npz,
        force=args.force)
    r = edit_command(request, _device(args))
    print(f"ddpmlab: {r.operation} of {r.n} image(s) ({r.sampler}, {r.steps} steps; "
          f"{r.nfe:g} network evaluations per image) from {r.checkpoint} -> {r.grid}")
    if r.npz is not None:
        print(f"ddpmlab: the results as uint8 NxHxWxC (key arr_0) -> {r.npz}")
    for note in r.notes:
        print(f"ddpmlab: {note}")
    return 0


def _add_edit_parser(sub, samplers: list[str], device_help: str, precisions: list[str]) -> None:
    from .edit_run import MASKS, OPERATIONS

    e = sub.add_parser("edit", help="inpaint, img2img, invert, interpolate or translate "
                       "images with a trained run",
                       description="Edit images with the run's EMA network and write a grid "
                       "(one row per input: input, mask, result) and, with --npz, the results.")
    _add_run_argument(e)
    e.add_argument("operation", choices=list(OPERATIONS), help="what to do")
    e.add_argument("--input", help="an image file, a folder of images, or an .npz (uint8 NHWC "
                   "arr_0, as ddpmlab sample --npz writes)")
    e.add_argument("--held-out", type=int, metavar="N",
                   help="N images of the run's held-out split, evenly spaced over it (a "
                        "split sorted by class gives each class its share), instead of --input")
    e.add_argument("--mask", help=f"inpaint, img2img: {' | '.join(MASKS)} or a PNG (white = "
                   "generate, black = keep); inpaint's default: right")
    e.add_argument("--strength", type=float,
                   help="img2img: 0..1, how much noise (0 returns the image, 1 samples from "
                        "pure noise; default 0.5)")
    e.add_argument("--jump-length", type=int, help="inpaint: levels per RePaint jump (default 1)")
    e.add_argument("--jump-n-sample", type=int,
                   help="inpaint: passes over each jump's levels (default 1: plain replacement)")
    e.add_argument("--source-class", type=int, metavar="K",
                   help="invert, translate: the inputs' class (default: their labels)")
    e.add_argument("--target-class", metavar="K",
                   help="translate: classes to translate to (a list like 3,5, or all; default "
                        "all); inpaint, img2img, interpolate: the class to edit with (inpaint: "
                        "auto reads each image's class from its kept pixels)")
    e.add_argument("--sampler", choices=samplers, help="default: the run's (invert, "
                   "interpolate, translate: ddim unless the run's is dpm_solver)")
    e.add_argument("--steps", type=int, help="sampling steps, 1..T (default: the run's)")
    e.add_argument("--guidance", type=float, help="classifier-free guidance w (default: the "
                   "run's; 1 for invert, interpolate and translate)")
    e.add_argument("--seed", type=int, default=0, help="result k depends on (seed, k) only")
    e.add_argument("--batch-size", type=int, help="images per batch (results do not change)")
    e.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    e.add_argument("--out", help="PNG grid path (default: RUN/samples/edit_OPERATION_...png)")
    e.add_argument("--npz", help="also write the results as uint8 NxHxWxC (key arr_0) here")
    e.add_argument("--force", action="store_true",
                   help="overwrite --out/--npz even if it is not a PNG / samples .npz")
    e.add_argument("--device", help=device_help)
    e.add_argument("--precision", choices=precisions,
                   help="the network's precision (default: the run's train.precision)")
    e.set_defaults(func=cmd_edit)


# ----------------------------------------------------------------------------- distill
def cmd_distill(args: argparse.Namespace) -> int:
    from .distill_run import DistillRequest, distill_command, format_distill

    _check_flags(args)
    request = DistillRequest(
        teacher=args.teacher, method=args.method, to=args.to, out=args.out, resume=args.resume,
        iterations=args.iterations, time_budget=args.time_budget, lr=args.lr,
        batch_size=args.batch_size, ckpt_every=args.ckpt_every, lr_schedule=args.lr_schedule,
        seed=args.seed,
        force=args.force, progress=not args.no_progress)
    r = distill_command(request, _device(args), log=_say)
    if r.stopped_by is not None:
        print(f"\nddpmlab: stopped by {r.stopped_by} at iteration {r.step}; checkpoint saved to "
              f"{r.checkpoint}.\nResume with: ddpmlab distill --resume {r.run}", file=sys.stderr)
        return EXIT_INTERRUPTED[r.stopped_by]
    print(format_distill(r))
    return 0


def _add_distill_parser(sub, device_help: str) -> None:
    from .distill_run import BUDGET_CAP, DEFAULT_ITERATIONS, METHODS

    d = sub.add_parser("distill", help="a few-step student of a trained run (progressive or "
                       "consistency distillation), written as a new run",
                       description="Distil a run's EMA network into a student that samples in "
                       "K steps (README: Few-step sampling). The student is a run: sample, "
                       "eval, report and export read it.")
    d.add_argument("teacher", nargs="?", metavar="RUN", help="the teacher run directory")
    d.add_argument("--method", choices=list(METHODS), help="progressive: halve the teacher's "
                   "DDIM steps stage by stage down to K; consistency: one-step (or K-step) "
                   "consistency model")
    d.add_argument("--to", type=int, metavar="K", help="the student's sampling steps "
                   "(progressive: a power of two, at most half the teacher's steps)")
    d.add_argument("--out", help="the new run directory (default: RUN-METHODK beside RUN)")
    d.add_argument("--resume", metavar="NEW", help="continue the distillation in NEW exactly")
    d.add_argument("--force", action="store_true", help="replace a run already in --out")
    d.add_argument("--iterations", type=int, metavar="N", help="optimizer steps per stage "
                   f"(default {DEFAULT_ITERATIONS}; with --time-budget the most, default "
                   f"{BUDGET_CAP:,})")
    d.add_argument("--time-budget", type=float, metavar="MIN", help="size the stages by time: "
                   "the same iterations per stage, as many as fill MIN minutes (iterations 5-40 "
                   "are timed, and a later stage's cheaper teacher)")
    d.add_argument("--lr", type=float, help="Adam's learning rate (default: the run's train.lr)")
    d.add_argument("--lr-schedule", help="linear: the rate falls from --lr to 0 over each stage "
                   "(progressive's default); constant: --lr throughout (consistency's default)")
    d.add_argument("--batch-size", type=int, help="images per iteration (default: the run's "
                   "train.batch_size)")
    d.add_argument("--ckpt-every", type=int, metavar="N", help="iterations between checkpoints "
                   "(default: one at each stage's end)")
    d.add_argument("--seed", type=int, default=0, help="seed of the data, noise and a fresh "
                   "student's initialisation")
    d.add_argument("--device", help=device_help)
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_distill)


# ----------------------------------------------------------------------------- samplers
def cmd_samplers(args: argparse.Namespace) -> int:
    from .samplers import SAMPLERS

    rows = [("name", "order", "NFE (n steps)", "stochastic", "eta", "spacing", "what")]
    for name, step in SAMPLERS.items():
        i = step.info
        nfe = "n" if i.nfe_per_step == 1 and i.final_nfe == 1 else \
            f"{i.nfe_per_step}n - {i.nfe_per_step - i.final_nfe}"
        rows.append((name, str(i.order), nfe, i.stochastic, "-" if i.eta is None else f"{i.eta:g}",
                     i.spacing, i.about))
    widths = [max(len(r[k]) for r in rows) for k in range(6)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[6])
    return 0


# ----------------------------------------------------------------------------- parser
def _add_run_argument(p: argparse.ArgumentParser) -> None:
    # Positional or --run: under torchrun, write the run as a positional argument, since
    # torchrun's own parser takes "--run" for its "--run-path".
    p.add_argument("run_pos", nargs="?", metavar="RUN", help="the run directory")
    p.add_argument("--run", help="the run directory (same as the positional RUN)")


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS
    from .data import BUILTINS
    from .device import DEVICE_HELP, PRECISIONS
    from .likelihood_ode import NLLS
    from .samplers import SAMPLERS, SPACINGS

    p = argparse.ArgumentParser(
        prog="ddpmlab",
        description="Train denoising diffusion models (DDPM) on images and sample from them.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a UNet noise predictor (default: built-in MNIST)",
                       description="Train on a data set and write a run directory. Any config "
                       "key can be overridden as section.key=value (e.g. train.lr=5e-4).")
    t.add_argument("--config", help=f"a preset ({', '.join(PRESETS)}) or a YAML/TOML file "
                   "(default: mnist)")
    t.add_argument("--dataset", help=f"{' | '.join(BUILTINS)} | a folder | a .npz")
    t.add_argument("--out", help="run directory (default: runs/<dataset>, a new one if taken)")
    t.add_argument("--max-steps", type=int, help="optimizer steps in all")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly")
    t.add_argument("--force", action="store_true", help="replace a run already in --out")
    t.add_argument("--seed", type=int, help="seed of initialisation, data order and noise")
    t.add_argument("--device", help=f"{DEVICE_HELP} (default auto)")
    t.add_argument("--conditional", action="store_true",
                   help="train with the class labels (for --class and --guidance when sampling)")
    t.add_argument("--unconditional", action="store_true",
                   help="ignore the labels (the mnist preset trains with them)")
    t.add_argument("--time-limit", type=float, metavar="MIN",
                   help="stop (and save) after MIN minutes")
    t.add_argument("--time-budget", type=float, metavar="MIN",
                   help="size the run by time: time steps 5-40, then train the steps that end "
                        "within MIN minutes (max_steps becomes the most; 0: off)")
    t.add_argument("--no-samples", action="store_true", help="skip the final sample grid")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("set", nargs="*", metavar="section.key=value", help="config overrides")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw images from a trained run")
    _add_run_argument(s)
    s.add_argument("-n", "--n", "--num-samples", dest="n", type=int, default=64,
                   help="number of images (default 64)")
    s.add_argument("--sampler", choices=list(SAMPLERS),
                   help="default: the run's sample.sampler (`ddpmlab samplers` lists them)")
    s.add_argument("--steps", type=int, help="sampling steps, 1..T (default: the run's)")
    s.add_argument("--eta", type=float, help="share of ancestral noise, >= 0 (default: the "
                   "sampler's own: DDIM 0, ancestral/SDE samplers 1)")
    s.add_argument("--spacing", choices=list(SPACINGS),
                   help="where the steps fall (default: the sampler's own)")
    s.add_argument("--churn", type=float, help="heun's stochastic churn S_churn, >= 0 (EDM "
                   "Algorithm 2; default: the run's sample.churn, 0 = deterministic)")
    s.add_argument("--seed", type=int, default=0, help="sample k depends on (seed, k) only")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    s.add_argument("--out", help="PNG grid path (default: a new grid in RUN/samples/, named by "
                   "sampler, steps and seed)")
    s.add_argument("--npz", help="also write uint8 NxHxWxC images (key arr_0) here")
    s.add_argument("--force", action="store_true",
                   help="overwrite --out/--npz even if it is not a PNG / samples .npz")
    s.add_argument("--batch-size", type=int, help="images per batch (results do not change)")
    s.add_argument("--class", dest="class_", metavar="K",
                   help="class to draw: a number, a list like 3,5, all (one row per class), or none "
                        "(the unconditional model); default: a balanced mix for a conditional run")
    s.add_argument("--guidance", type=float,
                   help="classifier-free guidance w: eps_u + w (eps_c - eps_u); 1 = conditional")
    s.add_argument("--guide", metavar="RUN|CHECKPOINT|@F",
                   help="autoguidance: a weaker model of the same task (a smaller or shorter-"
                        "trained run, or an early checkpoint folder of a run; @F: this run's "
                        "checkpoint at the fraction F of its steps); default: the run's "
                        "sample.guide")
    s.add_argument("--guide-weight", type=float, metavar="W",
                   help="autoguidance weight: pred_g + W (pred - pred_g); 1 = none (default: "
                        "the run's sample.guide_weight)")
    s.add_argument("--guidance-interval", metavar="LO,HI",
                   help="guide (CFG and autoguidance) only where LO < sigma_t <= HI, in the "
                        "run's own noise level sigma (default: the run's; every level)")
    s.add_argument("--device", help=DEVICE_HELP)
    s.add_argument("--precision", choices=list(PRECISIONS),
                   help="the network's precision (default: the run's train.precision; auto = "
                        "bf16 autocast on CUDA and on CPUs with native bf16, else fp32; fp16 "
                        "needs CUDA)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="FID/KID, precision/recall, memorization, bits/dim")
    _add_run_argument(e)
    e.add_argument("--samples", help="an .npz of samples to score instead of drawing new ones")
    e.add_argument("--n", type=int, help="samples to draw (default: enough for a stable FID)")
    e.add_argument("--sampler", choices=list(SAMPLERS))
    e.add_argument("--steps", type=int)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--bpd-images", type=int, default=256, help="held-out images for bits/dim")
    e.add_argument("--bpd-timesteps", type=int, default=100,
                   help="timesteps for the bits/dim estimate (T = exact sum)")
    e.add_argument("--nll", choices=list(NLLS), default="elbo",
                   help="bits/dim through the ELBO (default), the probability-flow ODE, or both")
    e.add_argument("--ode-images", type=int, default=64,
                   help="held-out images for the ODE bits/dim (default 64: minutes on a CPU)")
    e.add_argument("--ode-steps", type=int, default=32,
                   help="RK4 steps in log sigma (4 network calls each); the result at half "
                        "the steps is shown beside it")
    e.add_argument("--ode-probes", type=int, default=1,
                   help="Hutchinson probes per image for the divergence (1 backward pass each)")
    e.add_argument("--inception-weights", help="the FID Inception-v3 weights file")
    e.add_argument("--json", help="write the results as JSON here")
    e.add_argument("--force", action="store_true",
                   help="overwrite --json even if it is not an earlier eval result")
    e.add_argument("--device", help=DEVICE_HELP)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_eval)

    em = sub.add_parser("ema", help="post-hoc EMA of a train.phema run: any EMA length, or a "
                        "sweep scored by FID", description="Reconstruct the EMA of any length "
                        "sigma_rel from the snapshots a run trained with train.phema=true kept "
                        "(Karras et al. 2024), at its newest checkpoint.")
    _add_run_argument(em)
    em.add_argument("--sigma-rel", type=float, metavar="S",
                    help="write a new run (--out) whose EMA has relative length S, 0 < S < 0.3")
    em.add_argument("--sweep", metavar="S1,S2,...",
                    help="score each length with the project's FID (no run is kept); the table "
                         "goes to the run's metrics, the plot to --out")
    em.add_argument("--out", help="--sigma-rel: the new run directory (default: RUN-emaS beside "
                    "RUN); --sweep: the plot (default: RUN/figures/phema_sweep.png)")
    em.add_argument("--force", action="store_true",
                    help="replace a run in --out (--sweep: a PNG ddpmlab did not write)")
    em.add_argument("--n", type=int, help="--sweep: samples per length (default: enough for a "
                    "stable FID)")
    em.add_argument("--seed", type=int, default=0, help="--sweep: the samples' seed")
    em.add_argument("--inception-weights", help="the FID Inception-v3 weights file")
    em.add_argument("--device", help=DEVICE_HELP)
    em.add_argument("--no-progress", action="store_true", help="no progress bar")
    em.set_defaults(func=cmd_ema)

    f = sub.add_parser("figures", help="the tutorial's pictures for a run")
    _add_run_argument(f)
    f.add_argument("--out", help="folder for the PNGs (default: RUN/figures)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--chain-steps", type=int,
                   help="DDPM steps of the denoising chain (default: all T, as in the paper)")
    f.add_argument("--device", help=DEVICE_HELP)
    f.add_argument("--force", action="store_true",
                   help="replace PNGs in --out that ddpmlab did not write")
    f.set_defaults(func=cmd_figures)

    from .report import LANGS

    rp = sub.add_parser("report", help="a self-contained HTML report of a run (RUN/report/)",
                        description="Write a folder with an HTML page that shows the run: the "
                        "forward process on its data, its reverse chains, the ELBO terms, "
                        "training, sampling and its evaluation. It opens from disk with no "
                        "network.")
    _add_run_argument(rp)
    rp.add_argument("--out", help="the report folder (default: RUN/report); an earlier report "
                    "there is replaced")
    rp.add_argument("--lang", choices=list(LANGS), default="en",
                    help="language of the page's text (default en; zh: Chinese)")
    rp.add_argument("--seed", type=int, default=0,
                    help="the training images and sample noises shown (default 0)")
    rp.add_argument("--device", help=DEVICE_HELP)
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.set_defaults(func=cmd_report)

    im = sub.add_parser("import", help="a diffusers UNet2DModel / DDPMPipeline folder -> a run")
    im.add_argument("src", help="a local diffusers folder (pipeline with unet/, or a UNet)")
    im.add_argument("--out", required=True, help="the run directory to write")
    im.add_argument("--dataset", help="data.dataset of the run (for eval, figures, fine-tuning)")
    im.add_argument("--force", action="store_true", help="replace a run already in --out")
    im.set_defaults(func=cmd_import)

    ex = sub.add_parser("export", help="a run -> a diffusers DDPMPipeline folder")
    _add_run_argument(ex)
    ex.add_argument("--format", choices=["diffusers"], default="diffusers")
    ex.add_argument("--out", required=True, help="the folder to write")
    ex.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")
    ex.add_argument("--force", action="store_true", help="replace a non-empty --out")
    ex.set_defaults(func=cmd_export)

    _add_edit_parser(sub, list(SAMPLERS), DEVICE_HELP, list(PRECISIONS))
    _add_distill_parser(sub, DEVICE_HELP)
    ls = sub.add_parser("samplers", help="list the samplers with their order and cost")
    ls.set_defaults(func=cmd_samplers)
    return p


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def tune_allocator() -> bool:
    """Make glibc serve every allocation from its heap and keep freed memory for reuse.

    By default glibc hands each allocation above a threshold (128 KiB, adapting up to 32 MiB)
    to ``mmap`` and returns it to the OS when freed, so every step's large tensors land on fresh
    pages that the kernel must fault in and zero. With the batches of guided sampling (tensors of
    50-100 MB on the main job's model) that kernel time was 45% of the CPU time; serving them
    from the heap halves the wall time of ``ddpmlab sample`` on 2 cores for 25-50% more peak
    memory (BENCHMARKS.md §2). Only the ``ddpmlab`` command calls this (a process it owns), on
    Linux with glibc; ``DDPMLAB_MALLOC=default`` keeps glibc's behaviour. Returns whether the
    setting took effect."""
    if os.environ.get("DDPMLAB_MALLOC", "").strip().lower() in ("default", "off", "0"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt  # absent on musl: AttributeError
    except (OSError, AttributeError):
        return False
    # no mmap'd chunks; keep up to 1 GiB of free memory at the heap's top instead of trimming it
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1


class _Terminated(BaseException):  # (not Exception: no "except Exception" may swallow it)
    """SIGTERM outside the training loop (which saves a checkpoint and stops on its own)."""


_SIGINTS: list[int] = []  # SIGINTs seen by the command (one may be swallowed by a library)
_SIGTERMS: list[int] = []  # SIGTERMs seen (likewise: a bare "except:" in a library takes it)
_HELD: list[int] = []     # signals that came while the libraries loaded (acted on once loaded)


def _on_sigterm(signum, frame) -> None:
    _SIGTERMS.append(signum)
    raise _Terminated


def _on_sigint(signum, frame) -> None:
    _SIGINTS.append(signum)
    raise KeyboardInterrupt


def _hold(signum, frame) -> None:
    _HELD.append(signum)


def _load_libraries() -> None:
    """Import numpy and torch (every command's parser needs them) with SIGTERM and SIGINT held:
    an exception raised inside their imports is lost in a bare ``except:`` of theirs (exit 0,
    the whole command run) or turns into another error inside numpy's import (a traceback).
    A signal that came meanwhile is raised as soon as they are in."""
    import numpy  # noqa: F401
    import torch  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """The command. Its first line takes over SIGTERM and SIGINT, so a signal at any moment
    ends with one line and exit 130 / 143: while numpy and torch load (the first second or
    two) it is held and acted on once they are in; after that it interrupts at once; one that
    library code swallowed is still reported (a run that then finished says so, exit 130 /
    143). The training loop installs its own handlers (finish the step, save)."""
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _hold) if main_thread else None
    old_int = signal.signal(signal.SIGINT, _hold) if main_thread else None
    for seen in (_SIGINTS, _SIGTERMS, _HELD):
        seen.clear()
    try:
        if argv is None:  # the `ddpmlab` command itself (tests call main([...]) in-process)
            tune_allocator()   # (before the libraries allocate)
            for stream in (sys.stdout, sys.stderr):   # a non-UTF-8 path in a message
                if getattr(stream, "errors", "") == "strict" and hasattr(stream, "reconfigure"):
                    stream.reconfigure(errors="backslashreplace")
        _load_libraries()
        if main_thread:
            signal.signal(signal.SIGTERM, _on_sigterm)
            signal.signal(signal.SIGINT, _on_sigint)
        for signum in _HELD[:1]:
            (_on_sigterm if signum == signal.SIGTERM else _on_sigint)(signum, None)
        code = _main(argv)
        if code == 0 and (_SIGINTS or _SIGTERMS):  # a signal that library code caught
            raise _Terminated if _SIGTERMS else KeyboardInterrupt
        return code
    except KeyboardInterrupt:
        print("\nddpmlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED["SIGINT"]
    except _Terminated:
        print("\nddpmlab: stopped by SIGTERM", file=sys.stderr)
        return EXIT_INTERRUPTED["SIGTERM"]
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)


@contextlib.contextmanager
def _plain_warnings(debug: bool):
    """A warning is one line, ``ddpmlab: warning: ...`` (not Python's file:line and source
    line); ``--debug`` keeps Python's form."""
    import warnings

    if debug:
        yield
        return
    old = warnings.formatwarning
    warnings.formatwarning = lambda message, *args, **kw: f"ddpmlab: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = old


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "run_pos"):
        if args.run and args.run_pos and args.run != args.run_pos:
            parser.error("give the run directory once (RUN or --run)")
        args.run = args.run or args.run_pos
        if not args.run:
            parser.error(f"{args.command}: the run directory is required (RUN or --run)")
    try:
        with _plain_warnings(args.debug):
            return int(args.func(args) or 0)
    except DDPMLabError as e:
        if args.debug:
            raise
        print(f"ddpmlab: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # the environment (disk full, no permission, ...): one line, not a bug
        if args.debug:
            raise
        print(f"ddpmlab: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
