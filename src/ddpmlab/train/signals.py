"""SIGINT and SIGTERM during a training loop: finish the step, save, stop.

The trainer and ``ddpmlab distill`` run their loops inside :func:`stop_on_signals`; the
command's own handlers (``ddpmlab.cli``: one line, exit 130 / 143) are back once it ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[str], None]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM call ``stop(name)`` ("SIGINT" / "SIGTERM") instead of
    interrupting: the loop checks its flag after each step. Main thread only (elsewhere a
    no-op: Python delivers signals to the main thread); the old handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        stop(signal.Signals(signum).name)

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
