#!/usr/bin/env bash
# GPU evidence for the serving engine (issue 24): run it on a machine with a CUDA GPU.
#   bash scripts/gpu_check.sh                 # writes experiments/serving_throughput/gpu_<card>/
# 1. the exactness tests with the server half on CUDA in bfloat16 and float16 (an fp32 device half served
#    over tcp equals the same engine in-process, greedy and seeded sampling);
# 2. SmolLM2 split vs unsplit generation on CUDA in bf16 and fp16, per prompt (scripts/check_half_precision.py);
# 3. the serving benchmark at N = 1, 8, 32, 64 with both servers on CUDA in bf16 (scripts/bench_serving.py).
# Without a visible CUDA GPU it says so in one line and exits 2 before doing anything. It runs in the active
# virtual environment, else in .venv: that environment needs a CUDA build of torch (scripts/setup_env.sh
# installs the CPU wheel; on a GPU machine install the matching CUDA wheel of the same torch version).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || bash scripts/setup_env.sh >/dev/null
  . .venv/bin/activate
fi
card=$(python - <<'PY'
import re, sys, torch
if not torch.cuda.is_available():
    print(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}); "
          "run this on a machine with one and a CUDA build of torch", file=sys.stderr)
    sys.exit(2)
print(re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name(0)).strip("_"))
PY
) || exit 2
out=experiments/serving_throughput/gpu_${card}
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$out/card.txt"
echo "[gpu_check] card $card -> $out"
SPLITINFER_TEST_SERVER_DEVICE=cuda SPLITINFER_TEST_SERVER_DTYPES=bfloat16,float16 \
  python -m pytest -q -p no:cacheprovider tests/transport/test_placement_served.py tests/split/test_placement.py \
  2>&1 | tee "$out/exactness_tests.txt"
for dt in bfloat16 float16; do
  python scripts/check_half_precision.py --device cuda --dtype "$dt" --out "$out/split_vs_unsplit_${dt}.md"
done
python scripts/bench_serving.py --clients 1,8,32,64 --device cuda --dtype bfloat16 --threads 1 --out "$out" \
  2>&1 | tee "$out/bench_serving.txt"
echo "[gpu_check] done: $out"
