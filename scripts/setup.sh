#!/usr/bin/env bash
# Creates .venv (if needed) and installs ddpmlab with its test tools. Idempotent.
# DDPMLAB_TORCH: the pip requirement for torch (default: the CPU wheel pinned in
# requirements/cpu.txt). Set DDPMLAB_TORCH=skip to keep the torch already in the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if [ "${DDPMLAB_TORCH:-}" != "skip" ]; then
    if [ -n "${DDPMLAB_TORCH:-}" ]; then
        pip install -q --disable-pip-version-check "$DDPMLAB_TORCH"
    elif ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
        pip install -q --disable-pip-version-check -r requirements/cpu.txt
    fi
fi
pip install -q --disable-pip-version-check -e ".[dev]"
# Fashion-MNIST ships as a Debian package (IDX files under /usr/share/datasets/fashion-mnist/).
# Best effort: only the `fashion-mnist` data set needs it, and ddpmlab says how to get it if absent.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ] && [ "${DDPMLAB_SKIP_APT:-}" != 1 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
        >/dev/null 2>&1 || echo "setup: could not install dataset-fashion-mnist (optional)" >&2
fi
