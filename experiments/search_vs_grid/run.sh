#!/usr/bin/env bash
# Search vs grid: the full 31-cut x 8-codec grid on SmolLM2-135M (small data, no attack), one real
# NSGA-II search of 82 trials (1/3 of the grid's 248 jobs) with the same settings, then the replay of
# the search's sampler against the grid's stored results (3 seeds) and the figure. ~25 min on 2 busy cores.
#   bash experiments/search_vs_grid/run.sh            # everything
#   SKIP_GRID=1 SKIP_SEARCH=1 bash experiments/search_vs_grid/run.sh   # only the replay + figure
set -euo pipefail
cd "$(dirname "$0")/../.."
export WANDB_MODE=${WANDB_MODE:-disabled} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=experiments/search_vs_grid
GRID=${GRID:-multirun/search_vs_grid/grid}
SEARCH=${SEARCH:-multirun/search_vs_grid/search}
CODECS=fp16,int8,int6_b64_tc,int4_b32_outlier_lz4,ec25,ec34,ec40,ec45
COMMON=(logger=jsonl data.num_windows=4 metrics.generation=false metrics.profile_repeats=1)
if [ -z "${SKIP_GRID:-}" ]; then
  nice -n 5 python -m splitinfer.run -m name=search_vs_grid "${COMMON[@]}" \
    'split.cut=range(0,31)' codec=$CODECS hydra.sweep.dir=$GRID
fi
if [ -z "${SKIP_SEARCH:-}" ]; then
  nice -n 5 python -m splitinfer.run -m hparams_search=split_optuna name=search_vs_grid "${COMMON[@]}" \
    "codec=choice($CODECS)" hydra.sweeper.n_trials=82 hydra.sweep.dir=$SEARCH
  splitinfer report $SEARCH --quiet
fi
python scripts/search_vs_grid.py --grid $GRID --search $SEARCH --out $OUT --trials 82 --seeds 0,1,2
