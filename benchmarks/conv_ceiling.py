"""How close can a ddpmlab training step on this CPU get to the fp32 matmul peak?

A UNet training step is mostly convolutions, and each convolution runs three kernels: the
forward, the input gradient and the weight gradient. This script times each of them alone, for
every distinct convolution of a preset's network (shapes recorded from one real forward pass),
in the memory format given, and compares:

* the measured training step (noise, UNet, loss, backward, AdamW), as a share of the peak;
* the *ceiling*: the step's counted FLOPs divided by the summed time of its convolution kernels
  alone, i.e. the share of the peak the step would reach if every other operation (GroupNorm,
  SiLU, attention, the optimizer, ...) took no time at all.

If the ceiling is below a target, no change outside the convolution kernels can reach it.

    .venv/bin/python -m benchmarks.conv_ceiling --config mnist --batch 32
    .venv/bin/python -m benchmarks.conv_ceiling --config cifar10 --batch 32 --channels-last \\
        --out-md /tmp/ceiling.md

The matmul peak (4096^3, best of 3) is measured before and after the kernels and the step; the
shares use their mean. Run it on a quiet machine; it prints a Markdown table and writes it with
the JSON to benchmarks/results/conv_ceiling/conv_ceiling_CONFIG[_cl].{md,json}.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import OrderedDict

import torch
import torch.nn.functional as F

from benchmarks.harness import (
    count_flops,
    machine,
    matmul_peak,
    result_path,
    time_calls,
    write_json,
    write_text,
)

conv_backward = torch.ops.aten.convolution_backward


def record_convs(net: torch.nn.Module, run) -> OrderedDict[tuple, int]:
    """Distinct convolutions met by ``run()`` -> how many times each is called."""
    seen: OrderedDict[tuple, int] = OrderedDict()

    def hook(m, inp, _out):
        x = inp[0]
        key = (tuple(x.shape), tuple(m.weight.shape), m.stride, m.padding, m.dilation, m.groups,
               m.bias is not None, x.requires_grad)
        seen[key] = seen.get(key, 0) + 1

    hs = [m.register_forward_hook(hook) for m in net.modules()
          if isinstance(m, torch.nn.Conv2d)]
    try:
        run()
    finally:
        for h in hs:
            h.remove()
    return seen


def time_kernels(key: tuple, fmt, reps: int) -> dict:
    xs, ws, stride, pad, dil, groups, bias, needs_gx = key
    x = torch.randn(xs).contiguous(memory_format=fmt)
    w = (torch.randn(ws) / ws[1] ** 0.5).contiguous(memory_format=fmt)
    b = torch.zeros(ws[0]) if bias else None
    y = F.conv2d(x, w, b, stride, pad, dil, groups)
    g = torch.randn_like(y)
    n_out, c_out, h_out, w_out = y.shape
    flops = 2 * n_out * h_out * w_out * c_out * (ws[1] * ws[2] * ws[3])   # per kernel
    args = ([ws[0]] if bias else None, list(stride), list(pad), list(dil), False, [0, 0], groups)
    kern = {"fwd": lambda: F.conv2d(x, w, b, stride, pad, dil, groups),
            "bwd_w": lambda: conv_backward(g, x, w, *args, [False, True, bias])}
    if needs_gx:
        kern["bwd_in"] = lambda: conv_backward(g, x, w, *args, [True, False, False])
    out = {"flops": flops}
    for name, fn in kern.items():
        out[name] = time_calls(fn, warmup=2, reps=reps, budget_s=2.0, min_reps=3)["median_s"]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv_ceiling",
                                description=__doc__.split("\n")[0])
    p.add_argument("--config", default="mnist", help="preset whose model is measured (mnist)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--reps", type=int, default=7, help="timed calls per kernel (median)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-md", default=None,
                   help="default: benchmarks/results/conv_ceiling/conv_ceiling_CONFIG[_cl].md "
                        "(_cl: --channels-last)")
    p.add_argument("--out-json", default=None, help="default: the same name, .json")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    from ddpmlab import schedules
    from ddpmlab.config import load_config
    from ddpmlab.nn import UNet
    from ddpmlab.objectives import DDPM
    from ddpmlab.train import training_loss

    cfg = load_config(a.config)
    # The presets' model sections already hold their data's channels and size; the classes are
    # those of the labelled presets' data (ddpmlab.train.setup.resolve_config would need the data
    # set itself, and CIFAR-10 is not built in).
    classes = {"mnist": 10, "fashion-mnist": 10}.get(a.config, 0)
    if cfg.data.conditional in ("true", "auto") and classes:
        mcfg = dataclasses.replace(cfg.model, num_classes=classes)
    else:
        mcfg, classes = cfg.model, 0
    shape = (mcfg.in_channels, mcfg.image_size, mcfg.image_size)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    net = UNet(mcfg).to(memory_format=fmt)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
    sched = schedules.get(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    objective = DDPM(sched.T, prediction=cfg.diffusion.prediction)   # the simple loss
    B = a.batch
    x0 = torch.randn(B, *shape).contiguous(memory_format=fmt)

    def loss_of(x):
        n = x.shape[0]
        t = torch.randint(0, sched.T, (n,))
        y = torch.randint(0, classes + 1, (n,)) if classes else None
        return training_loss(net, sched, x, t, torch.randn_like(x), y, objective=objective)

    def step(x=x0):
        loss = loss_of(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    peaks = [matmul_peak(4096, reps=3)]
    convs = record_convs(net, lambda: loss_of(x0))
    step_flops = count_flops(lambda: step(x0[:2])) / 2 * B
    rows = []
    for key, count in convs.items():
        r = time_kernels(key, fmt, a.reps)
        rows.append({"key": key, "count": count, **r})
    st = time_calls(step, warmup=2, reps=a.steps, budget_s=60.0, min_reps=3)["median_s"]
    peaks.append(matmul_peak(4096, reps=3))
    peak = sum(peaks) / len(peaks)

    conv_time = sum(r["count"] * sum(r[k] for k in ("fwd", "bwd_in", "bwd_w") if k in r)
                    for r in rows)
    conv_flops = sum(r["count"] * r["flops"] * (3 if "bwd_in" in r else 2) for r in rows)
    per_kind = {}
    for k in ("fwd", "bwd_in", "bwd_w"):
        t = sum(r["count"] * r[k] for r in rows if k in r)
        f = sum(r["count"] * r["flops"] for r in rows if k in r)
        per_kind[k] = {"s": t, "gflops": f / t / 1e9}
    res = dict(machine=machine(), config=a.config, batch=B, channels_last=a.channels_last,
               peaks=peaks, peak=peak, step_s=st, step_flops=step_flops,
               step_share=step_flops / st / peak, conv_s=conv_time, conv_flops=conv_flops,
               conv_flop_share=conv_flops / step_flops, ceiling=step_flops / conv_time / peak,
               per_kind=per_kind, rows=[dict(r, key=list(map(str, r["key"]))) for r in rows])

    pk = peak / 1e9
    L = [f"#### `{a.config}` model, batch {B}, {'channels_last' if a.channels_last else 'NCHW'}"
         f" ({torch.get_num_threads()} threads, torch {torch.__version__})\n",
         f"fp32 matmul peak {', '.join(f'{q / 1e9:.0f}' for q in peaks)} GFLOP/s (before, "
         f"after; mean {pk:.0f}).\n",
         "| convolution (input -> weight, stride) | calls | fwd | input grad | weight grad |",
         "|---|---|---|---|---|"]
    def cell(r: dict, k: str) -> str:
        return f"{r['flops'] / r[k] / 1e9:.0f} ({100 * r['flops'] / r[k] / peak:.0f}%)" if k in r else "-"

    for r in rows:
        xs, ws, stride = r["key"][0], r["key"][1], r["key"][2][0]
        L.append(f"| {'x'.join(map(str, xs))} -> {'x'.join(map(str, ws))}, s{stride} | "
                 f"{r['count']} | {cell(r, 'fwd')} | {cell(r, 'bwd_in')} | {cell(r, 'bwd_w')} |")
    L.append("")
    L.append("Cells: GFLOP/s (share of the peak). All convolutions of one step together: "
             + ", ".join(f"{k.replace('_', ' ')} {v['gflops']:.0f} GFLOP/s "
                         f"({100 * v['gflops'] * 1e9 / peak:.0f}%)" for k, v in per_kind.items())
             + ".\n")
    L.append(f"| | time per step (s) | share of the peak |\n|---|---|---|\n"
             f"| measured training step ({step_flops / 1e9:.1f} GFLOP) | {st:.3f} | "
             f"**{100 * res['step_share']:.1f}%** |\n"
             f"| its convolution kernels alone ({100 * res['conv_flop_share']:.0f}% of the "
             f"FLOPs) | {conv_time:.3f} | {100 * conv_flops / conv_time / peak:.1f}% |\n"
             f"| ceiling: the step's FLOPs in the convolutions' time | {conv_time:.3f} | "
             f"**{100 * res['ceiling']:.1f}%** |\n")
    md = "\n".join(L)
    print(md)
    name = f"conv_ceiling_{a.config}{'_cl' if a.channels_last else ''}"
    write_text(a.out_md or result_path("conv_ceiling", f"{name}.md"), md)
    write_json(a.out_json or result_path("conv_ceiling", f"{name}.json"), res)


if __name__ == "__main__":
    main()
