"""The layout of a run directory: the one module that knows its file names.

::

    RUN/config.json          the resolved Config (rebuilding the model needs nothing else)
    RUN/metrics.jsonl        one JSON object per logged step, and events (``precision``,
                             ``time_budget``, ``eval``)
    RUN/samples.png          the end-of-training sample grid
    RUN/samples/             grids drawn during training (``step_XXXXXXXX.png``) and by
                             ``ddpmlab sample`` (``sample_SAMPLER-STEPS_seedSEED.png``)
    RUN/figures/             the tutorial's figures (``ddpmlab figures``, ``ddpmlab eval``)
    RUN/report/              the HTML report (``ddpmlab report``)
    RUN/eval.json            the results of the last ``ddpmlab eval`` (the report shows them)
    RUN/tensorboard/         TensorBoard event files (``train.tensorboard: true``)
    RUN/distill.json         a distilled run's teacher (path, checkpoint, digest), plan and
                             completed stages (``ddpmlab distill``)
    RUN/phema/               post-hoc EMA snapshots ``step_XXXXXXXX.safetensors`` (``train.phema``;
                             what a file holds is :mod:`ddpmlab.train.phema`'s)
    RUN/checkpoints/         one folder per saved step, ``step_XXXXXXXX`` (:func:`step_name`,
                             parsed strictly by :func:`step_of`; what a folder holds is
                             :mod:`ddpmlab.train.checkpoint`'s)
    RUN/.ddpmlab.lock        held (flock) by the process training here; ``.ddpmlab.lock.json``
                             names it (PID, host, command, start time)
    RUN/.replaced-PID/       a run that ``--force`` moved aside until the new run's first
                             checkpoint exists (then deleted; put back if the new run fails)

It is a base piece (it imports only the config, errors and file I/O) so that the trainer can
prepare and write a run without knowing the run layer (:mod:`ddpmlab.runs`) that composes
training, sampling, evaluation and figures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import CheckpointError
from .io import atomic_write_text, loads_json, read_json, write_problem

LOCK_NAME = ".ddpmlab.lock"
OWNER_NAME = ".ddpmlab.lock.json"
ASIDE_PREFIX = ".replaced-"
# A step's names: its checkpoint folder ``checkpoints/step_XXXXXXXX`` (others there are .tmp-*)
# and its training grid ``samples/step_XXXXXXXX.png``: 8 digits, more only past 99,999,999.
STEP_PREFIX = "step_"
MAX_STEP = 10**12 - 1      # the largest step a name may carry (years of training at 10k steps/s)
_STEP_NAME = re.compile(r"step_([0-9]{8,12})", re.ASCII)
# What a run consists of: ``--force`` moves exactly these aside, nothing else of a folder.
RUN_ENTRIES = ("config.json", "metrics.jsonl", "samples.png", "samples", "figures", "report",
               "eval.json", "checkpoints", "tensorboard", "phema", "distill.json")
_OURS = (LOCK_NAME, OWNER_NAME)


def step_name(step: int) -> str:
    """``step_XXXXXXXX``: the name of step ``step``'s checkpoint folder (and, with ``.png``, of
    its training grid); 0 <= step <= :data:`MAX_STEP`."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise ValueError(f"step={step!r}: a step name needs an integer in 0..{MAX_STEP}")
    return f"{STEP_PREFIX}{step:08d}"


def step_of(name: str) -> int | None:
    """The step a name written by :func:`step_name` carries, else None. Strict: only the exact
    name :func:`step_name` gives for that step counts (ASCII digits, 8 of them below 10**8, no
    extra leading zeros, at most :data:`MAX_STEP`): ``step_1``, ``step_000000001``,
    ``step_99999999999999999999999`` or ``step_0000000١`` name no step."""
    m = _STEP_NAME.fullmatch(name)
    if m is None:
        return None
    step = int(m.group(1))
    return step if step_name(step) == name else None


