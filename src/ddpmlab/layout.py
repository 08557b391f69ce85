"""The layout of a run directory: the one module that knows its file names.

::

    RUN/config.json          the resolved Config (rebuilding the model needs nothing else)
    RUN/metrics.jsonl        one JSON object per logged step (and one per ``eval``)
    RUN/samples.png          the end-of-training sample grid
    RUN/samples/             grids drawn during training and by ``ddpmlab sample``
    RUN/figures/             the tutorial's figures (``ddpmlab figures``, ``ddpmlab eval``)
    RUN/report/              the HTML report
    RUN/checkpoints/         one folder per saved step (:mod:`ddpmlab.train.checkpoint`)

It is a base piece (it imports only the config, errors and file I/O) so that the trainer can
prepare and write a run without knowing the run layer (:mod:`ddpmlab.runs`) that composes
training, sampling, evaluation and figures.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import CheckpointError
from .io import atomic_write_text


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

    def is_run(self) -> bool:
        return self.config.is_file()

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
                rec = json.loads(line)
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
        folder that is not a run, and make sure the folder is writable. Writes nothing else."""
        rd = self.root
        if rd.exists() and not rd.is_dir():
            raise CheckpointError(f"{rd}: exists and is not a directory")
        if self.config.exists() and not force:
            raise CheckpointError(
                f"{rd}: already holds a run; use --resume to continue it, --force to replace "
                "it, or choose another --out")
        if rd.is_dir() and not self.config.exists() and any(rd.iterdir()) and not force:
            raise CheckpointError(f"{rd}: is not empty and holds no ddpmlab run; refusing to "
                                  "write into it (use --force, or choose another --out)")
        try:
            rd.mkdir(parents=True, exist_ok=True)
            probe = rd / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(f"{rd}: cannot write there ({e.strerror or e})") from None

    def check_resume(self) -> None:
        if not self.is_run():
            raise CheckpointError(f"{self.root}: not a ddpmlab run directory (no config.json)")

    def create(self, config_json: str, force: bool) -> None:
        """Start a new run here: (``force``) drop the old run's checkpoints, write the config,
        make ``samples/``, start ``metrics.jsonl`` afresh. Call only once the data are read
        and the model is built, so that a bad input leaves an old run as it was."""
        if force:
            shutil.rmtree(self.checkpoints, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, config_json)
        self.samples.mkdir(exist_ok=True)
        self.metrics.unlink(missing_ok=True)
