"""Sampling with the network in bf16 autocast against fp32: one run, the same noises and
classes, rounds alternating the two; wall time, FID and the share read as the digit asked for.

    python -m benchmarks.sample_precision runs/mnist [--n 1000] [--rounds 1] [--steps 20]

Writes the arrays to benchmarks/results/sample_precision/sample_precision_samples.npz (ignored) and the table
to benchmarks/results/sample_precision/sample_precision.json (BENCHMARKS.md §8b: issue 18's "sampling and eval
follow the same rule"); scored as every sample benchmark is (``harness.scoring.score_arrays``).
"""

from __future__ import annotations

import argparse
import time

from benchmarks.harness import (
    log,
    machine,
    nhwc_uint8,
    result_path,
    save_samples,
    score_arrays,
    summary,
    write_json,
)
from benchmarks.sampler_steps import as_requested


def main() -> None:
    from ddpmlab import load_run, sample_images
    from ddpmlab.cli import tune_allocator
    from ddpmlab.runs import default_labels

    p = argparse.ArgumentParser(prog="python -m benchmarks.sample_precision",
                                description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--sampler", default="dpm_solver")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--out", default=str(result_path("sample_precision", "sample_precision_samples.npz")))
    p.add_argument("--out-json", default=str(result_path("sample_precision", "sample_precision.json")))
    a = p.parse_args()
    tune_allocator()  # as the ddpmlab command does
    model, cfg, _ = load_run(a.run, device="cpu")
    labels = default_labels(cfg, a.n)
    times: dict[str, list[float]] = {}
    images = {}
    for rnd in range(a.rounds):
        for precision in ("fp32", "bf16"):
            t0 = time.perf_counter()
            images[precision] = sample_images(model, cfg, n=a.n, seed=0, sampler=a.sampler,
                                              steps=a.steps, y=labels, batch_size=a.batch,
                                              precision=precision)
            times.setdefault(precision, []).append(time.perf_counter() - t0)
            log(f"round {rnd}: {precision} {times[precision][-1]:.1f} s")
    save_samples(a.out, {k: nhwc_uint8(x) for k, x in images.items()},
                 [{"key": k, "precision": k, "seconds": times[k]} for k in images])
    rows = []
    for m, _, r in score_arrays(a.out):
        rows.append({"precision": m["precision"], "seconds": m["seconds"], **summary(r),
                     "as_requested": as_requested(r["_x"])})
        log(f"{m['precision']}: FID {r['fid']:.2f}, read as asked "
            f"{100 * rows[-1]['as_requested']:.1f}%, {min(m['seconds']):.1f} s")
    write_json(a.out_json, {"run": a.run, "sampler": a.sampler, "steps": a.steps, "n": a.n,
                            "rows": rows, "machine": machine()}, indent=1)


if __name__ == "__main__":
    main()