def default_run_dir(dataset: str, root: str | os.PathLike = "runs") -> Path:
    """Where ``ddpmlab train`` puts a run without ``--out``: ``runs/<data set name>`` (a path's
    stem), or ``runs/<name>-2``, ``-3``, ... when that already holds something; never outside
    ``root`` (a name like ``..`` gives ``runs/run``)."""
    name = Path(dataset).stem if ("/" in dataset or "." in dataset) else dataset
    name = name.lstrip(".")  # "--dataset .." must not make runs/.. (the current folder)
    base = Path(root) / (name or "run")
    cand, k = base, 2
    while cand.exists() and any(cand.iterdir()):
        cand = base.with_name(f"{base.name}-{k}")
        k += 1
    return cand


def sample_name(sampler: str, steps: int, seed: int) -> str:
    """``sample_SAMPLER-STEPS_seedSEED.png``: the default file of ``ddpmlab sample``'s grid in
    ``RUN/samples/``."""
    return f"sample_{sampler}-{steps}_seed{seed}.png"


def remove_tree(path: Path) -> str | None:
    """Delete a file or folder; ``None`` when it is gone, else the first error as text (never
    silently ignored: the caller says what is left)."""
    errors: list[str] = []
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, onerror=lambda f, p, e: errors.append(f"{p}: {e[1]}"))
    except OSError as e:
        errors.append(f"{path}: {e.strerror or e}")
    return errors[0] if errors else None


