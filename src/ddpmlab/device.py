"""Where and in which precision a command runs: one resolution for training, sampling,
evaluation and figures.

* :func:`resolve_device`: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``,
  ``cuda:N``; a name torch does not know, or CUDA asked for where there is none, raises
  :class:`~ddpmlab.errors.ConfigError` naming the value. :func:`process_device`: under
  ``torchrun`` each process takes its own GPU.
* :func:`resolve_precision`: ``auto`` is bf16 autocast on a CUDA device that supports it and
  on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX: :func:`native_bf16_cpu`), fp32
  elsewhere (a CPU without it emulates bf16, several times slower); fp16 needs CUDA.
  :func:`precision_reason` says why, in words, for the command's start-up line.
* :func:`autocast`: the matching ``torch.autocast`` context (a no-op for fp32);
  :func:`autocast_call` wraps a sampler's network in it (sampling follows the same rule).
* :class:`ThreadGovernor`: torch's CPU thread count follows the cores other processes leave.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

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


def process_device(device: torch.device, world_size: int, local_rank: int) -> torch.device:
    """The device one process of a launch works on: with several processes (``torchrun``,
    ``world_size > 1``) a CUDA device means the process's own GPU, ``cuda:LOCAL_RANK``, whatever
    index was asked for; a CPU stays the CPU, and a single process keeps ``device``. Training
    and ``ddpmlab sample`` both choose by this rule."""
    if world_size > 1 and device.type == "cuda":
        return torch.device("cuda", local_rank)
    return device


def native_bf16_cpu() -> str | None:
    """The feature this CPU does bf16 arithmetic with, as PyTorch detects it (``"AMX"``,
    ``"AVX512-BF16"``), or None where bf16 would be emulated in fp32 code."""
    # (name, torch's probe, the /proc/cpuinfo flag that probe reads)
    probes = (("AMX", "_is_amx_tile_supported", "amx_tile"),
              ("AVX512-BF16", "_is_avx512_bf16_supported", "avx512_bf16"))
    for name, probe, flag in probes:
        try:
            if getattr(torch.cpu, probe)():
                return name
        except (AttributeError, RuntimeError):  # a torch without the probe: its flag decides
            if _cpu_flag(flag):
                return name
    return None


def _cpu_flag(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA with bf16 support and on a CPU with native bf16
    (:func:`native_bf16_cpu`), else ``fp32``; fp16 on a CPU is refused."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if native_bf16_cpu() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs CUDA; use fp32 or bf16 on a CPU")
    return precision


def inference_precision(setting: str, device: torch.device) -> str:
    """The precision setting a run's network is sampled or evaluated with on ``device``: its
    ``train.precision``, except that a run trained in fp16 (CUDA only) samples on a CPU by the
    ``auto`` rule."""
    return "auto" if setting == "fp16" and device.type == "cpu" else setting


def precision_reason(precision: str, device: torch.device) -> str:
    """Why ``precision`` (a ``train.precision`` value) resolves as it does on ``device``: the
    words the start-up line prints and the run's metrics record."""
    got = resolve_precision(precision, device)
    what = "bf16 autocast" if got == "bf16" else got
    if precision != "auto":
        return f"{what}: asked for"
    if device.type == "cuda":
        return f"{what}: auto, " + ("this GPU has bf16" if got == "bf16" else
                                    "this GPU has no bf16")
    feature = native_bf16_cpu()
    if feature:
        return f"{what}: auto, this CPU has native bf16 ({feature})"
    return f"{what}: auto, this CPU has no native bf16 (AVX512-BF16 or AMX): it would be emulated"


def autocast(precision: str, device: torch.device):
    """``torch.autocast`` for bf16/fp16 on ``device``; a null context for fp32."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def autocast_call(fn: Callable, precision: str, device: torch.device) -> Callable:
    """``fn`` (a network) run under :func:`autocast` for ``precision``, its output returned in
    float32 so that the sampler's arithmetic around it stays fp32; ``fn`` itself for fp32."""
    if precision == "fp32":
        return fn

    def call(*args, **kwargs):
        with autocast(precision, device):
            return fn(*args, **kwargs).float()
    return call


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


def format_size(n: float) -> str:
    """``n`` bytes for a message: MiB below 256 MiB, GiB above, "over 1,000,000 GiB" past that
    (compared before any division, so an integer beyond the float range, which a JSON config
    can hold, is not converted)."""
    if n > 10**6 * 2**30:
        return f"over {10**6:,} GiB"
    return f"{n / 2**30:,.1f} GiB" if n >= 2**28 else f"{n / 2**20:,.0f} MiB"


def check_memory(need: float, what: str, device: torch.device | str = "cpu") -> None:
    """Refuse with one line, before allocating, what needs more memory than ``device`` has
    free (an estimate: a little more than the tensors ``what`` holds)."""
    free = available_memory(device)
    if free is not None and need > free:
        raise ConfigError(f"{what} needs about {format_size(need)} of memory; "
                          f"{torch.device(device)} has {format_size(free)} free")


