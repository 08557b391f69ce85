"""Reading weights files, without ever unpickling them.

**Weights files are never unpickled.** A ``.safetensors`` file is read by safetensors; a
``.pth``/``.pt``/``.bin`` file (pytorch-fid's weights are one) only through
``torch.load(path, weights_only=True, map_location="cpu")``, torch's restricted unpickler that
rebuilds tensors and containers and refuses any other global (a malicious pickle raises instead
of running code). Anything else is refused.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import load as _load_safetensors

from ..errors import DataError

__all__ = ["load_weights_file"]


def _parse_safetensors(raw: bytes, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the ``__metadata__`` of a safetensors file's bytes (``name``: for errors)."""
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        tensors = _load_safetensors(raw)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise DataError(f"{name}: not a valid safetensors file ({e})") from None
    return tensors, dict(header.get("__metadata__") or {})


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` mapping from ``.safetensors``, or from ``.pth``/``.pt``/``.bin``
    through torch's weights-only loader (never a plain unpickle); anything else is refused."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _parse_safetensors(path.read_bytes(), str(path))[0]
    if suffix not in (".pth", ".pt", ".bin"):
        raise DataError(f"{path}: unsupported weights file {suffix or '(no suffix)'!r}; use "
                        ".safetensors, or a torch .pth (read with weights_only=True)")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # UnpicklingError for forbidden globals, RuntimeError for junk
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"{path}: refused by torch's weights-only loader, which never runs code "
                        f"from a file ({type(e).__name__}: {first[:200]}); convert it to "
                        ".safetensors with a tool you trust") from None
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise DataError(f"{path}: expected a state dict (names -> tensors), "
                        f"got {type(obj).__name__}")
    return obj
