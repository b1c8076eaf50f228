#!/usr/bin/env bash
# Reproduce the Neurosurgeon-style latency figure: every cut of SmolLM2-135M x 5 link profiles (int8 on the
# wire, stage times modelled by the roofline of a Snapdragon 8 Gen 3 phone and an H100 server), then the table
# and plot into this folder's results/. (The committed figures predate the roofline: they used a phone 2x
# slower than this machine's measured times; see the README.)
#   bash experiments/neurosurgeon_latency/run.sh                 # ~3-5 min on 2 CPU cores
#   bash experiments/neurosurgeon_latency/run.sh hardware=raspberry_pi_5 server_hardware=l4
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
out=multirun/neurosurgeon_latency/$(date +%Y-%m-%d_%H-%M-%S)
python -m splitinfer.run -m experiment=neurosurgeon_latency "hydra.sweep.dir=$out" "$@"
splitinfer report "$out" --out experiments/neurosurgeon_latency/figure --quiet
cat experiments/neurosurgeon_latency/figure/latency_by_link.md
