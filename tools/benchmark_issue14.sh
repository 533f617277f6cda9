#!/usr/bin/env bash
# Issue 14 quiet-machine batch (serial, ~1 h on 2 cores): JSON rows, K*M scaling plot, demo timing.
# Usage: source "$(bash tools/setup_env.sh)/bin/activate" && bash tools/benchmark_issue14.sh [OUT_DIR]
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=-1 PYTHONPATH=.
mkdir -p "${1:-/tmp/bench}"; dir="$(cd "${1:-/tmp/bench}" && pwd)"; out="$dir/rows.jsonl"
run() {
  echo "$(date +%T) start $*" >> $dir/log
  /usr/bin/time -f "wall %e s maxrss %M KB" python tools/benchmark_search.py --flops=false "$@" 2>$dir/err.txt | tail -n 1 >>"$out" ||
    echo "{\"failed\": \"$*\"}" >>"$out"
  tail -n 1 $dir/err.txt >> $dir/log
}
C8="--channels=8 --layers=5 --batch=16"
run $C8 --learners=1 --rounds=1 --mode=first_order --steps=3
run $C8 --learners=1 --rounds=1 --mode=finite_difference --steps=3
run $C8 --learners=1 --rounds=1 --mode=exact --steps=3
run $C8 --learners=1 --rounds=1 --mode=first_order --steps=3 --xla=weight_step
run $C8 --learners=1 --rounds=1 --mode=first_order --steps=3 --xla=both
run $C8 --learners=2 --rounds=2 --mode=exact --steps=3
run $C8 --learners=2 --rounds=2 --mode=exact --steps=3 --recompute=cells
run $C8 --learners=2 --rounds=2 --mode=exact --steps=3 --exact_method=nested_tapes
run $C8 --learners=2 --rounds=2 --mode=exact --steps=3 --xla=weight_step
P="--channels=16 --layers=8 --batch=64"
run $P --learners=1 --rounds=1 --mode=exact --steps=2
run $P --learners=2 --rounds=2 --mode=exact --steps=1
run $P --learners=2 --rounds=2 --mode=exact --steps=1 --recompute=cells
echo "$(date +%T) scaling" >> $dir/log
bash tools/benchmark_scaling.sh $dir/scaling.jsonl $dir/km_scaling.png --channels=4 --layers=3 --batch=8 >> $dir/log 2>&1
echo "$(date +%T) demo" >> $dir/log
rm -rf $dir/demo
/usr/bin/time -f "demo wall %e s maxrss %M KB" python -m ilnas_tf.search --root_dir=$dir/demo > $dir/demo.out 2>&1
tail -n 1 $dir/demo.out >> $dir/log
echo "$(date +%T) done" >> $dir/log