class RunLock:
    """An exclusive lock on a run directory (``filelock``: flock on ``RUN/.ddpmlab.lock``).

    The kernel releases a flock when its process dies, so a lock left by a killed process is
    free again; the owner file it left (``.ddpmlab.lock.json``) is how that is detected and
    reported (:attr:`stale`), never silently. A lock held by a live process is refused."""

    def __init__(self, run: RunDir, command: str) -> None:
        from filelock import FileLock, Timeout

        self.run = run
        self.stale: str | None = None
        self._lock = FileLock(str(run.root / LOCK_NAME), timeout=0)
        owner_file = run.root / OWNER_NAME
        try:
            self._lock.acquire()
        except Timeout:
            raise CheckpointError(f"{run.root}: in use by {_describe_owner(owner_file)}; wait "
                                  "for it to finish or stop it first") from None
        except OSError as e:
            raise CheckpointError(f"{run.root}: cannot lock the run directory "
                                  f"({e.strerror or e})") from None
        if owner_file.exists():
            self.stale = (f"{run.root}: the previous {_describe_owner(owner_file)} ended without "
                          "releasing this run directory (killed?); its lock is free, taking it")
        try:
            atomic_write_text(owner_file, json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        except OSError as e:
            self._lock.release()
            raise CheckpointError(f"{owner_file}: cannot write ({e.strerror or e})") from None

    def release(self) -> None:
        if self._lock.is_locked:
            (self.run.root / OWNER_NAME).unlink(missing_ok=True)
            self._lock.release()


def _by_step(folder: Path, suffix: str, kind) -> list[tuple[int, Path]]:
    """(step, path) of the entries of ``folder`` named ``step_XXXXXXXX`` + ``suffix`` (strictly:
    :func:`step_of`) that pass ``kind`` (e.g. ``Path.is_dir``), by step; [] without the folder."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        name = p.name[:len(p.name) - len(suffix)] if p.name.endswith(suffix) else None
        step = None if name is None else step_of(name)
        if step is not None and kind(p):
            found.append((step, p))
    return sorted(found)


def _describe_owner(owner_file: Path) -> str:
    try:
        o = read_json(owner_file)
        return (f"ddpmlab {str(o['command'])[:40]} (PID {int(o['pid'])} on "
                f"{str(o['host'])[:64]}, since {str(o['started'])[:20]})")
    except Exception:  # a missing or damaged owner file still means "another process"
        return "another ddpmlab process"


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory, and the operations on it as a whole."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    # ------------------------------------------------------------------ paths
    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def grid(self) -> Path:
        return self.root / "samples.png"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def eval_results(self) -> Path:
        return self.root / "eval.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def phema(self) -> Path:
        return self.root / "phema"

    @property
    def distill(self) -> Path:
        """``distill.json``: a distilled run's teacher, plan and completed stages
        (:mod:`ddpmlab.distill_run`)."""
        return self.root / "distill.json"

    def is_run(self) -> bool:
        return self.config.is_file()

    def checkpoint_dir(self, step: int) -> Path:
        """``checkpoints/step_XXXXXXXX``: the folder of step ``step``'s checkpoint."""
        return self.checkpoints / step_name(step)

    def checkpoint_dirs(self) -> list[Path]:
        """Complete checkpoint folders (``step_XXXXXXXX``, strictly: :func:`step_of`), oldest
        first."""
        return [p for _, p in _by_step(self.checkpoints, "", Path.is_dir)]

    def training_grid(self, step: int) -> Path:
        """``samples/step_XXXXXXXX.png``: the grid drawn at step ``step`` of training."""
        return self.samples / f"{step_name(step)}.png"

    def training_grids(self) -> list[tuple[int, Path]]:
        """(step, path) of every training grid in ``samples/`` (strictly named), oldest first."""
        return _by_step(self.samples, ".png", Path.is_file)

    def phema_snapshot(self, step: int) -> Path:
        """``phema/step_XXXXXXXX.safetensors``: the post-hoc EMA snapshot of step ``step``."""
        return self.phema / f"{step_name(step)}.safetensors"

    def phema_snapshots(self) -> list[tuple[int, Path]]:
        """(step, path) of every post-hoc EMA snapshot (strictly named), oldest first."""
        return _by_step(self.phema, ".safetensors", Path.is_file)

    def sample_grid(self, sampler: str, steps: int, seed: int) -> Path:
        """``samples/sample_SAMPLER-STEPS_seedSEED.png`` (:func:`sample_name`)."""
        return self.samples / sample_name(sampler, steps, seed)

    def edit_grid(self, operation: str, sampler: str, steps: int, seed: int) -> Path:
        """``samples/edit_OPERATION_SAMPLER-STEPS_seedSEED.png``: the default grid of
        ``ddpmlab edit``."""
        return self.samples / f"edit_{operation}_{sampler}-{steps}_seed{seed}.png"

    # ------------------------------------------------------------------ reading
    def read_config(self) -> Config:
        """The run's resolved config; a folder without one is not a run."""
        if not self.root.is_dir():
            raise CheckpointError(f"{self.root}: no such run directory")
        if not self.is_run():
            raise CheckpointError(f"{self.root}: not a ddpmlab run directory (no config.json)")
        return Config.from_file(self.config)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every JSON object of ``metrics.jsonl`` in order (blank, broken or non-object lines
        are skipped: a crash can leave a last line half-written); ``[]`` when there is none."""
        try:
            text = self.metrics.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                rec = loads_json(line, str(self.metrics))   # (bounded: depth, integers)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    # ------------------------------------------------------------------ writing
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl``."""
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def trim_metrics(self) -> None:
        """Cut a last line that a crash left without its newline (best effort), so a resumed
        run's records start on a line of their own instead of being glued to a broken one."""
        try:
            data = self.metrics.read_bytes()
            if data and not data.endswith(b"\n"):
                os.truncate(self.metrics, data.rfind(b"\n") + 1)
        except OSError:
            pass

    # ------------------------------------------------------------------ preparing
    def check_new(self, force: bool) -> None:
        """Before a new run writes here: refuse another run (unless ``force``) or a non-empty
        folder that is not a run (even with ``force``: it replaces only a run), and make sure the
        folder is writable. Writes nothing else."""
        rd = self.root
        if rd.exists() and not rd.is_dir():
            raise CheckpointError(f"{rd}: exists and is not a directory")
        if self.config.exists() and not force:
            raise CheckpointError(
                f"{rd}: already holds a run; use --resume to continue it, --force to replace "
                "it, or choose another --out")
        if (rd.is_dir() and not self.config.exists()
                and any(p.name not in _OURS and not p.name.startswith(ASIDE_PREFIX)
                        for p in rd.iterdir())):
            # (--force too: it replaces a run, never a folder of other files: HOME, '.', a
            # parent of runs)
            raise CheckpointError(f"{rd}: is not empty and holds no ddpmlab run; refusing to "
                                  "write into it (choose another --out, or an empty folder"
                                  f"{'; --force replaces only a run' if force else ''})")
        if (why := write_problem(rd, make=True)) is not None:
            raise CheckpointError(f"{rd}: cannot write there ({why})")

    def check_resume(self) -> None:
        if not self.is_run():
            raise CheckpointError(f"{self.root}: not a ddpmlab run directory (no config.json)")
        if self.checkpoints.is_symlink():
            raise CheckpointError(f"{self.checkpoints}: is a symbolic link; ddpmlab keeps a "
                                  "run's checkpoints inside its directory")

    def lock(self, command: str) -> RunLock:
        """Take the run directory's lock (it must exist); one line if another process has it."""
        return RunLock(self, command)

    def create(self, config_json: str, force: bool) -> Path | None:
        """Start a new run here: (``force``) move the old run aside (:meth:`set_aside`), write
        the config, make ``samples/``, start ``metrics.jsonl``. Call only once the data are read
        and the model is built, so that a bad input leaves an old run as it was. Returns the
        folder the old run was moved to: :meth:`drop_aside` it once the new run has a complete
        checkpoint, :meth:`put_back` it if the new run fails before."""
        aside = self.set_aside() if force else None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.config, config_json)
            self.samples.mkdir(exist_ok=True)
            self.metrics.unlink(missing_ok=True)
        except OSError as e:
            if aside is not None:
                self.put_back(aside)
            raise CheckpointError(f"{self.root}: cannot write there ({e.strerror or e})") from None
        return aside

    def write_config(self, config_json: str) -> None:
        """Replace ``config.json`` (atomically) with a config resolved during training (the
        max_steps a time budget chose)."""
        try:
            atomic_write_text(self.config, config_json)
        except OSError as e:
            raise CheckpointError(f"{self.config}: cannot write ({e.strerror or e})") from None

    # ------------------------------------------------------------------ --force, by renames
    def set_aside(self) -> Path | None:
        """Move the run's own entries (:data:`RUN_ENTRIES`) into ``RUN/.replaced-PID/`` by
        renames; nothing is deleted. ``None`` when there was nothing to move."""
        present = [n for n in RUN_ENTRIES if os.path.lexists(self.root / n)]
        if not present:
            return None
        aside = self.root / f"{ASIDE_PREFIX}{os.getpid()}"
        moved: list[str] = []
        try:
            aside.mkdir()
            for name in present:
                os.rename(self.root / name, aside / name)
                moved.append(name)
        except OSError as e:
            for name in moved:
                os.rename(aside / name, self.root / name)
            aside.rmdir() if aside.is_dir() else None
            raise CheckpointError(f"{self.root}: cannot move the old run aside for --force "
                                  f"({e.strerror or e}); nothing was changed") from None
        return aside

    def put_back(self, aside: Path) -> None:
        """Undo :meth:`set_aside`: the new run's entries go, the old ones come back."""
        for entry in sorted(aside.iterdir()):
            target = self.root / entry.name
            if os.path.lexists(target) and (err := remove_tree(target)):
                raise CheckpointError(f"cannot put the replaced run back from {aside} ({err}); "
                                      "its files are all still there")
            os.rename(entry, target)
        aside.rmdir()

    def drop_aside(self, aside: Path) -> str | None:
        """Delete the replaced run for good; a message if some of it could not be deleted."""
        err = remove_tree(aside)
        return None if err is None else (f"could not delete the replaced run in {aside} "
                                         f"({err}); delete it by hand")

    def recover(self) -> list[str]:
        """:meth:`recover_aside` for a reader (``sample``, ``--resume`` before it reads the
        config): only when something was left aside, and only when no process holds the lock
        (a live ``--force`` owns its folder)."""
        if not self.root.is_dir() or not any(self.root.glob(ASIDE_PREFIX + "*")):
            return []
        try:
            lock = self.lock("recover")
        except CheckpointError:
            return []
        try:
            return self.recover_aside()
        finally:
            lock.release()

    def recover_aside(self) -> list[str]:
        """Under the lock: finish what a killed ``--force`` left. A new run with a complete
        checkpoint keeps it (the old run is deleted); one without gives way to the old run,
        which is put back. Returns what was done, as messages."""
        notes = []
        for aside in sorted(self.root.glob(ASIDE_PREFIX + "*")):
            if not aside.is_dir():
                continue
            if self.checkpoint_dirs():
                notes.append(self.drop_aside(aside) or f"{aside}: deleted the run that an "
                             "interrupted --force replaced (the new run has a checkpoint)")
            else:
                self.put_back(aside)
                notes.append(f"{self.root}: put back the run that an interrupted --force had "
                             "moved aside (the new run never reached a checkpoint)")
        return notes
