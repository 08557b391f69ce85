"""The one rule for replacing an output folder (``export --out``, ``report --out``).

A command may replace or remove only what ddpmlab wrote and marked as its own:

- every output folder carries a mark, :data:`MARK` (``.ddpmlab-output.json``), naming its kind
  (``export``, ``report``) and every file ddpmlab wrote into it;
- a folder is replaced only when it holds exactly those files (a file a user added, a run, a
  data set: refused, with one line naming the entry), and never when it is an input of the
  command, a parent of one, a run (``config.json`` or ``checkpoints/``), HOME, the current
  folder, a parent of either, or ``/``; ``''`` is refused as a name;
- the replacement is written aside first, in a sibling ``.tmp-NAME.PID/`` (:func:`staging`), and
  swapped in only when complete (:func:`commit`): the old folder is renamed to
  ``.old-NAME.PID/``, the new one renamed into place, then the old one deleted. A process killed
  at any moment leaves the old output or the new one in place, plus leftovers that the next
  command on the same ``--out`` finishes (:func:`recover`): a complete new folder wins, else
  the old one is put back; staging folders of dead processes are deleted (only when marked).

Files (PNG, ``.npz``, ``eval.json``) follow the same policy through their own marks in
:mod:`ddpmlab.io` (:func:`~ddpmlab.io.check_replaceable`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import CheckpointError
from .io import atomic_write_text, fsync_dir, read_json, write_problem

MARK = ".ddpmlab-output.json"
KINDS = {"export": "a diffusers export", "report": "the report", "import": "an imported run"}
MAX_FILES = 100_000          # a marked folder lists at most this many files
_LEFTOVER = re.compile(r"^\.(tmp|old)-(.+)\.(\d{1,10})$")


class OutputError(CheckpointError):
    """An output path that ddpmlab may not write, replace or remove."""


# ============================================================================ reading marks
def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _is_within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def read_mark(folder: Path) -> dict | None:
    """The mark of ``folder`` (a dict with ``kind``, ``complete`` and ``files``) or ``None``
    when there is none or it is not one of ours."""
    path = folder / MARK
    if path.is_symlink() or not path.is_file():
        return None
    try:
        doc = read_json(path)
    except CheckpointError:
        return None
    if not (isinstance(doc, dict) and doc.get("software") == "ddpmlab"
            and doc.get("kind") in KINDS and isinstance(doc.get("files", []), list)):
        return None
    return doc


def _entries(folder: Path, limit: int) -> list[str] | None:
    """Every entry under ``folder`` as a relative POSIX path (folders end with ``/``; a link
    is an entry, never followed); ``None`` when there are more than ``limit``."""
    out: list[str] = []
    for top, dirs, files in os.walk(folder, followlinks=False):
        rel = Path(top).relative_to(folder)
        for name in dirs:
            link = os.path.islink(os.path.join(top, name))
            out.append((rel / name).as_posix() + ("" if link else "/"))
        out += [(rel / name).as_posix() for name in files]
        if len(out) > limit:
            return None
    return out


def foreign_entry(folder: Path, kind: str) -> str | None:
    """The first entry of ``folder`` that is not a file ddpmlab wrote there as ``kind`` (its
    mark missing, of another kind, or not listing it); ``None`` when every entry is ours."""
    mark = read_mark(folder)
    if mark is None or mark.get("kind") != kind or not mark.get("complete"):
        return MARK if (folder / MARK).exists() else _first(folder)
    files = {f for f in mark["files"] if isinstance(f, str)}
    dirs = {p.as_posix() + "/" for f in files for p in Path(f).parents if str(p) != "."}
    entries = _entries(folder, len(files) + len(dirs) + 64)   # (room to name a stray one)
    if entries is None:
        return "(more entries than its mark lists)"
    for entry in sorted(entries):
        if entry == MARK or entry in dirs:
            continue
        if entry not in files or not (folder / entry).is_file() or (folder / entry).is_symlink():
            return entry
    return None


def _first(folder: Path) -> str:
    try:
        return min(p.name for p in folder.iterdir())
    except (OSError, ValueError):
        return "(unreadable)"


# ============================================================================ the rule
def _protected(out: Path, is_run: Callable[[Path], bool] | None) -> str | None:
    """Why ``out`` may never be replaced whatever it holds, or ``None``."""
    real = _resolved(out)
    here = _resolved(Path.cwd()) if os.path.isdir(".") else None
    home = _resolved(Path.home())
    if real.parent == real:
        return "is the file system's root"
    if here is not None and _is_within(here, real):
        return "is the current folder or one of its parents"
    if _is_within(home, real):
        return "is the home folder or one of its parents"
    if is_run is not None and is_run(out):
        return "is a ddpmlab run"
    return None


def check_protected(out: str | os.PathLike, what: str, *,
                    inputs: Iterable[str | os.PathLike] = (),
                    is_run: Callable[[Path], bool] | None = None) -> Path:
    """Refuse an output folder that no command may replace or write over: ``''``, a link, a
    file, an input of the command or a parent of one, the file system's root, HOME, the
    current folder or a parent of either, and a run (``is_run``: the run layout is
    :mod:`ddpmlab.layout`'s). Returns a ``Path``."""
    if os.fspath(out) == "":
        raise OutputError("--out '': give a folder name")
    out = Path(out)
    if out.is_symlink():
        raise OutputError(f"{out}: is a symbolic link; give a folder for {what}")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; give a folder for {what}")
    real = _resolved(out)
    for src in inputs:
        if _is_within(_resolved(Path(src)), real):
            raise OutputError(f"{out}: is {src} (an input of this command) or holds it; "
                              "choose another --out")
    if (why := _protected(out, is_run)) is not None:
        raise OutputError(f"{out}: {why}; ddpmlab never replaces it (choose another --out)")
    return out


def check_target(out: str | os.PathLike, kind: str, *, replace: bool,
                 inputs: Iterable[str | os.PathLike] = (), busy: str = "",
                 not_ours: str = "", legacy: Callable[[Path], bool] | None = None,
                 is_run: Callable[[Path], bool] | None = None) -> Path:
    """Before any work: may the folder ``out`` receive a new ``kind`` output? Never a folder
    that :func:`check_protected` refuses. An existing non-empty folder needs ``replace``
    (else the message ``busy``) and must hold only what an earlier ``kind`` output wrote (its
    mark lists every file), or pass ``legacy`` (an output written before marks existed);
    without a mark the message is ``not_ours``. Leftovers of a killed command are finished
    first (:func:`recover`). Returns ``out`` as a ``Path``."""
    if os.fspath(out) != "":
        for note in recover(out, kind):
            warnings.warn(note, stacklevel=2)
    what = KINDS[kind]
    out = check_protected(out, what, inputs=inputs, is_run=is_run)
    if out.is_dir() and any(out.iterdir()):
        if not replace:
            raise OutputError(busy.format(out=out) or f"{out}: exists and is not empty")
        if (bad := foreign_entry(out, kind)) is not None and not (legacy and legacy(out)):
            if not_ours and read_mark(out) is None:
                raise OutputError(not_ours.format(out=out))
            raise OutputError(f"{out}: holds {bad!r}, which ddpmlab did not write as {what}; "
                              "refusing to replace it (choose another --out)")
    _probe(out.parent)
    return out


def _probe(folder: Path) -> None:
    if (why := write_problem(folder, make=True)) is not None:
        raise OutputError(f"{folder}: cannot write there ({why})")


def _write_mark(folder: Path, kind: str, files: list[str] | None) -> None:
    atomic_write_text(folder / MARK, json.dumps({
        "software": "ddpmlab", "kind": kind, "pid": os.getpid(),
        "complete": files is not None, "files": files or []}, indent=1) + "\n")


def staging(out: Path, kind: str) -> Path:
    """A fresh sibling folder ``.tmp-NAME.PID/`` to write the new output into, marked (as
    incomplete) from the start so that a killed process's leftover is known to be ours."""
    tmp = out.parent / f".tmp-{out.name}.{os.getpid()}"
    if os.path.lexists(tmp):
        _remove_ours(tmp, kind)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise OutputError(f"{tmp}: cannot write there ({e.strerror or e})") from None
    _write_mark(tmp, kind, None)
    return tmp


def commit(tmp: Path, out: Path, kind: str,
           legacy: Callable[[Path], bool] | None = None) -> str | None:
    """Mark ``tmp`` complete (listing every file in it) and swap it in for ``out`` (which
    :func:`check_target` accepted); the old output is deleted last, once more only if it is
    ours (its mark, or ``legacy``). Returns a warning when some of it is left."""
    files = sorted(e for e in (_entries(tmp, MAX_FILES) or []) if not e.endswith("/")
                   and e != MARK)
    _write_mark(tmp, kind, files)
    old = out.parent / f".old-{out.name}.{os.getpid()}"
    if out.is_dir() and any(out.iterdir()):
        os.rename(out, old)
    elif out.is_dir():
        out.rmdir()
    try:
        os.rename(tmp, out)
    except OSError:
        if old.exists() and not os.path.lexists(out):
            os.rename(old, out)
        raise
    fsync_dir(out.parent)
    return _remove_ours(old, kind, legacy) if old.exists() else None


def discard(tmp: Path, kind: str) -> None:
    """Remove a staging folder after a failure (only if it still carries our mark)."""
    if os.path.lexists(tmp):
        _remove_ours(tmp, kind)


def _remove_ours(folder: Path, kind: str,
                 legacy: Callable[[Path], bool] | None = None) -> str | None:
    """Delete ``folder`` if it holds only what its mark says ddpmlab wrote (an incomplete
    staging folder: anything under it, since only ddpmlab writes there) or passes ``legacy``;
    else leave it and say so."""
    mark = read_mark(folder)
    if legacy is not None and mark is None and legacy(folder):
        pass
    elif mark is None or mark.get("kind") != kind:
        return f"{folder}: left in place (it holds no {KINDS[kind]} mark)"
    elif mark.get("complete") and (bad := foreign_entry(folder, kind)) is not None:
        return f"{folder}: left in place (it holds {bad!r}, which ddpmlab did not write)"
    import shutil

    errors: list[str] = []
    shutil.rmtree(folder, onerror=lambda f, p, e: errors.append(f"{p}: {e[1]}"))
    return None if not errors else f"could not delete {folder} ({errors[0]}); delete it by hand"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def recover(out: str | os.PathLike, kind: str) -> list[str]:
    """Finish what a killed command left beside ``out``: an ``.old-`` folder goes back in
    place when ``out`` is missing (unless a complete ``.tmp-`` of the same process takes its
    place), else it is deleted; ``.tmp-`` folders of dead processes are deleted. Only folders
    carrying our mark of ``kind`` are touched. Returns what was done, as messages."""
    out = Path(out)
    parent = out.parent if os.fspath(out) not in ("", ".") else None
    if parent is None or not parent.is_dir():
        return []
    notes: list[str] = []
    try:
        names = [p.name for p in parent.iterdir()]
    except OSError:
        return []
    found = [(m.group(1), int(m.group(3)), parent / n) for n in names
             if (m := _LEFTOVER.match(n)) and m.group(2) == out.name]
    for which, pid, path in sorted(found, key=lambda f: f[0] == "tmp"):
        if _alive(pid) or read_mark(path) is None or read_mark(path).get("kind") != kind:
            continue
        if which == "old" and not os.path.lexists(out):
            tmp = parent / f".tmp-{out.name}.{pid}"
            new = read_mark(tmp) if tmp.is_dir() else None
            if new is not None and new.get("complete"):
                os.rename(tmp, out)
                notes.append(f"{out}: put in place the {KINDS[kind]} that an interrupted "
                             "command had finished")
                notes.append(_remove_ours(path, kind) or f"{path}: deleted the one it replaced")
            else:
                os.rename(path, out)
                notes.append(f"{out}: put back the {KINDS[kind]} that an interrupted command "
                             "was replacing")
        elif os.path.lexists(path):
            notes.append(_remove_ours(path, kind) or f"{path}: deleted what an interrupted "
                         "command left")
    return notes
