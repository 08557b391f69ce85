"""``ddpmlab edit``: the editing operations of :mod:`ddpmlab.edit` on a trained run (layer 5).

:func:`edit_command` (an :class:`EditRequest` -> an :class:`EditResult`) loads the run's EMA
network, takes its sampling settings through :func:`ddpmlab.runs.sampling_call` (the sampler,
steps, eta, guidance and precision of ``ddpmlab sample``, and the objective's view of the
network), reads the images, fits them to the run, makes the edit (:func:`run_edit`) and writes
a PNG grid, one row per input (input, masked input, result, ...), and with ``npz`` the results
as ``ddpmlab sample --npz`` writes samples. Outputs follow ``sample``'s rule
(:func:`ddpmlab.runs.check_output`: a file ddpmlab did not write is replaced only with
``force``), checked with every input before the network is loaded: a bad input writes nothing.

**Inputs** (:func:`read_inputs`): an image file, a folder (its image files, sorted by name),
an ``.npz`` (uint8 NHWC ``arr_0`` or ``images``, optional ``labels``), or N images of the run's
held-out split (``--held-out N``: evenly spaced over it, with their labels). Each image goes to
the run's channels (grey <-> RGB) and, when square, to its size through
:func:`ddpmlab.data.convert_and_resize`; a non-square image is refused (a centre crop would
edit a part of the picture nobody chose).

**Masks** (:func:`read_mask`; 1 = generate, 0 = keep): a named shape of :data:`MASKS` (the
left, right, top or bottom half, the centre square of half the side) or a PNG (white =
generate; grey >= 128 counts as white; square, resized by nearest neighbour). A mask that keeps
nothing or generates nothing is refused.

**Operations** (:data:`OPERATIONS`: the names of :data:`ddpmlab.edit.EDITS` that
:data:`RUNNERS` drives from images): ``inpaint`` (RePaint; ``jump_length`` j and
``jump_n_sample`` r, r = 1 is plain replacement), ``img2img`` (SDEdit at ``strength``, with an
optional mask), ``invert`` (invert, then regenerate: x_T shown as x_T / 3, the reconstruction's
PSNR reported), ``interpolate`` (inputs in pairs 0-1, 2-3, ...: slerp between their inverted
noises, :data:`STRIP` points) and ``translate`` (DDIB: invert with the source class once,
regenerate with each target class: ``translate`` of EDITS without inverting again). The three
deterministic ones use a solver of :data:`ddpmlab.edit.INVERTERS` and guidance 1 unless told
(inverting with guidance is not exact, :mod:`ddpmlab.edit.inversion`); translate's guidance acts
on the regeneration only, its inversion is unguided (:mod:`ddpmlab.edit.ddib`).

**Classes** (a conditional run): ``source_class`` (invert, translate) or else the inputs'
labels; ``target_class`` the class of the edit (inpaint, img2img, interpolate: one class; else
the inputs' labels, or none: the model's unconditional distribution) or the classes translated
to (default: all). ``target_class="auto"`` (inpaint) reads each image's class from its kept
pixels with the run's own network (:func:`ddpmlab.edit.infer_class`: the most likely class by
the ELBO of the kept pixels, :data:`CLASS_DRAWS` draws per class) and inpaints with it at the
run's guidance; a note lists the classes read. An unconditional run refuses both.

Result k depends on (seed, k) only (:func:`ddpmlab.samplers.per_sample_generators`): the batch
size changes nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config
from .data import IMAGE_EXTENSIONS, convert_and_resize, load_dataset, to_model_range
from .edit import (
    EDITS,
    INVERTERS,
    img2img,
    infer_class,
    inpaint,
    inpaint_nfe,
    interpolate_latent,
    inversion_settings,
    invert,
    regenerate,
    start_position,
)
from .edit.driver import levels
from .errors import ConfigError, DataError
from .layout import RunDir
from .runs import SamplingCall, check_output, load_run, sampling_call, save_npz
from .samplers import SAMPLERS, per_sample_generators
from .viz import save_grid

MAX_INPUTS = 1024        # images one command edits
AUTO = "auto"            # --target-class: read each image's class from its kept pixels
CLASS_SEED = 7919        # (its draws' seeds: apart from the edit's own)
CLASS_DRAWS = 32         # network evaluations per class and image for AUTO
STRIP = 8                # images of an interpolation strip (both ends included)
LATENT_SCALE = 3.0       # x_T is shown as x_T / 3 (a standard normal mostly within +-3)


# ============================================================================ masks
def _half(size: int, which: str) -> torch.Tensor:
    m = torch.zeros(size, size)
    h = size // 2
    {"left": lambda: m[:, :h].fill_(1), "right": lambda: m[:, size - h:].fill_(1),
     "top": lambda: m[:h].fill_(1), "bottom": lambda: m[size - h:].fill_(1)}[which]()
    return m


def _centre(size: int) -> torch.Tensor:
    m = torch.zeros(size, size)
    a = (size - size // 2) // 2
    m[a:a + size // 2, a:a + size // 2] = 1
    return m


# The named mask shapes: name -> (image side -> [S, S] mask, 1 = generate).
MASKS: dict[str, Callable[[int], torch.Tensor]] = {
    "left": lambda s: _half(s, "left"), "right": lambda s: _half(s, "right"),
    "top": lambda s: _half(s, "top"), "bottom": lambda s: _half(s, "bottom"),
    "centre": _centre,
}


def read_mask(spec: str, size: int) -> torch.Tensor:
    """``[1, 1, size, size]`` (1 = generate) from a name of :data:`MASKS` or a PNG file."""
    if spec in MASKS:
        m = MASKS[spec](size)
    else:
        path = Path(spec)
        if not path.is_file():
            raise DataError(f"--mask {spec}: neither a shape ({', '.join(MASKS)}) nor a file")
        grey = _decode(path)[..., :1]            # (RGB: the first plane; masks are black/white)
        if grey.shape[0] != grey.shape[1]:
            raise DataError(f"--mask {spec}: {grey.shape[1]}x{grey.shape[0]} is not square "
                            f"(the run's images are {size}x{size})")
        t = torch.from_numpy(grey).permute(2, 0, 1)[None].float()
        m = (torch.nn.functional.interpolate(t, size=(size, size), mode="nearest")[0, 0]
             >= 128).float()
    if not bool(m.any()):
        raise DataError(f"--mask {spec}: generates no pixel (white = generate, black = keep)")
    if bool(m.all()):
        raise DataError(f"--mask {spec}: keeps no pixel (white = generate, black = keep); "
                        "that is sampling: use ddpmlab sample")
    return m[None, None]


def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with the pixels to generate shown mid-grey (0 in the model's range)."""
    return x * (1.0 - mask.to(x))


