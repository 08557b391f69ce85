"""Non-leaking augmentation on a small data set: off against on (issue 32, point 3).

The measurement behind the recipe's rule for ``train.augment`` (BENCHMARKS.md §13: on from
``ddpmlab.recipe.AUGMENT_PASSES`` passes over the data; it cost FID at 51, gained at 256). Per
data set (``emoji``, ``fashion-mnist``), a seeded subset of ``--n`` (500) training images is
written as an ``.npz`` (with its labels) and trained on by the real command, ``ddpmlab train
--config mnist`` (the recipe sizes it), once per row with the same seed and time budget:

* ``off``: ``train.augment=0``;
* ``on``: ``train.augment=P`` (``--p``, default the recipe's ``AUGMENT_P``).

The copy watch is off in both (``train.watch_copies=0``: the time budget is the training's).
Then ``--samples`` EMA samples per run (the preset's sampler and guidance, a balanced mix of
classes, seed 0) are scored against **the rest of the set**, the data set's images outside the
subset (its other training images, at most 50,000, and its test split):

* the near-copy share (:func:`ddpmlab.evaluate.memorization`: samples nearer a subset image
  than a third of the median distance of the rest's images to the subset), beside the rest's
  own share (the chance level);
* FID, KID, precision and recall (:func:`ddpmlab.evaluate.evaluate_samples`) against the rest,
  with the data set's shipped feature network (``featnet:emoji``, ``featnet:fashion-mnist``),
  or Inception-v3 (``--inception-weights``) for one without; without either, FID is left out
  with the reason.

    python -m benchmarks.augment_small [--data emoji,fashion-mnist] [--n 500] [--minutes 7]
        [--seed 0] [--p 0.15] [--samples 1000] [--rows off,on] [--out-dir runs/augment_small]
        [--inception-weights PATH] [--max-steps N] [--max-rest 50000] [--out-json F --out-md F]

writes ``benchmarks/results/augment_small/augment_small.{json,md}`` (rows measured earlier
for other (data, row, seed) are kept). ``--max-steps N`` trains exactly N steps instead of the
time budget (a smoke test; its results go to ``augment_small_smoke.*``); ``--max-rest`` caps
the rest's training images (50,000: all of emoji's, 50,000 of Fashion-MNIST's 59,500).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from .harness import REPO, log, machine, result_path, write_json, write_text

ROWS = ("off", "on")
DATA = ("emoji", "fashion-mnist")


def subset_and_rest(name: str, n: int, seed: int, max_rest: int = 50_000):
    """(subset ImageData of ``n`` seeded training images, the rest: the data set's other
    training images (at most ``max_rest``) and its test split)."""
    from ddpmlab.config import DataConfig
    from ddpmlab.data import ImageData, load_dataset

    train = load_dataset(DataConfig(dataset=name), "train")
    test = load_dataset(DataConfig(dataset=name), "test")
    pick = np.random.default_rng(seed).permutation(len(train))
    inside, outside = np.sort(pick[:n]), np.sort(pick[n:][:max_rest])
    y = train.labels
    sub = ImageData(train.images[inside], None if y is None else y[inside], train.class_names,
                    f"{name}:subset{n}-seed{seed}")
    rest_y = None if y is None else torch.cat([y[outside], test.labels])
    rest = ImageData(torch.cat([train.images[outside], test.images]), rest_y,
                     train.class_names, f"{name}:rest")
    return sub, rest


def write_subset(sub, path: Path) -> Path:
    """The subset as an ``.npz`` data set (uint8 NHWC ``images``, ``labels``, ``class_names``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"images": sub.images.permute(0, 2, 3, 1).numpy()}
    if sub.labels is not None:
        arrays["labels"] = sub.labels.numpy()
        arrays["class_names"] = np.array(sub.class_names, dtype=str)
    np.savez(path, **arrays)
    return path


