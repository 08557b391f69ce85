"""Files: atomic writes, one safetensors reader and writer, one JSON reader.

Every file ddpmlab writes goes through :func:`atomic_write_bytes`: a temporary name in the same
folder, ``fsync``, ``os.replace``, then an ``fsync`` of the folder, so a crash leaves either the
old file or the new one, never half of it. Tensors are read only from ``.safetensors`` files
(:func:`load_tensors`); nothing is ever unpickled. Every failure raises
:class:`~ddpmlab.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entry list to disk (best effort: some file systems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync, rename: all or nothing."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write ({e.strerror or e})") from None
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8; a path that is not UTF-8 inside ``text`` (Python holds its bytes as lone
    surrogates) is written as ``\\udcff`` escapes instead of failing the write."""
    atomic_write_bytes(path, text.encode("utf-8", errors="backslashreplace"))


def tensors_to_bytes(tensors: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file's bytes (tensors moved to the CPU, made contiguous)."""
    from safetensors.torch import save

    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return save(cpu, metadata=metadata or {"format": "ddpmlab", "version": "1"})


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 fsync: bool = True) -> None:
    """Write ``tensors`` as a ``.safetensors`` file (atomically unless ``fsync=False``)."""
    data = tensors_to_bytes(tensors)
    if fsync:
        atomic_write_bytes(path, data)
    else:
        Path(path).write_bytes(data)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file; anything else is refused (nothing is ever unpickled)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path}: refusing to load a {path.suffix or 'suffix-less'} file; ddpmlab reads only "
            ".safetensors weights (pickled .pt/.pth/.ckpt files can run code when loaded)"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    from safetensors.torch import load

    try:
        return load(path.read_bytes())
    except Exception as e:  # safetensors raises its own SafetensorError on bad headers
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None


# ----------------------------------------------------------------------------- JSON
MAX_JSON_BYTES = 16 << 20      # any JSON file ddpmlab reads (configs have their own 1 MiB)
MAX_JSON_DEPTH = 64            # nesting of arrays and objects
MAX_INT_DIGITS = 4300          # Python's own limit for int <-> str (a longer one cannot print)


class _JSONLimit(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _JSONLimit(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _JSONLimit(f"an integer of {digits:,} digits (at most {MAX_INT_DIGITS:,})")
    return int(text)


def _depth_over(doc: Any, limit: int) -> bool:
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items if isinstance(v, (dict, list)))
    return False


def loads_json(text: str | bytes, source: str, error: type[Exception] = CheckpointError) -> Any:
    """Parse JSON, bounded: a duplicate key, an integer over :data:`MAX_INT_DIGITS` digits or
    nesting deeper than :data:`MAX_JSON_DEPTH` is refused like any malformed text, with one
    ``error`` naming ``source`` (never a RecursionError or a silently dropped value)."""
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_int=_bounded_int)
    except RecursionError:
        raise error(f"{source}: not valid JSON (nested deeper than {MAX_JSON_DEPTH} "
                    "levels)") from None
    except (ValueError, UnicodeDecodeError) as e:   # (JSONDecodeError and _JSONLimit too)
        raise error(f"{source}: not valid JSON ({' '.join(str(e).split())[:160]})") from None
    if _depth_over(doc, MAX_JSON_DEPTH):
        raise error(f"{source}: not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels)")
    return doc


def read_regular(path: str | os.PathLike, max_bytes: int,
                 error: type[Exception] = CheckpointError) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (a FIFO, a device, a folder, a
    dangling link or a larger file is refused with one ``error`` naming it, never read)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        dangling = os.path.islink(path)
        raise error(f"{path}: " + ("a link to a missing file" if dangling else
                                   "file not found")) from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file")
    if st.st_size > max_bytes:
        raise error(f"{path}: {st.st_size:,} bytes is too large (at most {max_bytes:,})")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: more than {max_bytes:,} bytes is too large")
    return data


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES,
              error: type[Exception] = CheckpointError) -> Any:
    """Parse a JSON file (:func:`read_regular`, :func:`loads_json`); a missing, special, too
    large or malformed file raises ``error`` naming it."""
    data = read_regular(path, max_bytes, error)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    return loads_json(text, str(path), error)


