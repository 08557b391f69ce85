"""Fast sampling: quality against the number of sampling steps, and the wall time to draw 1,000
samples, for ddpmlab's default run and for the peers' own samplers on their trained snapshots.

Two steps, from the repository root (the sampling is GPU-friendly, the scoring runs anywhere):

    python -m benchmarks.sampler_steps sample runs/ttq-ddpmlab \\
        --peer diffusers=runs/ttq-diffusers --peer lucidrains=runs/ttq-lucidrains \\
        [--out runs/steps.npz] [--n 1000] [--device cuda]
    python -m benchmarks.sampler_steps score [runs/steps.npz] --plot docs/images/sampler_steps.png

``sample`` writes benchmarks/results/sampler_steps/sampler_steps_samples.npz (git-ignored) and its timings,
sampler_steps_samples.json, beside it unless ``--out`` names another .npz; ``score`` reads that
and writes benchmarks/results/sampler_steps/sampler_steps.{md,json} (``--out-md``, ``--out-json``).

ddpmlab rows: DDPM (ancestral) 1000 and 200 steps, DDIM (eta 0) 10/20/50/100, DPM-Solver++(2M)
10/20, all with the run's guidance (w = 2) on a balanced mix of digits, the same noise seeds;
and DPM-Solver++ 20 steps at guidance 1, 3 and 4.
Peer rows (their newest snapshot, their own samplers): diffusers ``DDPMScheduler`` 1000,
``DDIMScheduler`` 50, ``DPMSolverMultistepScheduler`` 20; denoising-diffusion-pytorch's DDIM at
``sampling_timesteps`` 250 (its README's) and 50. Every sampler draws the same ``--n`` images
in batches of ``--batch``; the wall time covers the whole draw (after one untimed warm-up batch
per library, so that CUDA start-up is not counted).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.harness import (
    fid_plot,
    log,
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

DDPMLAB = [("ddpm", 1000), ("ddpm", 200), ("ddim", 100), ("ddim", 50), ("ddim", 20),
           ("ddim", 10), ("dpm_solver", 20), ("dpm_solver", 10)]
GUIDANCE = [1.0, 3.0, 4.0]  # besides the run's own (2): DPM-Solver++ 20 steps
PEER = {"diffusers": [("ddpm", 1000), ("ddim", 50), ("dpm_solver", 20)],
        "lucidrains": [("ddim", 250), ("ddim", 50)]}


def cmd_sample(a: argparse.Namespace) -> None:
    device = torch.device(a.device)
    arrays, meta = {}, []
    jobs = []
    ck = snapshots_of(Path(a.run))[-1][2]
    from ddpmlab.config import Config

    run_w = Config.from_file(Path(a.run) / "config.json").sample.guidance
    for sampler, steps in DDPMLAB:
        jobs.append(("ddpmlab", sampler, steps, None,
                     lambda n, s=sampler, k=steps: sample_ddpmlab(ck, n, device, a.batch, s, k)))
    for w in GUIDANCE:
        jobs.append(("ddpmlab", "dpm_solver", 20, w,
                     lambda n, w=w: sample_ddpmlab(ck, n, device, a.batch, "dpm_solver", 20, w)))
    for spec in a.peer:
        lib, _, path = spec.partition("=")
        snap = snapshots_of(Path(path))[-1][2]
        for sampler, steps in PEER[lib]:
            jobs.append((lib, sampler, steps, None,
                         lambda n, lib=lib, snap=snap, s=sampler, k=steps:
                         sample_peer(lib, snap, n, device, a.batch, s, k)))
    warmed = set()
    for lib, sampler, steps, w, fn in jobs:
        if lib not in warmed:  # untimed: CUDA context, kernels, imports
            fn(min(a.batch, 16))
            warmed.add(lib)
        key = f"{lib}:{sampler}:{steps}" + ("" if w is None else f":w{w:g}")

        def draw(fn=fn, key=key):
            arrays[key] = fn(a.n)

        dt = time_calls(draw, warmup=0, reps=1, device=device)["median_s"]
        meta.append({"key": key, "lib": lib, "sampler": sampler, "steps": steps,
                     "guidance": (run_w if w is None else w) if lib == "ddpmlab" else None,
                     "own_guidance": w is None,
                     "n": a.n,
                     "seconds": dt, "device": str(device),
                     "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None})
        log(f"{key}: {a.n} samples in {dt:.2f} s")
    save_samples(a.out, arrays, meta)


def as_requested(x_u8: torch.Tensor, dataset: str = "mnist") -> float:
    """Share of a conditional run's samples that the project's classifier for ``dataset``
    (mnist, fashion-mnist) reads as the class asked for (``sample_ddpmlab`` and ``ddpmlab
    sample`` ask for the run's ``default_labels``)."""
    from ddpmlab.config import Config, ModelConfig
    from ddpmlab.data import to_model_range
    from ddpmlab.features import load_feature_net
    from ddpmlab.runs import default_labels

    asked = default_labels(Config(model=ModelConfig(num_classes=10)), len(x_u8))
    net = load_feature_net(dataset)
    with torch.no_grad():
        pred = net(to_model_range(x_u8)).argmax(1)
    return float((pred == asked).float().mean())


def cmd_score(a: argparse.Namespace) -> None:
    rows = [{**m, **summary(r), "as_requested": as_requested(r["_x"]) if m["lib"] == "ddpmlab"
             else None} for m, _, r in score_arrays(a.npz)]
    ref = {}
    for r in rows:  # each library's most expensive sampler (own guidance) is its reference
        if not r["own_guidance"]:
            continue
        if r["lib"] not in ref or r["steps"] > ref[r["lib"]]["steps"]:
            ref[r["lib"]] = r
    for r in rows:
        r["fid_vs_ref"] = r["fid"] / ref[r["lib"]]["fid"] - 1  # vs. the same library's
    write_json(a.out_json, rows, indent=1)
    names = {"ddpm": "DDPM (ancestral)", "ddim": "DDIM (eta 0)",
             "dpm_solver": "DPM-Solver++(2M)"}
    dev = rows[0]["gpu"] or rows[0]["device"]
    lines = ["| library | sampler | steps | guidance | FID | vs. own most-step FID | "
             "confident (>= 0.9) | read as the digit asked for | "
             f"s for {rows[0]['n']} samples ({dev}) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        conf = "" if r["confident"] is None else f"{100 * r['confident']:.1f}%"
        req = "" if r["as_requested"] is None else f"{100 * r['as_requested']:.1f}%"
        w = "" if r["guidance"] is None else f"{r['guidance']:g}"
        lines.append(f"| {r['lib']} | {names[r['sampler']]} | {r['steps']} | {w} | "
                     f"{r['fid']:.2f} | {100 * r['fid_vs_ref']:+.1f}% | {conf} | {req} | "
                     f"{r['seconds']:.2f} |")
    write_table(lines, rows, a.out_md)
    if a.plot:
        series = {}
        for r in rows:
            if r["own_guidance"]:
                series.setdefault(f"{r['lib']} {names[r['sampler']]}", []).append(
                    (r["steps"], r["fid"]))
        fid_plot(series, a.plot, "sampling steps", xlog=True)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sampler_steps",
                                description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sample_and_score_parsers(sub, "sampler_steps")
    s.add_argument("run")
    s.add_argument("--peer", action="append", default=[], metavar="LIB=DIR")
    a = p.parse_args()
    {"sample": cmd_sample, "score": cmd_score}[a.cmd](a)


if __name__ == "__main__":
    main()
