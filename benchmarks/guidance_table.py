"""Issue 36's table: the EMA length and the guidance of a conditional run, chosen by measuring.

Each row draws the same ``n`` samples (sample k asks for class k % C, noise fixed by seed 0 and
k) with one setting and scores them with the project's classifier: FID/KID against the training
images and the share read as the class asked for. A row is written as ``key=value`` pairs:

* ``ema=S``: the post-hoc EMA of length ``sigma_rel`` S reconstructed from the run's snapshots
  at its newest checkpoint (``train.phema``); absent: the checkpoint's own EMA.
* ``w=W``: classifier-free guidance weight (``sample.guidance``); ``iv=LO:HI``: the guidance
  interval in sigma (``sample.guidance_interval``), applied to CFG and autoguidance alike.
* ``guide=G`` and ``gw=W``: autoguidance by G, a checkpoint folder of the run (``step_00000300``)
  or any run/checkpoint path, or ``phema@STEP@S`` (the post-hoc EMA of length S at snapshot step
  STEP: a shorter-trained copy of the same model), with weight W.
* ``sampler=NAME``, ``steps=K``: the sampler (default: ``--sampler``/``--steps``, else the
  run's own ``sample.sampler``/``sample.steps``; until 2026-12-08 the default was
  DPM-Solver++(2M) SDE at 10 steps whatever the run samples with).

A row says all of its guidance: one without ``guide=`` has no autoguidance, also on a run whose
config names a guide (the ``mnist`` preset's ``sample.guide: "@0.6"``, which ``load_run``
resolves to a checkpoint; written ``guide=step_...`` it is measured like any other).

python -m benchmarks.guidance_table RUN [--n 1000] [--sampler NAME] [--steps K]
    --rows "w=2" "w=1.5,iv=0.3:5" "ema=0.05,w=2" "w=1,guide=phema@300@0.05,gw=2" ...
    [--name NAME]

Writes ``benchmarks/results/guidance_table/NAME.{md,json}`` after every row (a long table that
is stopped keeps what it measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import result_path, write_json, write_text
from benchmarks.harness.machine import machine

KEYS = {"ema", "w", "iv", "guide", "gw", "sampler", "steps"}


def parse_row(text: str) -> dict[str, str]:
    """One row's settings; every row is checked before the first is measured (a typo in the
    last row must not cost the hour the first rows take)."""
    from ddpmlab.samplers import SAMPLERS

    row = dict(part.split("=", 1) for part in text.split(",") if part)
    bad = set(row) - KEYS
    if bad:
        raise SystemExit(f"row {text!r}: unknown key(s) {sorted(bad)} (known: {sorted(KEYS)})")
    if row.get("sampler", next(iter(SAMPLERS))) not in SAMPLERS:
        raise SystemExit(f"row {text!r}: unknown sampler {row['sampler']!r} (known: "
                         f"{', '.join(SAMPLERS)})")
    for key in ("ema", "w", "gw", "steps"):
        try:
            float(row.get(key, 0))
        except ValueError:
            raise SystemExit(f"row {text!r}: {key}={row[key]!r} is not a number") from None
    return row


class Models:
    """The run's network with its checkpoint EMA or a reconstructed one, cached per length."""

    def __init__(self, run: str):
        from ddpmlab import load_run

        self.run = run
        self.model, cfg, self.ckpt = load_run(run)
        # (no row is autoguided unless it says so: the run's own guide, if any, is dropped)
        self.cfg = dataclasses.replace(cfg, sample=dataclasses.replace(
            cfg.sample, guide="", guide_weight=1.0))
        self.base = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.cache: dict[str, dict] = {}

    def weights(self, ema: str | None, step: int | None = None) -> torch.nn.Module:
        from ddpmlab.train.phema import reconstruct_run

        key = f"{ema}@{step}"
        if ema is None:
            state = self.base
        else:
            if key not in self.cache:
                self.cache[key] = {**self.base, **reconstruct_run(self.run, float(ema), step)}
            state = self.cache[key]
        self.model.load_state_dict(state)
        return self.model

    def guide(self, spec: str) -> torch.nn.Module:
        import copy

        from ddpmlab.runs import load_guide

        if spec.startswith("phema@"):
            _, step, sigma = spec.split("@")
            return copy.deepcopy(self.weights(sigma, int(step)))
        path = Path(spec)
        if not path.exists():
            path = Path(self.run) / "checkpoints" / spec
        return load_guide(path, self.cfg, "cpu")[0]


