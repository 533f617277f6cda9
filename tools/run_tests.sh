#!/usr/bin/env bash
# The test command (README, .ci/run): lint + the test suite on CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:--1}"
ruff format --check ilnas_tf tests tools
ruff check ilnas_tf tests tools
# Tests marked slow (multi-process distributed equivalences, long end-to-end runs; see
# pyproject.toml) run only with --slow as the first argument.
marker=(-m "not slow")
if [ "${1:-}" = "--slow" ]; then
  shift
  marker=()
fi
python -m pytest -n 2 --dist worksteal --durations=25 "${marker[@]}" "$@"
