"""Training speed alone and beside one competing CPU-bound process (issue 18, "no collapse").

Each measurement is a real ``ddpmlab train`` process (the main job's preset, ``--max-steps``
steps, no grid) whose steps/s is read from its ``metrics.jsonl`` (the first logging window,
start-up and warm-up, is dropped). "Loaded" runs it beside one ``yes > /dev/null``. The settings
compared are environment variables of the training process (each row names them); rounds
alternate the settings so that a drift of the machine hits all of them alike.

    python -m benchmarks.under_load --rounds 2 --steps 80

writes ``benchmarks/results/under_load/under_load.json`` and ``.md``. Run it on an otherwise idle machine:
anything else running makes "alone" a loaded measurement too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from .harness import REPO, log, machine, result_path, write_json, write_text

SETTINGS = {
    # what the ddpmlab command does by default: libgomp's own waiting (spin 300,000 times, then
    # sleep) and torch's thread count following the cores other processes leave (ThreadGovernor)
    "ddpmlab default": {},
    # the same without the governor: 2 threads whatever the load (libgomp's default waiting)
    "DDPMLAB_THREADS=fixed": {"DDPMLAB_THREADS": "fixed"},
    # libgomp's other waiting policies (all with fixed threads)
    "GOMP_SPINCOUNT=30000": {"DDPMLAB_THREADS": "fixed", "GOMP_SPINCOUNT": "30000"},
    "OMP_WAIT_POLICY=PASSIVE": {"DDPMLAB_THREADS": "fixed", "OMP_WAIT_POLICY": "PASSIVE"},
    "OMP_WAIT_POLICY=ACTIVE": {"DDPMLAB_THREADS": "fixed", "OMP_WAIT_POLICY": "ACTIVE"},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}


def steps_per_s(env_extra: dict[str, str], loaded: bool, steps: int, log_every: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "run"
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                             "DDPMLAB_THREADS")}
        env.update(env_extra)
        hog = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if loaded else None
        try:
            subprocess.run([shutil.which("ddpmlab") or str(REPO / ".venv/bin/ddpmlab"), "train",
                            "--out", str(out), "--max-steps", str(steps), "--no-progress",
                            "--no-samples", f"train.log_every={log_every}",
                            "train.ckpt_every=1000000", "train.time_limit_min=0"],
                           env=env, check=True, capture_output=True, cwd=d)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r["steps_per_s"] for r in recs if "steps_per_s" in r][1:]
    return statistics.mean(windows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--alone-only", action="store_true",
                    help="only the quiet-machine rows (the cost of a setting when nothing "
                         "competes), written to under_load_alone.{json,md}")
    args = ap.parse_args()
    names = args.settings.split(",")
    rows: dict[str, dict[str, list[float]]] = {n: {"alone": [], "loaded": []} for n in names}
    for rnd in range(args.rounds):
        for name in names:
            for loaded in (False,) if args.alone_only else (False, True):
                v = steps_per_s(SETTINGS[name], loaded, args.steps, args.log_every)
                rows[name]["loaded" if loaded else "alone"].append(v)
                log(f"round {rnd}: {name:24s} {'loaded' if loaded else 'alone '} {v:.3f} steps/s")
    result = {"machine": machine(), "steps": args.steps, "rounds": args.rounds,
              "command": "python -m benchmarks.under_load " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "rows": rows}
    stem = "under_load_alone" if args.alone_only else "under_load"
    write_json(result_path("under_load", stem + ".json"), result)
    if args.alone_only:
        base = statistics.median(rows[names[0]]["alone"])
        lines = [f"| setting | steps/s alone (median of {args.rounds}) | all rounds | "
                 f"against {names[0]} |", "|---|---|---|---|"]
        for name in names:
            v = rows[name]["alone"]
            lines.append(f"| {name} | {statistics.median(v):.2f} | "
                         f"{', '.join(f'{x:.2f}' for x in v)} | {statistics.median(v) / base:.2f} |")
        write_text(result_path("under_load", stem + ".md"), "\n".join(lines))
        print("\n".join(lines))
        return
    lines = ["| setting | steps/s alone | steps/s beside `yes` | share kept |", "|---|---|---|---|"]
    for name in names:
        a, b = statistics.median(rows[name]["alone"]), statistics.median(rows[name]["loaded"])
        lines.append(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.0%} |")
    write_text(result_path("under_load", "under_load.md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
