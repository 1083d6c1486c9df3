#!/usr/bin/env bash
# Configures and builds specd into build/ (Release with debug info, warnings as errors in CI).
# Extra CMake arguments pass through, e.g. scripts/build.sh -DSPECD_SERVER=OFF. TARGETS="a b"
# builds only those targets (and what they need) instead of everything.
set -euo pipefail
cd "$(dirname "$0")/.."
werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
cmake -S . -B build -G Ninja -DSPECD_WERROR="$werror" "$@"
if [ -n "${TARGETS:-}" ]; then
  # shellcheck disable=SC2086 # a list of target names
  cmake --build build -j "$(nproc)" --target $TARGETS
else
  cmake --build build -j "$(nproc)"
fi
