"""Ancestral sampling with few steps: a fixed against a learned reverse variance (issue 15's
learned-variance target, Nichol & Dhariwal 2021, Fig. 8).

Two models of the main job's recipe and budget (the ``mnist`` preset, 850 steps), one trained
with L_simple and the fixed posterior variance, one with ``model.learn_sigma=true
diffusion.loss=hybrid``; each is drawn by ancestral sampling (``ddpm``) at 5, 10, 20 and 50 steps
and at its own 1000 steps (the reference), all with ``benchmarks.sampler_nfe`` (1,000 guided
samples per row; the reference's 500 first, in parts), then scored. This script only puts the
scored rows side by side::

    python -m benchmarks.learned_variance table --fixed F.json [F2.json ...] --learned L.json
        [...] [--out-md benchmarks/results/learned_variance/learned_variance.md] [--plot PNG]

and shows what the network learned: ``frac RUN`` prints, at several t, the interpolation weight
frac = (v + 1) / 2 between log beta_t (1) and log beta_tilde_t (0) that a learn_sigma run outputs
on held-out images noised to t (its mean, spread over pixels and images, and extremes) beside
log(beta_t / beta_tilde_t), the distance between the two ends at t (where it is ~0 the VLB
cannot tell frac's values apart, so they stay near the zero-initialized head's 0.5)::

    python -m benchmarks.learned_variance frac runs/objectives/ddpm-hybrid [--images 128]

Each ``.json`` is a ``sampler_nfe score`` (or ``merge``) output. Rows are matched by their
``ddpm:STEPS`` key; a FID is compared with its own model's 1000-step FID only at the same number
of samples (a FID depends on n).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .harness import fid_plot, result_path, write_text


def ancestral_rows(paths: list[str]) -> dict[tuple[int, int], dict]:
    """The ``ddpm`` rows of score outputs, keyed by (n, steps); a later file wins."""
    rows = {}
    for path in paths:
        for r in json.loads(Path(path).read_text()):
            if r["sampler"] == "ddpm":
                rows[(r["n"], r["steps"])] = r
    return rows


def table(fixed: dict, learned: dict) -> list[str]:
    """One line per (n, steps) either side has: FID, its gap to the same model's 1000-step FID
    at the same n, and the share read as asked."""
    def cell(rows, n, steps):
        r = rows.get((n, steps))
        if r is None:
            return "-", "-", "-"
        ref = rows.get((n, 1000))
        gap = "" if ref is None or steps == 1000 else f"{100 * (r['fid'] / ref['fid'] - 1):+.1f}%"
        return f"{r['fid']:.2f}", gap or ("reference" if steps == 1000 else "-"), \
            f"{100 * r['as_requested']:.1f}%"

    lines = ["| samples | ancestral steps | fixed variance (L_simple): FID | vs. its 1000 steps "
             "| read as asked | learned variance (hybrid): FID | vs. its 1000 steps "
             "| read as asked |", "|---|---|---|---|---|---|---|---|"]
    for n, steps in sorted(set(fixed) | set(learned), key=lambda k: (-k[0], k[1])):
        lines.append(f"| {n} | {steps} | " + " | ".join(cell(fixed, n, steps)) + " | "
                     + " | ".join(cell(learned, n, steps)) + " |")
    return lines


def frac_by_t(run: str, images: int, ts: list[int]) -> list[dict]:
    """The learned interpolation weight frac at each t in ``ts``, on the run's first ``images``
    held-out images (with their labels on a conditional run) noised by q(x_t | x0)."""
    import torch

    from ddpmlab import load_run
    from ddpmlab.data import load_dataset, to_model_range
    from ddpmlab.forward import q_sample
    from ddpmlab.objectives import build as build_objective
    from ddpmlab.reverse import call_model, split_output

    model, cfg, _ = load_run(run)
    if not cfg.model.learn_sigma:
        raise SystemExit(f"{run}: not a learn_sigma run (model.learn_sigma is false)")
    d = cfg.diffusion
    sched = build_objective(d, cfg.model.learn_sigma).schedule()
    data = load_dataset(cfg.data, "test")
    some = data.spread(images)        # (MNIST's held-out split is sorted by digit)
    x0 = to_model_range(some.images)
    y = some.labels if cfg.data.conditional else None
    gen = torch.Generator().manual_seed(0)
    out = []
    with torch.no_grad():
        for t in ts:
            tt = torch.full((len(x0),), t)
            xt = q_sample(sched, x0, tt, generator=gen)
            _, v = split_output(call_model(model, xt, tt, y, True), True)
            frac = (v + 1.0) / 2.0
            # how far apart the two ends are at t: the VLB's only handle on frac there
            span = float(torch.log(sched.betas[t]) - sched.posterior_log_var[t])
            out.append({"t": t, "log_beta_over_tilde": span,
                        "mean": float(frac.mean()), "std": float(frac.std()),
                        "min": float(frac.min()), "max": float(frac.max()),
                        "outside_0_1": float(((frac < 0) | (frac > 1)).float().mean())})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.learned_variance",
                                 description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tb = sub.add_parser("table", help="ancestral rows of both models side by side")
    tb.add_argument("--fixed", nargs="+", required=True, help="score .json files, fixed variance")
    tb.add_argument("--learned", nargs="+", required=True, help="score .json files, learned")
    tb.add_argument("--out-md", default=str(result_path("learned_variance", "learned_variance.md")))
    tb.add_argument("--plot", help="FID against ancestral steps, both models, at the largest n "
                    "both have")
    fr = sub.add_parser("frac", help="the learned interpolation weight at several t")
    fr.add_argument("run")
    fr.add_argument("--images", type=int, default=128)
    fr.add_argument("--t", default="0,5,20,50,100,200,400,600,800,999")
    a = ap.parse_args()
    if a.cmd == "frac":
        rows = frac_by_t(a.run, a.images, [int(t) for t in a.t.split(",")])
        print(f"{a.run}: frac = (v + 1) / 2 (1: beta_t, 0: beta_tilde_t), {a.images} held-out "
              "images noised to t")
        print("| t | log(beta_t / beta_tilde_t) | mean | std | min | max | outside [0, 1] |\n"
              "|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['t']} | {r['log_beta_over_tilde']:.2g} | {r['mean']:.3f} | "
                  f"{r['std']:.3f} | {r['min']:.2f} | {r['max']:.2f} | "
                  f"{100 * r['outside_0_1']:.1f}% |")
        return
    fixed, learned = ancestral_rows(a.fixed), ancestral_rows(a.learned)
    text = "\n".join(table(fixed, learned))
    print(text)
    write_text(a.out_md, text)
    if a.plot:
        n = max({k[0] for k in fixed} & {k[0] for k in learned})
        series = {name: [(s, r["fid"]) for (m, s), r in rows.items() if m == n and s != 1000]
                  for name, rows in (("fixed variance (L_simple)", fixed),
                                     ("learned variance (hybrid)", learned))}
        fid_plot(series, a.plot, f"ancestral steps ({n} samples per point)", xlog=True)


if __name__ == "__main__":
    main()
