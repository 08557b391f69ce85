"""Measuring: device sync, the timing loop, peak memory, FLOP counting, the matmul peak."""

from __future__ import annotations

import os
import sys
import time

import torch


def sync(device="cpu") -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn, warmup: int = 1, reps: int = 5, budget_s: float = float("inf"),
               min_reps: int = 2, device="cpu") -> dict:
    """Time ``fn()`` one call at a time after ``warmup`` untimed calls.

    Each timed call is followed by :func:`sync`. Stops after ``reps`` timed calls, or earlier
    once ``budget_s`` seconds of timed calls have passed and at least ``min_reps`` were made.
    Returns ``{"median_s", "times_s", "n", "warmup"}`` (the median of an even count is the mean
    of the middle two).
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


def matmul_peak(n: int = 4096, dtype=torch.float32, device="cpu", reps: int = 5) -> float:
    """Best achieved FLOP/s of an ``n^3`` matmul over ``reps`` calls (the practical peak)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    t = time_calls(lambda: a @ b, warmup=0, reps=reps, min_reps=reps, device=device)
    return 2 * n**3 / min(t["times_s"])


def count_flops(fn, math_sdpa: bool = True) -> int:
    """FLOPs of ``fn()`` by ``torch.utils.flop_counter.FlopCounterMode``.

    With ``math_sdpa`` (the default) scaled_dot_product_attention is forced to its MATH backend:
    the counter has no formula for the fused CPU attention kernel
    (``_scaled_dot_product_flash_attention_for_cpu``) and would count attention as zero; the
    MATH backend decomposes attention into matmuls that it does count (the same arithmetic).
    """
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    backend = sdpa_kernel(SDPBackend.MATH) if math_sdpa else contextlib.nullcontext()
    with backend, FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


# --------------------------------------------------------------------------- memory
def rss_mib() -> float:
    """Current resident set size of this process (Linux /proc), MiB; NaN elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def reset_peak_memory(device="cpu") -> bool:
    """Start a new peak: CUDA's allocator statistics, or on the CPU this process's VmHWM (back to
    the current RSS through /proc/self/clear_refs, Linux >= 4.0). True if it did."""
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mib(device="cpu") -> float:
    """Peak memory since the last :func:`reset_peak_memory`, MiB.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the peak resident set of this process's
    address space (Linux VmHWM). Unlike ``ru_maxrss``, VmHWM is not inherited: a child started
    by ``subprocess`` (vfork + exec) reports in ``ru_maxrss`` at least its parent's peak, VmHWM
    only its own. Falls back to ``ru_maxrss`` (never reset) where /proc is missing.
    """
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux
