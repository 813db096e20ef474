#!/usr/bin/env bash
# Create .venv when missing, then run the test suite, one pytest-xdist worker per logical core (a test file stays on
# one worker; tests/conftest.py splits the threads between them). Extra arguments go to pytest (`-n 0`: one process).
# ruff runs first (pyproject.toml's rules, lines of at most 120 characters): a lint error stops before the slow tests.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/ensure_venv.sh
source scripts/ensure_venv.sh
.venv/bin/ruff check --quiet . || { echo "ruff check failed: fix the lines above (ruff check --fix fixes some)" >&2; exit 1; }
exec .venv/bin/python -m pytest -q -n logical --dist loadfile "$@"
