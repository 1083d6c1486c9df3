#!/usr/bin/env bash
# Sets up, builds and runs every test that needs no GPU (what CI runs). In CI (CI=true) or with
# SANITIZERS=1, the same tests run once more on a build with AddressSanitizer + UBSan (host code;
# no CUDA there): memory errors, leaks and undefined behaviour fail the run; and the batcher's
# tests run under ThreadSanitizer (data races and lock-order inversions fail the run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
ctest --test-dir build --output-on-failure -LE gpu -j "$(nproc)"
if [ "${SANITIZERS:-}" = 1 ] || [ "${CI:-}" = true ]; then
  # Warnings are enforced by the main build; GCC 12 reports false maybe-uninitialized warnings
  # inside libstdc++'s <regex> once sanitizers instrument it, so no -Werror here.
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPECD_CUDA=OFF -DSPECD_BENCH=OFF \
    -DSPECD_SANITIZE=address,undefined -DSPECD_WERROR=OFF
  cmake --build build-asan -j "$(nproc)"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    LSAN_OPTIONS="suppressions=$PWD/tests/sanitizers/lsan.supp" \
    ctest --test-dir build-asan --output-on-failure -LE gpu -j "$(nproc)" --timeout 900
  # ThreadSanitizer where the daemon's threads meet: gRPC threads submit, abort, cancel and drain
  # while the batcher thread steps the engine (tests/serving/, with one test of many threads at
  # once). Only that binary, built without gRPC: TSan trusts only instrumented code, and
  # Debian's gRPC is not. OpenMP stays at one thread (libgomp is not instrumented either).
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPECD_CUDA=OFF -DSPECD_BENCH=OFF \
    -DSPECD_SERVER=OFF -DSPECD_TOKENIZER=OFF -DSPECD_SANITIZE=thread -DSPECD_WERROR=OFF
  cmake --build build-tsan -j "$(nproc)" --target specd_serving_tests
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
    build-tsan/tests/specd_serving_tests
fi
