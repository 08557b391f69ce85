"""Quality against network evaluations (NFE): every registered sampler at a few NFE budgets on
the main job's model, FID and the share read as the digit asked for, wall time per draw.

Two steps, from the repository root:

    python -m benchmarks.sampler_nfe sample runs/mnist [--budgets 5,10,20,50] [--n 1000]
        [--samplers heun,unipc] [--reference ddpm:1000] [--device cuda]
    python -m benchmarks.sampler_nfe score [--plot docs/images/sampler_nfe.png]

A draw too long for one sitting (the 1000-step reference: hours on 2 CPU cores) is made in
parts, ``sample ... --start 0 --n 250 --out part0.npz``, ``--start 250 ...``: a sample's noise
and class are fixed by its number, so ``join OUT.npz part0.npz part250.npz ...`` gives the set one
draw would. ``join --first N`` keeps every array's first N samples (the same N noises and
classes in each), to compare sets of different sizes at the size they share. ``merge OUT ...``
puts the rows of several ``score`` outputs (.json) in one table and plot, for rows scored in
different sittings whose samples are gone: it refuses rows of different sizes or models.
``halves NPZ`` scores each array's two halves apart: how far a FID of that size moves by chance.

For a budget B each sampler gets the most steps whose evaluations fit (``step.info.nfe``: one
per step, Heun two per step and one for the last, so 5 NFE = 3 Heun steps), its own default
spacing and eta, the run's guidance (w = 2, the two halves as one batch: one evaluation) on a
balanced mix of digits, and the same per-sample noise seeds. ``--reference SAMPLER:STEPS``
adds the row every FID is compared with (the issue asks for 1000-step ancestral sampling;
on 2 CPU cores that alone is hours for 1,000 guided samples). Outputs go to
benchmarks/results/sampler_nfe/sampler_nfe{_samples.npz,.json,.md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import (
    evaluate_mnist,
    fid_plot,
    log,
    machine,
    npz_images,
    sample_and_score_parsers,
    sample_ddpmlab,
    save_samples,
    score_arrays,
    snapshots_of,
    summary,
    time_calls,
    write_json,
    write_table,
)
from benchmarks.sampler_steps import as_requested


def steps_for(sampler: str, budget: int) -> int:
    """The most steps of ``sampler`` whose network evaluations fit in ``budget``."""
    from ddpmlab import SAMPLERS

    info = SAMPLERS[sampler].info
    steps = 1
    while info.nfe(steps + 1) <= budget:
        steps += 1
    return steps


def sampler_eta(sampler: str, steps: int, run_eta: float | None,
                spacing: str | None = None) -> tuple:
    """(the eta ``sampler`` runs at, its table label, its array's key) for a run whose config
    says ``run_eta`` (None: each sampler's own default). The key and label name an eta only
    where it is not the sampler's default (``euler_ancestral:10:eta0``, "euler_ancestral (eta
    0)"): an SDE sampler at eta 0 is its ODE limit, another algorithm. A ``spacing`` other than
    the sampler's default is named the same way (``dpmpp_3m_sde:10:logsnr``)."""
    from ddpmlab import SAMPLERS

    info = SAMPLERS[sampler].info
    names, key = [], f"{sampler}:{steps}"
    eta = None if info.eta is None else (info.eta if run_eta is None else run_eta)
    if eta is not None and eta != info.eta:
        names.append(f"eta {eta:g}")
        key += f":eta{eta:g}"
    if spacing is not None and spacing != info.spacing:
        names.append(spacing)
        key += f":{spacing}"
    return eta, (f"{sampler} ({', '.join(names)})" if names else sampler), key


def cmd_sample(a: argparse.Namespace) -> None:
    from ddpmlab import SAMPLERS
    from ddpmlab.cli import tune_allocator
    from ddpmlab.config import Config

    tune_allocator()  # what the `ddpmlab` command does for its own process (2x faster on CPU)
    device = torch.device(a.device)
    ck = snapshots_of(Path(a.run))[-1][2]
    weights = ck / "ema.safetensors" if (ck / "ema.safetensors").exists() else ck / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]  # parts must share the model
    run_eta = Config.from_file(Path(a.run) / "config.json").sample.eta
    names = a.samplers.split(",") if a.samplers else list(SAMPLERS)
    jobs = [(s, steps_for(s, int(b)), int(b)) for b in a.budgets.split(",") if b for s in names]
    if a.reference:
        s, _, k = a.reference.partition(":")
        jobs.insert(0, (s, int(k), None))
    arrays, meta = {}, []
    sample_ddpmlab(ck, min(a.batch, 16), device, a.batch, names[0], 2)  # untimed warm-up
    for sampler, steps, budget in jobs:
        eta, label, key = sampler_eta(sampler, steps, run_eta, a.spacing)
        if key in arrays:
            continue

        def draw(s=sampler, k=steps, key=key):
            arrays[key] = sample_ddpmlab(ck, a.n, device, a.batch, s, k, start=a.start,
                                         spacing=a.spacing)

        dt = time_calls(draw, warmup=0, reps=1, device=device)["median_s"]
        nfe = SAMPLERS[sampler].info.nfe(steps)
        meta.append({"key": key, "lib": "ddpmlab", "sampler": sampler, "label": label,
                     "eta": eta, "spacing": a.spacing or SAMPLERS[sampler].info.spacing,
                     "steps": steps,
                     "nfe": nfe, "budget": budget, "reference": budget is None, "n": a.n,
                     "start": a.start, "seconds": dt, "device": str(device),
                     "checkpoint_sha256": digest, "machine": machine()})
        log(f"{key} ({nfe} NFE): samples {a.start}..{a.start + a.n - 1} in {dt:.1f} s")
    save_samples(a.out, arrays, meta)


