#!/usr/bin/env bash
# Regenerate every table and figure (see ./run_all.sh --help). Creates .venv when missing.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/ensure_venv.sh
source scripts/ensure_venv.sh
exec .venv/bin/python -m dskd.repro.runall "$@"
