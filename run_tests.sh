#!/usr/bin/env bash
# Create .venv when missing, then run the test suite, one pytest-xdist worker per logical core (a test file stays on
# one worker; tests/conftest.py splits the threads between them). Extra arguments go to pytest (`-n 0`: one process).
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/ensure_venv.sh
source scripts/ensure_venv.sh
exec .venv/bin/python -m pytest -q -n logical --dist loadfile "$@"
