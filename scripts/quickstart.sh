#!/usr/bin/env bash
# Set up, then run the seed matrix (FP16, MLX 8/4-bit, GGUF Q6_K/Q5_K_M/Q4_K_M/Q4_0) on the tiny local model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m runner -m +experiment=seed_matrix "$@"
