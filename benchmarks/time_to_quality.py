"""Time to quality: FID against wall-clock training minutes, ddpmlab against its peers.

Three steps, so that the CPU training and the (GPU-friendly) sampling can run on different
machines:

1. ``train``: train a peer on the built-in MNIST training digits (4,500; padded with black to
   the size the peer's UNet accepts, 28 for the matched models) for ``--minutes`` of
   wall-clock time, saving its EMA weights every ``--every`` minutes (the clock is paused while
   saving). ddpmlab's own curve comes from the default ``ddpmlab train`` run, trained with
   ``train.ckpt_every`` small enough to keep a checkpoint near each minute mark.
2. ``sample``: draw ``--n`` samples from every snapshot with each library's own recommended
   sampler and write them (uint8, cropped back to 28x28) into one ``.npz``.
3. ``score``: FID (and KID) of every snapshot on the project's MNIST features against the
   training digits, as a table (Markdown + JSON) and a plot.

Peers and their settings (each library's own recommendation; model size matched to ddpmlab's
main-job UNet by parameter count, as in ``train_sample --settings mnist``, because
their recommended 35M+ models would take hours per epoch on two cores):

* ``diffusers``: ``UNet2DModel`` + ``DDPMScheduler(1000, "linear")``, epsilon prediction,
  the ``train_unconditional.py`` example's defaults: AdamW lr 1e-4, betas (0.95, 0.999),
  weight decay 1e-6, cosine schedule with 500 warm-up steps over 100 epochs, batch 16, gradient
  clip 1.0, ``EMAModel`` (max decay 0.9999, inv_gamma 1, power 3/4). Sampled with the
  ``DDPMPipeline`` default, 1000 DDPM steps.
* ``lucidrains`` (denoising-diffusion-pytorch): ``Unet`` + ``GaussianDiffusion`` at its
  defaults (v-prediction, sigmoid schedule, 1000 steps), the README's ``Trainer`` settings:
  batch 32, 2 accumulation steps, Adam lr 8e-5, betas (0.9, 0.99), grad clip 1.0, EMA 0.995
  updated every 10 steps. Sampled with the README's ``sampling_timesteps=250`` (DDIM).

Commands, from the repository root (the peers need ``.venv-bench``, see benchmarks/README.md;
run each training alone on a quiet machine: two jobs at once halve each other's speed):

    ddpmlab train --out runs/ttq-ddpmlab train.ckpt_every=113 train.keep_last=20
    .venv-bench/bin/python -m benchmarks.time_to_quality train --lib diffusers --out runs/ttq-diffusers
    .venv-bench/bin/python -m benchmarks.time_to_quality train --lib lucidrains --out runs/ttq-lucidrains
    .venv-bench/bin/python -m benchmarks.time_to_quality sample runs/ttq-ddpmlab runs/ttq-diffusers \\
        runs/ttq-lucidrains [--device cuda]
    .venv-bench/bin/python -m benchmarks.time_to_quality score --plot docs/images/time_to_quality.png

``sample`` writes benchmarks/results/time_to_quality_samples.npz (git-ignored) and its timings,
time_to_quality_samples.json, beside it; ``score`` reads them and writes
benchmarks/results/time_to_quality.{md,json}. ``--out`` / ``NPZ`` / ``--out-md`` /
``--out-json`` name other files.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import (
    build_peer_net,
    log,
    plan_setting,
    result_path,
    time_calls,
    write_json,
    write_text,
)

PEERS = ("diffusers", "lucidrains")


def nhwc_uint8(x: torch.Tensor) -> np.ndarray:
    """Samples in [-1, 1], ``[N, C, H, W]`` -> uint8 ``N x H x W x C`` (what ``.npz`` holds)."""
    from ddpmlab.data import to_uint8

    return to_uint8(x).permute(0, 2, 3, 1).numpy()


def mnist_train() -> torch.Tensor:
    """The built-in MNIST training digits, [N, 1, 28, 28] floats in [-1, 1]."""
    from ddpmlab.config import DataConfig
    from ddpmlab.data import load_dataset, to_model_range

    return to_model_range(load_dataset(DataConfig(dataset="mnist"), "train").images)


def peer_spec(lib: str) -> dict:
    """The peer model matched to ddpmlab's main-job UNet (train_sample's ``mnist`` setting)."""
    (spec,) = plan_setting("mnist", [lib], quick=False)
    return spec


# =========================================================================== train
class Snapshots:
    """Save EMA weights at every ``every`` minutes of training time (clock paused meanwhile)."""

    def __init__(self, out: Path, every: float, minutes: float, meta: dict):
        self.out, self.every, self.minutes, self.meta = out, every, minutes, meta
        self.next = every
        self.clock = 0.0
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return self.clock + time.perf_counter() - self.t0

    def tick(self, step: int, state_fn) -> bool:
        """Save when a mark is passed; True when the time is up."""
        from safetensors.torch import save_file

        mins = self.elapsed() / 60
        if mins < self.next:
            return False
        self.clock += time.perf_counter() - self.t0
        d = self.out / f"snap_{self.next:06.2f}min"
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in state_fn().items()}
        save_file(state, str(d / "ema.safetensors"))
        write_json(d / "meta.json", {**self.meta, "minutes": mins, "step": step}, indent=1)
        log(f"snapshot at {mins:.2f} min, step {step} -> {d}")
        done = self.next >= self.minutes - 1e-9
        self.next += self.every
        self.t0 = time.perf_counter()
        return done


def train_diffusers(spec: dict, x: torch.Tensor, snaps: Snapshots, seed: int) -> None:
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    net = build_peer_net("diffusers", spec["model"])
    sch = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6,
                            eps=1e-8)
    bs = 16
    steps_per_epoch = math.ceil(len(x) / bs)
    lr_sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=500,
                             num_training_steps=steps_per_epoch * 100)
    ema = EMAModel(net.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0,
                   power=0.75, model_cls=type(net), model_config=net.config)
    ema_net = build_peer_net("diffusers", spec["model"])

    def ema_state():
        ema.copy_to(ema_net.parameters())
        return ema_net.state_dict()

    step = 0
    while True:
        for idx in torch.randperm(len(x)).split(bs):
            x0 = x[idx]
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (len(x0),))
            loss = F.mse_loss(net(sch.add_noise(x0, noise, t), t).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
            ema.step(net.parameters())
            step += 1
            if step % 100 == 0:
                log(f"diffusers step {step} loss {loss.item():.4f}")
            if snaps.tick(step, ema_state):
                return


def train_lucidrains(spec: dict, x: torch.Tensor, snaps: Snapshots, seed: int) -> None:
    from denoising_diffusion_pytorch import GaussianDiffusion
    from ema_pytorch import EMA

    torch.manual_seed(seed)
    unet = build_peer_net("lucidrains", spec["model"])
    diff = GaussianDiffusion(unet, image_size=spec["size"], timesteps=1000,
                             sampling_timesteps=250)
    opt = torch.optim.Adam(diff.parameters(), lr=8e-5, betas=(0.9, 0.99))
    ema = EMA(diff, beta=0.995, update_every=10)
    x01 = (x + 1) / 2  # the Trainer feeds [0, 1]; GaussianDiffusion normalizes to [-1, 1]
    bs, accum = 32, 2
    step = 0

    def batches():
        while True:
            yield from torch.randperm(len(x01)).split(bs)

    it = batches()
    while True:
        for _ in range(accum):
            idx = next(it)
            (diff(x01[idx]) / accum).backward()
        torch.nn.utils.clip_grad_norm_(diff.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update()
        step += 1
        if step % 50 == 0:
            log(f"lucidrains step {step}")
        if snaps.tick(step, lambda: ema.ema_model.model.state_dict()):
            return


def cmd_train(a: argparse.Namespace) -> None:
    if a.threads:
        torch.set_num_threads(a.threads)
    spec = peer_spec(a.lib)
    pad = (spec["size"] - 28) // 2
    x = torch.nn.functional.pad(mnist_train(), (pad,) * 4, value=-1.0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"lib": a.lib, "spec": spec, "threads": torch.get_num_threads(),
            "torch": torch.__version__}
    write_json(out / "spec.json", meta, indent=1)
    log(f"{a.lib}: {spec['params']:,} parameters, {len(x)} digits at {tuple(x.shape[1:])}, "
        f"{a.minutes} min, snapshots every {a.every} min")
    snaps = Snapshots(out, a.every, a.minutes, meta)
    {"diffusers": train_diffusers, "lucidrains": train_lucidrains}[a.lib](spec, x, snaps, a.seed)


# =========================================================================== sample
def snapshots_of(run: Path) -> list[tuple[str, float, Path]]:
    """(library, minutes, snapshot path) of a peer folder or a ddpmlab run directory."""
    if (run / "config.json").is_file():  # a ddpmlab run: checkpoint steps -> minutes
        times = {}
        for line in (run / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "step" in rec and "elapsed_s" in rec:
                times[rec["step"]] = rec["elapsed_s"] / 60
        out = []
        for ck in sorted((run / "checkpoints").glob("step_*")):
            step = int(ck.name.split("_")[1])
            if step in times:
                out.append(("ddpmlab", times[step], ck))
        return out
    spec = json.loads((run / "spec.json").read_text())
    return [(spec["lib"], json.loads((d / "meta.json").read_text())["minutes"], d)
            for d in sorted(run.glob("snap_*"))]


@torch.inference_mode()
def sample_peer(lib: str, snap: Path, n: int, device: torch.device, batch: int,
                sampler: str = "default", steps: int | None = None) -> np.ndarray:
    from safetensors.torch import load_file

    spec = json.loads((snap / "meta.json").read_text())["spec"]
    state = load_file(str(snap / "ema.safetensors"))
    net = build_peer_net(lib, spec["model"])
    net.load_state_dict(state)
    net = net.to(device).eval()
    g = torch.Generator(device).manual_seed(0)
    S = spec["size"]
    outs = []
    if lib == "diffusers":
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        base = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        if sampler in ("default", "ddpm"):
            sch, steps = base, steps or 1000
        elif sampler == "ddim":
            sch = DDIMScheduler.from_config(base.config)
        else:
            sch = DPMSolverMultistepScheduler.from_config(base.config)
        for start in range(0, n, batch):
            m = min(batch, n - start)
            xt = torch.randn(m, 1, S, S, generator=g, device=device)
            sch.set_timesteps(steps)
            for t in sch.timesteps:
                eps = net(xt, t).sample
                kw = {"generator": g} if sampler in ("default", "ddpm") else {}
                xt = sch.step(eps, t, xt, **kw).prev_sample
            outs.append(xt.clamp(-1, 1))
    else:
        from denoising_diffusion_pytorch import GaussianDiffusion

        diff = GaussianDiffusion(net, image_size=S, timesteps=1000,
                                 sampling_timesteps=steps or 250).to(device)
        torch.manual_seed(0)
        for start in range(0, n, batch):
            m = min(batch, n - start)
            outs.append(diff.sample(batch_size=m) * 2 - 1)  # [0, 1] -> [-1, 1]
    pad = (S - 28) // 2
    x = torch.cat(outs).float().cpu()[:, :, pad:S - pad, pad:S - pad]
    return nhwc_uint8(x)


@torch.inference_mode()
def sample_ddpmlab(ckpt: Path, n: int, device: torch.device, batch: int, sampler=None,
                   steps=None, guidance=None, start: int = 0,
                   spacing: str | None = None) -> np.ndarray:
    """Samples ``start .. start + n - 1`` (each one's noise and class fixed by its number, so
    parts drawn apart join into the same set as one draw)."""
    from ddpmlab import load_run, sample_images
    from ddpmlab.runs import default_labels

    model, cfg, _ = load_run(ckpt.parent.parent, device=device, checkpoint=ckpt)  # EMA weights
    labels = default_labels(cfg, start + n)
    x = sample_images(model, cfg, n=n, seed=0, device=device, sampler=sampler, steps=steps,
                      indices=list(range(start, start + n)),
                      y=None if labels is None else labels[start:], guidance=guidance,
                      batch_size=batch, spacing=spacing)
    return nhwc_uint8(x)


def cmd_sample(a: argparse.Namespace) -> None:
    device = torch.device(a.device)
    arrays, meta = {}, []
    for run in a.runs:
        for lib, minutes, snap in snapshots_of(Path(run)):
            key = f"{lib}@{minutes:.2f}"

            def draw(lib=lib, snap=snap, key=key):
                arrays[key] = (sample_ddpmlab(snap, a.n, device, a.batch) if lib == "ddpmlab"
                               else sample_peer(lib, snap, a.n, device, a.batch))

            dt = time_calls(draw, warmup=0, reps=1, device=device)["median_s"]
            meta.append({"key": key, "lib": lib, "minutes": minutes, "snapshot": str(snap),
                         "sample_s": dt, "device": str(device)})
            log(f"{key}: {a.n} samples in {dt:.1f} s")
    save_samples(a.out, arrays, meta)


def save_samples(npz, arrays: dict[str, np.ndarray], meta: list[dict]) -> None:
    """The ``sample`` step's output: the arrays in ``npz``, their metadata (timings) beside it
    as ``.json`` (what ``score_arrays`` reads)."""
    npz = Path(npz)
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz, **arrays)
    log(f"wrote {npz}")
    write_json(npz.with_suffix(".json"), meta, indent=1)


# =========================================================================== score
def npz_images(npz: str):
    """Every array of a sample step's ``npz`` as (key, N x C x H x W uint8 tensor)."""
    with np.load(npz) as f:
        for key in f.files:
            yield key, torch.from_numpy(f[key]).permute(0, 3, 1, 2).contiguous()


