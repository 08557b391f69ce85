"""One comparison of the objectives on the main job's data and budget (issue 15, point 5).

Each row is the same network, data, optimizer, step count and seed, trained by the real
command, with the recipe this project recommends for that objective:

* ``ddpm``: the ``mnist`` preset (L_simple, v-prediction, DPM-Solver++ 20 steps);
* ``ddpm-hybrid``: the same with ``model.learn_sigma=true diffusion.loss=hybrid`` (iDDPM's
  learned variance and L_simple + 0.001 L_vlb);
* ``edm``: the ``mnist-edm`` preset; ``edm-paper-levels``: the same with EDM's own training
  noise levels (P_mean -1.2, P_std 1.2); ``flow``: the ``mnist-flow`` preset.

Per row: training minutes (the process's wall time, alone on the machine), 1,000 guided samples
with the preset's sampler (a balanced mix of digits, ``ddpmlab sample --npz``) and their
seconds, then ``ddpmlab eval --samples ... --nll both``: FID (the project's MNIST classifier
features), the share the classifier reads as the digit asked for, ELBO bits/dim (DDPM only)
and the probability-flow ODE bits/dim.

    python -m benchmarks.objectives [--rows ddpm,ddpm-hybrid,edm,edm-paper-levels,flow] [--steps 850]
        [--n 1000] [--ode-images 32] [--out-dir runs/objectives]

writes ``benchmarks/results/objectives/objectives.json`` and ``.md`` (and ``--plot PNG``).

``--data fashion-mnist`` is the longer-budget comparison: the same rows on Fashion-MNIST with
the ``fashion-mnist-60min`` recipe (its EMA 0.9995), EDM's sigma_data set to Fashion-MNIST's
pixel std (0.71), FID and the shares on the project's Fashion-MNIST classifier; outputs
``objectives_fashion-mnist.{json,md}`` and runs under ``runs/objectives-fashion-mnist``.
BENCHMARKS.md §9c gives ``--steps 2850`` (3.4 times the main job's 850; half of what the
60-minute preset's budget trains on the 2-core AVX2 machine, 5600): each row is then ~35 min
there, and ``--rows`` runs them one at a time (rows measured earlier are kept).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time

import numpy as np
import torch

from .harness import REPO, log, machine, result_path, write_json, write_text
from .sampler_steps import as_requested

ROWS = {
    "ddpm": ["--config", "mnist"],
    "ddpm-hybrid": ["--config", "mnist", "model.learn_sigma=true", "diffusion.loss=hybrid"],
    # the preset: EDM with its training noise levels as wide as uniform t in the flow's time
    # (ln s = logit t is logistic(0, 1): mean 0, std 1.81), p_mean 0 and p_std 1.8
    "edm": ["--config", "mnist-edm"],
    # EDM's own N(-1.2, 1.2^2), the preset before: it trains 3x less often at the levels where
    # a digit's class is decided (s in 1..10: 16% of draws against 40-43%)
    "edm-paper-levels": ["--config", "mnist-edm", "diffusion.p_mean=-1.2", "diffusion.p_std=1.2"],
    "flow": ["--config", "mnist-flow"],
}


# The longer budget: each row as above, moved to Fashion-MNIST with fashion-mnist-60min's recipe
FASHION = {
    "ddpm": ["--config", "fashion-mnist-60min"],
    "ddpm-hybrid": ["--config", "fashion-mnist-60min", "model.learn_sigma=true",
                    "diffusion.loss=hybrid"],
    "edm": ["--config", "mnist-edm", "diffusion.sigma_data=0.71"],
    "edm-paper-levels": ["--config", "mnist-edm", "diffusion.sigma_data=0.71",
                         "diffusion.p_mean=-1.2", "diffusion.p_std=1.2"],
    "flow": ["--config", "mnist-flow"],
}
FASHION_SETS = ["data.dataset=fashion-mnist", "train.ema_decay=0.9995"]  # (a no-op on 60min)


def row_args(name: str, data: str) -> list[str]:
    """The ``ddpmlab train`` arguments of row ``name`` on ``data`` (mnist or fashion-mnist)."""
    return ROWS[name] if data == "mnist" else FASHION[name] + FASHION_SETS


def ddpmlab(*args: str) -> float:
    """Run the command; its wall time in seconds."""
    exe = shutil.which("ddpmlab") or str(REPO / ".venv/bin/ddpmlab")
    t0 = time.perf_counter()
    subprocess.run([exe, *map(str, args)], check=True, cwd=REPO)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--steps", type=int, default=850)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--ode-images", type=int, default=32)
    ap.add_argument("--data", choices=("mnist", "fashion-mnist"), default="mnist")
    ap.add_argument("--out-dir", help="the runs' folder (default runs/objectives, "
                    "runs/objectives-fashion-mnist for --data fashion-mnist)")
    ap.add_argument("--plot", help="a PNG: FID and bits/dim per objective")
    ap.add_argument("--table-only", action="store_true",
                    help="measure nothing: rebuild the table (and --plot) from the JSON")
    a = ap.parse_args()
    tag = "" if a.data == "mnist" else f"_{a.data}"
    out = REPO / (a.out_dir or f"runs/objectives{tag.replace('_', '-')}")
    done = result_path("objectives", f"objectives{tag}.json")  # rows measured earlier are kept (a later adds)
    wanted = a.rows.split(",")
    results = [r for r in (json.loads(done.read_text())["rows"] if done.exists() else [])
               if r["objective"] not in wanted]
    if a.table_only:
        results, wanted = json.loads(done.read_text())["rows"], []
    for name in wanted:
        args = row_args(name, a.data)
        opts = [o for o in args if "=" not in o]
        sets = [o for o in args if "=" in o]
        run = out / name
        log(f"{name}: training {a.steps} steps")
        train_s = ddpmlab("train", *opts, "--out", run, "--force", "--max-steps", a.steps,
                          "--no-progress", "--no-samples", *sets, "train.time_limit_min=0")
        npz = out / f"{name}_samples.npz"
        sample_s = ddpmlab("sample", run, "--n", a.n, "--batch-size", 250, "--npz", npz,
                           "--out", out / f"{name}_grid.png", "--no-progress", "--force")
        js = out / f"{name}_eval.json"
        ddpmlab("eval", run, "--samples", npz, "--nll", "both", "--ode-images", a.ode_images,
                "--json", js, "--no-progress", "--force")
        ev = json.loads(js.read_text())
        cfg = json.loads((run / "config.json").read_text())
        with np.load(npz) as z:
            x = torch.from_numpy(z["arr_0"]).permute(0, 3, 1, 2).contiguous()
        from ddpmlab import SAMPLERS

        s = cfg["sample"]
        row = {"objective": name, "args": args, "data": a.data, "steps": a.steps,
               "train_min": train_s / 60, "sampler": s["sampler"], "sample_steps": s["steps"],
               "nfe": SAMPLERS[s["sampler"]].info.nfe(s["steps"]), "n": a.n,
               "sample_s": sample_s, "fid": ev.get("fid"),
               "as_requested": as_requested(x, a.data),
               "bpd_elbo": (ev.get("bits_per_dim") or {}).get("total"),
               "bpd_ode": (ev.get("bits_per_dim_ode") or {}).get("total"),
               "eval": {k: v for k, v in ev.items() if k in ("fid", "kid", "bits_per_dim",
                                                              "bits_per_dim_ode")}}
        log(f"{name}: {row}")
        results.append(row)
        write_json(done, {"machine": machine(), "rows": results})
    steps = sorted({r["steps"] for r in results})
    lines = [f"| objective | training ({', '.join(map(str, steps))} steps) | sampler | NFE | FID "
             "| read as the class asked for | bits/dim ELBO | bits/dim ODE | s per 1,000 "
             "samples |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)
        lines.append(f"| {r['objective']} | {r['train_min']:.1f} min | {r['sampler']} "
                     f"{r['sample_steps']} | {r['nfe']} | {f(r['fid'], '.2f')} | "
                     f"{100 * r['as_requested']:.1f}% | {f(r['bpd_elbo'], '.3f')} | "
                     f"{f(r['bpd_ode'], '.3f')} | {r['sample_s']:.0f} |")
    m = json.loads(done.read_text())["machine"] if a.table_only else machine()
    lines.append(f"\nMachine: {m['cpu']} ({', '.join(m['cpu_flags'])}), torch {m['torch']}, "
                 f"{m['threads']} threads.")
    write_text(result_path("objectives", f"objectives{tag}.md"), "\n".join(lines))
    print("\n".join(lines))
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(8, 3))
        names = [r["objective"] for r in results]
        axes[0].bar(names, [r["fid"] for r in results], color="tab:blue")
        axes[0].set_title(f"FID ({a.data} classifier features, 1,000 samples)", fontsize=8)
        axes[1].bar(names, [r["bpd_ode"] or 0 for r in results], color="tab:orange",
                    label="ODE")
        axes[1].bar(names, [r["bpd_elbo"] or 0 for r in results], color="none",
                    edgecolor="black", label="ELBO")
        axes[1].set_title("bits/dim (held-out images)", fontsize=8)
        axes[1].legend(fontsize=7)
        for ax in axes:
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        log(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
