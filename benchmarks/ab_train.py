"""Same network, alternating rounds: ddpmlab's and diffusers' training steps, A/B/A/B in one process.

``train_sample`` runs each library once, one after the other, in its own subprocess; on a
shared machine whose speed drifts by 10-15% over minutes, the ratio of two such runs moves by
as much. This script builds both jobs of one setting (the same networks and steps as
``train_sample``: ddpmlab's UNet and the same architecture as a diffusers ``UNet2DModel``,
parameter for parameter) and times them in alternating rounds, so both see the same machine;
it reports each round and the median ratio, and writes benchmarks/results/ab_train/ab_train_SETTING.json.
Within a round the two libraries' timed steps alternate one by one (A, B, A, B, ...; each
round's figure is the median of its steps), so a drift of the machine's speed within a round
meets both alike.

    .venv-bench/bin/python -m benchmarks.ab_train --setting mnist --batch 64 --rounds 5
    .venv-bench/bin/python -m benchmarks.ab_train --setting cifar --batch 32 --rounds 3 --steps 2

``--ddpmlab-defaults`` gives ddpmlab's job what ``ddpmlab train`` itself uses on this machine
(``make_optimizer``: fused AdamW where torch has it; ``train.precision: auto`` resolved for the
CPU) against diffusers' defaults (AdamW's own implementation, fp32 eager): issue 18's "default
against default". Without it both run the same settings (AdamW defaults, fp32).
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
    p.add_argument("--ddpmlab-defaults", action="store_true",
                   help="ddpmlab's job with ddpmlab train's own optimizer and precision")
    p.add_argument("--out-json", default=None,
                   help="default: benchmarks/results/ab_train/ab_train_SETTING[_channels_last].json")
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
    settings = {"ddpmlab": "AdamW defaults, fp32", "diffusers": "AdamW defaults, fp32"}
    if a.ddpmlab_defaults:
        from ddpmlab.config import TrainConfig
        from ddpmlab.device import autocast, resolve_precision
        from ddpmlab.train.optim import make_optimizer

        job = jobs["ddpmlab"]
        job.opt = make_optimizer(job.params, TrainConfig(lr=train_sample.LR))
        precision = resolve_precision(TrainConfig().precision, dev)
        job.autocast = autocast(precision, dev)   # a null context for fp32
        fused = bool(job.opt.defaults.get("fused"))
        settings["ddpmlab"] = f"ddpmlab train's: {'fused ' if fused else ''}AdamW, {precision}"
    print(f"settings: {settings}", flush=True)
    rounds: list[dict] = []
    for r in range(a.rounds):
        for lib, job in jobs.items():      # warm-up, then single steps A, B, A, B, ...: a drift
            for _ in range(a.warmup):      # of the machine's speed hits both libraries alike
                job.train_step(data[lib])
        times: dict[str, list[float]] = {lib: [] for lib in jobs}
        for _ in range(a.steps):
            for lib, job in jobs.items():
                t = time_calls(lambda job=job, lib=lib: job.train_step(data[lib]), warmup=0,
                               reps=1, min_reps=1, device=dev)
                times[lib].append(t["median_s"])
        row = {lib: a.batch / statistics.median(ts) for lib, ts in times.items()}
        row["ratio"] = row["ddpmlab"] / row["diffusers"]
        rounds.append(row)
        print(f"round {r + 1}: ddpmlab {row['ddpmlab']:.2f} img/s, diffusers "
              f"{row['diffusers']:.2f} img/s, ratio {row['ratio']:.3f}", flush=True)
    med = {k: statistics.median(q[k] for q in rounds) for k in ("ddpmlab", "diffusers", "ratio")}
    print(f"median over {a.rounds} rounds: ddpmlab {med['ddpmlab']:.2f} img/s, diffusers "
          f"{med['diffusers']:.2f} img/s, ddpmlab/diffusers {med['ratio']:.3f} (per-round ratios "
          f"{min(q['ratio'] for q in rounds):.3f}-{max(q['ratio'] for q in rounds):.3f})")
    name = (f"ab_train_{a.setting}{'_channels_last' if a.channels_last else ''}"
            f"{'_defaults' if a.ddpmlab_defaults else ''}.json")
    write_json(a.out_json or result_path("ab_train", name), dict(
        machine=machine(), setting=a.setting, batch=a.batch, channels_last=a.channels_last,
        settings=settings,
        steps=a.steps, warmup=a.warmup, rounds=rounds, median=med))


if __name__ == "__main__":
    main()
