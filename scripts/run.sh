#!/usr/bin/env bash
# Sets up, builds and runs the main job: speculative generation on the bundled fixture model pair
# (a tiny random-weight Qwen3.5 target + a near draft), printing ids and acceptance statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
fx=tests/fixtures/qwen35-tiny
./build/server/specd generate --model "$fx/dense/model" --draft "$fx/draft_near/model" --k 4 \
  --prompt-ids "84,234,379,460,70,384,287,462,37,310" --max-tokens 32 --ignore-eos --json
