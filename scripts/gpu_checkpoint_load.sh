#!/usr/bin/env bash
# Checkpoint loading on the GPU (issue 17, item 1): bf16 checkpoints of the 0.8B and 9B shapes
# (random values, sharded per layer, written by checkpoint_load_bench --write-random), page cache
# warm; for each: a plain sequential read of the files, specd's load onto the GPU, and
# transformers' from_pretrained(device_map="cuda") of the same folder, medians of 3, one run.
# Needs build-gpu (scripts/gpu_check.sh builds it). Logs under $OUT/ckpt_load; the table last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}/ckpt_load
mkdir -p "$OUT"
ninja -C build-gpu checkpoint_load_bench > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
DIRS=${DIRS:-/tmp/ckpt}
rows=()
for shape in ${SHAPES:-0.8B 9B}; do
  d="$DIRS/$shape"
  [ -f "$d/config.json" ] || ./build-gpu/bench/checkpoint_load_bench "$d" --write-random "$shape" --repeat 1 > /dev/null 2>&1
  ./build-gpu/bench/checkpoint_load_bench "$d" --device cuda --repeat 3 | tee "$OUT/specd_$shape.log"
  hf=$(python3 bench/hf_load.py "$d" 3 2>"$OUT/hf_$shape.err" | tail -1)
  echo "$hf" | tee "$OUT/hf_$shape.log"
  rows+=("$shape: $(tail -1 "$OUT/specd_$shape.log") $hf")
done
echo
echo "| shape | files | plain read | specd load (cuda) | load / read | transformers |"
for r in "${rows[@]}"; do echo "$r"; done
