"""Shared helpers for the benchmarks: timing, FLOP counting, the machine's matmul peak."""

from __future__ import annotations

import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def machine() -> dict:
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def matmul_peak(n: int = 4096, dtype=torch.float32, device="cpu", reps: int = 5) -> float:
    """Best achieved FLOP/s of an n^3 matmul (the machine's practical peak)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def time_it(fn, warmup: int = 2, reps: int = 5, device="cpu") -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def dump(obj, path) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
