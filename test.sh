#!/usr/bin/env bash
# Set up, lint, and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh --tests
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