def join_parts(parts: list[str], first: int | None = None) -> tuple[dict, list[dict]]:
    """The arrays of several ``sample`` outputs as one set: a key's parts in sample order (they
    must follow each other from sample 0, no gap, no overlap, and come from one checkpoint where
    their metadata names it), seconds summed; ``first`` keeps
    each array's first samples, its seconds scaled to them (``seconds_measured`` and
    ``n_measured`` keep what was timed)."""
    pieces: dict[str, list[tuple[dict, np.ndarray]]] = {}
    for npz in parts:
        meta = {m["key"]: m for m in json.loads(Path(npz).with_suffix(".json").read_text())}
        with np.load(npz) as f:
            for key in f.files:
                pieces.setdefault(key, []).append((meta[key], f[key]))
    arrays, metas = {}, []
    for key, got in pieces.items():
        got.sort(key=lambda p: p[0].get("start", 0))
        at = 0
        for m, x in got:
            if m.get("start", 0) != at or len(x) != m["n"]:
                raise SystemExit(f"{key}: a part starts at sample {m.get('start', 0)}, "
                                 f"expected {at} (parts must follow each other from 0)")
            at += len(x)
        digests = {m["checkpoint_sha256"] for m, _ in got if "checkpoint_sha256" in m}
        if len(digests) > 1:
            raise SystemExit(f"{key}: its parts come from different checkpoints "
                             f"(sha256 {', '.join(sorted(digests))})")
        x = np.concatenate([x for _, x in got])
        m = {**got[0][0], "n": len(x), "start": 0,
             "seconds": sum(p[0]["seconds"] for p in got), "parts": len(got)}
        if first is not None:
            if first > len(x):
                raise SystemExit(f"{key}: has {len(x)} samples, fewer than --first {first}")
            m |= {"n_measured": len(x), "seconds_measured": m["seconds"],
                  "seconds": m["seconds"] * first / len(x), "n": first}
            x = x[:first]
        arrays[key] = x
        metas.append(m)
    return arrays, metas


def cmd_join(a: argparse.Namespace) -> None:
    save_samples(a.out, *join_parts(a.parts, a.first))


def row_label(m: dict) -> str:
    """A drawn row's table label, named against today's defaults from the eta and spacing its
    metadata records (a default that changed after the draw, as 3M SDE's spacing did, then
    shows without relabelling by hand); rows drawn before the spacing was recorded keep their
    stored label."""
    from ddpmlab import SAMPLERS

    if m["sampler"] not in SAMPLERS or "spacing" not in m:
        return m.get("label", m["sampler"])
    return sampler_eta(m["sampler"], m["steps"], m.get("eta"), m["spacing"])[1]


def cmd_score(a: argparse.Namespace) -> None:
    rows = [{**m, **summary(r), "as_requested": as_requested(r["_x"]), "label": row_label(m)}
            for m, _, r in score_arrays(a.npz)]
    report(rows, a.out_md, a.out_json, a.plot)


def merge_rows(paths: list[str]) -> list[dict]:
    """The rows of several ``score`` outputs (.json) as one table's: a key scored twice keeps
    its last file's row. Refused where a FID would be compared across set sizes (every row
    must have the same n) or models (every recorded checkpoint digest must agree)."""
    rows: dict[str, dict] = {}
    for path in paths:
        for r in json.loads(Path(path).read_text()):
            rows[r["key"]] = r
    sizes = {r["n"] for r in rows.values()}
    if len(sizes) > 1:
        raise SystemExit(f"merge: rows of different sizes ({', '.join(map(str, sorted(sizes)))} "
                         "samples): FID depends on n; join --first N to one size first")
    digests = {r["checkpoint_sha256"] for r in rows.values() if "checkpoint_sha256" in r}
    if len(digests) > 1:
        raise SystemExit(f"merge: rows from different checkpoints (sha256 "
                         f"{', '.join(sorted(digests))})")
    return [{**r, "label": row_label(r)} for r in rows.values()]


