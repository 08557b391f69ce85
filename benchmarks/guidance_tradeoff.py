"""Classifier-free guidance trade-off on a conditional run: for each guidance weight w, draw
`per` samples of every class, and report the share the project's classifier assigns to the
requested class (and with confidence >= 0.9), plus FID/KID against the training digits.

python -m benchmarks.guidance_tradeoff RUN [--per 20] [--weights 0,1,2,4] [--sampler dpm_solver]
    [--steps 20] [--out-md FILE] [--out-json FILE]

Writes benchmarks/results/guidance_tradeoff/guidance_tradeoff.{md,json} unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

from benchmarks.harness import result_path, time_calls, write_json, write_text


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.guidance_tradeoff",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--per", type=int, default=20)
    p.add_argument("--weights", default="0,1,2,4")
    p.add_argument("--sampler", default="dpm_solver")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out-md", default=str(result_path("guidance_tradeoff", "guidance_tradeoff.md")))
    p.add_argument("--out-json", default=str(result_path("guidance_tradeoff", "guidance_tradeoff.json")))
    a = p.parse_args()

    from ddpmlab import load_run, sample_images
    from ddpmlab.data import to_uint8
    from ddpmlab.evaluate import evaluate_samples
    from ddpmlab.features import load_feature_net
    from ddpmlab.runs import class_rows

    model, cfg, ckpt = load_run(a.run)
    net = load_feature_net(cfg.data.dataset)
    y = class_rows(cfg.model.num_classes, a.per)
    rows = []
    for w in [float(v) for v in a.weights.split(",")]:
        drawn = {}

        def draw(w=w, drawn=drawn):
            drawn["x"] = sample_images(model, cfg, n=len(y), seed=0, y=y, guidance=w,
                                       sampler=a.sampler, steps=a.steps)

        dt = time_calls(draw, warmup=0, reps=1)["median_s"]
        x = drawn["x"]
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
    write_text(a.out_md, text)
    write_json(a.out_json, dict(run=a.run, checkpoint=ckpt.name, per=a.per, sampler=a.sampler,
                                steps=a.steps, rows=rows))


if __name__ == "__main__":
    main()
