"""CIFAR-10: python (pickle) or binary batches, or a folder holding ``cifar-10-batches-py``/``-bin``.

``train`` = the ``data_batch_*`` files in numeric order, ``test`` = ``test_batch``. The python
batches are pickles: they are read only through :class:`_NumpyOnlyUnpickler`, which rebuilds
plain data and NumPy arrays and refuses every other global (no code can run from a batch).
"""

from __future__ import annotations

import codecs
import io
import pickle
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError

try:
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # NumPy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]

__all__ = ["CIFAR10_CLASSES", "find_cifar", "load_cifar"]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)


def find_cifar(path: Path) -> tuple[Path, str] | None:
    """(folder, "py" | "bin") when ``path`` is, or holds, CIFAR-10 batches."""
    for folder in (path, path / "cifar-10-batches-py", path / "cifar-10-batches-bin"):
        if not folder.is_dir():
            continue
        if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
            return folder, "py"
        if (folder / "data_batch_1.bin").is_file() or (folder / "test_batch.bin").is_file():
            return folder, "bin"
    return None


def _cifar_batches(folder: Path, fmt: str, split: str) -> list[Path]:
    ext = ".bin" if fmt == "bin" else ""
    train = []
    for p in folder.iterdir():
        stem = p.name[: len(p.name) - len(ext)] if ext and p.name.endswith(ext) else p.name
        if (p.name.endswith(ext) and stem.startswith("data_batch_")
                and stem[len("data_batch_"):].isdigit() and p.is_file()):
            train.append((int(stem[len("data_batch_"):]), p))
    train_paths = [p for _, p in sorted(train)]
    test_paths = [folder / f"test_batch{ext}"] if (folder / f"test_batch{ext}").is_file() else []
    if split in ("train", "all") and not train_paths:
        raise DataError(f"{folder}: CIFAR-10 folder without data_batch_1{ext}..5{ext} "
                        f"(needed for split={split!r})")
    if split in ("test", "all") and not test_paths:
        raise DataError(f"{folder}: CIFAR-10 folder without test_batch{ext} "
                        f"(needed for split={split!r})")
    return {"train": train_paths, "test": test_paths, "all": train_paths + test_paths}[split]