def cmd_halves(a: argparse.Namespace) -> None:
    """FID of each array's first and second half: two independent draws of the same sampler
    at half the size, i.e. how far a FID at that size moves by chance."""
    from ddpmlab.features import get_feature_extractor

    ext = get_feature_extractor("mnist")
    lines = ["| array | n per half | FID, first half | FID, second half | difference |",
             "|---|---|---|---|---|"]
    for key, x in npz_images(a.npz):
        h = len(x) // 2
        one, two = (evaluate_mnist(p, ext)["fid"] for p in (x[:h], x[h:2 * h]))
        lines.append(f"| {key} | {h} | {one:.2f} | {two:.2f} | {two - one:+.2f} |")
    print("\n".join(lines))


def cmd_merge(a: argparse.Namespace) -> None:
    report(merge_rows(a.parts), a.out_md, a.out_json, a.plot)


def report(rows: list[dict], out_md, out_json, plot) -> None:
    """The table (.md), the rows (.json) and the FID-against-NFE plot of scored rows."""
    ref = next((r for r in rows if r["reference"]), None)
    for r in rows:
        r["fid_vs_ref"] = None if ref is None else r["fid"] / ref["fid"] - 1
    rows.sort(key=lambda r: (r["reference"] is False, r["nfe"], r["fid"]))
    write_json(out_json, [{k: v for k, v in r.items() if k != "machine"} | {
        "machine": rows[0]["machine"]} for r in rows], indent=1)
    m = rows[0]["machine"]
    dev = m.get("gpu") or f"{m.get('cpu')} ({', '.join(m.get('cpu_flags', []))})"
    what = f"vs. {ref['sampler']} {ref['steps']} steps" if ref else "vs. reference"
    lines = [f"| NFE | sampler | steps | FID | {what} | read as the digit asked for | "
             f"confident (>= 0.9) | s per {rows[0]['n']} samples |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = "" if r["fid_vs_ref"] is None else f"{100 * r['fid_vs_ref']:+.1f}%"
        conf = "" if r["confident"] is None else f"{100 * r['confident']:.1f}%"
        lines.append(f"| {r['nfe']} | {r['label']} | {r['steps']} | "
                     f"{r['fid']:.2f} | {vs} | "
                     f"{100 * r['as_requested']:.1f}% | {conf} | {r['seconds']:.1f} |")
    lines.append(f"\nMachine: {dev}, torch {m.get('torch')}, {m.get('threads')} threads.")
    write_table(lines, rows, out_md)
    if plot:
        series: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if not r["reference"]:
                series.setdefault(r["label"], []).append((r["nfe"], r["fid"]))
        fid_plot(series, plot, "network evaluations (NFE)", xlog=True,
                 baseline=ref["fid"] if ref else None,
                 baseline_label=f"{ref['sampler']} {ref['steps']} steps" if ref else "")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sampler_nfe",
                                description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sample_and_score_parsers(sub, "sampler_nfe")
    s.add_argument("run")
    s.add_argument("--budgets", default="5,10,20,50", help="NFE budgets, comma-separated")
    s.add_argument("--samplers", help="comma-separated names (default: every registered one)")
    s.add_argument("--reference", help="SAMPLER:STEPS, the row every FID is compared with")
    s.add_argument("--spacing", help="every sampler's spacing (default: each one's own); "
                   "a non-default one is named in the key and label")
    s.add_argument("--start", type=int, default=0,
                   help="the first sample's number (a part of a longer draw; see join)")
    j = sub.add_parser("join", help="several sample outputs (parts of one draw) as one .npz")
    j.add_argument("out")
    j.add_argument("parts", nargs="+")
    j.add_argument("--first", type=int, help="keep each array's first N samples")
    g = sub.add_parser("merge", help="the rows of several score outputs (.json) as one table")
    g.add_argument("parts", nargs="+", help="score's .json files; a key in two keeps the last")
    g.add_argument("--out-md", required=True)
    g.add_argument("--out-json", required=True)
    g.add_argument("--plot", help="also draw FID against NFE into this image file")
    h = sub.add_parser("halves", help="FID of each array's two halves (FID's spread by chance)")
    h.add_argument("npz")
    a = p.parse_args()
    {"sample": cmd_sample, "score": cmd_score, "join": cmd_join, "merge": cmd_merge,
     "halves": cmd_halves}[a.cmd](a)


if __name__ == "__main__":
    main()