# ----------------------------------------------------------------------------- provenance
# What ddpmlab writes carries a mark, so that an output path is replaced only when it holds a
# file ddpmlab wrote (anything else needs --force): PNGs a ``Software: ddpmlab`` text chunk,
# sample .npz files a ``ddpmlab`` member beside ``arr_0`` (readers of ``arr_0`` ignore it).
SOFTWARE = "ddpmlab"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_our_png(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG with a ``Software: ddpmlab`` text chunk before its pixels."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG_MAGIC:
                return False
            for _ in range(64):  # the header chunks; the text chunks come before IDAT
                head = f.read(8)
                if len(head) < 8:
                    return False
                size, kind = int.from_bytes(head[:4], "big"), head[4:]
                if kind in (b"IDAT", b"IEND") or size > 1 << 20:
                    return False
                body = f.read(size)
                f.seek(4, os.SEEK_CUR)  # CRC
                if kind == b"tEXt" and body == b"Software\0" + SOFTWARE.encode():
                    return True
    except OSError:
        return False
    return False


def is_our_npz(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a samples .npz that ddpmlab wrote (``arr_0``, ``labels``, mark)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return {"arr_0.npy", f"{SOFTWARE}.npy"} <= names <= {"arr_0.npy", "labels.npy",
                                                         f"{SOFTWARE}.npy"}


def is_our_eval(path: str | os.PathLike) -> bool:
    """Whether ``path`` is what ``ddpmlab eval`` writes: a JSON object with its metrics."""
    try:
        if os.stat(path).st_size > 1 << 24:
            return False
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"fid", "features", "memorization"} <= set(doc)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= 1e300


def eval_doc_problem(doc: Any) -> str | None:
    """What in an ``eval.json`` document is not as ``ddpmlab eval`` writes it (the fields the
    report shows, with their types), or None: a hand-edited or hostile file is left out of the
    report with a note instead of failing it (``{"fid": 1}`` used to be a KeyError)."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    for key in ("fid", "kid_mean", "kid_std", "precision", "recall"):
        if not _number(doc.get(key)):
            return f"{key!r} is not a number"
    if not isinstance(doc.get("checkpoint", ""), str):
        return "'checkpoint' is not a string"
    nested = {"baseline": ("fid_mean",), "classifier": ("confident_share", "confidence"),
              "bits_per_dim": ("total",), "memorization": ()}
    for key, numbers in nested.items():
        value = doc.get(key)
        if not value:
            continue
        if not isinstance(value, dict) or not all(_number(value.get(k)) for k in numbers):
            return f"{key!r} is not an object with {', '.join(numbers) or 'its values'}"
    cls, mem = doc.get("classifier") or {}, doc.get("memorization") or {}
    if cls.get("real_confident_share") is not None and not _number(cls["real_confident_share"]):
        return "'classifier.real_confident_share' is not a number"
    for key in ("share", "threshold"):
        if key in mem and not _number(mem[key]):
            return f"'memorization.{key}' is not a number"
    return None


_OURS = {"png": (is_our_png, "a PNG"), "npz": (is_our_npz, "a samples .npz"),
         "json": (is_our_eval, "an eval result")}


def check_replaceable(path: str | os.PathLike, kind: str, force: bool) -> None:
    """Before any work: refuse a directory, (unless ``force``) an existing file that does not
    carry ddpmlab's mark for ``kind`` (``png``, ``npz`` or ``json``), and a folder that cannot
    take the file (a read-only run)."""
    path = Path(path)
    ours, what = _OURS[kind]
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give a file path")
    if path.exists() and not force and not ours(path):
        raise CheckpointError(f"{path}: exists and is not {what} written by ddpmlab; refusing "
                              "to overwrite it (use --force, or another path)")
    _check_writable(path)


def _check_writable(path: Path) -> None:
    """The folder ``path`` goes into (or its nearest existing parent, where it will be made)
    takes a file now, not after the work (a read-only run, a file where a folder should be)."""
    folder = path.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CheckpointError(f"{path}: cannot write there ({folder} is not a folder)")
    if (why := write_problem(folder)) is not None:
        raise CheckpointError(f"{path}: cannot write there ({why})")


def write_problem(folder: Path, make: bool = False) -> str | None:
    """Why a file cannot be written into ``folder`` now (None: it can), found by writing and
    deleting an empty probe file; ``make`` creates the folder (and its parents) first. The one
    writability check of every command, each raising its own error with this reason."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        if make:
            folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return str(e.strerror or e)
    return None


def png_bytes(image: Any) -> bytes:
    """A PIL image as PNG bytes carrying ddpmlab's mark (every PNG ddpmlab writes but the
    matplotlib figures, which set the same ``Software`` text themselves)."""
    from io import BytesIO

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", SOFTWARE)
    buf = BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
