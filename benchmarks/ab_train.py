"""Same network, alternating rounds: ddpmlab's and diffusers' training steps, A/B/A/B in one process.

``train_sample`` runs each library once, one after the other, in its own subprocess; on a
shared machine whose speed drifts by 10-15% over minutes, the ratio of two such runs moves by
as much. This script builds both jobs of one setting (the same networks and steps as
``train_sample``: ddpmlab's UNet and the same architecture as a diffusers ``UNet2DModel``,
parameter for parameter) and times them in alternating rounds, so both see the same machine;
it reports each round and the median ratio, and writes benchmarks/results/ab_train_SETTING.json.

    .venv-bench/bin/python -m benchmarks.ab_train --setting mnist --batch 64 --rounds 5
    .venv-bench/bin/python -m benchmarks.ab_train --setting cifar --batch 32 --rounds 3 --steps 2
"""

from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks import train_sample
from benchmarks.harness import SETTINGS, machine, plan_setting, result_path, time_calls, write_json


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab_train",
                                description=__doc__.split("\n")[0])
    p.add_argument("--setting", default="mnist", choices=SETTINGS)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="timed steps per library per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each round's timing")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-json", default=None,
                   help="default: benchmarks/results/ab_train_SETTING[_channels_last].json")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device("cpu")
    jobs, data = {}, {}
    for spec in plan_setting(a.setting, ["ddpmlab", "diffusers"], False):
        train_sample.import_lib(spec["lib"])
        spec = dict(spec, device="cpu", channels_last=a.channels_last, bf16=False, compile=False)
        job = train_sample.Job(spec, dev)
        jobs[spec["lib"]], data[spec["lib"]] = job, job.data(a.batch)
    rounds: list[dict] = []
    for r in range(a.rounds):
        row = {}
        for lib, job in jobs.items():
            t = time_calls(lambda job=job, lib=lib: job.train_step(data[lib]), warmup=a.warmup,
                           reps=a.steps, device=dev)
            row[lib] = a.batch / t["median_s"]
        row["ratio"] = row["ddpmlab"] / row["diffusers"]
        rounds.append(row)
        print(f"round {r + 1}: ddpmlab {row['ddpmlab']:.2f} img/s, diffusers "
              f"{row['diffusers']:.2f} img/s, ratio {row['ratio']:.3f}", flush=True)
    med = {k: statistics.median(q[k] for q in rounds) for k in ("ddpmlab", "diffusers", "ratio")}
    print(f"median over {a.rounds} rounds: ddpmlab {med['ddpmlab']:.2f} img/s, diffusers "
          f"{med['diffusers']:.2f} img/s, ddpmlab/diffusers {med['ratio']:.3f} (per-round ratios "
          f"{min(q['ratio'] for q in rounds):.3f}-{max(q['ratio'] for q in rounds):.3f})")
    name = f"ab_train_{a.setting}{'_channels_last' if a.channels_last else ''}.json"
    write_json(a.out_json or result_path(name), dict(
        machine=machine(), setting=a.setting, batch=a.batch, channels_last=a.channels_last,
        steps=a.steps, warmup=a.warmup, rounds=rounds, median=med))


if __name__ == "__main__":
    main()
