"""ddpmlab.device: precision resolution (``auto`` follows native bf16) and the thread governor
(torch's CPU threads follow the cores other processes leave)."""

import pytest
import torch


# ----------------------------------------------------------------------------- thread governor
class _FakeMachine:
    """A clock, the CPUs' busy seconds and this process's own CPU seconds, advanced by hand."""

    def __init__(self):
        self.t = self.busy = self.own = 0.0

    def run(self, seconds: float, ours: float, others: float) -> None:
        self.t += seconds
        self.own += ours * seconds
        self.busy += (ours + others) * seconds


def test_the_thread_governor_leaves_the_cores_others_use():
    """2 cores: another process using one core takes the training to 1 thread; when it ends, 2
    again. Readings closer than every_s do nothing; the start's thread count is the most."""
    from ddpmlab.device import ThreadGovernor

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    m = _FakeMachine()
    try:
        g = ThreadGovernor(5.0, read_busy=lambda: m.busy, read_own=lambda: m.own,
                           clock=lambda: m.t, cores=2)
        m.run(6, ours=2.0, others=0.0)
        assert g.poll() is None and torch.get_num_threads() == 2          # quiet
        m.run(6, ours=1.0, others=1.0)                                     # `yes` started
        assert g.poll() == 1 and torch.get_num_threads() == 1
        m.run(2, ours=1.0, others=0.0)
        assert g.poll() is None                                            # too soon to tell
        m.run(6, ours=1.0, others=0.1)                                     # it ended
        assert g.poll() == 2 and torch.get_num_threads() == 2
        m.run(6, ours=2.0, others=0.4)                                     # a light load stays
        assert g.poll() is None
        m.run(6, ours=0.5, others=1.6)                                     # most of 2 cores
        assert g.poll() == 1
        m.run(6, ours=1.0, others=3.0)                                     # never below 1
        assert g.poll() is None and g.threads == 1
        assert [c[1] for c in g.changes] == [1, 2, 1]
        g.restore()
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)                                           # one thread to start:
        g1 = ThreadGovernor(5.0, read_busy=lambda: m.busy, read_own=lambda: m.own,
                            clock=lambda: m.t, cores=2)
        m.run(6, ours=0.0, others=0.0)
        assert g1.poll() is None and torch.get_num_threads() == 1          # never above it
    finally:
        torch.set_num_threads(old)


def test_the_thread_governor_reads_this_machine():
    """/proc/stat's busy seconds grow with work done here, by at least this process's share."""
    from ddpmlab.device import _cpu_busy_seconds

    b0, o0 = _cpu_busy_seconds(), sum(__import__("os").times()[:2])
    if b0 is None:
        pytest.skip("no /proc/stat here")
    x = 0
    for i in range(3_000_000):
        x += i
    b1, o1 = _cpu_busy_seconds(), sum(__import__("os").times()[:2])
    assert b1 - b0 >= 0.8 * (o1 - o0) > 0


# =========================================================================== precision: auto
def _cpuinfo_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return {w for line in f if line.startswith("flags") for w in line.split()[2:]}
    except OSError:
        return None


def test_native_bf16_cpu_agrees_with_the_cpu_flags():
    """torch's probes against the kernel's own list of CPU features: bf16 is native where the
    CPU has AVX512-BF16 or AMX tiles (an independent reading of the same hardware)."""
    from ddpmlab.device import native_bf16_cpu

    flags = _cpuinfo_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags here")
    expect = ("AMX" if "amx_tile" in flags else
              "AVX512-BF16" if "avx512_bf16" in flags else None)
    assert native_bf16_cpu() == expect


@pytest.mark.parametrize("feature", ["AVX512-BF16", "AMX", None])
def test_auto_precision_on_a_cpu_follows_native_bf16(monkeypatch, feature):
    from ddpmlab import device as D

    monkeypatch.setattr(D, "native_bf16_cpu", lambda: feature)
    cpu = torch.device("cpu")
    assert D.resolve_precision("auto", cpu) == ("bf16" if feature else "fp32")
    why = D.precision_reason("auto", cpu)
    assert why.startswith("bf16 autocast: auto" if feature else "fp32: auto")
    assert (feature in why) if feature else ("emulated" in why)
    for asked in ("fp32", "bf16"):  # what is asked for is kept, on any CPU
        assert D.resolve_precision(asked, cpu) == asked
        assert D.precision_reason(asked, cpu).endswith("asked for")
