#!/usr/bin/env bash
# Creates (or reuses) the project virtualenv, cached outside the clone and keyed on a hash
# of the requirements files, installs this clone into it (editable, so tools/ and the console
# scripts ilnas-search / ilnas-train import this clone's code), and prints its path.
# Usage: source "$(bash tools/setup_env.sh)/bin/activate"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
key="$(cat "$root/requirements.txt" "$root/requirements-test.txt" | sha256sum | cut -c1-16)"
cache="${ILNAS_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ilnas_tf}"
venv="$cache/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
  log="$cache/install-$key.log"
  "$venv/bin/pip" install --quiet --upgrade pip >"$log" 2>&1 || true
  if ! "$venv/bin/pip" install -r "$root/requirements.txt" -r "$root/requirements-test.txt" >>"$log" 2>&1; then
    grep -v "is ignored: it is neither" "$log" | tail -n 40 >&2
    echo "setup_env: pip install failed (full log: $log)" >&2
    exit 1
  fi
  touch "$venv/.complete"
fi
# The venv is shared by every clone (CI runs fresh clones elsewhere): point the editable
# install at this clone each time. Offline (no index, no build isolation: the venv's own
# setuptools builds it), a few seconds; skipped when it already points here.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! grep -qsF "'ilnas_tf': '$root/ilnas_tf'" "$site"/__editable___ilnas_tf_*_finder.py; then
  log="$cache/install-editable-$key.log"
  if ! "$venv/bin/pip" install --no-deps --no-build-isolation --no-index --quiet -e "$root" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup_env: editable install of $root failed (full log: $log)" >&2
    exit 1
  fi
fi
echo "$venv"