# ============================================================================ inputs
def _decode(path: Path) -> np.ndarray:
    """One image file as uint8 H x W x C (C 1 or 3), decoded as the data sets decode it."""
    from .data.folders import _read_image  # (the data layer's one decoder)

    return _read_image(path)


def _fit(u8: torch.Tensor, cfg: Config, what: str) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> the run's channels and size (square images only)."""
    h, w = u8.shape[-2:]
    size = cfg.model.image_size
    if h != w:
        raise DataError(f"{what}: {w}x{h} is not square; the run edits {size}x{size} images "
                        "(crop it to a square first)")
    return convert_and_resize(u8, cfg.model.in_channels, size)


def _image_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"--input {path}: no image files in it (extensions: "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def _read_path(path: Path, cfg: Config) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(uint8 images fitted to the run, labels or None) of an ``--input`` path."""
    from .data.npz import load_npz

    if not path.exists():
        raise DataError(f"--input {path}: no such file or folder")
    if path.is_file() and path.suffix.lower() == ".npz":
        images, labels, _ = load_npz(path)
        x = _fit(torch.from_numpy(np.ascontiguousarray(images)), cfg, str(path))
        return x, None if labels is None else torch.from_numpy(labels)
    files = _image_files(path) if path.is_dir() else [path]
    if len(files) > MAX_INPUTS:
        raise DataError(f"--input {path}: {len(files)} images; edit takes at most {MAX_INPUTS}")
    out = []
    for f in files:
        arr = _decode(f)
        out.append(_fit(torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous(), cfg, str(f)))
    return torch.cat(out), None


def read_inputs(cfg: Config, input_path: str | os.PathLike | None,
                held_out: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The images to edit, in the model's range ``[N, C, S, S]``, and their labels (None when
    unknown): ``input_path`` (a file, a folder, an ``.npz``) or ``held_out`` images of the
    run's held-out split, evenly spaced over it (:meth:`~ddpmlab.data.ImageData.spread`: a
    split stored in class order gives each class its share)."""
    if (input_path is None) == (held_out is None):
        raise ConfigError("give the images to edit: --input PATH or --held-out N (one of them)")
    if held_out is not None:
        if isinstance(held_out, bool) or not isinstance(held_out, int) or held_out < 1:
            raise ConfigError(f"--held-out {held_out!r} must be an integer >= 1")
        held = load_dataset(cfg.data, "test")
        if held_out > len(held):
            raise DataError(f"--held-out {held_out}: the run's held-out split ({held.source}) "
                            f"has {len(held)} images")
        some = held.spread(held_out)
        u8, labels = some.images, some.labels
    else:
        u8, labels = _read_path(Path(input_path), cfg)
    if len(u8) > MAX_INPUTS:
        raise DataError(f"--input {input_path}: {len(u8)} images; edit takes at most "
                        f"{MAX_INPUTS}")
    return to_model_range(u8), labels


