"""ddpmlab against its peers: training throughput, sampling step time, FLOPs and memory.

One command measures, on one machine with one torch install, the same jobs in three libraries:

* ``ddpmlab``: ``ddpmlab.nn.UNet`` + ``ddpmlab.train.training_loss`` + ``ddpmlab.samplers.ddpm_step``;
* ``diffusers``: ``UNet2DModel`` + ``DDPMScheduler`` (``add_noise`` / ``step``);
* ``lucidrains`` (denoising-diffusion-pytorch): ``Unet`` + ``GaussianDiffusion`` (``forward`` /
  ``p_sample``), with ``objective='pred_noise'`` and ``beta_schedule='linear'`` (its defaults are
  ``pred_v`` and ``sigmoid``).

Settings (``--settings``; the matched models are ``benchmarks.harness.plan_setting``'s):

* ``mnist``: 1x28x28, ddpmlab's main-job model (``load_config("mnist").model``); diffusers: the
  same architecture written as a UNet2DModel, width searched to match the parameter count;
  lucidrains: ``Unet(dim, dim_mults)`` searched to match the parameter count.
* ``cifar``: 3x32x32, the DDPM paper's CIFAR-10 model (``load_config("cifar10").model``, 35.7M);
  diffusers configured as google/ddpm-cifar10-32; lucidrains ``Unet(dim=128, dim_mults=(1,2,2,2))``.
* ``cifar_small``: 3x32x32, the same CIFAR architecture at a quarter of the width (base 32);
  peers matched by parameter count as for ``mnist``.

Each (setting, library) runs in its own fresh subprocess, one after another, so that its peak
resident memory (VmHWM) is its own and no allocator state is shared; the parent process
measures the machine's fp32 matmul peak and writes the tables.

Full run (CPU, about 10-15 minutes on 2 cores; run it on a quiet machine) from the repository
root; it writes benchmarks/results/train_sample/train_sample.{json,md} (other options, other default names:
see ``--out-json``):

    .venv-bench/bin/python -m benchmarks.train_sample

Harness check (about 3 minutes on one niced core): ``--quick --threads 1`` (batch 2, one timed
step, the CIFAR settings at bases 32 and 16; the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import (
    LIBS,
    REPO,
    SETTINGS,
    build_peer_net,
    count_flops,
    ddpmlab_net,
    log,
    machine,
    matmul_peak,
    module_command,
    peak_memory_mib,
    plan_setting,
    reset_peak_memory,
    result_path,
    rss_mib,
    sync,
    time_calls,
    write_json,
    write_text,
)

T = 1000
LR = 2e-4


# =========================================================================== the worker
class Job:
    """One library's model with its training step and sampling step, built from a spec."""

    def __init__(self, spec: dict, dev: torch.device):
        self.spec, self.dev, self.lib = spec, dev, spec["lib"]
        self.notes: list[str] = []
        C, S = spec["channels"], spec["size"]
        self.shape = (C, S, S)
        self.cl = spec["channels_last"]
        getattr(self, "_build_" + self.lib)()
        if self.cl:
            self.net.to(memory_format=torch.channels_last)
        self.params = [p for p in self.net.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=LR)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if spec["bf16"]
                         else contextlib.nullcontext())

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cl else x

    # ---------------------------------------------------------------- ddpmlab
    def _build_ddpmlab(self) -> None:
        from ddpmlab import schedules
        from ddpmlab.samplers import StepContext, ddpm_step
        from ddpmlab.train import training_loss

        self.net = ddpmlab_net(self.spec["model"]).to(self.dev)
        self.eager = self.net
        self.model = self.net  # what the steps call (torch.compile'd with --compile)
        sched = schedules.linear(T).to(self.dev)

        def loss(x0):
            t = torch.randint(0, T, (x0.shape[0],), device=self.dev)
            eps = torch.randn_like(x0)
            return training_loss(self.model, sched, x0, t, eps)   # q_sample + net + MSE

        def step(x, t):
            ctx = StepContext(self.model, sched, variance="small", clip_x0=True)
            x, _ = ddpm_step(ctx, x, t, t - 1, {})
            return x

        self.loss, self.sample_step = loss, step
        self.forward = lambda x, t: self.eager(x, t)
        self.data_range = (-1.0, 1.0)
        if self.spec["compile"]:
            self.model = torch.compile(self.net)

    # ---------------------------------------------------------------- diffusers
    def _build_diffusers(self) -> None:
        import torch.nn.functional as F
        from diffusers import DDPMScheduler

        self.net = build_peer_net("diffusers", self.spec["model"]).to(self.dev)
        # the DDPM defaults: linear 1e-4..0.02, variance fixed_small, clip_sample=True
        sch = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
        sch_s = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
        sch_s.set_timesteps(T)
        self.timesteps = sch_s.timesteps  # 999, 998, ..., 0 (0-d tensors, as the pipeline)

        def loss(x0):
            t = torch.randint(0, T, (x0.shape[0],), device=self.dev)
            noise = torch.randn_like(x0)
            x_t = sch.add_noise(x0, noise, t)
            return F.mse_loss(self.net(x_t, t).sample, noise)

        def step(x, t):
            tt = self.timesteps[T - 1 - t]
            eps = self.net(x, tt).sample
            return sch_s.step(eps, tt, x).prev_sample

        self.loss, self.sample_step = loss, step
        self.forward = lambda x, t: self.net(x, t).sample
        self.data_range = (-1.0, 1.0)

    # ---------------------------------------------------------------- lucidrains
    def _build_lucidrains(self) -> None:
        from denoising_diffusion_pytorch import GaussianDiffusion

        unet = build_peer_net("lucidrains", self.spec["model"])
        self.diff = GaussianDiffusion(unet, image_size=self.spec["size"], timesteps=T,
                                      objective="pred_noise", beta_schedule="linear").to(self.dev)
        self.net = self.diff
        self.unet = unet

        def loss(x0):  # x0 in [0, 1]: GaussianDiffusion maps it to [-1, 1] (auto_normalize)
            return self.diff(x0)  # t, noise, q_sample, Unet, MSE (pred_noise weight = 1)

        def step(x, t):
            return self.diff.p_sample(x, t)[0]  # posterior mean/var, x0 clipped, noise if t>0

        self.loss, self.sample_step = loss, step
        self.forward = lambda x, t: self.unet(x, t)
        self.data_range = (0.0, 1.0)

    # ---------------------------------------------------------------- common
    def data(self, n: int) -> torch.Tensor:
        lo, hi = self.data_range
        g = torch.Generator().manual_seed(1)
        x = torch.rand((n, *self.shape), generator=g) * (hi - lo) + lo
        return self._fmt(x.to(self.dev))

    def train_step(self, x0: torch.Tensor) -> None:
        with self.autocast:
            loss = self.loss(x0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def import_lib(lib: str) -> None:
    """Import a library's modules up front, so that the memory baseline includes them."""
    if lib == "ddpmlab":
        import ddpmlab.samplers  # noqa: F401
        import ddpmlab.train  # noqa: F401
    elif lib == "diffusers":
        from diffusers import DDPMScheduler, UNet2DModel  # noqa: F401
    else:
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet  # noqa: F401


def worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    dev = torch.device(spec["device"])
    cuda = dev.type == "cuda"
    tag = f"[{spec['setting']}/{spec['lib']}]"
    t_start = time.perf_counter()
    import_lib(spec["lib"])
    rss_import = rss_mib()
    job = Job(spec, dev)
    # (not ddpmlab.nn.count_parameters: a peer's worker must not import ddpmlab, whose memory
    # would then count in the peer's figures)
    n_params = sum(p.numel() for p in job.params)
    rss_model = rss_mib()
    res = dict(lib=spec["lib"], setting=spec["setting"], params=n_params,
               size=spec["size"], channels=spec["channels"], model=spec["model"],
               how=spec["how"], threads=torch.get_num_threads(), notes=job.notes)
    log(f"{tag} {n_params / 1e6:.3f}M params, input {spec['channels']}x{spec['size']}"
        f"x{spec['size']}, built in {time.perf_counter() - t_start:.1f}s")

    budget, warm, reps, min_reps = (spec["budget_s"], spec["warmup"], spec["reps"],
                                    spec["min_reps"])

    # ---- sampling: one denoising step (net forward + the library's DDPM update) at batch Bs
    Bs = spec["sample_batch"]
    state = {"x": job._fmt(torch.randn((Bs, *job.shape), device=dev)), "t": T - 1}

    def one_sample_step():
        with torch.inference_mode(), job.autocast:
            state["x"] = job.sample_step(state["x"], state["t"])
        state["t"] -= 1

    peak_reset = reset_peak_memory(dev)  # the sampling phase's peak is its own
    if spec["compile"] and spec["lib"] == "ddpmlab":
        try:
            t0 = time.perf_counter()
            one_sample_step()
            sync(dev)
            log(f"{tag} torch.compile (sampling) first call {time.perf_counter() - t0:.1f}s")
        except Exception as e:  # noqa: BLE001 - any backend failure: measure eager instead
            msg = f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); eager instead"
            log(f"{tag} {msg}")
            job.notes.append(msg)
            job.model = job.net
            spec["compile"] = False
    s = time_calls(one_sample_step, warmup=warm, reps=reps, budget_s=budget,
                      min_reps=min_reps, device=dev)
    sample_mem = peak_memory_mib(dev)
    log(f"{tag} sampling: {s['median_s']:.4f} s/step at batch {Bs} (median of {s['n']})")
    state.clear()  # free the sampling batch before training

    # ---- FLOPs per image, counted at a small batch (FLOPs are linear in the batch)
    nb = min(2, spec["batch"])
    xs = job.data(nb)
    ts = torch.randint(0, T, (nb,), device=dev)
    with torch.no_grad():
        fwd = count_flops(lambda: job.forward(xs, ts)) / nb
    if spec["lib"] == "ddpmlab":
        compiled, job.model = job.model, job.net  # count the eager module
    step_flops = count_flops(lambda: job.train_step(xs)) / nb
    if spec["lib"] == "ddpmlab":
        job.model = compiled
    log(f"{tag} forward {fwd / 1e9:.3f} GFLOP/img, training step {step_flops / 1e9:.3f} "
        f"GFLOP/img ({step_flops / fwd:.2f}x forward)")

    # ---- training: the full step at batch B
    B = spec["batch"]
    x0 = job.data(B)
    rss_before_train = rss_mib()
    reset_peak_memory(dev)
    if spec["compile"] and spec["lib"] == "ddpmlab":
        try:
            t0 = time.perf_counter()
            job.train_step(x0)
            sync(dev)
            log(f"{tag} torch.compile (training) first call {time.perf_counter() - t0:.1f}s")
        except Exception as e:  # noqa: BLE001
            msg = f"torch.compile failed in training ({type(e).__name__}: {str(e)[:200]}); eager"
            log(f"{tag} {msg}")
            job.notes.append(msg)
            job.model = job.net
            spec["compile"] = False
    # This shared machine's speed drifts by 10-15% over minutes, so on the CPU the matmul peak
    # is measured again right before and right after the timed steps; "% peak" uses their mean.
    local_peaks = [] if cuda else [matmul_peak(spec["peak_n"], reps=3)]
    tr = time_calls(lambda: job.train_step(x0), warmup=warm, reps=reps, budget_s=budget,
                       min_reps=min_reps, device=dev)
    if not cuda:
        local_peaks.append(matmul_peak(spec["peak_n"], reps=3))
        tr["peak_around"] = local_peaks
    train_mem = peak_memory_mib(dev)
    img_s = B / tr["median_s"]
    log(f"{tag} training: {tr['median_s']:.3f} s/step at batch {B} = {img_s:.1f} img/s "
        f"(median of {tr['n']}), {step_flops * img_s / 1e9:.1f} GFLOP/s")

    res.update(
        compiled=bool(spec["compile"]) and spec["lib"] == "ddpmlab",
        fwd_flops_per_img=fwd, step_flops_per_img=step_flops,
        train=dict(batch=B, **tr, img_s=img_s, gflops_counted=step_flops * img_s / 1e9,
                   gflops_3x_fwd=3 * fwd * img_s / 1e9),
        sample=dict(batch=Bs, **s, s_per_step=s["median_s"],
                    gflops=fwd * Bs / s["median_s"] / 1e9),
        memory=(dict(kind="cuda max_memory_allocated (MiB)", sample_peak=sample_mem,
                     train_peak=train_mem) if cuda else
                dict(kind=("VmHWM of this subprocess (MiB), reset before each phase"
                           if peak_reset else "VmHWM of this subprocess (MiB), never reset"),
                     rss_after_import=rss_import, rss_after_build=rss_model,
                     rss_before_train=rss_before_train, sample_peak=sample_mem,
                     train_peak=train_mem)),
        wall_s=time.perf_counter() - t_start,
    )
    Path(spec["out"]).write_text(json.dumps(res))


