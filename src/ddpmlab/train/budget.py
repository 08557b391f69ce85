"""Sizing a run by time: ``train.time_budget_min`` times steps 5-40, then sets ``max_steps``.

A new run with a time budget times each of its steps from the end of step 5 (past the first
steps' one-off costs) to the end of step 40 (:data:`ddpmlab.config.BUDGET_WINDOW`) and takes
their median: a few seconds of other work on the machine then slows a few steps, not the
estimate (the mean of the window cut the main job by 18% after a 4-second disturbance). The
work a run does besides its steps is timed too: the trainer writes a checkpoint at step 40
(its listeners included: the copy watch's samples, the post-hoc EMA's snapshot) and, with
``train.sample_every``, draws a training grid, and :class:`RunWork` counts how many of each a
run of N steps will do (every ``ckpt_every`` steps, the autoguidance guide's step, the last
step). ``max_steps`` is then the most steps whose time and work fit in :data:`BUDGET_MARGIN`
of what is left of the budget, never more than the configured ``max_steps`` (the cap). The
choice is written to ``config.json`` with ``time_budget_min`` 0, so that file (or
``--max-steps N``) repeats the run step for step. A resumed run keeps the ``max_steps`` its
``config.json`` has.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..config import BUDGET_WINDOW, Config

#: the share of a time budget's remaining seconds that its steps are planned to fill: a
#: machine's speed drifts by a few percent after the timed steps (measured: 1.90 steps/s over
#: steps 5-40 of the main job, 1.70-1.93 in its later logging windows)
BUDGET_MARGIN = 0.95
#: how far past a time budget the user gave a preset's time limit is moved (the main job's own
#: margin: train.time_budget_min 7, train.time_limit_min 8)
PRESET_LIMIT_MARGIN_MIN = 1.0
#: the step cap of a run whose time budget the user gave without a max_steps: only keeps the
#: arithmetic finite (the budget sizes the run)
UNCAPPED = 100_000_000


def steps_within(budget_s: float, elapsed_s: float, step: int, seconds_per_step: float,
                 cap: int, work_s: Callable[[int], float] | None = None) -> int:
    """``max_steps`` for a run at ``step`` after ``elapsed_s`` of a ``budget_s`` budget, its steps
    taking ``seconds_per_step``: the steps that fit in :data:`BUDGET_MARGIN` of what is left, at
    least ``step`` and at most ``cap``. ``work_s(n)``: the seconds of the work besides the steps
    (checkpoints, grids) a run ending at step ``n`` does after ``step``; the largest ``n`` whose
    steps and work both fit."""
    left = BUDGET_MARGIN * max(0.0, budget_s - elapsed_s)
    fit = int(left / seconds_per_step + 1e-9) if seconds_per_step > 0 else cap
    n = max(step, min(cap, step + fit))
    while work_s is not None and n > step:
        over = (n - step) * seconds_per_step + work_s(n) - left
        if over <= 0:
            break
        n -= max(1, math.ceil(over / seconds_per_step)) if seconds_per_step > 0 else 1
    return max(n, step)


@dataclass(frozen=True)
class RunWork:
    """The work a training run does besides its steps, timed once at the end of the timed
    steps: a checkpoint (with what its listeners do) every ``ckpt_every`` steps, at the
    autoguidance guide's step (``guide_at(n)``: its step in a run of ``n`` steps, or None) and
    at the last step; a training grid every ``sample_every`` steps (0: none)."""

    checkpoint_s: float
    ckpt_every: int
    guide_at: Callable[[int], int | None]
    grid_s: float = 0.0
    sample_every: int = 0

    def checkpoints(self, after: int, n: int) -> int:
        """How many checkpoints a run ending at step ``n`` writes after step ``after``."""
        if n <= after:
            return 0
        every = self.ckpt_every
        count = n // every - after // every
        guide = self.guide_at(n)
        if guide is not None and after < guide <= n and guide % every:
            count += 1
        if n % every and n != guide:
            count += 1                                   # the last step's
        return count

    def grids(self, after: int, n: int) -> int:
        every = self.sample_every
        return n // every - after // every if every and n > after else 0

    def seconds(self, after: int, n: int) -> float:
        """Their seconds after step ``after`` in a run ending at step ``n``."""
        return self.checkpoints(after, n) * self.checkpoint_s + \
            self.grids(after, n) * self.grid_s


@dataclass
class Sizing:
    """What the timed steps decided (the event the trainer reports and records)."""

    max_steps: int
    cap: int
    budget_min: float
    steps_per_s: float
    elapsed_s: float
    checkpoint_s: float | None = None     # one checkpoint's work (with_work), else not counted
    checkpoints: int = 0                  # planned after the timed steps
    grid_s: float = 0.0
    grids: int = 0

    def with_work(self, work: RunWork, elapsed_s: float) -> Sizing:
        """Sized again with ``work`` after the timed steps, ``elapsed_s`` into the run (its
        timed checkpoint and grid done)."""
        step = BUDGET_WINDOW[1]
        n = steps_within(self.budget_min * 60, elapsed_s, step, 1 / self.steps_per_s,
                         self.cap, lambda m: work.seconds(step, m))
        return replace(self, max_steps=n, elapsed_s=elapsed_s, checkpoint_s=work.checkpoint_s,
                       checkpoints=work.checkpoints(step, n), grid_s=work.grid_s,
                       grids=work.grids(step, n))

    @property
    def work_s(self) -> float:
        """The seconds of the planned checkpoints and grids."""
        return self.checkpoints * (self.checkpoint_s or 0.0) + self.grids * self.grid_s

    @property
    def record(self) -> dict:
        """The ``time_budget`` line of ``metrics.jsonl``."""
        return {"event": "time_budget", "time": time.time(), "budget_min": self.budget_min,
                "timed_steps": list(BUDGET_WINDOW), "steps_per_s": self.steps_per_s,
                "elapsed_s": self.elapsed_s, "max_steps": self.max_steps, "cap": self.cap,
                "checkpoint_s": self.checkpoint_s, "checkpoints": self.checkpoints,
                "grid_s": self.grid_s, "grids": self.grids, "work_s": self.work_s}

    @property
    def message(self) -> str:
        a, b = BUDGET_WINDOW
        capped = ""
        if self.max_steps == self.cap:      # the cap, not the minutes, decided: say how much
            minutes = (self.elapsed_s + max(self.max_steps - b, 0) / self.steps_per_s
                       + self.work_s) / 60  # of the budget it uses, and how to use the rest
            capped = (f" (the max_steps cap: ~{minutes:.1f} of the {self.budget_min:g} min; "
                      "train.max_steps=N allows more)" if minutes < 0.9 * self.budget_min
                      else " (the max_steps cap)")
        work = ""
        if self.checkpoint_s is not None:
            work = f" and checkpoints of {self.checkpoint_s:.1f} s ({self.checkpoints} planned)"
            if self.grid_s:
                work += f", grids of {self.grid_s:.1f} s ({self.grids} planned)"
        return (f"ddpmlab: time budget {self.budget_min:g} min: {self.steps_per_s:.2f} steps/s "
                f"(median of steps {a}-{b}){work} -> max_steps {self.max_steps}{capped}; "
                f"--max-steps {self.max_steps} repeats this run")


class TimeBudget:
    """Times a new run's steps and sizes it (see the module docstring).

    ``budget_min`` 0 is off. :attr:`active` says whether the steps are still being timed (a
    resumed run, or one whose ``max_steps`` ends before the timed steps, is not sized:
    :attr:`skipped` says why). Call :meth:`mark` after every step with the clock read after
    the step; it returns the :class:`Sizing` once, at the window's end.
    """

    def __init__(self, budget_min: float, max_steps: int, step: int) -> None:
        self.budget_min = budget_min
        self.cap = max_steps
        self.active = bool(budget_min) and step == 0 and BUDGET_WINDOW[1] < max_steps
        self.skipped: str | None = None
        if budget_min and not self.active:
            why = ("this run was stopped before its steps were timed" if step else
                   f"max_steps={max_steps} ends before the timed steps")
            self.skipped = (f"ddpmlab: train.time_budget_min={budget_min:g} not applied: {why}; "
                            f"training to step {max_steps}")
        self._marks: dict[int, float] = {}

    def wants(self, step: int) -> bool:
        """Whether the clock after ``step`` is one the sizing needs (then synchronise first)."""
        return self.active and BUDGET_WINDOW[0] <= step <= BUDGET_WINDOW[1]

    def after_step(self, step: int, t_start: float, device: torch.device) -> Sizing | None:
        """:meth:`mark` with the clock read after ``step``, once the device has finished it
        (CUDA runs asynchronously), only at the steps the sizing times: the one call a
        training loop makes after each step."""
        if not self.wants(step):
            return None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return self.mark(step, time.perf_counter(), t_start)

    def mark(self, step: int, now: float, t_start: float) -> Sizing | None:
        """Record the clock after ``step``; at the window's end, the sizing (else None)."""
        if not self.wants(step):
            return None
        self._marks[step] = now
        b = BUDGET_WINDOW[1]
        if step != b:
            return None
        self.active = False
        marked = sorted(self._marks)                     # (every step, in a training loop)
        per_step = statistics.median((self._marks[k] - self._marks[j]) / (k - j)
                                     for j, k in itertools.pairwise(marked))
        elapsed = self._marks[b] - t_start
        n = steps_within(self.budget_min * 60, elapsed, step, per_step, self.cap)
        return Sizing(n, self.cap, self.budget_min, 1 / per_step, elapsed)


