"""Pictures: sample grids and the tutorial's figures for the user's own data and model.

Images come in as float tensors in [-1, 1] (``[N, C, H, W]``, C = 1 or 3) or uint8; every file
is a PNG written atomically (:func:`ddpmlab.io.atomic_write_bytes`), its folder
created when missing. The figures (one function each, all returning the written ``Path``):

* :func:`noising_strip`    the forward process: x0, then x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps
                           at chosen t with one eps per image, the two coefficients under each t;
* :func:`denoising_chain`  the reverse process: x_t and the model's x0 estimate from x_T to x0
                           (:class:`ChainRecorder` keeps the states, for the report too);
* :func:`schedule_plot`    sqrt(abar), sqrt(1 - abar) and log-SNR against t for named schedules;
* :func:`loss_plot`        the training loss of a run's metrics (JSON lines) against step;
* :func:`vlb_plot`         the per-timestep ELBO terms L_t (bits/dim) of a likelihood evaluation;
* :func:`class_rows_grid`  one row of samples per class, the class name at the left.
* :func:`save_memorization_figure`  the closest samples beside their nearest training images.

Matplotlib is imported lazily and used without pyplot (``matplotlib.figure.Figure`` rendered by
the Agg canvas), so nothing needs a display and no global figure state is touched. Values of x_t
outside [-1, 1] are clipped for display only.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import schedules as S
from .errors import DataError
from .forward import q_sample
from .io import SOFTWARE, atomic_write_bytes, loads_json, png_bytes
from .layout import RunDir
from .samplers import sample
from .schedules import Schedule

DEFAULT_STRIP_TS = (0, 50, 100, 200, 400, 600, 800, 999)   # for T = 1000; scaled to other T


# ============================================================================ grids
def _to_uint8_nhwc(images: torch.Tensor) -> np.ndarray:
    x = images.detach().cpu()
    if x.dtype != torch.uint8:
        x = ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2,
              pad_value: int = 255) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images into one uint8 array ``[H', W', C]`` (C = 1 or 3).

    ``nrow`` is the number of images per row (default: ceil(sqrt(N))), as in torchvision; image
    k sits in row ``k // nrow``, column ``k % nrow``, at pixel
    ``(pad + row (H + pad), pad + col (W + pad))``; a row is never wider than N images.
    """
    arr = _to_uint8_nhwc(images)
    n, h, w, c = arr.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = max(1, min(nrow, n))
    nrows = max(1, int(math.ceil(n / ncol)))
    grid = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, np.uint8)
    for k in range(n):
        r, q = divmod(k, ncol)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = arr[k]
    return grid


def _write(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None,
              scale: int = 1) -> Path:
    """Write a PNG grid of ``images``; ``nrow`` images per row; ``scale`` enlarges pixels."""
    from PIL import Image

    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return _write(path, png_bytes(img))  # (marked: ddpmlab may replace it later)


# ============================================================================ figure helpers
def _figure(width: float, height: float) -> Any:
    """A pyplot-free matplotlib Figure (rendered by Agg on save)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.08,
                metadata={"Software": SOFTWARE})
    return _write(path, buf.getvalue())


def _check_images(x: torch.Tensor, what: str) -> torch.Tensor:
    """``x`` as CPU float32 in model range; uint8 is mapped by x / 127.5 - 1."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must be images [N, C, H, W] with C = 1 or 3, got {shape}")
    x = x.detach().cpu()
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    return x.float()


def _show(ax: Any, image: torch.Tensor) -> None:
    """Draw one ``[C, H, W]`` image (model range, clipped) on ``ax`` with no ticks or frame."""
    arr = _to_uint8_nhwc(image[None])[0]
    if arr.shape[-1] == 1:
        ax.imshow(arr[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(arr, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _plain_log_ticks(ax: Any) -> None:
    """Label a log y axis with plain numbers (0.05, 0.1) instead of 5x10^-2; minor ticks at
    2, 3 and 5 times a power of ten are labelled only when the axis spans under two decades."""
    from matplotlib.ticker import FuncFormatter

    def major(v: float, _pos: Any) -> str:
        return f"{v:g}"

    def minor(v: float, _pos: Any) -> str:
        lo, hi = ax.get_ylim()
        if lo <= 0 or hi / lo > 100:
            return ""
        mantissa = round(v / 10 ** math.floor(math.log10(v) + 1e-9), 6)
        return f"{v:g}" if mantissa in (2.0, 3.0, 5.0) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(major))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="y", which="both", labelsize=8)


def _row_label(ax: Any, text: str) -> None:
    ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=9, labelpad=6)