def load_cifar(folder: Path, fmt: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    read = _read_cifar_bin if fmt == "bin" else _read_cifar_py
    parts = [read(p) for p in _cifar_batches(folder, fmt, split)]
    images = np.concatenate([x for x, _ in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([y for _, y in parts]).astype(np.int64)
    return images, labels, _cifar_classes(folder, fmt)


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Binary batches: records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if raw.size == 0 or raw.size % 3073:
        raise DataError(f"{path}: size {raw.size} bytes is not a multiple of 3073 "
                        "(1 label byte + 3072 pixels per CIFAR-10 record)")
    records = raw.reshape(-1, 3073)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{path}: label {int(labels.max())} is not a CIFAR-10 class 0..9")
    return records[:, 1:], labels


# Bounds on a pickle (a real CIFAR-10 batch is 31 MB and about 40,000 opcodes): the file size,
# the opcodes executed, and the wall time; a limit reached is a DataError naming the file.
MAX_PICKLE_BYTES = 256 << 20
MAX_META_BYTES = 1 << 20
MAX_OPCODES = 2_000_000
MAX_SECONDS = 30.0
# Opcodes that hash a value built by the pickle (dict keys, set members): a shared, nested
# tuple as a key costs exponential time to hash, so keys must be plain scalars.
_HASHING = {pickle.SETITEM[0], pickle.SETITEMS[0], pickle.DICT[0]}
_SETS = {pickle.EMPTY_SET[0], pickle.ADDITEMS[0], pickle.FROZENSET[0]}


class _BoundedDispatch(dict):
    """The pure-Python unpickler's opcode table, counting every opcode it hands out."""

    def __init__(self, base: dict, owner: _NumpyOnlyUnpickler) -> None:
        super().__init__(base)
        self.owner = owner
        self.count = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def __getitem__(self, op: int):
        self.count += 1
        u = self.owner
        if self.count > MAX_OPCODES or (self.count % 1024 == 0
                                        and time.monotonic() > self.deadline):
            raise DataError(f"{u.path}: refusing a pickle this large (over {MAX_OPCODES:,} "
                            f"opcodes or {MAX_SECONDS:g} s); a CIFAR-10 batch needs far fewer")
        if op in _SETS:
            raise DataError(f"{u.path}: refusing a set in a pickle (CIFAR-10 batches have none)")
        if op in _HASHING:
            u.check_keys(op)
        return dict.__getitem__(self, op)


class _NumpyOnlyUnpickler(pickle._Unpickler):  # the Python one: each opcode can be checked
    """Rebuilds plain data and NumPy arrays, nothing else: any other global -> DataError.

    Allowed: ``_reconstruct`` (numpy.core / numpy._core .multiarray), ``numpy.ndarray``,
    ``numpy.dtype`` without objects (what the CIFAR-10 batches use), ``_frombuffer`` (arrays
    pickled with protocol 5, the default from Python 3.14), and ``_codecs.encode`` restricted to
    latin-1 (how Python 3 writes bytes at protocol 2). Bounded in opcodes and time, dict keys
    must be str, bytes or int, and sets are refused (see the constants above).
    """

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path
        self.dispatch = _BoundedDispatch(pickle._Unpickler.dispatch, self)

    def check_keys(self, op: int) -> None:
        stack = self.stack
        if op == pickle.SETITEM[0]:
            keys = stack[-2:-1]
        else:  # SETITEMS / DICT: the items since the last mark, keys at even places
            keys = stack[0::2] if stack is not None else []
        for k in keys:
            if type(k) not in (str, bytes, int):
                raise DataError(f"{self.path}: refusing a dict key of type {type(k).__name__} "
                                "in a pickle (CIFAR-10 batches use str/bytes keys)")

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _PICKLE_ALLOWLIST:
            return _PICKLE_ALLOWLIST[(module, name)]
        raise DataError(f"{self.path}: refusing to unpickle {module}.{name} (only NumPy arrays "
                        "are allowed in CIFAR-10 batches)")

    def persistent_load(self, pid: object) -> object:
        raise DataError(f"{self.path}: refusing a persistent id in a pickle")


def _plain_dtype(*args: object) -> np.dtype:
    """``numpy.dtype`` as pickles call it, refusing object dtypes (their arrays hold pickles)."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise DataError(f"refusing an object dtype ({dt}) in a pickle")
    return dt


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (latin-1 only)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise DataError(f"refusing _codecs.encode(..., {encoding!r}) in a pickle")
    return text.encode("latin-1")


# (module, name) -> what the unpickler may build; anything else is refused.
_PICKLE_ALLOWLIST: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{(f"{mod}.multiarray", "_reconstruct"): _reconstruct for mod in ("numpy.core", "numpy._core")},
    **{(f"{mod}.numeric", "_frombuffer"): _frombuffer for mod in ("numpy.core", "numpy._core")},
}


def _safe_unpickle(path: Path, max_bytes: int | None = None) -> object:
    max_bytes = MAX_PICKLE_BYTES if max_bytes is None else max_bytes
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if size > max_bytes:
        raise DataError(f"{path}: {size:,} bytes is more than a CIFAR-10 file holds "
                        f"(limit {max_bytes:,})")
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, ValueError, TypeError, ...
        raise DataError(f"{path}: not a readable CIFAR-10 pickle ({type(e).__name__}: {e})"
                        ) from None


def _read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _safe_unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict batch, got {type(batch).__name__}")
    batch = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise DataError(f"{path}: batch has no key b{key!r} (keys: {sorted(map(str, batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: key b'data' must be uint8 [N, 3072], got {desc}")
    raw = batch["labels"]  # a flat list of ints (checked before NumPy walks it) or an array
    if isinstance(raw, list) and len(raw) == len(data) and all(type(v) is int for v in raw):
        labels = np.asarray(raw, dtype=np.int64) if all(0 <= v <= 9 for v in raw) else None
    elif isinstance(raw, np.ndarray) and raw.shape == (len(data),) and raw.dtype.kind in "iu":
        labels = raw.astype(np.int64)
    else:
        labels = None
    if labels is None:
        raise DataError(f"{path}: key b'labels' must be {len(data)} integers in 0..9")
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: key b'labels' must be {len(data)} integers in 0..9")
    return data, labels


def _cifar_classes(folder: Path, fmt: str) -> list[str]:
    """Names from batches.meta(.txt) when readable, else the standard ten."""
    if fmt == "bin":
        meta = folder / "batches.meta.txt"
        if meta.is_file():
            try:
                names = [s.strip() for s in meta.read_text(encoding="utf-8").splitlines()]
            except (OSError, UnicodeDecodeError):
                names = []
            names = [s for s in names if s]
            if len(names) == 10:
                return names
        return list(CIFAR10_CLASSES)
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            d = _safe_unpickle(meta, MAX_META_BYTES)
            if not isinstance(d, dict):
                raise DataError("not a dict")
            names = d[b"label_names"] if b"label_names" in d else d["label_names"]
            if not (isinstance(names, list) and len(names) == 10 and all(
                    type(n) in (bytes, str) and 0 < len(n) <= 100 for n in names)):
                raise DataError("label_names is not a list of 10 short names")
            return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
        except Exception as e:  # unreadable or refused: the standard names are as good
            warnings.warn(f"{meta}: not used for class names ({str(e)[:200]}); using the "
                          "standard CIFAR-10 names", stacklevel=4)
    return list(CIFAR10_CLASSES)