def respect_run_length(cfg: Config, given: set[str]) -> tuple[Config, str | None]:
    """A run length the user asked for is not cut by a time limit or a step cap they did not
    ask for.

    ``given``: the config keys the user set (flags or ``key=value``). When they set
    ``train.max_steps`` or ``train.time_budget_min`` but not ``train.time_limit_min``, a limit
    from the preset (the main job's safety net: 8 minutes) that would stop the run early is
    moved: past a time budget B by the preset's own margin over its budget (mnist: 8 - 7 = 1
    minute; 1 minute when the preset has no budget), or off for a step count without a budget.
    When they set a time budget but not ``train.max_steps``, the preset's cap (mnist: 5,000
    steps, a bf16 machine's 16 minutes) is lifted to :data:`UNCAPPED`: the budget sizes the run
    (the emoji hour stopped at 5,000 steps after 16 minutes, BENCHMARKS.md §13).
    Returns the config and what it says (one line per change; None when nothing changed)."""
    tc = cfg.train
    notes = []
    if (tc.time_budget_min and "train.time_budget_min" in given and "train.max_steps" not in given
            and tc.max_steps < UNCAPPED):
        notes.append(f"ddpmlab: the preset's max_steps cap ({tc.max_steps:,}) is lifted: "
                     f"--time-budget {tc.time_budget_min:g} sizes the run (--max-steps N, or "
                     "train.max_steps=N with the budget, caps it)")
        tc = replace(tc, max_steps=UNCAPPED)
    asked = given & {"train.max_steps", "train.time_budget_min"}
    limit, moved = tc.time_limit_min, None
    if tc.time_limit_min and asked and "train.time_limit_min" not in given:
        if tc.time_budget_min:
            if "train.time_budget_min" in given and \
                    tc.time_budget_min + PRESET_LIMIT_MARGIN_MIN > tc.time_limit_min:
                limit = tc.time_budget_min + PRESET_LIMIT_MARGIN_MIN
                moved = (f"{limit:g} min", f"--time-budget {tc.time_budget_min:g} asks for "
                                           f"{tc.time_budget_min:g} min")
        else:                       # (a budget the preset set is inside its own limit)
            limit = 0.0
            moved = ("off", f"--max-steps {tc.max_steps} asks for exactly {tc.max_steps} steps")
    if moved:
        notes.append(f"ddpmlab: the preset's time limit (train.time_limit_min="
                     f"{tc.time_limit_min:g}) is now {moved[0]}: {moved[1]} (--time-limit M "
                     "sets one)")
    if not notes:
        return cfg, None
    return replace(cfg, train=replace(tc, time_limit_min=limit)), "\n".join(notes)
