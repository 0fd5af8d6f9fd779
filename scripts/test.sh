#!/usr/bin/env bash
# The whole test suite (CPU): sets up .venv if needed, then runs pytest. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export THUNDERDLM_THREADS=${THUNDERDLM_THREADS:-1}
exec .venv/bin/python -m pytest -q "$@"
