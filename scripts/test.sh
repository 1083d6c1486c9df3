#!/usr/bin/env bash
# Sets up, builds and runs every test that needs no GPU (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
ctest --test-dir build --output-on-failure -LE gpu -j "$(nproc)"