# ============================================================================ one edit
@dataclass(frozen=True)
class EditSettings:
    """What one operation needs beyond the sampling call: ``mask`` ``[1, 1, S, S]`` (inpaint,
    img2img), ``strength`` (img2img), ``jump_length`` / ``jump_n_sample`` (inpaint), the
    ``targets`` of translate, the points of an interpolation strip."""

    operation: str
    mask: torch.Tensor | None = None
    strength: float = 0.5
    jump_length: int = 1
    jump_n_sample: int = 1
    targets: tuple[int, ...] = ()
    strip: int = STRIP


@dataclass
class EditOutput:
    """One edit's pictures: ``columns`` (each ``[rows, C, H, W]``: one grid row per input, or
    per pair for interpolate), which of them are ``results``, and the class of each result
    column (translate) or None."""

    columns: list[torch.Tensor]
    results: list[int]
    classes: list[int] | None = None


def _deterministic(call: SamplingCall, **over: Any) -> dict[str, Any]:
    """The call's arguments for invert / regenerate: no eta, no clipping (inversion's rule)."""
    kw = call.edit_kwargs(**over)
    return {k: v for k, v in kw.items() if k not in ("eta", "clip_x0")}


def _inpaint(call: SamplingCall, s: EditSettings, x: torch.Tensor, y: Any,
             gens: list) -> EditOutput:
    m = s.mask.to(x)
    out = inpaint(call.model, call.schedule, x, m, generator=gens, jump_length=s.jump_length,
                  jump_n_sample=s.jump_n_sample, **call.edit_kwargs(y=y))
    return EditOutput([x, masked(x, m), out], [2])


def _img2img(call: SamplingCall, s: EditSettings, x: torch.Tensor, y: Any,
             gens: list) -> EditOutput:
    m = None if s.mask is None else s.mask.to(x)
    out = img2img(call.model, call.schedule, x, s.strength, mask=m, generator=gens,
                  **call.edit_kwargs(y=y))
    return EditOutput([x, out] if m is None else [x, masked(x, m), out], [1 if m is None else 2])


