#!/usr/bin/env bash
# The paper-setting search benchmark rows on a GPU (issue 14): one JSON line per row.
# Usage: bash tools/gpu_benchmark.sh [OUT.jsonl]
# Exits with status 2 and a message when TensorFlow sees no GPU (tests never need one).
# Each row is tools/benchmark_search.py at the paper's search setting (C=16, 8 cells, batch 64
# per learner and stage, 32x32 images): DARTS (K=1) first order / exact, IL K=2, M=2 exact
# (stage-wise and nested tapes), the memory options, mixed precision and XLA, and PC-DARTS.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-/dev/stdout}"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH=.
if ! python -c 'import sys, tensorflow as tf; sys.exit(0 if tf.config.list_physical_devices("GPU") else 1)' 2>/dev/null; then
  echo "gpu_benchmark.sh: TensorFlow sees no GPU (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}); nothing run" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
paper=(--channels=16 --layers=8 --batch=64 --flops=false --steps=3)
run() {
  # A row that dies (out of memory, unsupported option) leaves a JSON line saying so.
  python tools/benchmark_search.py "${paper[@]}" "$@" 2>/dev/null | tail -n 1 >>"$out" ||
    echo "{\"failed\": \"$*\", \"exit\": ${PIPESTATUS[0]}}" >>"$out"
}
run --learners=1 --rounds=1 --mode=first_order
run --learners=1 --rounds=1 --mode=exact
run --learners=2 --rounds=2 --mode=exact
run --learners=2 --rounds=2 --mode=exact --exact_method=nested_tapes
run --learners=2 --rounds=2 --mode=exact --recompute=cells
run --learners=2 --rounds=2 --mode=exact --mixed_precision=mixed_float16
run --learners=2 --rounds=2 --mode=exact --mixed_precision=mixed_bfloat16
run --learners=2 --rounds=2 --mode=exact --xla=both
# PC-DARTS (issue 15): its protocol's batch 256 first order, and IL-PC-DARTS K=2, M=2 exact.
run --learners=1 --rounds=1 --mode=first_order --batch=256 --pc_darts
run --learners=2 --rounds=2 --mode=exact --pc_darts
# P-DARTS (issue 16): its three stages at its batch 96, first order, with skip-connect dropout.
run --learners=1 --rounds=1 --mode=first_order --batch=96 --layers=5 --pdarts_ops=8 --skip_dropout=0.1
run --learners=1 --rounds=1 --mode=first_order --batch=96 --layers=11 --pdarts_ops=5 --skip_dropout=0.4
run --learners=1 --rounds=1 --mode=first_order --batch=96 --layers=17 --pdarts_ops=3 --skip_dropout=0.7
