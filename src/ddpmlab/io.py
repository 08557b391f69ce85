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
    atomic_write_bytes(path, text.encode("utf-8"))


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


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing or malformed file raises CheckpointError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


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


_OURS = {"png": (is_our_png, "a PNG"), "npz": (is_our_npz, "a samples .npz"),
         "json": (is_our_eval, "an eval result")}


def check_replaceable(path: str | os.PathLike, kind: str, force: bool) -> None:
    """Before any work: refuse a directory, and (unless ``force``) an existing file that does
    not carry ddpmlab's mark for ``kind`` (``png``, ``npz`` or ``json``)."""
    path = Path(path)
    ours, what = _OURS[kind]
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give a file path")
    if path.exists() and not force and not ours(path):
        raise CheckpointError(f"{path}: exists and is not {what} written by ddpmlab; refusing "
                              "to overwrite it (use --force, or another path)")


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
