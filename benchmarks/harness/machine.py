"""What a result was measured on: CPU model and vector/matrix flags, torch, threads, GPU."""

from __future__ import annotations

import os
import platform

import torch

# The /proc/cpuinfo flags that decide which CPU kernels oneDNN/MKL can use.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
             "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def cpuinfo() -> tuple[str | None, list[str]]:
    """``(model name, those of CPU_FLAGS present)`` of the first CPU in /proc/cpuinfo."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if model is not None and flags:
                    break
    except OSError:
        pass
    return model, [f for f in CPU_FLAGS if f in flags]


def machine() -> dict:
    """The machine and software a measurement ran on (JSON-ready)."""
    model, flags = cpuinfo()
    info = {"cpu": model or platform.processor() or platform.machine(), "cpu_flags": flags,
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    try:
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # e.g. AVX2, AVX512
    except AttributeError:  # older torch
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info