# =========================================================================== the parent
def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_sample",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, default=None,
                   help="training batch (default: CPU 64 for mnist, 32 for cifar*; CUDA 128)")
    p.add_argument("--sample-batch", type=int, default=64, help="sampling batch (64)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed steps per measurement, median reported (CPU 5, CUDA 20)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first (CPU: 2, 1 for cifar; CUDA 5)")
    p.add_argument("--budget", type=float, default=None,
                   help="stop timing a measurement after this many seconds once --min-reps "
                        "steps were timed (CPU 30, CUDA 20)")
    p.add_argument("--min-reps", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="harness check: batch 2, 1 rep, CIFAR bases 32 (cifar) and 16 (cifar_small), "
                        "512^3 matmul peak; the numbers mean nothing")
    p.add_argument("--only", default=",".join(LIBS), help="comma list of " + ",".join(LIBS))
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help="comma list of " + ",".join(SETTINGS))
    p.add_argument("--channels-last", action="store_true", help="all libraries")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the ddpmlab UNet (eager with a message if it fails)")
    p.add_argument("--bf16", action="store_true", help="CUDA bf16 autocast, all libraries")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--peak-n", type=int, default=None, help="matmul size for the peak (4096)")
    p.add_argument("--out-json", default=None,
                   help="default: benchmarks/results/NAME.json, NAME = train_sample followed by what "
                        "differs from the full CPU run (e.g. train_sample_cuda_cifar_bf16; "
                        "_quick files are git-ignored)")
    p.add_argument("--out-md", default=None, help="default: benchmarks/results/NAME.md")
    p.add_argument("--plan-only", action="store_true",
                   help="print the matched configurations and parameter counts, run nothing")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    a.settings = [x.strip() for x in a.settings.split(",") if x.strip()]
    for x in a.only:
        if x not in LIBS:
            p.error(f"--only: unknown library {x!r} (choose from {', '.join(LIBS)})")
    for x in a.settings:
        if x not in SETTINGS:
            p.error(f"--settings: unknown setting {x!r} (choose from {', '.join(SETTINGS)})")
    if a.bf16 and a.device != "cuda":
        p.error("--bf16 is CUDA autocast; use it with --device cuda")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False")
    return a


