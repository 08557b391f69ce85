"""The sample and score steps the scripts share: draw samples from a ddpmlab checkpoint or a
peer's snapshot, keep them in one ``.npz`` (uint8 ``N x H x W x C``, timings beside it as
``.json``), score every array (FID, KID, the classifier's shares on the project's MNIST
features against the training digits), and write the table and the FID plot.

Used by ``time_to_quality``, ``sampler_steps``, ``sampler_nfe``, ``learned_variance`` and
``sample_precision``; the peers are imported only when one is sampled.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .output import log, result_path, write_json, write_text
from .peers import build_peer_net


def nhwc_uint8(x: torch.Tensor) -> np.ndarray:
    """Samples in [-1, 1], ``[N, C, H, W]`` -> uint8 ``N x H x W x C`` (what ``.npz`` holds)."""
    from ddpmlab.data import to_uint8

    return to_uint8(x).permute(0, 2, 3, 1).numpy()



# --------------------------------------------------------------------------- sample
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


def save_samples(npz, arrays: dict[str, np.ndarray], meta: list[dict]) -> None:
    """The ``sample`` step's output: the arrays in ``npz``, their metadata (timings) beside it
    as ``.json`` (what ``score_arrays`` reads)."""
    npz = Path(npz)
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz, **arrays)
    log(f"wrote {npz}")
    write_json(npz.with_suffix(".json"), meta, indent=1)



# --------------------------------------------------------------------------- score
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


def sample_and_score_parsers(sub, name: str) -> argparse.ArgumentParser:
    """The ``sample`` and ``score`` subcommands the scripts share, their outputs by default in
    benchmarks/results/<name>/ as ``<name>_samples.npz``, ``<name>.{md,json}`` (``name``: the
    script); returns ``sample``'s parser."""
    npz = str(result_path(name, f"{name}_samples.npz"))
    s = sub.add_parser("sample", help=f"draw the samples into an .npz (default {npz})")
    s.add_argument("--out", default=npz, help="the .npz; its timings go beside it as .json")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--batch", type=int, default=1000)
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c = sub.add_parser("score", help="FID of every array of the .npz: table, JSON, plot")
    c.add_argument("npz", nargs="?", default=npz, help=f"the sample step's .npz (default {npz})")
    c.add_argument("--out-md", default=str(result_path(name, f"{name}.md")))
    c.add_argument("--out-json", default=str(result_path(name, f"{name}.json")))
    c.add_argument("--plot", help="also draw FID against the x axis into this image file")
    return s
