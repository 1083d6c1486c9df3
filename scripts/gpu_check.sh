#!/usr/bin/env bash
# One device call: build engine + kernels + GPU tests + benchmark (no server, no tokenizer: the
# GPU machine lacks gRPC, PCRE2 and ICU), run every GPU test, compute-sanitizer memcheck on the
# GPU test binary, then the benchmark. Logs under $OUT; a short table last.
set -uo pipefail
OUT=${OUT:-/tmp/specd-gpu-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
echo "commit: ${SPECD_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)} (SPECD_COMMIT: the caller's HEAD; the copy's .git may lag)" | tee -a "$OUT/gpu.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPECD_SERVER=OFF -DSPECD_TOKENIZER=OFF \
  -DSPECD_CUDA=ON -DSPECD_BENCH=ON -DSPECD_TESTS=ON > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
ninja -C build-gpu specd_gpu_tests gpu_bench gpu_e2e_bench gdn_bench mtp_bench checkpoint_load_bench > "$OUT/build.log" 2>&1 || { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
echo "build ok"
filter=${GPU_TEST_FILTER:-*}
./build-gpu/tests/gpu/specd_gpu_tests --gtest_filter="$filter" > "$OUT/gpu_tests.log" 2>&1
rc_tests=$?
grep -E "^\s+\[gpu|FAILED|Failure|Expected|Which is|actual|rel err|greedy" "$OUT/gpu_tests.log" | head -60
tail -4 "$OUT/gpu_tests.log"
if [ "${SKIP_SANITIZER:-0}" != 1 ] && command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 9 ./build-gpu/tests/gpu/specd_gpu_tests \
    --gtest_filter="${SANITIZER_FILTER:-ShapesAndT/GpuOps.*fixture*:ShapesAndT/GpuOps.*q35_9b_T9:GpuMoe.*:Cases/GpuParity.*/dense:GpuSpec.Rollback*:GpuSampledChoice.Filters*:GpuSampledChoice.DrawsAndAccepts*:GpuSampledChoice.Bad*}" \
    > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$? ($(grep -c 'Invalid\|ERROR SUMMARY' "$OUT/memcheck.log") summary lines): $(grep 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1)"
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  ./build-gpu/bench/gpu_bench > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"
  sed "/^### /,\$d" "$OUT/bench.log"
fi
if [ "${SKIP_GDN:-0}" != 1 ]; then
  SPECD_GDN_DUMP=/tmp/specd_gdn.bin ./build-gpu/bench/gdn_bench > "$OUT/gdn.log" 2>&1
  echo "gdn bench rc=$?"
  tail -20 "$OUT/gdn.log"
  # FLA side by side (wheels carried in .whl/: no network on the GPU machine).
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install --no-index --no-deps .whl/*.whl > "$OUT/fla_install.log" 2>&1 || tail -5 "$OUT/fla_install.log"
    SPECD_GDN_DUMP=/tmp/specd_gdn.bin timeout 300 python3 bench/fla_gdn.py > "$OUT/fla.log" 2>&1
    echo "fla rc=$?"
    tail -20 "$OUT/fla.log"
  fi
fi
if [ "${SKIP_MTP:-0}" != 1 ]; then
  ./build-gpu/bench/mtp_bench > "$OUT/mtp.log" 2>&1
  echo "mtp bench rc=$?"
  tail -16 "$OUT/mtp.log"
fi
if [ "${SKIP_E2E:-0}" != 1 ]; then
  ./build-gpu/bench/gpu_e2e_bench > "$OUT/e2e.log" 2>&1
  echo "e2e bench rc=$?"
  tail -25 "$OUT/e2e.log"
fi
if [ "${SKIP_HF:-0}" != 1 ]; then
  timeout 240 python3 bench/hf_baseline.py > "$OUT/hf.log" 2>&1
  echo "hf baseline rc=$?"
  tail -15 "$OUT/hf.log"
fi
echo "gpu tests rc=$rc_tests"
