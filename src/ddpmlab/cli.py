"""The ``ddpmlab`` command: train | sample | eval | figures | report | import | export | samplers.

Each command parses its arguments, builds a config, and calls the library; nothing else lives
here. Errors caused by the user's input (:class:`~ddpmlab.errors.DDPMLabError`) and by the
environment (an ``OSError``: disk full, no permission) print one line and exit with status 2;
``--debug`` shows the traceback instead. See RELIABILITY.md for every case.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .errors import ConfigError, DDPMLabError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}


# ----------------------------------------------------------------------------- helpers
def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"command line: override {item!r} must look like section.key=value")
        out[key.strip()] = value.strip()
    return out


def _default_out(dataset: str) -> Path:
    """``runs/<dataset>``, or ``runs/<dataset>-2``, ... if that already holds a run."""
    name = Path(dataset).stem if ("/" in dataset or "." in dataset) else dataset
    name = name.lstrip(".")  # "--dataset .." must not make runs/.. (the current folder)
    base = Path("runs") / (name or "run")
    cand, k = base, 2
    while cand.exists() and any(cand.iterdir()):
        cand = base.with_name(f"{base.name}-{k}")
        k += 1
    return cand


def _parse_classes(text: str, num_classes: int) -> list[int]:
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


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{name}={value} must be >= 1")


def _finite_nonneg(name: str, value: float | None) -> None:
    """A number flag the config would refuse (negative, NaN, inf) stops with one line."""
    if value is not None and not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name}={value} must be a finite number >= 0")


MAX_SEED = 2**63 - 1


def _seed(value: int | None) -> None:
    if value is not None and not 0 <= value <= MAX_SEED:
        raise ConfigError(f"--seed={value} must be in 0..2**63-1")


def _check_output(path: Path, kind: str, force: bool) -> None:
    """Before any work: refuse to overwrite a user's file (:func:`ddpmlab.io.check_replaceable`),
    and make sure ``path`` is writable."""
    from .io import check_replaceable

    check_replaceable(path, kind, force)
    probe = path.with_name(f".write-test-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DDPMLabError(f"{path}: cannot write there ({e.strerror or e})") from None


# ----------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .layout import RunDir
    from .runs import grid_labels, sample_grid, train_run
    from .train.distributed import cleanup

    ov = _overrides(args.set)
    if args.resume:
        run_dir = Path(args.resume)
        if args.out and Path(args.out) != run_dir:
            raise ConfigError("--resume DIR continues DIR; do not also give a different --out")
        for note in RunDir(run_dir).recover():  # (a --force killed before its checkpoint)
            print(f"ddpmlab: {note}", flush=True)
        if not RunDir(run_dir).is_run():
            raise DDPMLabError(f"{run_dir}: not a ddpmlab run directory (no config.json)")
        cfg = RunDir(run_dir).read_config()
        if args.config:
            raise ConfigError("--resume takes the run's own config.json; drop --config")
    else:
        cfg = load_config(args.config or "mnist")
    if args.dataset:
        ov["data.dataset"] = args.dataset
    if args.max_steps is not None:  # exactly N steps: no time budget (unless one is given too;
        ov["train.max_steps"] = str(args.max_steps)  # then N is its most)
        ov.setdefault("train.time_budget_min", "0")
    if args.time_budget is not None:
        ov["train.time_budget_min"] = str(args.time_budget)
    if args.seed is not None:
        _seed(args.seed)
        ov["train.seed"] = str(args.seed)
    if args.device:
        ov["train.device"] = args.device
    if args.conditional and args.unconditional:
        raise ConfigError("--conditional and --unconditional: give one of them")
    if args.conditional:
        ov["data.conditional"] = "true"
    if args.unconditional:
        ov["data.conditional"] = "false"
    if args.time_limit is not None:
        ov["train.time_limit_min"] = str(args.time_limit)
    cfg = cfg.override(ov)
    run_dir = Path(args.resume) if args.resume else Path(args.out or _default_out(
        cfg.data.dataset))
    trainer = train_run(cfg, run_dir, resume=bool(args.resume), force=args.force,
                        progress=not args.no_progress)
    main = trainer.dist.is_main
    if main:
        from .data import describe

        how = (f"conditional on {cfg_classes} classes (guidance-ready)"
               if (cfg_classes := trainer.cfg.model.num_classes) else "unconditional")
        print(f"ddpmlab: training on {describe(trainer.data)}; {how}", flush=True)
        n_params = sum(p.numel() for p in trainer.model.parameters())
        print(f"ddpmlab: model {n_params / 1e6:.2f}M parameters on {trainer.device} "
              f"({trainer.precision_reason}); run directory {run_dir}", flush=True)
    start = trainer.step  # (a resumed run starts at its checkpoint's step)
    result = trainer.train()
    if result.stopped_by in EXIT_INTERRUPTED:
        if main:
            print(f"\nddpmlab: stopped by {result.stopped_by} at step {result.step}; checkpoint "
                  f"saved to {result.checkpoint}.\nResume with: ddpmlab train --resume {run_dir}",
                  file=sys.stderr)
        cleanup()
        return EXIT_INTERRUPTED[result.stopped_by]
    grid = None
    if main and not args.no_samples:
        rc = trainer.cfg  # resolved: the classes come from the data
        how = (f", one row per class, guidance {rc.sample.guidance:g}"
               if rc.model.num_classes else "")
        y_grid, _ = grid_labels(rc, rc.sample.n)
        count = rc.sample.n if y_grid is None else len(y_grid)
        print(f"ddpmlab: drawing {count} samples with the EMA weights "
              f"({cfg.sample.sampler}{how})...", flush=True)
        grid = sample_grid(trainer.ema, rc, trainer.run.grid, device=trainer.device)
    if main:
        why = " (time limit reached)" if result.stopped_by == "time limit" else ""
        span = f"{result.step - start} steps (step {start} -> {result.step})" if start else \
            f"{result.step} steps"
        print(f"ddpmlab: trained {span} in {result.seconds / 60:.1f} min{why}, "
              f"final loss {result.loss:.4f}")
        print(f"  run directory : {run_dir}")
        print(f"  checkpoint    : {result.checkpoint}")
        print(f"  metrics       : {trainer.run.metrics}")
        if grid is not None:
            print(f"  sample grid   : {grid}")
        print(f"  more samples  : ddpmlab sample --run {run_dir}")
    cleanup()
    return 0


# ----------------------------------------------------------------------------- sample
def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .device import resolve_device
    from .runs import (
        check_sample_memory,
        class_rows,
        default_labels,
        load_run,
        sample_images_sharded,
        save_npz,
    )
    from .samplers import SAMPLERS
    from .train import distributed as D
    from .viz import save_grid

    _positive("--n", args.n)
    _positive("--batch-size", args.batch_size)
    _positive("--steps", args.steps)
    _finite_nonneg("--eta", args.eta)
    _finite_nonneg("--guidance", args.guidance)
    _seed(args.seed)
    out = Path(args.out) if args.out else None
    if os.environ.get("RANK", "0") == "0":  # rank 0 writes the files: check them before sampling
        for path, kind in ((out, "png"), (Path(args.npz) if args.npz else None, "npz")):
            if path is not None:
                _check_output(path, kind, args.force)
    device = resolve_device(args.device or "auto")
    info = D.init(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    model, cfg, ckpt = load_run(args.run, use_ema=not args.no_ema, device=device)
    T = cfg.diffusion.timesteps
    if args.steps is not None and args.steps > T:
        raise ConfigError(f"--steps={args.steps} exceeds the run's diffusion.timesteps={T}")
    check_sample_memory(cfg, args.n, args.batch_size)
    y = None
    n, nrow = args.n, None
    if args.class_ is None:
        # A conditional run draws a balanced mix of classes (sample k: class k % classes).
        y = default_labels(cfg, n)
    elif args.class_.strip().lower() == "none":
        if cfg.model.num_classes == 0:
            raise ConfigError(f"--class none: the run {args.run} is unconditional already; "
                              "drop --class")
        y = None  # the null class: the model's unconditional distribution
    else:
        if cfg.model.num_classes == 0:
            raise ConfigError(f"--class: the run {args.run} was trained unconditionally "
                              "(train with --conditional to choose classes)")
        classes = _parse_classes(args.class_, cfg.model.num_classes)
        per = max(1, n // len(classes)) if args.class_ == "all" else None
        if per is not None:
            y = class_rows(len(classes), per)  # "all": classes are 0..C-1
            nrow = per
        else:
            y = torch.tensor([classes[k % len(classes)] for k in range(n)])
        n = len(y)
    images = sample_images_sharded(model, cfg, n=n, seed=args.seed, device=device,
                                   sampler=args.sampler, steps=args.steps, eta=args.eta, y=y,
                                   spacing=args.spacing,
                                   options=None if args.churn is None else {"churn": args.churn},
                                   guidance=args.guidance, batch_size=args.batch_size,
                                   precision=args.precision,
                                   progress=not args.no_progress and info.is_main)
    D.cleanup()
    if images is None:  # not rank 0: rank 0 writes the files
        return 0
    run_dir = Path(args.run)
    name = args.sampler or cfg.sample.sampler
    n_steps = args.steps or cfg.sample.steps or T
    tag = f"{name}-{n_steps}"
    out = out or run_dir / "samples" / f"sample_{tag}_seed{args.seed}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, out, nrow=nrow, scale=2)
    nfe = SAMPLERS[name].info.nfe(n_steps)
    from .device import inference_precision, precision_reason

    why = precision_reason(inference_precision(args.precision or cfg.train.precision, device),
                           device)
    print(f"ddpmlab: {n} samples ({name}, {n_steps} steps = {nfe} network evaluations each; "
          f"{why}) from {ckpt} -> {out}")
    if args.npz:
        npz = save_npz(images, args.npz, labels=y)
        print(f"ddpmlab: uint8 NxHxWxC array (key arr_0) -> {npz}")
    return 0


# ----------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from .device import resolve_device
    from .evaluate import format_report
    from .runs import score_run

    _positive("--n", args.n)
    _positive("--bpd-timesteps", args.bpd_timesteps)
    _positive("--steps", args.steps)
    _positive("--ode-images", args.ode_images)
    _positive("--ode-steps", args.ode_steps)
    _positive("--ode-probes", args.ode_probes)
    _seed(args.seed)
    if args.json:   # before the evaluation: never replace a user's (or the run's) file
        _check_output(Path(args.json), "json", args.force)
    device = resolve_device(args.device or "auto")
    results = score_run(args.run, samples_npz=args.samples, n=args.n, sampler=args.sampler,
                           steps=args.steps, seed=args.seed, bpd_images=args.bpd_images,
                           bpd_timesteps=args.bpd_timesteps,
                           inception_weights=args.inception_weights, device=device,
                           progress=not args.no_progress, force=args.force, nll=args.nll,
                           ode_images=args.ode_images, ode_steps=args.ode_steps,
                           ode_probes=args.ode_probes)
    print(format_report(results))
    if args.json:
        from .io import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------- figures
def cmd_figures(args: argparse.Namespace) -> int:
    from .device import resolve_device
    from .runs import run_figures

    _positive("--chain-steps", args.chain_steps)
    _seed(args.seed)
    device = resolve_device(args.device or "auto")
    for path in run_figures(args.run, args.out, seed=args.seed, device=device,
                            chain_steps=args.chain_steps, force=args.force):
        print(f"ddpmlab: wrote {path}")
    return 0


# ----------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    from .device import resolve_device
    from .report import write_report

    _seed(args.seed)
    device = resolve_device(args.device or "auto")
    index = write_report(args.run, args.out, lang=args.lang, seed=args.seed, device=device,
                         progress=not args.no_progress)
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
    t.add_argument("--config", help="a preset (mnist, mnist-edm, mnist-flow, fashion-mnist, "
                   "fashion-mnist-10min, fashion-mnist-60min, cifar10) or a YAML/TOML file (default: mnist)")
    t.add_argument("--dataset", help="mnist | fashion-mnist | digits | a folder | a .npz")
    t.add_argument("--out", help="run directory (default: runs/<dataset>, a new one if taken)")
    t.add_argument("--max-steps", type=int, help="optimizer steps in all")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly")
    t.add_argument("--force", action="store_true", help="replace a run already in --out")
    t.add_argument("--seed", type=int, help="seed of initialisation, data order and noise")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
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
    s.add_argument("--out", help="PNG grid path (default: RUN/samples/sample_*.png)")
    s.add_argument("--npz", help="also write uint8 NxHxWxC images (key arr_0) here")
    s.add_argument("--force", action="store_true",
                   help="overwrite --out/--npz even if it is not a PNG / samples .npz")
    s.add_argument("--batch-size", type=int, help="images per batch (results do not change)")
    s.add_argument("--class", dest="class_", metavar="K",
                   help="class to draw: a number, a list like 3,5, all (one row per class), or none "
                        "(the unconditional model); default: a balanced mix for a conditional run")
    s.add_argument("--guidance", type=float,
                   help="classifier-free guidance w: eps_u + w (eps_c - eps_u); 1 = conditional")
    s.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="the network's precision (default: the run's train.precision; auto = "
                        "bf16 autocast on CUDA and on CPUs with native bf16, else fp32)")
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
    e.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_eval)

    f = sub.add_parser("figures", help="the tutorial's pictures for a run")
    _add_run_argument(f)
    f.add_argument("--out", help="folder for the PNGs (default: RUN/figures)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--chain-steps", type=int,
                   help="DDPM steps of the denoising chain (default: all T, as in the paper)")
    f.add_argument("--device", help="auto | cpu | cuda | cuda:N")
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
    rp.add_argument("--device", help="auto | cpu | cuda | cuda:N")
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