def _invert(call: SamplingCall, s: EditSettings, x: torch.Tensor, y: Any,
            gens: list) -> EditOutput:
    kw = _deterministic(call, y=y)
    z = invert(call.model, call.schedule, x, **kw)
    rec = regenerate(call.model, call.schedule, z, **kw)
    return EditOutput([x, (z / LATENT_SCALE).clamp(-1, 1), rec], [2])


def _interpolate(call: SamplingCall, s: EditSettings, x: torch.Tensor, y: Any,
                 gens: list) -> EditOutput:
    label = None if y is None else int(y[0])          # (one class for the whole strip)
    alphas = torch.linspace(0.0, 1.0, s.strip).tolist()
    a, b = x[0::2], x[1::2]
    strip = interpolate_latent(call.model, call.schedule, a, b, alphas,
                               **_deterministic(call, y=label))
    return EditOutput([a, *strip.unbind(0), b], list(range(1, s.strip + 1)))


def _translate(call: SamplingCall, s: EditSettings, x: torch.Tensor, y: Any,
               gens: list) -> EditOutput:
    """DDIB (:func:`ddpmlab.edit.translate`) with one inversion for every target class."""
    z = invert(call.model, call.schedule, x, **inversion_settings(_deterministic(call, y=y)))
    outs = [regenerate(call.model, call.schedule, z, **_deterministic(
        call, y=torch.full_like(y, k))) for k in s.targets]
    return EditOutput([x, *outs], list(range(1, len(outs) + 1)), list(s.targets))


@dataclass(frozen=True)
class Runner:
    """How the run layer drives one operation of EDITS: its function, the flags it takes,
    whether it needs a deterministic solver (an inversion), and the inputs per grid row."""

    run: Callable[..., EditOutput]
    flags: tuple[str, ...]
    inverts: bool = False
    per_row: int = 1


# The operations ``ddpmlab edit`` offers, by their names in ``ddpmlab.edit.EDITS``
# (``regenerate`` is the second half of ``invert``; ``interpolate_xt`` and ``decided_when``
# are ``ddpmlab figures``' and the report's).
RUNNERS: dict[str, Runner] = {
    "inpaint": Runner(_inpaint, ("mask", "jump_length", "jump_n_sample", "target_class")),
    "img2img": Runner(_img2img, ("mask", "strength", "target_class")),
    "invert": Runner(_invert, ("source_class",), inverts=True),
    "interpolate": Runner(_interpolate, ("target_class",), inverts=True, per_row=2),
    "translate": Runner(_translate, ("source_class", "target_class"), inverts=True),
}
OPERATIONS: tuple[str, ...] = tuple(name for name in EDITS if name in RUNNERS)


def run_edit(call: SamplingCall, s: EditSettings, x: torch.Tensor, y: torch.Tensor | None,
             seed: int = 0, batch_size: int = 64) -> EditOutput:
    """``s.operation`` on images ``x`` (model range, on the call's device) with labels ``y``
    (one per image, or None), in batches; result k depends on (seed, k) only."""
    runner = RUNNERS[s.operation]
    step = max(runner.per_row, batch_size - batch_size % runner.per_row)
    parts: list[EditOutput] = []
    for start in range(0, len(x), step):
        idx = list(range(start, min(len(x), start + step)))
        gens = per_sample_generators(seed, idx, device=call.device)
        yb = None if y is None else y[start:start + len(idx)].to(x.device)
        parts.append(runner.run(call, s, x[start:start + len(idx)], yb, gens))
    cols = [torch.cat([p.columns[k].float().cpu() for p in parts])
            for k in range(len(parts[0].columns))]
    return EditOutput(cols, parts[0].results, parts[0].classes)


