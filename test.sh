#!/usr/bin/env bash
# Set up, lint, and run the whole test suite, listing the 25 slowest tests. Extra arguments go
# to pytest: ./test.sh -m "not e2e" is the quick loop (no processes, browser or long training).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh --tests
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q --durations=25 "$@"