# ----------------------------------------------------------------------------- CPU threads
def _usable_cpus() -> set[int] | None:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def _cpu_busy_seconds(cpus: set[int] | None = None) -> float | None:
    """Seconds the CPUs ``cpus`` (default: those this process may run on) have spent busy since
    boot (their /proc/stat lines: everything but idle and iowait); None where it cannot be
    read."""
    cpus = _usable_cpus() if cpus is None else cpus
    try:
        busy = 0
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                name, *vals = line.split()
                if not name.startswith("cpu"):
                    break
                if name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
                    continue
                fields = [int(v) for v in vals]
                busy += sum(fields[:8]) - fields[3] - fields[4]
        return busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class ThreadGovernor:
    """Keep torch's CPU threads at the cores other processes leave free.

    With more threads than free cores, OpenMP's threads wait for a partner that is descheduled
    at every parallel region, and beside one competing process a 2-thread training runs at a
    quarter of its quiet speed (BENCHMARKS.md §8). Every ``every_s`` seconds :meth:`poll` reads
    the busy time of the CPUs this process may run on (/proc/stat) less this process's own
    (``os.times``): the cores the others used since the last reading. The thread count becomes
    the cores left, rounded, between 1 and the count at the start (``OMP_NUM_THREADS`` or
    torch's default); it goes back up as the others finish. ``read_busy`` / ``read_own`` /
    ``clock`` are injectable for tests.
    Off where /proc/stat cannot be read. Thread counts change float rounding in some kernels:
    a run that adapted is repeatable on a quiet machine, not bit for bit."""

    def __init__(self, every_s: float = 5.0, *, read_busy: Callable[[], float | None] | None = None,
                 read_own: Callable[[], float] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 cores: int | None = None):
        self.every_s = every_s
        self.read_busy = read_busy or _cpu_busy_seconds
        self.read_own = read_own or (lambda: sum(os.times()[:2]))
        self.clock = clock
        self.max_threads = torch.get_num_threads()
        self.cores = cores or len(_usable_cpus() or ()) or os.cpu_count() or 1
        self.threads = self.max_threads
        self.changes: list[tuple[float, int, float]] = []  # (time, threads, others' cores)
        self._last = self._reading()

    def _reading(self) -> tuple[float, float, float] | None:
        busy = self.read_busy()
        return None if busy is None else (self.clock(), busy, self.read_own())

    def poll(self) -> int | None:
        """Re-read the load if ``every_s`` has passed; returns the new thread count when it
        changed, else None."""
        if self._last is None or self.max_threads <= 1:
            return None
        now = self.clock()
        if now - self._last[0] < self.every_s:
            return None
        cur = self._reading()
        if cur is None:
            return None
        (t0, b0, o0), (t1, b1, o1) = self._last, cur
        self._last = cur
        others = max(0.0, ((b1 - b0) - (o1 - o0)) / (t1 - t0))
        want = max(1, min(self.max_threads, int(self.cores - others + 0.5)))
        if want == self.threads:
            return None
        self.threads = want
        self.changes.append((now, want, others))
        torch.set_num_threads(want)
        return want

    @classmethod
    def for_device(cls, device: torch.device | str) -> ThreadGovernor | None:
        """A governor for work on ``device``; None on a GPU, with one thread to start with,
        where /proc/stat cannot be read, or when ``DDPMLAB_THREADS=fixed``."""
        if (torch.device(device).type != "cpu" or torch.get_num_threads() <= 1
                or os.environ.get("DDPMLAB_THREADS", "").lower() == "fixed"
                or _cpu_busy_seconds() is None):
            return None
        return cls()

    def governed(self, fn: Callable) -> Callable:
        """``fn`` with a :meth:`poll` before each call (e.g. a sampler's network)."""
        def call(*args, **kwargs):
            self.poll()
            return fn(*args, **kwargs)
        return call

    @contextlib.contextmanager
    def hooked(self, *modules: torch.nn.Module):
        """Within the block, a :meth:`poll` before the forward of every layer of ``modules``
        (e.g. an evaluation's networks, whichever method calls them: a poll is a clock
        reading until ``every_s`` has passed); the thread count of the start at its end."""
        def pre_hook(_module, _args) -> None:  # None: the layer's inputs stay as they are
            self.poll()

        handles = [sub.register_forward_pre_hook(pre_hook) for m in modules
                   for sub in m.modules()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self.restore()

    def restore(self) -> None:
        """Back to the thread count of the start."""
        if self.threads != self.max_threads:
            torch.set_num_threads(self.max_threads)
            self.threads = self.max_threads

    def change_note(self, threads: int, doing: str = "training") -> str:
        """The line that says a :meth:`poll` changed the thread count to ``threads``."""
        return (f"ddpmlab: other processes use {self.changes[-1][2]:.1f} of {self.cores} cores: "
                f"{doing} on {threads} thread{'s' if threads > 1 else ''} (DDPMLAB_THREADS="
                f"fixed keeps {self.max_threads})")


@contextlib.contextmanager
def governed_threads(device: torch.device | str) -> Iterator[ThreadGovernor | None]:
    """Within the block torch's CPU threads follow the cores other processes leave (the
    governor's :meth:`~ThreadGovernor.poll` is the caller's; the count is restored at the end).
    Training and distillation run in it."""
    governor = ThreadGovernor.for_device(device)
    try:
        yield governor
    finally:
        if governor is not None:
            governor.restore()


@contextlib.contextmanager
def flush_denormal(device: torch.device | str) -> Iterator[None]:
    """Denormal floats (tiny Adam moments and weights) can slow x86 arithmetic sharply; flush
    them to zero within the block on the CPU (restored afterwards). A precaution, not
    measured here."""
    flushing = torch.set_flush_denormal(True) if torch.device(device).type == "cpu" else None
    try:
        yield
    finally:
        if flushing:
            torch.set_flush_denormal(False)
