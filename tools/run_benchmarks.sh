#!/usr/bin/env bash
# Reproduces the benchmark table in docs/benchmarks.md: one JSON line per configuration.
# Usage: bash tools/run_benchmarks.sh [OUT.jsonl [extra benchmark_search flags, e.g. --flops=false]]
# (about an hour on 2 CPU cores, half of it the paper-setting rows)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-/dev/stdout}"
shift $(($# < 1 ? $# : 1))
extra=("$@")
export TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=-1 PYTHONPATH=.
run() {
  # A run that dies (e.g. killed for memory) leaves a JSON line saying so.
  python tools/benchmark_search.py "$@" "${extra[@]}" 2>/dev/null | tail -n 1 >>"$out" ||
    echo "{\"failed\": \"$*\", \"exit\": ${PIPESTATUS[0]}}" >>"$out"
}
# DARTS at the orientation setting of issue 3 (C=8, 5 cells, batch 16): 1st and 2nd order.
run --channels=8 --layers=5 --batch=16 --learners=1 --rounds=1 --mode=first_order
run --channels=8 --layers=5 --batch=16 --learners=1 --rounds=1 --mode=exact
run --channels=8 --layers=5 --batch=16 --learners=1 --rounds=1 --mode=finite_difference
# XLA per step function (issue 14).
run --channels=8 --layers=5 --batch=16 --learners=1 --rounds=1 --mode=first_order --xla=weight_step
run --channels=8 --layers=5 --batch=16 --learners=1 --rounds=1 --mode=first_order --xla=both
# Interleaving learning K=2, M=2, exact through the chain.
run --channels=8 --layers=5 --batch=16 --learners=2 --rounds=2 --mode=exact
run --channels=8 --layers=5 --batch=16 --learners=2 --rounds=2 --mode=exact --exact_method=nested_tapes
run --channels=8 --layers=5 --batch=16 --learners=2 --rounds=2 --mode=exact --recompute=cells
run --channels=8 --layers=5 --batch=16 --learners=2 --rounds=2 --mode=exact --xla=weight_step
# Paper setting (C=16, 8 cells, batch 64): nested tapes exceed 24 GiB here; stage-wise fits (~18 GiB).
# Fewer timed steps: an iteration takes minutes here.
run --channels=16 --layers=8 --batch=64 --learners=1 --rounds=1 --mode=exact --steps=2
run --channels=16 --layers=8 --batch=64 --learners=2 --rounds=2 --mode=exact --steps=1
run --channels=16 --layers=8 --batch=64 --learners=2 --rounds=2 --mode=exact --steps=1 \
  --recompute=cells
# PC-DARTS (issue 15): partial channels K=4 + edge normalisation, next to the DARTS rows above.
run --channels=8 --layers=5 --batch=16 --learners=1 --rounds=1 --mode=first_order --pc_darts
run --channels=8 --layers=5 --batch=16 --learners=1 --rounds=1 --mode=exact --pc_darts
run --channels=8 --layers=5 --batch=16 --learners=2 --rounds=2 --mode=exact --pc_darts
# The PC-DARTS protocol's batch 256 at C=16, 8 cells, first order: PC-DARTS and DARTS.
run --channels=16 --layers=8 --batch=256 --learners=1 --rounds=1 --mode=first_order --steps=1 \
  --pc_darts
run --channels=16 --layers=8 --batch=256 --learners=1 --rounds=1 --mode=first_order --steps=1 \
  --max_rss_gib=21
