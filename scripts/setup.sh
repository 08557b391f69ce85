#!/usr/bin/env bash
# Creates .venv (if needed) and installs ddpmlab. Idempotent.
#   bash scripts/setup.sh          what the main job needs (./run.sh): torch and ddpmlab
#   bash scripts/setup.sh --tests  also the test tools (the [dev] extra) and, as root, the Debian
#                                  packages below (./test.sh, CI)
# DDPMLAB_TORCH: the pip requirement for torch (default: the CPU wheel pinned in
# requirements/cpu.txt). Set DDPMLAB_TORCH=skip to keep the torch already in the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=0
[ "${1:-}" = "--tests" ] && tests=1
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
if [ "$tests" = 1 ]; then
    pip install -q --disable-pip-version-check -e ".[dev]"
else
    pip install -q --disable-pip-version-check -e .
    exit 0
fi
# Debian packages, installed when this runs as root (as in CI) and they are missing; best effort,
# DDPMLAB_SKIP_APT=1 skips them:
#   dataset-fashion-mnist  the optional Fashion-MNIST data (IDX files under
#                          /usr/share/datasets/fashion-mnist/); ddpmlab says how to get it if absent
#   fonts-noto-color-emoji the colour emoji font and Unicode's emoji-test.txt that `--dataset
#   unicode-data           emoji` draws its 1,870 images from (src/ddpmlab/data/emoji.py)
#   chromium               the headless browser tests/test_report.py loads `ddpmlab report`'s page in
#                          (as root those tests fail without it; as another user they are skipped)
apt_wanted=()
[ -d /usr/share/datasets/fashion-mnist ] || apt_wanted+=(dataset-fashion-mnist)
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || apt_wanted+=(fonts-noto-color-emoji)
[ -f /usr/share/unicode/emoji/emoji-test.txt ] || apt_wanted+=(unicode-data)
command -v chromium >/dev/null 2>&1 || apt_wanted+=(chromium)
if [ ${#apt_wanted[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ] && [ "${DDPMLAB_SKIP_APT:-}" != 1 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    for pkg in "${apt_wanted[@]}"; do
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1 \
            || echo "setup: could not install the Debian package $pkg" >&2
    done
fi