def draw(models: Models, row: dict[str, str], a: argparse.Namespace):
    """(samples in [-1, 1], the classes asked for, seconds) of one row's setting."""
    from ddpmlab import sample_images
    from ddpmlab.runs import default_labels

    guide = models.guide(row["guide"]) if "guide" in row else None
    model = models.weights(row.get("ema"))
    iv = tuple(float(v) for v in row["iv"].split(":")) if "iv" in row else ()
    t0 = time.perf_counter()
    y = default_labels(models.cfg, a.n)
    steps = row.get("steps", a.steps)           # (None: the run's own sampler and steps)
    x = sample_images(model, models.cfg, n=a.n, seed=0, y=y,
                      sampler=row.get("sampler", a.sampler),
                      steps=None if steps is None else int(steps),
                      guidance=float(row.get("w", 1.0)),
                      guide=guide, guide_weight=float(row.get("gw", 1.0)) if guide else None,
                      guidance_interval=iv, batch_size=a.batch)
    return x, y, time.perf_counter() - t0


def measure(models: Models, row: dict[str, str], a: argparse.Namespace) -> dict:
    import warnings

    from ddpmlab.data import to_uint8
    from ddpmlab.evaluate import evaluate_samples
    from ddpmlab.features import get_feature_extractor

    x, y, seconds = draw(models, row, a)
    cfg = models.cfg
    with warnings.catch_warnings():     # (below the recommended n: the baseline says it)
        warnings.simplefilter("ignore")
        r = evaluate_samples(to_uint8(x), cfg.data, labels=y, seed=0,
                             extractor=get_feature_extractor(cfg.data.dataset))
    c = r["classifier"]      # (one classifier pass gives FID's features and the reading)
    return {"row": ",".join(f"{k}={v}" for k, v in row.items()), **row, "n": a.n,
            "fid": r["fid"], "kid": r["kid_mean"], "as_requested": c["as_requested"],
            "confident": c["confident_share"], "seconds": seconds}


def table(rows: list[dict], a: argparse.Namespace, ckpt: Path, classes: int,
          sample: Any) -> str:
    """The Markdown table of ``rows`` (``sample``: the run's ``SampleConfig``)."""
    own = "" if a.sampler or a.steps else " (the run's own)"
    lines = [f"Run `{a.run}` ({ckpt.name}); {a.n} samples per row (sample k asks for class "
             f"k % {classes}, seed 0); default sampler {a.sampler or sample.sampler}, "
             f"{a.steps or sample.steps} steps{own}.", "",
             "| setting | FID | KID | read as asked | confident | seconds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['row']}` | {r['fid']:.2f} | {r['kid']:.4f} | "
                     f"{100 * r['as_requested']:.1f}% | {100 * r['confident']:.1f}% | "
                     f"{r['seconds']:.0f} |")
    m = machine()
    lines += ["", f"Machine: {m.get('gpu') or m.get('cpu')}, torch {m.get('torch')}, "
              f"{m.get('threads')} threads."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from ddpmlab.samplers import SAMPLERS

    p = argparse.ArgumentParser(prog="python -m benchmarks.guidance_table",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--sampler", help="the rows' sampler (default: the run's sample.sampler)")
    p.add_argument("--steps", type=int, help="its steps (default: the run's sample.steps)")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--name", default="guidance_table")
    a = p.parse_args()
    specs = [parse_row(r) for r in a.rows]
    if a.sampler is not None and a.sampler not in list(SAMPLERS):
        raise SystemExit(f"--sampler {a.sampler!r}: not a sampler ({', '.join(list(SAMPLERS))})")
    models = Models(a.run)
    for spec in specs:                  # (a missing guide is said before any row is drawn)
        if "guide" in spec:
            models.guide(spec["guide"])
    rows: list[dict] = []
    for spec in specs:
        rows.append(measure(models, spec, a))
        r = rows[-1]
        print(f"{r['row']}: FID {r['fid']:.2f}, {100 * r['as_requested']:.1f}% as asked, "
              f"{r['seconds']:.0f} s", flush=True)
        text = table(rows, a, models.ckpt, models.cfg.model.num_classes, models.cfg.sample)
        write_text(result_path("guidance_table", f"{a.name}.md"), text)
        write_json(result_path("guidance_table", f"{a.name}.json"),
                   {"run": a.run, "checkpoint": models.ckpt.name, "rows": rows,
                    "machine": machine()})
    print(text)


if __name__ == "__main__":
    main()