def evaluate_mnist(x: torch.Tensor, extractor) -> dict:
    """``evaluate_samples`` of ``x`` on the project's MNIST features against the training
    digits, quiet about a set below the recommended size (the real-vs-real baseline says it)."""
    import warnings

    from ddpmlab.evaluate import evaluate_samples

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_samples(x, "mnist", extractor=extractor, seed=0)


def score_arrays(npz: str) -> list[tuple[dict, int, dict]]:
    """(the sample step's metadata, n, ``evaluate_mnist`` result) for every array of ``npz``:
    FID/KID/classifier on the project's MNIST features against the training digits."""
    from ddpmlab.features import get_feature_extractor

    meta = {m["key"]: m for m in json.loads(Path(npz).with_suffix(".json").read_text())}
    ext = get_feature_extractor("mnist")
    out = []
    for key, x in npz_images(npz):
        r = evaluate_mnist(x, ext)
        r["_x"] = x
        out.append((meta[key], int(len(x)), r))
        log(f"{key}: FID {r['fid']:.2f}")
    return out


def summary(r: dict) -> dict:
    return {"fid": r["fid"], "kid": r["kid_mean"],
            "confident": (r.get("classifier") or {}).get("confident_share"),
            "baseline_fid": (r.get("baseline") or {}).get("fid_mean")}


