"""The main job's recipe at the step counts a time budget gives (issue 18, point 2).

``train.time_budget_min`` makes the number of steps depend on the machine (about 700 on a slow
2-core AVX2 machine, 1,500 on a 2-core AVX512-BF16 one), so the recipe is measured at several
step counts. Each row is the real command, ``ddpmlab train --max-steps N`` (the exact repeat of a
budget-sized run that chose N) with the recipe's overrides of the ``mnist`` preset, then 1,000
guided samples with the preset's sampler (``ddpmlab sample --npz``, a balanced mix of digits)
and ``ddpmlab eval --samples``: FID on the project's MNIST classifier features, the share read as
the digit asked for, the confident share and ELBO bits/dim. Quality does not depend on the
machine's speed, so these rows may run beside other work; the minutes they report do.

    python -m benchmarks.recipe --rows constant:1500,cosine:850,cosine:1500

writes ``benchmarks/results/recipe/recipe.json`` and ``.md`` (rows measured earlier are kept).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from .harness import REPO, log, machine, result_path, write_json, write_text
from .objectives import ddpmlab
from .sampler_steps import as_requested

RECIPES = {
    # the preset as it was measured at 850 steps (BENCHMARKS.md §1): constant LR after warm-up
    "constant": [],
    # cosine decay to 0 at the chosen max_steps (the warm-up, 100 steps, covers the timed steps)
    "cosine": ["train.lr_decay=cosine"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="constant:1500,cosine:850,cosine:1500",
                    help="RECIPE:STEPS,... (recipes: " + ", ".join(RECIPES) + ")")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out-dir", default="runs/recipe")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--adopt", metavar="RECIPE:STEPS=RUN",
                    help="take a row from a run that `benchmarks.objectives` made with the same "
                         "command (its RUN_samples.npz and RUN_eval.json beside it) instead of "
                         "training it again")
    a = ap.parse_args()
    out = REPO / a.out_dir
    done = result_path("recipe", "recipe.json")
    results = json.loads(done.read_text())["rows"] if done.exists() else []
    wanted = [] if a.table_only else [(r.split(":")[0], int(r.split(":")[1]))
                                      for r in a.rows.split(",")]
    if a.adopt:
        key, _, src = a.adopt.partition("=")
        wanted = [(key.split(":")[0], int(key.split(":")[1]), REPO / src)]
    else:
        wanted = [(r, s, None) for r, s in wanted]
    for recipe, steps, adopted in wanted:
        name = f"{recipe}-{steps}"
        run = out / name
        train_s = sample_s = None
        if adopted is not None:
            run, npz = adopted, adopted.parent / f"{adopted.name}_samples.npz"
            js = adopted.parent / f"{adopted.name}_eval.json"
            cfg = json.loads((run / "config.json").read_text())["train"]
            assert cfg["max_steps"] == steps and cfg["lr_decay"] == "none", cfg
        else:
            log(f"{name}: training")
            train_s = ddpmlab("train", "--out", run, "--force", "--max-steps", steps,
                              "--no-progress", "--no-samples", *RECIPES[recipe],
                              "train.time_limit_min=0")
            npz = out / f"{name}_samples.npz"
            sample_s = ddpmlab("sample", run, "--n", a.n, "--batch-size", 250, "--npz", npz,
                               "--out", out / f"{name}_grid.png", "--no-progress", "--force")
            js = out / f"{name}_eval.json"
            ddpmlab("eval", run, "--samples", npz, "--json", js, "--no-progress", "--force")
        ev = json.loads(js.read_text())
        with np.load(npz) as z:
            x = torch.from_numpy(z["arr_0"]).permute(0, 3, 1, 2).contiguous()
        row = {"recipe": recipe, "args": RECIPES[recipe], "steps": steps, "n": a.n,
               "train_min": None if train_s is None else train_s / 60, "sample_s": sample_s,
               "adopted_from": None if adopted is None else str(adopted.relative_to(REPO)),
               "fid": ev.get("fid"),
               "kid": ev.get("kid_mean"),
               "confident": (ev.get("classifier") or {}).get("confident_share"),
               "as_requested": as_requested(x),
               "bpd_elbo": (ev.get("bits_per_dim") or {}).get("total"), "machine": machine()}
        log(f"{name}: {row}")
        results = [r for r in results if (r["recipe"], r["steps"]) != (recipe, steps)] + [row]
        write_json(done, {"rows": results})
    results.sort(key=lambda r: (r["steps"], r["recipe"]))
    lines = ["| recipe | steps | FID | read as the digit asked for | confident (>= 0.9) | "
             "bits/dim (ELBO) | training min (this run) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        conf = "-" if r["confident"] is None else f"{100 * r['confident']:.1f}%"
        bpd = "-" if r["bpd_elbo"] is None else f"{r['bpd_elbo']:.3f}"
        mins = (f"{r['train_min']:.1f}" if r["train_min"] is not None
                else f"(from `{r['adopted_from']}`)")
        lines.append(f"| {r['recipe']} | {r['steps']} | {r['fid']:.2f} | "
                     f"{100 * r['as_requested']:.1f}% | {conf} | {bpd} | {mins} |")
    write_text(result_path("recipe", "recipe.md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
