"""Classifier-free guidance trade-off on a conditional run: for each guidance weight w, draw
`per` samples of every class, and report the share the project's classifier assigns to the
requested class (and with confidence >= 0.9), plus FID/KID against the training digits.

python benchmarks/guidance_tradeoff.py RUN [--per 20] [--weights 0,1,2,4] [--sampler dpm_solver]
    [--steps 20] [--out-md FILE]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from ddpmlab.data import to_uint8
from ddpmlab.evaluate import evaluate_samples
from ddpmlab.features import load_feature_net
from ddpmlab.train import load_run, sample_images


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--per", type=int, default=20)
    p.add_argument("--weights", default="0,1,2,4")
    p.add_argument("--sampler", default="dpm_solver")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out-md")
    a = p.parse_args()
    model, cfg, ckpt = load_run(a.run)
    k = cfg.model.num_classes
    net = load_feature_net(cfg.data.dataset)
    y = torch.arange(k).repeat_interleave(a.per)
    rows = []
    for w in [float(v) for v in a.weights.split(",")]:
        t0 = time.perf_counter()
        x = sample_images(model, cfg, n=len(y), seed=0, y=y, guidance=w, sampler=a.sampler,
                          steps=a.steps)
        dt = time.perf_counter() - t0
        with torch.no_grad():
            prob = torch.softmax(net(x), dim=1)
        conf, pred = prob.max(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = evaluate_samples(to_uint8(x), cfg.data, kid_subset_size=min(1000, len(y) // 2))
        rows.append({"w": w, "as_requested": float((pred == y).float().mean()),
                     "as_requested_confident": float(((pred == y) & (conf >= 0.9)).float().mean()),
                     "fid": r["fid"], "kid": r["kid_mean"], "n": len(y), "seconds": dt})
        print(json.dumps(rows[-1]), flush=True)
    md = [f"Run `{a.run}` ({ckpt.name}), {a.per} samples per class, {a.sampler} {a.steps} steps.",
          "", "| guidance w | classified as the requested class | ... with confidence >= 0.9 "
          "| FID | KID |", "|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['w']:g} | {r['as_requested'] * 100:.1f}% | "
                  f"{r['as_requested_confident'] * 100:.1f}% | {r['fid']:.2f} | {r['kid']:.4f} |")
    text = "\n".join(md) + "\n"
    print(text)
    if a.out_md:
        with open(a.out_md, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
