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

``sample`` writes benchmarks/results/time_to_quality/time_to_quality_samples.npz (git-ignored)
and its timings, time_to_quality_samples.json, beside it; ``score`` reads them and writes
benchmarks/results/time_to_quality/time_to_quality.{md,json}. ``--out`` / ``NPZ`` / ``--out-md`` /
``--out-json`` name other files. The sampling and scoring themselves (shared with
``sampler_steps``, ``sampler_nfe``, ``learned_variance`` and ``sample_precision``) are
:mod:`benchmarks.harness.scoring`.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from benchmarks.harness import (
    build_peer_net,
    fid_plot,
    log,
    plan_setting,
    sample_and_score_parsers,
    sample_ddpmlab,
    sample_peer,
    save_samples,
    score_arrays,
    snapshots_of,
    summary,
    time_calls,
    write_json,
    write_table,
)

PEERS = ("diffusers", "lucidrains")


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


# =========================================================================== score
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
