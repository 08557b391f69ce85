"""Ancestral sampling with few steps: a fixed against a learned reverse variance (issue 15's
learned-variance target, Nichol & Dhariwal 2021, Fig. 8).

Two models of the main job's recipe and budget (the ``mnist`` preset, 850 steps), one trained
with L_simple and the fixed posterior variance, one with ``model.learn_sigma=true
diffusion.loss=hybrid``; each is drawn by ancestral sampling (``ddpm``) at 5, 10, 20 and 50 steps
and at its own 1000 steps (the reference), all with ``benchmarks.sampler_nfe`` (1,000 guided
samples per row; the reference's 500 first, in parts), then scored. This script only puts the
scored rows side by side::

    python -m benchmarks.learned_variance --fixed F.json [F2.json ...] --learned L.json [...]
        [--out-md benchmarks/results/learned_variance.md] [--plot PNG]

Each ``.json`` is a ``sampler_nfe score`` (or ``merge``) output. Rows are matched by their
``ddpm:STEPS`` key; a FID is compared with its own model's 1000-step FID only at the same number
of samples (a FID depends on n).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .harness import result_path, write_text
from .time_to_quality import fid_plot


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


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.learned_variance",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--fixed", nargs="+", required=True, help="score .json files, fixed variance")
    ap.add_argument("--learned", nargs="+", required=True, help="score .json files, learned")
    ap.add_argument("--out-md", default=str(result_path("learned_variance.md")))
    ap.add_argument("--plot", help="FID against ancestral steps, both models, at the largest n "
                    "both have")
    a = ap.parse_args()
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