def _image_grid(n_rows: int, n_cols: int, cell: float = 1.0, gap: float = 0.06,
                top: float = 0.4, row_gaps: Sequence[float] | None = None) -> tuple[Any, list]:
    """A figure of ``n_rows x n_cols`` square image axes laid out in inches: ``cell`` per image,
    ``gap`` between images, ``top`` inches above the first row (titles, suptitle), and an extra
    ``row_gaps[r]`` inches below row r. Labels outside the grid are kept by the tight bbox."""
    extra = list(row_gaps) if row_gaps is not None else [0.0] * n_rows
    width = n_cols * cell + (n_cols - 1) * gap
    height = top + n_rows * cell + (n_rows - 1) * gap + sum(extra[:-1])
    fig = _figure(width, height)
    axes = []
    y = height - top
    for r in range(n_rows):
        y -= cell
        row = [fig.add_axes((c * (cell + gap) / width, y / height, cell / width, cell / height))
               for c in range(n_cols)]
        axes.append(row)
        y -= gap + extra[r]
    return fig, axes


# ============================================================================ 1. noising strip
def strip_timesteps(T: int, ts: Sequence[int] | None = None) -> list[int]:
    """The strip's indices: ``ts`` checked to lie in ``[0, T)``, or the default
    ``[0, 50, 100, 200, 400, 600, 800, 999]`` scaled to ``T`` (round(v (T-1) / 999), repeats
    dropped)."""
    if ts is None:
        out: list[int] = []
        for v in DEFAULT_STRIP_TS:
            t = int(round(v * (T - 1) / 999))
            if t not in out:
                out.append(t)
        return out
    out = [int(t) for t in ts]
    bad = [t for t in out if not 0 <= t < T]
    if bad or not out:
        raise ValueError(f"ts must be a non-empty list of indices in [0, {T}), got {list(ts)}")
    return out


def strip_coefficients(schedule: Schedule, ts: Sequence[int]) -> tuple[list[float], list[float]]:
    """``(sqrt(alpha_bar[t]), sqrt(1 - alpha_bar[t]))`` for each index in ``ts`` (float64 ->
    float): the image coefficient and the noise coefficient of x_t = a x0 + s eps."""
    ts = strip_timesteps(schedule.T, ts)
    idx = torch.tensor(ts, dtype=torch.long)
    a = schedule.sqrt_alpha_bar.detach().cpu()[idx]
    s = schedule.sqrt_one_minus_alpha_bar.detach().cpu()[idx]
    return [float(v) for v in a], [float(v) for v in s]