def default_name(a: argparse.Namespace) -> str:
    """The results' default file name: ``train_sample`` plus the options of this run that differ
    from the full CPU run, so that no partial or quick run overwrites ``train_sample.json``."""
    parts = ["train_sample"]
    if a.device != "cpu":
        parts.append(a.device)
    if set(a.settings) != set(SETTINGS):
        parts.append("-".join(a.settings))
    if set(a.only) != set(LIBS):
        parts.append("-".join(a.only))
    if a.batch:
        parts.append(f"b{a.batch}")
    parts += [flag for flag in ("bf16", "channels_last", "compile", "quick") if getattr(a, flag)]
    return "_".join(parts)


def defaults(a: argparse.Namespace, setting: str) -> dict:
    cuda = a.device == "cuda"
    if a.quick:
        return dict(batch=a.batch or 2, sample_batch=2, warmup=a.warmup if a.warmup is not None
                    else 1, reps=a.reps or 1, min_reps=1, budget_s=a.budget or 10.0)
    batch = a.batch or (128 if cuda else (64 if setting == "mnist" else 32))
    warm = a.warmup if a.warmup is not None else (5 if cuda else (1 if setting == "cifar" else 2))
    return dict(batch=batch, sample_batch=a.sample_batch, warmup=warm,
                reps=a.reps or (20 if cuda else 5), min_reps=a.min_reps,
                budget_s=a.budget or (20.0 if cuda else 30.0))


