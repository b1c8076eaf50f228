#!/usr/bin/env bash
# Single cut vs relay hop vs U-shape on the same device link (conf/experiment/topologies.yaml, 9 jobs), then the
# U-shape's downlink privacy rows (conf/experiment/ushape_downlink.yaml, 5 jobs); the reports go to
# compare/ and downlink/ beside this script. Quality and bytes measured, latency and energy modelled.
#   bash experiments/topologies/run_compare.sh          # ~10 min on 2 shared CPU cores
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
stamp=$(date +%Y-%m-%d_%H-%M-%S)
python -m splitinfer.run -m experiment=topologies "hydra.sweep.dir=multirun/topologies/$stamp"
splitinfer report "multirun/topologies/$stamp" --out experiments/topologies/compare --quiet
python -m splitinfer.run -m experiment=ushape_downlink "hydra.sweep.dir=multirun/ushape_downlink/$stamp"
splitinfer report "multirun/ushape_downlink/$stamp" --out experiments/topologies/downlink --quiet
