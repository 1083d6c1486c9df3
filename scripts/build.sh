#!/usr/bin/env bash
# Configures and builds specd into build/ (Release with debug info, warnings as errors in CI).
# Extra CMake arguments pass through, e.g. scripts/build.sh -DSPECD_SERVER=OFF
set -euo pipefail
cd "$(dirname "$0")/.."
werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
cmake -S . -B build -G Ninja -DSPECD_WERROR="$werror" "$@"
cmake --build build -j "$(nproc)"