def edit_cost(call: SamplingCall, s: EditSettings, n: int, labelled: bool) -> int:
    """Images x network evaluations of :func:`run_edit` on ``n`` inputs (``labelled``: with
    labels, so guidance w not 0 or 1 runs both halves; an autoguidance guide adds its pass:
    :meth:`~ddpmlab.runs.SamplingCall.images_per_evaluation`); what the report declares.
    Translate's inversion runs unguided (:func:`ddpmlab.edit.ddib.inversion_settings`)."""
    per_eval = call.images_per_evaluation(labelled)
    info = SAMPLERS[call.sampler].info
    L = len(levels(call.schedule, call.sampler, call.steps, call.spacing))
    if s.operation == "inpaint":
        per = inpaint_nfe(L, s.jump_length, s.jump_n_sample, call.sampler)
        return n * per * per_eval
    if s.operation == "img2img":
        k = L - start_position(L, s.strength)
        return n * (info.nfe(k) if k else 0) * per_eval
    up, down = L, info.nfe(L)     # an inversion: x0 -> the first level, then L - 1 steps up
    if s.operation == "invert":
        return n * (up + down) * per_eval
    if s.operation == "interpolate":
        pairs = n // 2
        return (2 * pairs * up + s.strip * pairs * down) * per_eval
    if s.operation == "translate":
        return n * (up + len(s.targets) * down * per_eval)
    raise ConfigError(f"unknown editing operation {s.operation!r}; one of {', '.join(RUNNERS)}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image, in dB, of images in [-1, 1] (peak-to-peak 2; inf where identical)."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(4.0 / mse)


# ============================================================================ the command
@dataclass(frozen=True)
class EditRequest:
    """``ddpmlab edit RUN OPERATION``: the images (``input`` or ``held_out``), the operation's
    settings (None: its default, or not given), the sampling settings left None are the
    run's (the deterministic operations: a solver of INVERTERS and guidance 1), the outputs
    (``out``: default :meth:`~ddpmlab.layout.RunDir.edit_grid`; ``npz``) and ``force``."""

    run: str | os.PathLike
    operation: str
    input: str | os.PathLike | None = None
    held_out: int | None = None
    mask: str | None = None
    strength: float | None = None
    jump_length: int | None = None
    jump_n_sample: int | None = None
    source_class: int | None = None
    target_class: str | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    batch_size: int | None = None
    precision: str | None = None
    use_ema: bool = True
    out: str | os.PathLike | None = None
    npz: str | os.PathLike | None = None
    force: bool = False


@dataclass(frozen=True)
class EditResult:
    """What :func:`edit_command` did: ``n`` inputs, ``nfe`` network evaluations per input
    (counted), the files written, and ``notes`` (the reconstruction's PSNR)."""

    operation: str
    n: int
    sampler: str
    steps: int
    nfe: float
    checkpoint: Path
    grid: Path
    npz: Path | None
    notes: list[str] = field(default_factory=list)


_FLAG_NAMES = {"mask": "--mask", "strength": "--strength", "jump_length": "--jump-length",
               "jump_n_sample": "--jump-n-sample", "source_class": "--source-class",
               "target_class": "--target-class"}


def _check_request(req: EditRequest) -> None:
    """The operation, the flags it takes, and their ranges (no file read yet)."""
    if req.operation not in RUNNERS:
        raise ConfigError(f"unknown editing operation {req.operation!r}; choose one of "
                          f"{', '.join(OPERATIONS)}")
    runner = RUNNERS[req.operation]
    for name, flag in _FLAG_NAMES.items():
        if getattr(req, name) is not None and name not in runner.flags:
            raise ConfigError(f"{flag}: {req.operation} does not take it (it takes "
                              f"{', '.join(_FLAG_NAMES[f] for f in runner.flags) or 'none'})")
    s = req.strength
    if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float))
                          or not 0.0 <= s <= 1.0):
        raise ConfigError(f"--strength {s} must be in [0, 1] (0 returns the image, 1 samples "
                          "from pure noise)")
    for name in ("jump_length", "jump_n_sample"):
        v = getattr(req, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{_FLAG_NAMES[name]} {v} must be an integer >= 1")
    if runner.inverts and req.sampler is not None and req.sampler not in INVERTERS:
        info = SAMPLERS[req.sampler].info if req.sampler in SAMPLERS else None
        what = ("is stochastic" if info is not None and info.stochastic == "yes"
                else "has no step run backwards")
        raise ConfigError(f"--sampler {req.sampler}: {req.operation} inverts the images with a "
                          f"deterministic solver ({', '.join(INVERTERS)}); "
                          f"{req.sampler} {what}")


def _class_number(flag: str, text: Any, num: int, run: Any) -> int:
    if num == 0:
        raise ConfigError(f"{flag} {text}: the run {run} is unconditional; it has no classes")
    try:
        k = int(str(text))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give a class number 0..{num - 1}") from None
    if not 0 <= k < num:
        raise ConfigError(f"{flag} {text}: the run has classes 0..{num - 1}")
    return k


def _labels(req: EditRequest, cfg: Config, n: int, labels: torch.Tensor | None
            ) -> tuple[torch.Tensor | None, tuple[int, ...]]:
    """(the labels the edit conditions on, one per input or None; translate's targets)."""
    num = cfg.model.num_classes
    if num and labels is not None and (labels.min() < 0 or labels.max() >= num):
        labels = None                     # (an .npz's own classes, not the run's)
    if not num:
        labels = None
    if req.source_class is not None:
        labels = torch.full((n,), _class_number("--source-class", req.source_class, num,
                                                req.run))
    targets: tuple[int, ...] = ()
    text = req.target_class
    if text == AUTO:
        if req.operation != "inpaint":
            raise ConfigError(f"--target-class {AUTO}: only inpaint reads the class from the "
                              f"kept pixels; give {req.operation} a class number")
        if num == 0:
            raise ConfigError(f"--target-class {AUTO}: the run {req.run} is unconditional; it "
                              "has no classes to read")
        return None, ()
    if req.operation == "translate":
        if num == 0:
            raise ConfigError(f"translate: the run {req.run} is unconditional; translation "
                              "needs a conditional run (train with --conditional)")
        if labels is None:
            raise ConfigError("translate: the inputs carry no class of this run; give "
                              "--source-class K")
        parts = range(num) if text in (None, "all") else str(text).split(",")
        targets = tuple(_class_number("--target-class", k, num, req.run) for k in parts)
    elif text is not None:
        labels = torch.full((n,), _class_number("--target-class", text, num, req.run))
    elif req.operation == "interpolate":
        labels = None                     # (a strip takes one class: the unconditional model)
    return labels, targets


def _settings(req: EditRequest, cfg: Config, targets: tuple[int, ...]) -> EditSettings:
    mask = req.mask if req.mask is not None else ("right" if req.operation == "inpaint"
                                                 else None)
    return EditSettings(
        req.operation, None if mask is None else read_mask(mask, cfg.model.image_size),
        0.5 if req.strength is None else float(req.strength), req.jump_length or 1,
        req.jump_n_sample or 1, targets)


def _sampler(req: EditRequest, cfg: Config) -> tuple[str, float | None]:
    """The sampler and guidance override of the operation (None: the run's)."""
    if not RUNNERS[req.operation].inverts:
        return req.sampler or cfg.sample.sampler, req.guidance
    own = cfg.sample.sampler if cfg.sample.sampler in INVERTERS else "ddim"
    return req.sampler or own, 1.0 if req.guidance is None else req.guidance


class _Counted:
    """A model that counts its calls (network evaluations per batch)."""

    def __init__(self, model: Any) -> None:
        self.model, self.calls = model, 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.model(*args)


def edit_command(req: EditRequest, device: torch.device | str = "cpu") -> EditResult:
    """``ddpmlab edit``: every input and output checked first (one line each, nothing
    written), then the run's EMA network loaded, the edit made in batches, the grid and the
    ``.npz`` written (module doc)."""
    _check_request(req)
    run = RunDir(req.run)
    cfg = run.read_config()
    T = cfg.diffusion.timesteps
    if req.steps is not None and not 1 <= req.steps <= T:
        raise ConfigError(f"--steps={req.steps}: the run has diffusion.timesteps={T}; "
                          f"give 1..{T}")
    x, labels = read_inputs(cfg, req.input, req.held_out)
    if RUNNERS[req.operation].per_row == 2 and (len(x) < 2 or len(x) % 2):
        raise DataError(f"interpolate takes pairs of images (0-1, 2-3, ...); got {len(x)}")
    y, targets = _labels(req, cfg, len(x), labels)
    settings = _settings(req, cfg, targets)
    sampler, guidance = _sampler(req, cfg)
    steps = req.steps or cfg.sample.steps or T
    out = Path(req.out) if req.out else run.edit_grid(req.operation, sampler, steps, req.seed)
    for path, kind in ((out, "png"), (req.npz, "npz")):
        if path is not None:
            check_output(path, kind, req.force)
    model, cfg, ckpt = load_run(run.root, use_ema=req.use_ema, device=device)
    call = sampling_call(model, cfg, device, sampler=sampler, steps=req.steps,
                         guidance=guidance, precision=req.precision)
    x = x.to(device)
    notes, read = [], 0
    if req.target_class == AUTO:
        y = read_classes(call, settings.mask, x, cfg.model.num_classes, req.seed)
        read = CLASS_DRAWS * cfg.model.num_classes
        notes.append("classes read from the kept pixels (image: class): " + ", ".join(
            f"{k}: {c}" for k, c in enumerate(y.tolist())))
    counted = _Counted(call.model)
    batch = req.batch_size or cfg.sample.batch_size
    res = run_edit(call.with_model(counted), settings, x, y, req.seed, batch)
    return _write(req, res, out, y, EditResult(
        req.operation, len(x), sampler, steps,
        counted.calls / math.ceil(len(x) / batch) + read, ckpt, out, None, notes))


def read_classes(call: SamplingCall, mask: torch.Tensor, x: torch.Tensor, num_classes: int,
                 seed: int = 0) -> torch.Tensor:
    """Each image's class read from its kept pixels by the call's network (unguided: the
    class-conditional model itself), :data:`CLASS_DRAWS` draws per class; image k's draws
    depend on (seed, k) only."""
    gens = per_sample_generators(seed + CLASS_SEED, range(len(x)))
    return infer_class(call.model, call.schedule, x, mask.to(x), num_classes, CLASS_DRAWS,
                       gens, prediction=call.prediction, learn_sigma=call.learn_sigma)


def _write(req: EditRequest, res: EditOutput, out: Path, y: torch.Tensor | None,
           result: EditResult) -> EditResult:
    """The grid (one row per input: its columns), the results' ``.npz``, the notes."""
    cols = res.columns
    k = len(cols)
    grid = torch.stack(cols, 1).flatten(0, 1)          # row i: column 0, 1, ... of input i
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(grid, out, nrow=k, scale=2)
    npz = None
    if req.npz:
        results = torch.stack([cols[j] for j in res.results], 1).flatten(0, 1)
        rows = len(cols[0])
        lab = None
        if res.classes is not None:
            lab = torch.tensor(res.classes).repeat(rows)
        elif y is not None and len(y) == rows:
            lab = y.cpu().repeat_interleave(len(res.results))
        npz = save_npz(results, req.npz, labels=lab)
    notes = list(result.notes)
    if req.operation == "invert":
        p = psnr(cols[0], cols[2])
        notes.append(f"reconstruction PSNR {float(p.mean()):.2f} dB (mean of {len(p)}; "
                     f"worst {float(p.min()):.2f} dB) after inverting with {result.sampler} in "
                     f"{result.steps} steps")
    return EditResult(result.operation, result.n, result.sampler, result.steps, result.nfe,
                      result.checkpoint, out, npz, notes)
