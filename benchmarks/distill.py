"""Few-step students against their teacher (issue 35's targets): FID and the share read as the
digit asked for at 1, 2, 4 and 8 network evaluations (NFE), the teacher with its best
training-free sampler at each budget, sampling time per 1,000 images, and the time each
distillation took.

The students are runs written by ``ddpmlab distill`` (made first, from the repository root)::

    ddpmlab distill runs/mnist --method progressive --to 8 --out runs/mnist-pd8 --time-budget 30
    ddpmlab distill runs/mnist --method progressive --to 4 --out runs/mnist-pd4 --time-budget 30
    ddpmlab distill runs/mnist --method progressive --to 2 --out runs/mnist-pd2 --time-budget 30
    ddpmlab distill runs/mnist --method progressive --to 1 --out runs/mnist-pd1 --time-budget 30
    ddpmlab distill runs/mnist --method consistency --to 1 --out runs/mnist-cd1 --time-budget 30

then two steps::

    python -m benchmarks.distill sample runs/mnist --students runs/mnist-pd8,runs/mnist-pd4,\\
        runs/mnist-pd2,runs/mnist-pd1,runs/mnist-cd1 [--nfe 1,2,4,8] [--samplers ddim,...]
        [--n 1000] [--device cuda] [--keep]
    python -m benchmarks.distill score [--plot docs/images/distill.png]
    python -m benchmarks.distill grid [--nfe 1,2,4] [--out docs/images/distill_grids.png]

``sample`` draws the teacher with every sampler of ``--samplers`` (default: every registered
one but ``consistency``) at the most steps that fit in each budget of ``--nfe`` and in 20 (the
issue's reference: the teacher's best 20-NFE FID), with its own guidance, and each student with
its own config (its K steps, guidance 1); every array is samples 0..n-1 of the run's balanced
digits, so the rows compare the same noises and classes. ``score`` scores every array
(``benchmarks.harness.scoring``: FID on the project's MNIST features against the training
digits, the classifier's reading), picks the teacher's best FID at each budget, and checks the
targets: to 4 steps within 30 minutes of distillation, FID within 25% of the teacher's best
20-NFE FID and at least its share read as asked; 2 steps within 2x; 1 step at least 90% read as
asked. Outputs go to benchmarks/results/distill/distill{_samples.npz,.json,.md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from benchmarks.harness import (
    fid_plot,
    log,
    machine,
    result_path,
    sample_and_score_parsers,
    sample_ddpmlab,
    save_samples,
    score_arrays,
    summary,
    time_calls,
    write_json,
    write_table,
)
from benchmarks.sampler_nfe import steps_for
from benchmarks.sampler_steps import as_requested

REFERENCE_NFE = 20          # the teacher's best FID at this budget is what the targets compare
TARGETS = {4: ("fid_ratio", 1.25), 2: ("fid_ratio", 2.0), 1: ("read", 0.90)}
MAX_MINUTES = 30.0          # distillation to 4 steps, on the main job's 2 CPU cores


def distill_minutes(run: Path) -> float | None:
    """Minutes a ``ddpmlab distill`` run trained: the last ``elapsed_s`` of each process that
    wrote to its ``metrics.jsonl`` (a resumed run's pieces added up)."""
    total, last = 0.0, None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "precision":       # (each process starts with this line)
            total += last or 0.0
            last = None
        elif "elapsed_s" in rec:
            last = rec["elapsed_s"]
    total += last or 0.0
    return total / 60 if total else None


def _draw(arrays: dict, meta: list, key: str, ck: Path, a: argparse.Namespace, device,
          sampler: str | None, steps: int | None, **info) -> None:
    """Samples 0..n-1 of checkpoint ``ck`` (its run's sampler/steps where None), timed."""
    from ddpmlab import SAMPLERS
    from ddpmlab.config import Config

    cfg = Config.from_file(ck.parent.parent / "config.json")
    sampler, steps = sampler or cfg.sample.sampler, steps or cfg.sample.steps or \
        cfg.diffusion.timesteps

    def draw():
        arrays[key] = sample_ddpmlab(ck, a.n, device, a.batch, sampler, steps)

    dt = time_calls(draw, warmup=0, reps=1, device=device)["median_s"]
    nfe = SAMPLERS[sampler].info.nfe(steps)
    digest = hashlib.sha256((ck / "ema.safetensors").read_bytes()).hexdigest()[:16]
    meta.append({"key": key, "lib": "ddpmlab", "sampler": sampler, "steps": steps, "nfe": nfe,
                 "n": a.n, "seconds": dt, "seconds_per_1000": dt * 1000 / a.n,
                 "guidance": cfg.sample.guidance, "run": str(ck.parent.parent),
                 "checkpoint_sha256": digest, "device": str(device), "machine": machine(),
                 **info})
    log(f"{key} ({nfe} NFE): {a.n} samples in {dt:.1f} s")


def cmd_sample(a: argparse.Namespace) -> None:
    from ddpmlab import SAMPLERS
    from ddpmlab.cli import tune_allocator

    tune_allocator()  # what the `ddpmlab` command does for its own process
    device = torch.device(a.device)
    teacher = _newest(Path(a.run))
    names = a.samplers.split(",") if a.samplers else [s for s in SAMPLERS if s != "consistency"]
    budgets = sorted({int(b) for b in a.nfe.split(",") if b} | {REFERENCE_NFE})
    arrays, meta = _kept(a) if a.keep else ({}, [])
    sample_ddpmlab(teacher, min(a.batch, 8), device, a.batch, names[0], 2)   # untimed warm-up
    for budget in budgets:
        for s in names:
            steps = steps_for(s, budget)
            key = f"teacher:{s}:{steps}"
            if key not in arrays:
                _draw(arrays, meta, key, teacher, a, device, s, steps, role="teacher",
                      budget=budget, label=f"teacher, {s}")
    for spec in (r for r in (a.students or "").split(",") if r):
        path, _, at = spec.partition("@")       # RUN@K: sampled at K steps (consistency)
        run, steps = Path(path), int(at) if at else None
        key = f"student:{run.name}" + (f"@{steps}" if steps else "")
        if key in arrays:
            continue
        plan = json.loads((run / "distill.json").read_text())
        k = steps or plan["to"]
        rate = ", lr annealed" if plan.get("lr_schedule") == "linear" else ""
        label = f"student ({plan['method']}, {k} step{'s' * (k > 1)}{rate})"
        _draw(arrays, meta, key, _newest(run), a, device, None, steps,
              role="student", method=plan["method"], label=label, plan=plan,
              distill_minutes=distill_minutes(run))
    save_samples(a.out, arrays, meta)


def _kept(a: argparse.Namespace) -> tuple[dict, list]:
    """``--keep``: the arrays and metadata an earlier ``sample`` wrote to ``--out`` (the same n),
    so that only the rows not yet drawn are drawn."""
    import numpy as np

    out = Path(a.out)
    if not out.is_file():
        return {}, []
    with np.load(out) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(out.with_suffix(".json").read_text())
    if any(m["n"] != a.n for m in meta):
        raise SystemExit(f"--keep: {out} holds rows of another --n")
    log(f"kept {len(arrays)} rows of {out}")
    return arrays, meta


def _newest(run: Path) -> Path:
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    if not ckpts:
        raise SystemExit(f"{run}: no checkpoint")
    return ckpts[-1]


def targets(rows: list[dict]) -> list[str]:
    """Each issue target met or not, one line each (needs the teacher's 20-NFE rows)."""
    ref = min((r for r in rows if r["role"] == "teacher" and r["nfe"] == REFERENCE_NFE),
              key=lambda r: r["fid"], default=None)
    if ref is None:
        return ["(no teacher row at 20 NFE: the targets are not checked)"]
    out = [f"Reference: the teacher's best 20-NFE FID {ref['fid']:.2f} ({ref['sampler']}, "
           f"{100 * ref['as_requested']:.1f}% read as asked)."]
    for r in (r for r in rows if r["role"] == "student" and r["nfe"] in TARGETS):
        kind, bound = TARGETS[r["nfe"]]
        ratio = r["fid"] / ref["fid"]
        if kind == "fid_ratio":
            ok = ratio <= bound and (r["nfe"] != 4 or r["as_requested"] >= ref["as_requested"])
            what = f"FID {ratio:.2f}x the reference (target <= {bound:g}x" + (
                ", and at least its share read as asked)" if r["nfe"] == 4 else ")")
        else:
            ok = r["as_requested"] >= bound
            what = f"{100 * r['as_requested']:.1f}% read as asked (target >= {100 * bound:g}%)"
        minutes = r.get("distill_minutes")
        if r["nfe"] == 4 and minutes is not None:
            ok = ok and minutes <= MAX_MINUTES
            what += f"; distilled in {minutes:.1f} min (target <= {MAX_MINUTES:g})"
        out.append(f"- {r['label']}: {what}: {'met' if ok else 'NOT met'}")
    return out


def cmd_score(a: argparse.Namespace) -> None:
    rows = [{**m, **summary(r), "as_requested": as_requested(r["_x"])}
            for m, _, r in score_arrays(a.npz)]
    write_json(a.out_json, rows, indent=1)
    best = {}
    for r in rows:
        if r["role"] == "teacher" and (r["budget"] not in best or r["fid"] < best[r["budget"]]
                                       ["fid"]):
            best[r["budget"]] = r
    shown = sorted(best.values(), key=lambda r: r["budget"]) + sorted(
        (r for r in rows if r["role"] == "student"), key=lambda r: (r["nfe"], r["label"]))
    n = rows[0]["n"]
    lines = ["| NFE | model | sampler, steps | FID | read as the digit asked for | s per 1,000 "
             "samples | distillation (min) |", "|---|---|---|---|---|---|---|"]
    for r in shown:
        label = "teacher (best training-free sampler)" if r["role"] == "teacher" else r["label"]
        minutes = "" if r.get("distill_minutes") is None else f"{r['distill_minutes']:.1f}"
        lines.append(f"| {r['nfe']} | {label} | {r['sampler']}, {r['steps']} | {r['fid']:.2f} | "
                     f"{100 * r['as_requested']:.1f}% | {r['seconds_per_1000']:.1f} | "
                     f"{minutes} |")
    m = rows[0]["machine"]
    lines += ["", *targets(rows), "", f"{n} samples per row. Machine: "
              f"{m.get('gpu') or m.get('cpu')}, torch {m.get('torch')}, {m.get('threads')} "
              "threads."]
    write_table(lines, rows, a.out_md)
    if a.plot:
        series: dict[str, list[tuple[float, float]]] = {
            "teacher (best training-free sampler)": [(r["nfe"], r["fid"]) for r in best.values()]}
        for r in rows:
            if r["role"] == "student":
                series.setdefault(f"student ({r['method']})", []).append((r["nfe"], r["fid"]))
        fid_plot(series, a.plot, "network evaluations (NFE)", xlog=True)


def cmd_grid(a: argparse.Namespace) -> None:
    """The README's picture: for each NFE of ``--nfe``, the teacher's row (its sampler at that
    NFE) above each student's row that samples in that NFE; the first ``--per`` samples (sample
    k asks for digit k % 10), the same noises in every row."""
    from benchmarks.harness import npz_images
    from ddpmlab.viz import class_rows_grid

    meta = {m["key"]: m for m in json.loads(Path(a.npz).with_suffix(".json").read_text())}
    arrays = dict(npz_images(a.npz))
    rows, labels = [], []
    for nfe in (int(v) for v in a.nfe.split(",")):
        for key, m in meta.items():
            if m["nfe"] == nfe and (m["role"] == "student" or m["sampler"] == a.sampler):
                rows.append(arrays[key][:a.per].float() / 127.5 - 1)
                labels.append(f"{nfe} NFE, " + ("teacher" if m["role"] == "teacher"
                                                 else "student"))
    class_rows_grid(rows, a.out, labels)
    log(f"wrote {a.out}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distill",
                                description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sample_and_score_parsers(sub, "distill")
    s.add_argument("run", help="the teacher run")
    s.add_argument("--students", help="the student runs (ddpmlab distill), comma-separated; "
                   "RUN@K samples RUN at K steps instead of its own (a consistency student's "
                   "multistep sampling)")
    s.add_argument("--nfe", default="1,2,4,8", help="the teacher's NFE budgets (20 is added)")
    s.add_argument("--keep", action="store_true", help="keep the rows --out already holds (the "
                   "same --n) and draw only the others")
    s.add_argument("--samplers", help="the teacher's samplers, comma-separated (default: every "
                   "registered one but consistency)")
    g = sub.add_parser("grid", help="the teacher's and the students' first samples, row by NFE")
    g.add_argument("npz", nargs="?", default=str(result_path("distill", "distill_samples.npz")))
    g.add_argument("--nfe", default="1,2,4")
    g.add_argument("--sampler", default="dpmpp_2m_sde", help="the teacher's sampler shown")
    g.add_argument("--per", type=int, default=10)
    g.add_argument("--out", default="docs/images/distill_grids.png")
    a = p.parse_args()
    {"sample": cmd_sample, "score": cmd_score, "grid": cmd_grid}[a.cmd](a)


if __name__ == "__main__":
    main()
