"""Where benchmarks live and write: the repository root, ``benchmarks/results/<script>/``, logging,
JSON."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]   # the repository root (python -m benchmarks.X runs here)
RESULTS = REPO / "benchmarks" / "results"    # one folder per script below it


def result_path(script: str, name: str) -> Path:
    """``benchmarks/results/<script>/<name>``: the default place of an output file of benchmark
    script ``script`` (its module name, e.g. ``sampler_nfe``)."""
    return RESULTS / script / name


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
