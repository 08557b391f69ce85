"""Where benchmarks live and write: the repository root, ``benchmarks/results/``, logging, JSON."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]   # the repository root (python -m benchmarks.X runs here)
RESULTS = REPO / "benchmarks" / "results"    # every script's default output folder


def result_path(name: str) -> Path:
    """``benchmarks/results/<name>``: the default place of a script's output file."""
    return RESULTS / name


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path, obj, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` (parent folders created) and say so."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=indent) + "\n")
    log(f"wrote {p}")
    return p


def write_text(path, text: str) -> Path:
    """Write ``text`` (a Markdown table, say) to ``path``, ending it with one newline."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text.rstrip("\n") + "\n")
    log(f"wrote {p}")
    return p


def module_command(name: str, *args: str) -> list[str]:
    """The command running benchmark script ``name`` as ``python -m benchmarks.<name>``; run it
    with ``cwd=REPO`` so that the ``benchmarks`` package is importable."""
    return [sys.executable, "-u", "-m", f"benchmarks.{name}", *map(str, args)]