def main() -> None:
    a = parse()
    if a.worker:
        worker(a.worker)
        return
    torch.set_num_threads(a.threads)
    if a.plan_only:
        for setting in a.settings:
            for s in plan_setting(setting, a.only, a.quick):
                print(f"{setting:12s} {s['lib']:11s} {s['params']:>10,d} "
                      f"({s['params_rel_to_ddpmlab']:+.1%}) {s['channels']}x{s['size']}x"
                      f"{s['size']}  {json.dumps(s['model'])}\n{'':25s}{s['how']}", flush=True)
        return
    if a.compile and a.only != ["ddpmlab"]:
        log("--compile applies to ddpmlab only; the peers run eager")
    t_all = time.perf_counter()
    mach = machine()
    log(f"machine: {json.dumps(mach)}")
    log(f"torch.get_num_threads() = {torch.get_num_threads()}; device {a.device}")
    n = a.peak_n or (512 if a.quick else 4096)
    peak = matmul_peak(n, device=a.device)
    peaks = {"fp32": peak}
    log(f"fp32 matmul peak ({n}^3): {peak / 1e9:.1f} GFLOP/s")
    if a.device == "cuda":
        peaks["bf16"] = matmul_peak(n, dtype=torch.bfloat16, device="cuda")
        peaks["tf32_matmul_allowed"] = bool(torch.backends.cuda.matmul.allow_tf32)
        peaks["cudnn_tf32_allowed"] = bool(torch.backends.cudnn.allow_tf32)
        log(f"bf16 matmul peak: {peaks['bf16'] / 1e9:.1f} GFLOP/s")
    ref_peak = peaks["bf16"] if a.bf16 else peak

    results = []
    plans = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_ts_"))
    for setting in a.settings:
        plan = plan_setting(setting, a.only, a.quick)
        plans[setting] = plan
        log(f"== {setting}: " + "; ".join(
            f"{s['lib']} {s['params'] / 1e6:.3f}M ({s['params_rel_to_ddpmlab']:+.1%}) at "
            f"{s['channels']}x{s['size']}x{s['size']}" for s in plan))
        for spec in plan:
            spec = dict(spec, **defaults(a, setting), device=a.device, threads=a.threads,
                        channels_last=a.channels_last, bf16=a.bf16,
                        compile=a.compile and spec["lib"] == "ddpmlab", peak_n=n,
                        out=str(tmp / f"{setting}_{spec['lib']}.json"))
            sp = tmp / f"{setting}_{spec['lib']}.spec.json"
            sp.write_text(json.dumps(spec))
            t0 = time.perf_counter()
            rc = subprocess.run(module_command("train_sample", "--worker", sp), cwd=REPO).returncode
            if rc != 0 or not Path(spec["out"]).exists():
                log(f"[{setting}/{spec['lib']}] FAILED (exit {rc}); continuing")
                results.append(dict(lib=spec["lib"], setting=setting, error=f"exit {rc}",
                                    params=spec["params"], model=spec["model"]))
                continue
            r = json.loads(Path(spec["out"]).read_text())
            around = r["train"].get("peak_around")
            train_peak = sum(around) / len(around) if around and not a.bf16 else ref_peak
            r["train"]["frac_peak"] = r["train"]["gflops_counted"] * 1e9 / train_peak
            r["sample"]["frac_peak"] = r["sample"]["gflops"] * 1e9 / ref_peak
            results.append(r)
            log(f"[{setting}/{spec['lib']}] done in {time.perf_counter() - t0:.1f}s "
                f"(elapsed {time.perf_counter() - t_all:.0f}s)")

    ratios = compute_ratios(results)
    out = dict(machine=mach, threads=torch.get_num_threads(), device=a.device, peaks=peaks,
               reference_peak=ref_peak, options=dict(
                   quick=a.quick, channels_last=a.channels_last, compile=a.compile,
                   bf16=a.bf16, only=a.only, settings=a.settings,
                   defaults={s: defaults(a, s) for s in a.settings}),
               results=results, ratios=ratios, total_s=time.perf_counter() - t_all)
    md = markdown(out)
    print(md, flush=True)
    name = default_name(a)
    write_json(a.out_json or result_path("train_sample", f"{name}.json"), out)
    write_text(a.out_md or result_path("train_sample", f"{name}.md"), md)
    log(f"total {time.perf_counter() - t_all:.0f}s")


