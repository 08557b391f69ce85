"""Where and in which precision a command runs: one resolution for training, sampling,
evaluation and figures.

* :func:`resolve_device`: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``,
  ``cuda:N``; a name torch does not know, or CUDA asked for where there is none, raises
  :class:`~ddpmlab.errors.ConfigError` naming the value.
* :func:`resolve_precision`: ``auto`` is bf16 autocast on a CUDA device that supports it and
  fp32 elsewhere; fp16 needs CUDA.
* :func:`autocast`: the matching ``torch.autocast`` context (a no-op for fp32).
"""

from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_HELP = "auto | cpu | cuda | cuda:N"


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """The ``torch.device`` for a config/CLI device name (see the module docstring)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}={name!r} is not a device (use auto, cpu, cuda, cuda:N)")\
            from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key}={name!r}: ddpmlab runs on cpu or cuda (use auto, cpu, cuda, "
                          "cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r} but CUDA is not available here")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA with bf16 support, else ``fp32``; fp16 on a CPU is refused."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs CUDA; use fp32 or bf16 on a CPU")
    return precision


def autocast(precision: str, device: torch.device):
    """``torch.autocast`` for bf16/fp16 on ``device``; a null context for fp32."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- memory
def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device`` (CPU: ``MemAvailable`` plus free swap
    from /proc/meminfo; CUDA: the driver's free memory); None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        fields = {}
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
        return fields["MemAvailable"] + fields.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**28 else f"{n / 2**20:,.0f} MiB"


def check_memory(need: float, what: str, device: torch.device | str = "cpu") -> None:
    """Refuse with one line, before allocating, what needs more memory than ``device`` has
    free (an estimate: a little more than the tensors ``what`` holds)."""
    free = available_memory(device)
    if free is not None and need > free:
        raise ConfigError(f"{what} needs about {_gib(need)} of memory; {torch.device(device)} has "
                          f"{_gib(free)} free")