def noising_frames(x0: torch.Tensor, schedule: Schedule, ts: Sequence[int] | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The strip's images ``[n, 1 + len(ts), C, H, W]``: column 0 is ``x0`` itself, column
    k + 1 is ``q_sample(x0, ts[k])`` with ONE noise draw per image shared by all columns."""
    x0 = _check_images(x0, "x0")
    ts = strip_timesteps(schedule.T, ts)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    cols = [x0]
    for t in ts:
        tt = torch.full((x0.shape[0],), t, dtype=torch.long)
        cols.append(q_sample(schedule, x0, tt, noise=noise))
    return torch.stack(cols, dim=1)


def noising_strip(x0: torch.Tensor, schedule: Schedule, ts: Sequence[int] | None = None,
                  path: str | os.PathLike = "noising_strip.png",
                  generator: torch.Generator | None = None) -> Path:
    """The forward process as a strip: one row per image of ``x0`` (``[n, C, H, W]``, [-1, 1]),
    one column per index t (``x0`` first), computed by the closed form
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with one eps per image, so the same noise grows
    along the row. Each column is titled ``t=...`` with the image coefficient sqrt(abar_t) and
    the noise coefficient sqrt(1 - abar_t) under it (the first shrinks, the second grows).
    ``ts`` defaults to ``[0, 50, 100, 200, 400, 600, 800, 999]`` scaled to T (index t is the
    paper's step t + 1, so index 0 already carries a little noise)."""
    ts = strip_timesteps(schedule.T, ts)
    frames = noising_frames(x0, schedule, ts, generator)
    a, s = strip_coefficients(schedule, ts)
    n, m = frames.shape[0], frames.shape[1]
    fig, axes = _image_grid(n, m, top=0.95)
    titles = ["$x_0$ (data)\n" + r"$\sqrt{\bar\alpha}$=1" + "\n" + r"$\sqrt{1-\bar\alpha}$=0"]
    titles += [f"t={t}\n" + r"$\sqrt{\bar\alpha}$=" + f"{ak:.3f}\n"
               + r"$\sqrt{1-\bar\alpha}$=" + f"{sk:.3f}"
               for t, ak, sk in zip(ts, a, s, strict=True)]
    for r in range(n):
        for c in range(m):
            _show(axes[r][c], frames[r, c])
    for c in range(m):
        axes[0][c].set_title(titles[c], fontsize=8, linespacing=1.3)
    fig.suptitle(r"forward process  $x_t=\sqrt{\bar\alpha_t}\,x_0+\sqrt{1-\bar\alpha_t}\,\epsilon$"
                 f"  ({schedule.name}, T={schedule.T}; one $\\epsilon$ per row)", fontsize=9,
                 y=1.0, va="top")
    return _save_figure(fig, path)


# ============================================================================ 2. denoising chain
class ChainRecorder:
    """A :func:`ddpmlab.sample` callback that keeps chosen states of the chain on the CPU.

    State j < S (S: the number of steps the call walks) is x before step j, with the model's
    x0 estimate and index t at that step; state S is the output (:meth:`finish`), paired with
    the last step's estimate. Which states are kept is decided at the first step, once S is
    known: all of them when ``n_frames`` is None or at least S + 1; otherwise ``n_frames``
    evenly spaced from 0 to S, or, with ``last_step``, ``n_frames - 1`` evenly spaced from 0 to
    S - 1 plus the last step's input S - 1 and the output S. ``on_step(info)``, when given, is
    called at every step after the states are kept (the report measures the added noise and
    counts network evaluations there)."""

    def __init__(self, n_frames: int | None = None, *, last_step: bool = False,
                 on_step: Callable[[dict[str, Any]], None] | None = None) -> None:
        if n_frames is not None and (isinstance(n_frames, bool) or not isinstance(n_frames, int)
                                     or n_frames < 2):
            raise ValueError(f"n_frames must be an integer >= 2, got {n_frames!r}")
        self.n_frames, self.last_step, self.on_step = n_frames, last_step, on_step
        self.keep: list[int] = []
        self.xs: dict[int, torch.Tensor] = {}
        self.hats: dict[int, torch.Tensor] = {}
        self.ts: dict[int, Any] = {}

    def _choose(self, total: int) -> list[int]:
        n = self.n_frames
        if n is None or n >= total + 1:
            return list(range(total + 1))
        if self.last_step:
            return sorted({int(round(v)) for v in np.linspace(0, total - 1, n - 1)}
                          | {total - 1, total})
        return sorted({int(round(v)) for v in np.linspace(0, total, n)})

    def __call__(self, info: dict[str, Any]) -> None:
        i, total = int(info["i"]), int(info["steps"])   # the sampler says how many steps
        if not self.keep:
            self.keep.extend(self._choose(total))
        if i in self.keep:
            self.xs[i] = info["x"].detach().float().cpu().clone()
            self.hats[i] = info["x0_hat"].detach().float().cpu().clone()
            self.ts[i] = info["t"]
        if i == total - 1:
            self.hats[total] = info["x0_hat"].detach().float().cpu().clone()
        if self.on_step is not None:
            self.on_step(info)

    def finish(self, out: torch.Tensor) -> ChainRecorder:
        """Keep the sampler's output as the last state; returns the recorder."""
        self.xs[self.total] = out.detach().float().cpu()
        return self

    @property
    def total(self) -> int:
        """S, the index of the output state."""
        return self.keep[-1]


def chain_frames(model: Any, schedule: Schedule, shape: Sequence[int], sampler: str = "ddpm",
                 steps: int | None = None, n_frames: int = 10, prediction: str = "eps",
                 y: torch.Tensor | int | None = None, guidance: float = 1.0,
                 null_class: int | None = None, generator: Any = None, clip_x0: bool = True,
                 **sample_kwargs: Any) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Run :func:`ddpmlab.sample` and keep ``n_frames`` evenly spaced states from x_T to x0
    (a :class:`ChainRecorder`).

    Returns ``(titles, xs, x0_hats)``; ``xs`` and ``x0_hats`` are CPU float32
    ``[n, frames, *dims]``. State j < steps is x before step j (title ``t=<index>``) with the
    model's x0 estimate at that step; the last state is the output (title ``output``), paired
    with the last step's estimate. ``sample_kwargs`` go to :func:`ddpmlab.sample`.
    """
    rec = ChainRecorder(n_frames)
    out = sample(model, schedule, shape=tuple(shape), sampler=sampler, steps=steps,
                 prediction=prediction, y=y, guidance=guidance, null_class=null_class,
                 generator=generator, callback=rec, clip_x0=clip_x0, **sample_kwargs)
    rec.finish(out)
    n_steps = rec.total
    titles = [f"t={int(rec.ts[j])}" if j < n_steps else "output" for j in rec.keep]
    return (titles, torch.stack([rec.xs[j] for j in rec.keep], dim=1),
            torch.stack([rec.hats[j] for j in rec.keep], dim=1))


def denoising_chain(model: Any, schedule: Schedule, shape: Sequence[int],
                    path: str | os.PathLike, sampler: str = "ddpm",
                    steps: int | None = None, n_frames: int = 10, prediction: str = "eps",
                    y: torch.Tensor | int | None = None, guidance: float = 1.0,
                    null_class: int | None = None, generator: Any = None,
                    clip_x0: bool = True, **sample_kwargs: Any) -> Path:
    """The reverse process: sample ``shape = (n, C, H, W)`` from pure noise with ``model`` and
    show, for each of the n samples, two rows over ``n_frames`` evenly spaced steps from x_T to
    x0: the current x_t, and under it the model's estimate x0_hat at that step (columns titled
    with the index t; the last column is the output, reached with no noise at the last step).
    Arguments are those of :func:`ddpmlab.sample` (``sample_kwargs``: ``eta``, ``variance``,
    ``spacing``, ``device``, ...)."""
    shape = tuple(shape)
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise ValueError(f"denoising_chain needs image-shaped data (n, C, H, W) with C = 1 or 3, "
                         f"got shape {shape}")
    titles, xs, hats = chain_frames(model, schedule, shape, sampler, steps, n_frames,
                                    prediction, y, guidance, null_class, generator, clip_x0,
                                    **sample_kwargs)
    n, m = xs.shape[0], xs.shape[1]
    fig, axes = _image_grid(2 * n, m, cell=0.95, top=0.55,
                            row_gaps=[0.0, 0.25] * n)
    for k in range(n):
        for c in range(m):
            _show(axes[2 * k][c], xs[k, c])
            _show(axes[2 * k + 1][c], hats[k, c])
        tag = f"#{k + 1} " if n > 1 else ""
        _row_label(axes[2 * k][0], f"{tag}$x_t$")
        _row_label(axes[2 * k + 1][0], f"{tag}" + r"$\hat{x}_0$")
    for c in range(m):
        axes[0][c].set_title(titles[c], fontsize=8)
    fig.suptitle(f"reverse process ({sampler}, {steps or schedule.T} steps from pure noise): "
                 r"$x_t$ and the model's estimate $\hat{x}_0$", fontsize=9, y=1.0, va="top")
    return _save_figure(fig, path)


# ============================================================================ 3. schedules
def schedule_plot(path: str | os.PathLike, T: int = 1000,
                  schedules: Sequence[str | Schedule] = ("linear", "cosine")) -> Path:
    """One panel per schedule with sqrt(abar_t) (image coefficient) and sqrt(1 - abar_t) (noise
    coefficient) against t, and a last panel with every schedule's log-SNR
    log(abar / (1 - abar)) against t. Names are built with ``T`` steps; Schedule objects are
    drawn as they are."""
    built = [S.get(s, T) if isinstance(s, str) else s for s in schedules]
    if not built or not all(isinstance(s, Schedule) for s in built):
        raise ValueError(f"schedules must be names ({', '.join(S.SCHEDULES)}) or Schedule "
                         f"objects, got {schedules!r}")
    k = len(built)
    fig = _figure(3.6 * (k + 1), 3.2)
    axes = fig.subplots(1, k + 1, squeeze=False)[0]
    colors = ["C0", "C1", "C2", "C3", "C4", "C5"]
    for ax, s in zip(axes, built, strict=False):
        t = np.arange(s.T)
        ax.plot(t, s.sqrt_alpha_bar.cpu().numpy(), color="C0",
                label=r"$\sqrt{\bar\alpha_t}$ (image)")
        ax.plot(t, s.sqrt_one_minus_alpha_bar.cpu().numpy(), color="C3",
                label=r"$\sqrt{1-\bar\alpha_t}$ (noise)")
        ax.set_title(f"{s.name} (T={s.T})", fontsize=10)
        ax.set_xlabel("t")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="center right")
    ax = axes[-1]
    for j, s in enumerate(built):
        ax.plot(np.arange(s.T), s.log_snr.cpu().numpy(), color=colors[j % len(colors)],
                label=s.name)
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_title(r"log-SNR  $\log\,\bar\alpha_t/(1-\bar\alpha_t)$", fontsize=10)
    ax.set_xlabel("t")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


# ============================================================================ 4. loss
def read_losses(metrics_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, losses)`` from a run's metrics file (JSON lines), sorted by step.

    ``metrics_path`` may also be the run directory holding it. Lines without a numeric
    ``step`` and ``loss`` (eval events, blank or truncated lines) are skipped; when a step
    appears twice (a resumed run logs again after its checkpoint) the later line wins. Raises
    :class:`DataError` naming the file when it is missing or has no loss.
    """
    p = Path(metrics_path)
    if p.is_dir():
        p = RunDir(p).metrics
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DataError(f"{p}: metrics file not found (is this a run directory?)") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read metrics ({e.strerror or e})") from None
    by_step: dict[int, float] = {}
    for line in text.splitlines():
        try:
            rec = loads_json(line, str(p))   # (bounded: nesting, integer length)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        step, loss = rec.get("step"), rec.get("loss")
        if (isinstance(step, (int, float)) and not isinstance(step, bool) and 0 <= step <= 1e12
                and isinstance(loss, (int, float)) and not isinstance(loss, bool)):
            by_step[int(step)] = float(loss)
    if not by_step:
        raise DataError(f"{p}: no training loss lines (JSON objects with 'step' and 'loss')")
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points (odd), taken on log(values) when every value
    is positive (a geometric mean, right for a log-scale plot). Near the ends the window shrinks
    symmetrically, so the curve starts and ends at the first and last values without lag."""
    v = np.asarray(values, dtype=np.float64)
    half = max(0, int(window) // 2)
    if half == 0 or len(v) < 2:
        return v.copy()
    use_log = bool((v > 0).all())
    u = np.log(v) if use_log else v
    c = np.concatenate([[0.0], np.cumsum(u)])
    i = np.arange(len(u))
    h = np.minimum(half, np.minimum(i, len(u) - 1 - i))
    lo, hi = i - h, i + h + 1
    out = (c[hi] - c[lo]) / (hi - lo)
    return np.exp(out) if use_log else out


def loss_plot(metrics_path: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The training loss against step (log y): the logged values and a smoothed curve (centred
    geometric moving mean over about 1/20 of the points). Non-finite or non-positive values are
    left out of the picture."""
    src = Path(metrics_path)
    src = RunDir(src).metrics if src.is_dir() else src
    steps, losses = read_losses(src)
    ok = np.isfinite(losses) & (losses > 0)
    if not ok.any():
        raise DataError(f"{src}: no finite positive loss values to plot")
    steps, losses = steps[ok], losses[ok]
    window = 2 * max(1, len(losses) // 40) + 1
    fig = _figure(6.4, 3.6)
    ax = fig.subplots()
    ax.plot(steps, losses, color="C0", alpha=0.35, lw=1, marker="." if len(steps) < 50 else None,
            label="logged loss")
    if len(losses) > 2:
        ax.plot(steps, smooth(losses, window), color="C0", lw=2,
                label=f"smoothed (centred mean of {window} points)")
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    name = (src.parent.name or src.name).encode("utf-8", "backslashreplace").decode()  # (not UTF-8)
    ax.set_title(f"training loss  ({name}; last {losses[-1]:.4g} "
                 f"at step {steps[-1]})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


# ============================================================================ 5. VLB terms
def vlb_plot(terms: Any, path: str | os.PathLike, total: float | None = None) -> Path:
    """The ELBO terms L_t in bits/dim against t (log y) from ``terms`` ``[T]`` (NaN where not
    evaluated; index 0 is the decoder L_0), or a :class:`ddpmlab.likelihood.BitsPerDim` (then
    ``total`` defaults to its total). Points are marked when only a subset was evaluated."""
    if hasattr(terms, "terms") and hasattr(terms, "total"):
        total = terms.total if total is None else total
        terms = terms.terms
    v = torch.as_tensor(terms).detach().double().cpu()
    if v.ndim != 1 or v.numel() < 1:
        raise ValueError(f"terms must be a 1-D tensor [T], got shape {tuple(v.shape)}")
    t = np.arange(v.numel())
    arr = v.numpy()
    ok = np.isfinite(arr) & (arr > 0)
    if not ok.any():
        raise ValueError("terms has no finite positive value to plot")
    subset = int(ok.sum()) < len(arr)
    fig = _figure(6.4, 3.6)
    ax = fig.subplots()
    ax.plot(t[ok], arr[ok], color="C2", lw=1.2, marker="o" if subset else None, ms=3,
            label=r"$L_t$ (bits/dim)")
    if ok[0]:
        ax.plot([0], [arr[0]], "s", color="C3", ms=6, label=r"$L_0$ decoder")
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel("t")
    ax.set_ylabel("bits/dim")
    title = "ELBO terms per timestep"
    if subset:
        title += f" ({int(ok.sum())} of {len(arr)} evaluated)"
    if total is not None:
        title += f"; total {float(total):.3f} bits/dim"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


# ============================================================================ 6. class rows
def class_rows_grid(images_by_class: Sequence[torch.Tensor], path: str | os.PathLike,
                    labels: Sequence[str], pad: int = 2) -> Path:
    """One row per class (``images_by_class[k]`` is ``[n_k, C, H, W]``) with ``labels[k]`` at
    its left; shorter rows are padded with white."""
    if len(images_by_class) != len(labels) or not labels:
        raise ValueError(f"got {len(images_by_class)} image rows but {len(labels)} labels")
    rows = [_check_images(x, f"images_by_class[{k}]") for k, x in enumerate(images_by_class)]
    if len({tuple(r.shape[1:]) for r in rows}) != 1:
        raise ValueError(f"every class must have images of one shape, got "
                         f"{sorted({tuple(r.shape[1:]) for r in rows})}")
    width = max(r.shape[0] for r in rows)
    tiles = [make_grid(r, nrow=max(1, r.shape[0]), pad=pad) for r in rows]
    h_row = tiles[0].shape[0] - pad
    canvas_w = width * (rows[0].shape[3] + pad) + pad
    c = tiles[0].shape[2]
    canvas = np.full((len(rows) * h_row + pad, canvas_w, c), 255, np.uint8)
    for k, tile in enumerate(tiles):
        canvas[k * h_row:k * h_row + tile.shape[0], :tile.shape[1]] = tile
    px = max(1.0, 64.0 / rows[0].shape[2])        # about 64 display pixels per image side
    dpi = 100
    fig = _figure(canvas.shape[1] * px / dpi + 1.2, canvas.shape[0] * px / dpi + 0.2)
    ax = fig.subplots()
    if c == 1:
        ax.imshow(canvas[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([pad + k * h_row + (h_row - pad) / 2 for k in range(len(rows))])
    ax.set_yticklabels([str(s) for s in labels], fontsize=10)
    ax.tick_params(axis="y", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return _save_figure(fig, path, dpi=dpi)


# ============================================================================ memorization figure
def save_memorization_figure(samples, train_images, pairs, path: str | Path,
                             min_height: int = 64) -> Path:
    """Write a PNG with one row per pair: the sample, its nearest training image, the ratio.

    ``samples``/``train_images``: uint8 ``[N, C, H, W]``; ``pairs``: an object with a ``worst``
    list (:class:`ddpmlab.evaluate.Memorization`) or ``(sample_index, train_index[, ratio])``
    tuples. Small images are enlarged by an integer factor (nearest neighbour) to at least
    ``min_height`` pixels.
    """
    from PIL import Image, ImageDraw

    rows: Sequence = list(getattr(pairs, "worst", pairs))
    if not rows:
        raise DataError("save_memorization_figure: no pairs to draw")
    s = torch.as_tensor(np.asarray(samples)) if not isinstance(samples, torch.Tensor) \
        else samples.cpu()
    t = torch.as_tensor(np.asarray(train_images)) if not isinstance(train_images, torch.Tensor) \
        else train_images.cpu()
    c, h, w = s.shape[1:]
    f = max(1, math.ceil(min_height / h))
    hh, ww, gap, text_w, top = h * f, w * f, 4, 110, 16

    def tile(img: torch.Tensor) -> Image.Image:
        a = img.numpy().transpose(1, 2, 0)
        pic = Image.fromarray(a[..., 0] if c == 1 else a, "L" if c == 1 else "RGB")
        return pic.resize((ww, hh), Image.Resampling.NEAREST).convert("RGB")

    canvas = Image.new("RGB", (2 * ww + 3 * gap + text_w, top + len(rows) * (hh + gap) + gap),
                       "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 2), "sample", fill="black")
    draw.text((2 * gap + ww, 2), "nearest train", fill="black")
    draw.text((3 * gap + 2 * ww, 2), "d / d_real", fill="black")
    for r, row in enumerate(rows):
        i, j = int(row[0]), int(row[1])
        y = top + r * (hh + gap)
        canvas.paste(tile(s[i]), (gap, y))
        canvas.paste(tile(t[j]), (2 * gap + ww, y))
        label = f"#{i} ~ train #{j}"
        if len(row) > 2:
            label += f"\nratio {float(row[2]):.3f}"
        draw.text((3 * gap + 2 * ww, y + 2), label, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png_bytes(canvas))
    return path


# ============================================================================ measured sweeps
def sweep_plot(xs: Sequence[float], ys: Sequence[float], path: str | os.PathLike, *,
               xlabel: str, ylabel: str, title: str, best: str = "min") -> Path:
    """A measured quantity against a setting (``ddpmlab ema --sweep``: FID against the post-hoc
    EMA length), points joined in the order of ``xs``, the best point (``best``: ``min`` or
    ``max`` of ``ys``) ringed and labelled."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError("sweep_plot needs one y per x, and at least one point")
    order = np.argsort(x)
    x, y = x[order], y[order]
    fig = _figure(5.6, 3.4)
    ax = fig.subplots()
    ax.plot(x, y, color="C0", marker="o", lw=1.5)
    finite = np.isfinite(y)
    if finite.any():
        k = int(np.nanargmin(np.where(finite, y, np.nan)) if best == "min"
                else np.nanargmax(np.where(finite, y, np.nan)))
        ax.plot([x[k]], [y[k]], "o", ms=12, mfc="none", mec="C3", mew=2,
                label=f"best: {xlabel.split(' ')[0]} {x[k]:g} -> {y[k]:.4g}")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path)
