#!/usr/bin/env bash
# The main job: set up .venv, run the default sweep (every other cut of SmolLM2-135M, 16 cuts, x fp16, int8 and the best
# low-bit codec; bandwidth, quality, timing and latency metrics on the default corpus), then print the
# table, the plot paths and a recommendation. Extra arguments are Hydra overrides, e.g.
#   bash scripts/main.sh link=wifi hardware=apple_a17_pro server_hardware=l4
# W&B runs are written offline (WANDB_MODE=online to upload as you go; `wandb sync` uploads later).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec splitinfer sweep --experiment default_sweep "$@"
