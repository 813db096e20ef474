#!/usr/bin/env bash
# Create .venv when missing, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/ensure_venv.sh
source scripts/ensure_venv.sh
exec .venv/bin/python -m pytest -q "$@"