def train(npz: Path, run: Path, p: float, a: argparse.Namespace) -> float:
    """``ddpmlab train`` on the subset; its wall time in seconds."""
    exe = shutil.which("ddpmlab") or str(REPO / ".venv/bin/ddpmlab")
    length = (["--max-steps", str(a.max_steps)] if a.max_steps
              else ["--time-budget", str(a.minutes)])
    cmd = [exe, "train", "--config", "mnist", "--dataset", str(npz), "--out", str(run),
           "--force", "--seed", str(a.seed), "--no-progress", "--no-samples", *length,
           f"train.augment={p}", "train.watch_copies=0"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - t0


def score(run: Path, sub, rest, name: str, a: argparse.Namespace) -> dict:
    """Samples of ``run`` scored against the rest of the set (see the module docstring)."""
    from ddpmlab.data import to_uint8
    from ddpmlab.errors import DataError
    from ddpmlab.evaluate import evaluate_samples, memorization
    from ddpmlab.features import get_feature_extractor
    from ddpmlab.runs import default_labels, load_run, sample_images

    model, cfg, ckpt = load_run(run, use_ema=True)
    t0 = time.perf_counter()
    x = to_uint8(sample_images(model, cfg, n=a.samples, seed=0, y=default_labels(cfg, a.samples),
                               progress=False))
    out: dict = {"checkpoint": ckpt.name, "sample_s": time.perf_counter() - t0}
    m = memorization(x, sub.images, rest.images, seed=a.seed)
    out.update(copy_share=m.share, rest_share=m.reference_share, n_flagged=m.n_flagged)
    try:
        ext = get_feature_extractor(name, a.inception_weights)
        ev = evaluate_samples(x, cfg.data, extractor=ext, reference=rest, heldout=rest,
                              seed=a.seed)
        out.update({k: ev[k] for k in ("fid", "kid_mean", "precision", "recall")},
                   features=ev["features"]["name"])
    except DataError as e:
        out.update(fid=None, fid_missing=str(e).split(":")[0][:200])
    return out


def machine_label(m: dict) -> str:
    """A row's machine in a few words: the CPU (or GPU), its vector unit, torch."""
    return ", ".join(str(v) for v in (m.get("gpu") or m.get("cpu"), m.get("cpu_capability"),
                                      f"torch {m.get('torch')}", f"{m.get('threads')} threads")
                     if v)


def table(rows: list[dict]) -> str:
    """Every row with its seed and the machine it was measured on (rows of several sessions
    and machines share the file)."""
    lines = ["| data | n | seed | row | p | steps | passes | train min | near-copies | "
             "rest's own | FID | precision | recall | machine |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in sorted(rows, key=lambda r: (r["data"], -r["n"], r["seed"], r["row"])):
        passes = r.get("passes", r["steps"] * 32 / r["n"])     # rows before it was recorded: 32
        lines.append(f"| {r['data']} | {r['n']} | {r['seed']} | {r['row']} | {r['p']:g} | "
                     f"{r['steps']} | {passes:.0f} | "
                     f"{r['train_min']:.1f} | {100 * r['copy_share']:.1f}% | "
                     f"{100 * r['rest_share']:.1f}% | {f(r.get('fid'), '.2f')} | "
                     f"{f(r.get('precision'), '.3f')} | {f(r.get('recall'), '.3f')} | "
                     f"{machine_label(r['machine'])} |")
    return "\n".join(lines)


def main() -> None:
    from ddpmlab.recipe import AUGMENT_P

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=",".join(DATA))
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--n", type=int, default=500, help="training images in the subset")
    ap.add_argument("--minutes", type=float, default=7.0, help="each run's time budget")
    ap.add_argument("--max-steps", type=int, default=0, help="exact steps (a smoke test)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--p", type=float, default=AUGMENT_P, help="the 'on' row's train.augment")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--inception-weights", help="FID Inception-v3 weights (for a data set "
                    "without a shipped feature network)")
    ap.add_argument("--max-rest", type=int, default=50_000)
    ap.add_argument("--out-dir", default="runs/augment_small")
    ap.add_argument("--out-json")
    ap.add_argument("--out-md")
    a = ap.parse_args()
    name = "augment_small_smoke" if a.max_steps else "augment_small"
    done = Path(a.out_json) if a.out_json else result_path("augment_small", f"{name}.json")
    wanted = [(d, r) for d in a.data.split(",") for r in a.rows.split(",")]
    kept = json.loads(done.read_text()) if done.exists() else {"rows": []}
    rows = [{"machine": kept.get("machine", {}), **r} for r in kept["rows"]  # (older files: one
            if ((r["data"], r["row"]) not in wanted or (r["seed"], r["n"]) != (a.seed, a.n))]
    here = machine()                                                # machine for every row)
    for data in dict.fromkeys(d for d, _ in wanted):
        sub, rest = subset_and_rest(data, a.n, a.seed, a.max_rest)
        npz = write_subset(sub, REPO / a.out_dir / f"{data}-{a.n}-seed{a.seed}.npz")
        for row in (r for d, r in wanted if d == data):
            p = a.p if row == "on" else 0.0
            run = REPO / a.out_dir / f"{data}-{a.n}-seed{a.seed}-{row}"
            log(f"{data} {row}: training on {a.n} images (train.augment={p:g})")
            train_s = train(npz, run, p, a)
            tc = json.loads((run / "config.json").read_text())["train"]
            steps, batch = tc["max_steps"], tc["batch_size"]
            r = {"data": data, "n": a.n, "row": row, "p": p, "seed": a.seed, "steps": steps,
                 "batch": batch, "passes": steps * batch / a.n,
                 "train_min": train_s / 60, "samples": a.samples, "machine": here,
                 **score(run, sub, rest, data, a)}
            log(f"{data} {row}: {r}")
            rows.append(r)
            write_json(done, {"rows": rows})
    text = table(rows)
    write_text(a.out_md or result_path("augment_small", f"{name}.md"), text)
    print(text)


if __name__ == "__main__":
    main()