def write_table(lines: list[str], rows: list[dict], out_md) -> None:
    base = [r["baseline_fid"] for r in rows if r["baseline_fid"]]
    if base:
        lines.append(f"\nReal-vs-real FID at n = {rows[0]['n']}: {base[0]:.2f}.")
    text = "\n".join(lines)
    print(text)
    write_text(out_md, text)


def fid_plot(series: dict[str, list[tuple[float, float]]], path: str, xlabel: str,
             baseline: float | None = None, xlog: bool = False,
             baseline_label: str = "real vs real") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    many = len(series) > 10  # more than tab10's colours: tab20, a larger figure, legend outside
    fig, ax = plt.subplots(figsize=(7.5, 4.6) if many else (5.5, 3.6), dpi=120)
    colors = plt.get_cmap("tab20" if many else "tab10").colors
    markers, styles = "os^vDP*Xph", ("-", "--", ":")
    for i, (label, pts) in enumerate(series.items()):  # no colour twice
        ax.plot(*zip(*sorted(pts), strict=True), marker=markers[i % len(markers)],
                ls=styles[i // len(markers) % len(styles)], color=colors[i % len(colors)],
                label=label)
    if baseline:
        ax.axhline(baseline, color="grey", ls=":", label=baseline_label)
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 20, not 2 x 10^1
    if xlog:
        ax.set_xscale("log")
        ax.set_xticks(sorted({x for pts in series.values() for x, _ in pts}))
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FID (project MNIST features)")
    ax.legend(fontsize=7, loc="center left" if many else "best",
              bbox_to_anchor=(1.0, 0.5) if many else None)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    log(f"wrote {path}")


def cmd_score(a: argparse.Namespace) -> None:
    rows = [{"lib": m["lib"], "minutes": m["minutes"], "n": n, **summary(r)}
            for m, n, r in score_arrays(a.npz)]
    rows.sort(key=lambda r: (r["lib"], r["minutes"]))
    write_json(a.out_json, rows, indent=1)
    lines = ["| library | minutes | FID | KID | confident (>= 0.9) |", "|---|---|---|---|---|"]
    for r in rows:
        conf = "" if r["confident"] is None else f"{100 * r['confident']:.1f}%"
        lines.append(f"| {r['lib']} | {r['minutes']:.1f} | {r['fid']:.2f} | {r['kid']:.4f} | "
                     f"{conf} |")
    write_table(lines, rows, a.out_md)
    if a.plot:
        series = {lib: [(r["minutes"], r["fid"]) for r in rows if r["lib"] == lib]
                  for lib in sorted({r["lib"] for r in rows})}
        fid_plot(series, a.plot, "training wall-clock minutes (2 CPU cores)",
                 baseline=rows[0]["baseline_fid"])


def sample_and_score_parsers(sub, name: str) -> argparse.ArgumentParser:
    """The ``sample`` and ``score`` subcommands both scripts share, their outputs by default in
    benchmarks/results/ under ``name``; returns ``sample``'s parser."""
    npz = str(result_path(f"{name}_samples.npz"))
    s = sub.add_parser("sample", help=f"draw the samples into an .npz (default {npz})")
    s.add_argument("--out", default=npz, help="the .npz; its timings go beside it as .json")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--batch", type=int, default=1000)
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c = sub.add_parser("score", help="FID of every array of the .npz: table, JSON, plot")
    c.add_argument("npz", nargs="?", default=npz, help=f"the sample step's .npz (default {npz})")
    c.add_argument("--out-md", default=str(result_path(f"{name}.md")))
    c.add_argument("--out-json", default=str(result_path(f"{name}.json")))
    c.add_argument("--plot", help="also draw FID against the x axis into this image file")
    return s


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.time_to_quality",
                                description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a peer for --minutes, EMA snapshots every --every")
    t.add_argument("--lib", choices=PEERS, required=True)
    t.add_argument("--out", required=True, help="the run folder (e.g. runs/ttq-diffusers)")
    t.add_argument("--minutes", type=float, default=10.0)
    t.add_argument("--every", type=float, default=2.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0)
    sample_and_score_parsers(sub, "time_to_quality").add_argument("runs", nargs="+")
    a = p.parse_args()
    {"train": cmd_train, "sample": cmd_sample, "score": cmd_score}[a.cmd](a)


if __name__ == "__main__":
    main()
