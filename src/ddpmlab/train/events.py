"""What training reports, and who listens: the progress bar, ``metrics.jsonl`` and TensorBoard.

The trainer emits events to a :class:`Listeners` fan-out; each listener is one output. A new
output (a web dashboard, a CSV) is one more :class:`Listener`, with no change to the loop.

=============  ==========================================  =======================================
event          when                                        carries
=============  ==========================================  =======================================
``start``      before the first step                       the step, max_steps (None while a time
                                                           budget still sizes the run), precision
``step``       after every optimizer step                  the step
``log``        every ``train.log_every`` steps, the last   the metrics record (step, loss, lr,
                                                           grad_norm, steps/s, images/s, ...)
``resize``     when a time budget has set max_steps        :class:`~ddpmlab.train.budget.Sizing`
``note``       a message for the user (threads, budget)    text
``samples``    after the run layer drew a sample grid      the step and the PNG's path
``checkpoint`` after a checkpoint is complete              the step and its folder
``close``      at the end, also after an error             -
=============  ==========================================  =======================================

Only the main process of a distributed run has listeners (the trainer gives the others none).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..layout import RunDir
from .budget import Sizing


class Listener:
    """A no-op listener: subclasses override the events they want."""

    def start(self, step: int, max_steps: int | None, precision: dict[str, Any]) -> None: ...
    def step(self, step: int) -> None: ...
    def log(self, record: dict[str, Any]) -> None: ...
    def resize(self, sizing: Sizing) -> None: ...
    def note(self, text: str) -> None: ...
    def samples(self, step: int, path: Path) -> None: ...
    def checkpoint(self, step: int, path: Path) -> None: ...
    def close(self) -> None: ...


class Listeners(Listener):
    """Sends every event to each listener in turn; ``close`` reaches all of them."""

    def __init__(self, listeners: list[Listener]) -> None:
        self.listeners = listeners

    def start(self, step, max_steps, precision):
        for li in self.listeners:
            li.start(step, max_steps, precision)

    def step(self, step):
        for li in self.listeners:
            li.step(step)

    def log(self, record):
        for li in self.listeners:
            li.log(record)

    def resize(self, sizing):
        for li in self.listeners:
            li.resize(sizing)

    def note(self, text):
        for li in self.listeners:
            li.note(text)

    def samples(self, step, path):
        for li in self.listeners:
            li.samples(step, path)

    def checkpoint(self, step, path):
        for li in self.listeners:
            li.checkpoint(step, path)

    def close(self):
        errors = []
        for li in self.listeners:
            try:
                li.close()
            except Exception as e:  # noqa: BLE001 - close the others, then raise the first
                errors.append(e)
        if errors:
            raise errors[0]


class MetricsLog(Listener):
    """``RUN/metrics.jsonl``: the precision chosen, every log record, the time budget's sizing."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def start(self, step, max_steps, precision):
        self.run.append_metrics({"event": "precision", "time": time.time(), "step": step,
                                 **precision})

    def log(self, record):
        self.run.append_metrics(record)

    def resize(self, sizing):
        self.run.append_metrics(sizing.record)


#: a progress line written to a file or pipe (not a terminal) at most this often, in seconds
PLAIN_INTERVAL_S = 30.0


class ProgressBar(Listener):
    """A tqdm bar on a terminal; on a file or pipe, one plain line every
    :data:`PLAIN_INTERVAL_S` seconds (a redrawn bar would write thousands of lines into a log).
    Notes go above the bar (or on their own line); ``log`` is the fallback for notes when the
    bar is off."""

    def __init__(self, enabled: bool, log: Callable[[str], None], stream: Any = None,
                 interval_s: float = PLAIN_INTERVAL_S) -> None:
        self.enabled = enabled
        self.log_fn = log
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.bar: Any = None
        self.total: int | None = None
        self.loss: float | None = None
        self._t0 = self._last = 0.0
        self._first_step = 0
        self._step = 0

    @property
    def plain(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return not (callable(isatty) and isatty())

    def start(self, step, max_steps, precision):
        self.total, self._first_step, self._step = max_steps, step, step
        self._t0 = self._last = time.perf_counter()
        if self.enabled and not self.plain:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max_steps, initial=step, desc="training", unit="step",
                            dynamic_ncols=True, smoothing=0.05, file=self.stream)

    def step(self, step):
        self._step = step
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and time.perf_counter() - self._last >= self.interval_s:
            self._plain_line()

    def log(self, record):
        self.loss = record["loss"]
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.loss:.4f}")

    def resize(self, sizing):
        self.total = sizing.max_steps
        if self.bar is not None:
            self.bar.total = sizing.max_steps
            self.bar.refresh()

    def note(self, text):
        if self.bar is not None:
            self.bar.write(text)
        else:
            self.log_fn(text)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self._step > self._first_step:
            self._plain_line()

    def _plain_line(self) -> None:
        now = time.perf_counter()
        self._last = now
        done = self._step - self._first_step
        rate = done / (now - self._t0) if now > self._t0 else 0.0
        of = f"/{self.total}" if self.total else ""
        parts = [f"training: step {self._step}{of}", f"{rate:.2f} steps/s"]
        if self.loss is not None and math.isfinite(self.loss):
            parts.append(f"loss {self.loss:.4f}")
        if self.total and rate > 0:
            parts.append(f"{(self.total - self._step) / rate / 60:.1f} min left")
        print(", ".join(parts), file=self.stream, flush=True)


class TensorBoardLog(Listener):
    """TensorBoard event files in ``RUN/tensorboard/`` (``train.tensorboard: true``; needs the
    ``tensorboard`` extra): the scalars of every log record under ``train/`` and each sample
    grid as an image. ``tensorboard --logdir RUN`` shows them."""

    SCALARS = ("loss", "lr", "grad_norm", "steps_per_s", "images_per_s")

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, record):
        for key in self.SCALARS:
            if key in record and math.isfinite(record[key]):
                self.writer.add_scalar(f"train/{key}", record[key], record["step"])

    def resize(self, sizing):
        self.writer.add_scalar("train/max_steps", sizing.max_steps, 0)

    def samples(self, step, path):
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        self.writer.add_image("samples", arr, step, dataformats="HWC")

    def checkpoint(self, step, path):
        self.writer.flush()

    def close(self):
        self.writer.close()


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can write (the ``tensorboard`` package is there)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
