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


# --------------------------------------------------------------------------- used by
# bench_train_sample.py (added; the helpers above are unchanged)
def count_flops_math_sdpa(fn) -> int:
    """FLOPs of ``fn()`` with scaled_dot_product_attention forced to its MATH backend.

    FlopCounterMode has no formula for the fused CPU attention kernel
    (``_scaled_dot_product_flash_attention_for_cpu``) and would count attention as zero; the
    MATH backend decomposes attention into matmuls that it does count (the same arithmetic).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return count_flops(fn)


def time_budgeted(fn, warmup: int = 1, reps: int = 5, budget_s: float = float("inf"),
                  min_reps: int = 2, device="cpu") -> dict:
    """Time ``fn()`` one call at a time after ``warmup`` untimed calls.

    Stops after ``reps`` timed calls, or earlier once ``budget_s`` seconds of timed calls have
    passed and at least ``min_reps`` were made. Returns the median seconds per call and the list.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    ts: list[float] = []
    while len(ts) < reps:
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
        if sum(ts) >= budget_s and len(ts) >= min_reps:
            break
    s = sorted(ts)
    mid = len(s) // 2
    median = s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])
    return {"median_s": median, "times_s": ts, "n": len(ts), "warmup": warmup}


def rss_now_mib() -> float:
    """Current resident set size of this process (Linux /proc), MiB; NaN elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def maxrss_mib() -> float:
    """Peak resident set size of this process so far (getrusage ru_maxrss), MiB."""
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def peak_rss_mib() -> float:
    """Peak resident set size of this process's address space (Linux VmHWM), MiB.

    Unlike ``ru_maxrss``, VmHWM is not inherited: a child started by ``subprocess`` (vfork +
    exec) reports in ``ru_maxrss`` at least its parent's peak, VmHWM only its own. Falls back to
    ``ru_maxrss`` where /proc is missing.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return maxrss_mib()


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, /proc/self/clear_refs); True if it did."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
