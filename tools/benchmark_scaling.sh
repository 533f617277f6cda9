#!/usr/bin/env bash
# Search-iteration time, compile time and peak RSS vs K*M (issue 14): one JSON line per (K, M),
# K, M in {1, 2, 3}, exact stage-wise hypergradient, then the plot.
# Usage: bash tools/benchmark_scaling.sh OUT.jsonl [PLOT.png] [extra benchmark_search flags]
# Default setting: C=8, 5 cells, batch 16 (the orientation setting of docs/benchmarks.md).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:?usage: benchmark_scaling.sh OUT.jsonl [PLOT.png] [flags]}"
plot="${2:-}"
shift $(($# < 2 ? $# : 2))
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH=.
[ -n "${CUDA_VISIBLE_DEVICES+x}" ] || export CUDA_VISIBLE_DEVICES=-1
for learners in 1 2 3; do
  for rounds in 1 2 3; do
    python tools/benchmark_search.py --channels=8 --layers=5 --batch=16 --flops=false \
      --steps=3 --mode=exact --learners="$learners" --rounds="$rounds" "$@" 2>/dev/null |
      tail -n 1 >>"$out" ||
      echo "{\"failed\": \"K=$learners M=$rounds $*\", \"exit\": ${PIPESTATUS[0]}}" >>"$out"
  done
done
if [ -n "$plot" ]; then
  python tools/plot_benchmarks.py "$out" "$plot"
fi