def compute_ratios(results: list[dict]) -> list[dict]:
    """ddpmlab against each peer in the same setting; > 1 means ddpmlab is faster."""
    by = {(r["setting"], r["lib"]): r for r in results if "error" not in r}
    out = []
    for (setting, lib), r in by.items():
        me = by.get((setting, "ddpmlab"))
        if lib == "ddpmlab" or me is None:
            continue
        out.append(dict(
            setting=setting, peer=lib,
            params_ratio=me["params"] / r["params"],
            train_speedup=me["train"]["img_s"] / r["train"]["img_s"],
            sample_speedup=r["sample"]["s_per_step"] / me["sample"]["s_per_step"],
            train_flops_fraction=(me["train"]["frac_peak"], r["train"]["frac_peak"]),
            fwd_flops_ratio=me["fwd_flops_per_img"] / r["fwd_flops_per_img"],
        ))
    return out


def _around(tr: dict) -> str:
    around = tr.get("peak_around")
    return f" (of {sum(around) / len(around) / 1e9:.0f})" if around else ""


def _cfg_text(r: dict) -> str:
    m = r["model"]
    if r["lib"] == "ddpmlab":
        return (f"base {m['base_channels']}, mult {tuple(m['channel_mult'])}, "
                f"{m['num_res_blocks']} res/level, attn {tuple(m['attention_resolutions'])}, "
                f"{m['num_heads']} head(s)")
    if r["lib"] == "diffusers":
        attn = [i for i, b in enumerate(m["down_block_types"]) if b.startswith("Attn")]
        return (f"block_out_channels {tuple(m['block_out_channels'])}, layers_per_block "
                f"{m['layers_per_block']}, attn at level {attn}, groups {m['norm_num_groups']}")
    return f"Unet(dim={m['dim']}, dim_mults={tuple(m['dim_mults'])})"


