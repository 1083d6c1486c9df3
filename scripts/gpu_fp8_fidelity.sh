#!/usr/bin/env bash
# FP8 fidelity on the GPU (issue 17, item 3): specd's CUDA logits on the FP8 fixture checkpoints
# against transformers' own FP8 forward and its dequantized bf16 forward, in one run (bench/
# hf_fp8_fidelity.py). Uses the bundle's specd (carry .bundle) or SPECD=path. Table last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}/fp8_fidelity
mkdir -p "$OUT"
# shellcheck source=bundle_env.sh
SPECD_CLIENT=${SPECD_CLIENT:-unused} source scripts/bundle_env.sh
SPECD=$specd python3 bench/hf_fp8_fidelity.py 2> "$OUT/stderr.log" | tee "$OUT/table.md"
