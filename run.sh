#!/usr/bin/env bash
# The main job: set up, train on the built-in MNIST digits, write a sample grid.
# Extra arguments go to `ddpmlab train` (e.g. ./run.sh --max-steps 500 --out runs/quick).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/ddpmlab train "$@"
