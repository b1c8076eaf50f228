#!/bin/bash
# The prefill-speed comparison of the s3b change: the same --speed run of scripts/bench_codecs.py on the tree
# before (BEFORE, e.g. a checkout of main at 4aba7ad) and after (AFTER, with its .venv), two alternating rounds,
# numpy's BLAS on one thread for both (the "after" script sets it itself; the "before" one did not).
#   timeout 1200 /work/shared/tools/quiet bash bench_before_after.sh BEFORE AFTER OUT_DIR
set -u
BEFORE=$1 AFTER=$2 OUT=$3
ARGS="--speed --cuts 1,8,15,22,29 --n-windows 2 --repeats 7 --threads 1 --codecs ec37g_s,ec25g_s,ec37g,ec37g_s:coder=rans_py,int8"
export OPENBLAS_NUM_THREADS=1
for r in 1 2; do
  for side in before after; do
    tree=$BEFORE; [ $side = after ] && tree=$AFTER
    echo "== round $r $side: $(git -C "$tree" rev-parse --short HEAD) load $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd "$tree" && "$AFTER/.venv/bin/python" scripts/bench_codecs.py $ARGS --out-dir "$OUT/$side$r")
  done
done
echo "== end load $(cut -d' ' -f1-3 /proc/loadavg)"
