"""The run session: one process's tenure of a run directory, from its checks to its release.

A command that writes a run (``train``, ``train --resume``, ``train --force``) goes through one
:class:`RunSession`, a context manager over the primitives of :class:`~ddpmlab.layout.RunDir`:

1. :meth:`RunSession.check` before any data are read: a resume needs a run with a complete
   checkpoint and takes the lock (finishing what a killed ``--force`` left); a new run needs an
   empty folder, or a run and ``--force``. Nothing is written yet, so a bad input that fails
   after this leaves the folder as it was.
2. :meth:`RunSession.start` once the data are read and the model is built: a new run takes the
   lock, checks again (another process may have been first), moves an old run aside for
   ``--force`` (by renames) and writes ``config.json``.
3. :meth:`RunSession.committed` after each complete checkpoint: the first one deletes the run
   that ``--force`` moved aside.
4. :meth:`RunSession.close` (``__exit__``) puts that run back if no checkpoint superseded it,
   and releases the lock.

Only the main process of a distributed run acts (``active=False`` elsewhere makes every method
a no-op); the trainer broadcasts its verdicts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .config import Config
from .errors import CheckpointError
from .layout import RunDir, RunLock


def read_resume_config(run_dir: str | Path, log: Callable[[str], None] = print) -> Config:
    """The config of the run that ``train --resume RUN_DIR`` continues: what a killed
    ``--force`` left is recovered first (said through ``log``); one line if there is no run."""
    run = RunDir(run_dir)
    for note in run.recover():
        log(f"ddpmlab: {note}")
    if not run.is_run():
        raise CheckpointError(f"{run.root}: not a ddpmlab run directory (no config.json)")
    return run.read_config()


class RunSession:
    """A training process's tenure of ``run`` (see the module docstring).

    ``resume``: continue the run there; ``force``: replace the run there. ``log`` receives the
    notes of a stale lock or a recovered ``--force``.
    """

    def __init__(self, run: RunDir, *, resume: bool = False, force: bool = False,
                 log: Callable[[str], None] = print, active: bool = True) -> None:
        self.run = run
        self.resume = resume
        self.force = force
        self.log = log
        self.active = active
        self._lock: RunLock | None = None
        self._aside: Path | None = None  # the run --force moved aside, until a checkpoint

    @property
    def command(self) -> str:
        return "train --resume" if self.resume else "train --force" if self.force else "train"

    # ------------------------------------------------------------------ the four stages
    def check(self, prepare_resume: Callable[[], None] | None = None) -> None:
        """Before any data are read (see the module docstring, 1.). ``prepare_resume`` runs
        under the lock before a resume looks for its checkpoint (the trainer's clean-up of what
        a crash left in ``checkpoints/``)."""
        if not self.active:
            return
        try:
            if self.resume:
                self.run.check_resume()
                self._take_lock()
                if prepare_resume is not None:
                    prepare_resume()
                if not self.run.checkpoint_dirs():
                    raise CheckpointError(
                        f"{self.run.root}: holds no complete checkpoint to resume from")
            else:  # (locked in start(), once the data are read: a bad input leaves no lock)
                self.run.check_new(self.force)
        except BaseException:
            self.close()
            raise

    def start(self, config_json: str) -> None:
        """A new run's first write, once its data and model are ready (2.)."""
        if not self.active or self.resume:
            return
        self._take_lock()
        self.run.check_new(self.force)  # (again, locked: another process may have been first)
        self._aside = self.run.create(config_json, self.force)

    def committed(self) -> None:
        """A complete checkpoint is on disk (3.): the replaced run can go."""
        if self._aside is not None:
            aside, self._aside = self._aside, None
            if (msg := self.run.drop_aside(aside)) is not None:
                self.log(f"ddpmlab: warning: {msg}")

    def close(self) -> None:
        """Put back a replaced run that no checkpoint superseded; release the lock (4.)."""
        if self._aside is not None:
            aside, self._aside = self._aside, None
            self.run.put_back(aside)
            self.log(f"ddpmlab: no checkpoint was written; the run that --force replaced is "
                     f"back in {self.run.root}")
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    @property
    def replacing(self) -> bool:
        """Whether a run that ``--force`` moved aside is still waiting for a checkpoint."""
        return self._aside is not None

    def _take_lock(self) -> None:
        self._lock = self.run.lock(self.command)
        for note in ([self._lock.stale] if self._lock.stale else []) + self.run.recover_aside():
            self.log(f"ddpmlab: {note}")