def markdown(o: dict) -> str:
    mach = o["machine"]
    opt = o["options"]
    L = []
    L.append("## Training and sampling against diffusers and denoising-diffusion-pytorch\n")
    L.append(f"Machine: {mach.get('cpu')}{', ' + mach['gpu'] if 'gpu' in mach else ''}; "
             f"torch {mach['torch']}, {o['threads']} threads, device `{o['device']}`"
             f"{', channels_last' if opt['channels_last'] else ''}"
             f"{', torch.compile (ddpmlab)' if opt['compile'] else ''}"
             f"{', bf16 autocast' if opt['bf16'] else ''}"
             f"{' — QUICK harness check, not a measurement' if opt['quick'] else ''}. "
             f"fp32 matmul peak (measured in the same run): "
             f"{o['peaks']['fp32'] / 1e9:.1f} GFLOP/s"
             + (f"; bf16 {o['peaks']['bf16'] / 1e9:.1f} GFLOP/s" if "bf16" in o["peaks"] else "")
             + f". Total {o['total_s']:.0f} s.\n")
    for setting in opt["settings"]:
        rows = [r for r in o["results"] if r["setting"] == setting]
        if not rows:
            continue
        dflt = opt["defaults"][setting]
        L.append(f"### {setting}\n")
        L.append(f"Training batch {dflt['batch']}, sampling batch {dflt['sample_batch']}; "
                 f"{dflt['warmup']} warm-up step(s), then the median of up to {dflt['reps']} "
                 f"timed steps (fewer once {dflt['budget_s']:.0f} s were spent; n below).\n")
        L.append("| library | configuration | input | params | fwd GFLOP/img | "
                 "step GFLOP/img | train img/s (n) | train GFLOP/s | % peak | "
                 "sample s/step (n) | sample % peak | peak mem train / sample (MiB) |"
                 + (" RSS after imports (MiB) |" if o["device"] == "cpu" else ""))
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|"
                 + ("---|" if o["device"] == "cpu" else ""))
        for r in rows:
            if "error" in r:
                L.append(f"| {r['lib']} | {_cfg_text(r) if 'model' in r else ''} | | "
                         f"{r['params'] / 1e6:.2f}M | failed: {r['error']} |||||||| ")
                continue
            tr, sa, mem = r["train"], r["sample"], r["memory"]
            L.append(
                f"| {r['lib']}{' (compiled)' if r.get('compiled') else ''} | {_cfg_text(r)} | "
                f"{r['channels']}x{r['size']}x{r['size']} | {r['params'] / 1e6:.2f}M | "
                f"{r['fwd_flops_per_img'] / 1e9:.3f} | {r['step_flops_per_img'] / 1e9:.3f} | "
                f"{tr['img_s']:.1f} ({tr['n']}) | {tr['gflops_counted']:.1f} | "
                f"{100 * tr['frac_peak']:.1f}{_around(tr)} | {sa['s_per_step']:.4f} ({sa['n']}) | "
                f"{100 * sa['frac_peak']:.1f} | {mem['train_peak']:.0f} / "
                f"{mem['sample_peak']:.0f} |"
                + (f" {mem['rss_after_import']:.0f} |" if "rss_after_import" in mem else ""))
        L.append("")
    if o["ratios"]:
        L.append("### ddpmlab against each peer (> 1: ddpmlab faster)\n")
        L.append("| setting | peer | params ddpmlab/peer | fwd FLOPs ddpmlab/peer | "
                 "train speedup (img/s ratio) | sampling speedup (s/step ratio) | "
                 "train % of peak ddpmlab / peer |")
        L.append("|---|---|---|---|---|---|---|")
        for q in o["ratios"]:
            f1, f2 = q["train_flops_fraction"]
            L.append(f"| {q['setting']} | {q['peer']} | {q['params_ratio']:.3f} | "
                     f"{q['fwd_flops_ratio']:.3f} | {q['train_speedup']:.2f} | "
                     f"{q['sample_speedup']:.2f} | {100 * f1:.1f} / {100 * f2:.1f} |")
        L.append("")
    L.append(
        "Timed steps. Training (one optimizer step on a fixed random batch; no data loading): "
        "ddpmlab draws t and eps, `training_loss` (q_sample with `schedules.linear`, UNet, MSE "
        "to eps), backward, AdamW; diffusers draws t and noise, `DDPMScheduler.add_noise`, "
        "`UNet2DModel(x_t, t).sample`, MSE to noise, backward, AdamW; lucidrains "
        "`GaussianDiffusion(unet, objective='pred_noise', beta_schedule='linear')(x)` (maps "
        "[0,1] to [-1,1], draws t and noise, q_sample, Unet, MSE with weight 1), backward, AdamW. "
        "AdamW(lr 2e-4) defaults everywhere; `zero_grad(set_to_none=True)`. Sampling (one of "
        "the 1000 ancestral steps, under `torch.inference_mode`): ddpmlab `ddpm_step` (variance "
        "'small', clip_x0=True); diffusers `UNet2DModel(...).sample` + `DDPMScheduler.step` "
        "(fixed_small, clip_sample=True); lucidrains `GaussianDiffusion.p_sample` (posterior "
        "variance, x0 clipped). FLOPs: `torch.utils.flop_counter.FlopCounterMode` at batch 2 "
        "per image, attention counted through SDPA's math backend; the step count is forward + "
        "backward (the optimizer's elementwise work is not counted); GFLOP/s = counted step "
        "FLOPs x img/s; % peak against the fp32 matmul peak measured in the same run (training, on "
        "the CPU: against the mean of two peak measurements made in the worker right before and "
        "right after its timed steps, shown in brackets in GFLOP/s, because this machine's speed "
        "drifts by 10-15% over minutes). Memory: "
        "each (setting, library) runs in a fresh subprocess; CPU figures are that process's peak "
        "resident set size (Linux VmHWM, reset through /proc/self/clear_refs before the "
        "sampling phase and again before the training phase; ru_maxrss is not used because a "
        "subprocess inherits its parent's). They include the Python interpreter, torch and the "
        "library's imports, whose resident size is the last column; the sampling phase runs "
        "first, before any optimizer state exists. CUDA figures are "
        "torch.cuda.max_memory_allocated, reset before each phase.\n")
    return "\n".join(L)


if __name__ == "__main__":
    main()
