#!/usr/bin/env bash
# Load benchmark of the daemon (issue 5 item 7): `specd serve` on the embedded default pair (tiny
# fixture target + near draft, CPU), then `specd-client bench` at concurrency 1, 8 and 64.
# Fails unless every request completes (zero errors, zero lost: the client checks each stream
# ended with a final message, and the server's success counter must equal the requests sent).
# Prints a markdown table for docs/PERFORMANCE.md; the JSON of each run stays in OUT.
#
# Usage: scripts/load_bench.sh [BUILD_DIR=build] [OUT=out/load_bench]
# Env: MAX_TOKENS (64), SERVE_ARGS (extra `specd serve` flags), OMP_NUM_THREADS (server threads,
# default 1: the tiny fixture gains nothing from more, and the client needs a core of its own).
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
cd "$(dirname "$0")/.."
build=${1:-build}
out=${2:-out/load_bench}
max_tokens=${MAX_TOKENS:-64}
mkdir -p "$out"
specd="$build/server/specd"
client="$build/client/specd-client"
[ -x "$specd" ] && [ -x "$client" ] || { echo "load_bench: build first (scripts/build.sh)" >&2; exit 1; }

mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# shellcheck disable=SC2086
"$specd" serve --host 127.0.0.1 --port 0 --metrics-port "$mport" --port-file "$out/ports.json" \
  --max-batch 64 --max-queue 256 ${SERVE_ARGS:-} >"$out/serve.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
rm -f "$out/ports.json"
for _ in $(seq 1 600); do
  [ -s "$out/ports.json" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$out/serve.log" >&2; exit 1; }
  sleep 0.1
done
addr="127.0.0.1:$(grep -o '"port":[0-9]*' "$out/ports.json" | cut -d: -f2)"
"$client" --address "$addr" health >/dev/null

sent=0
for c in 1 8 64; do
  n=$((c == 1 ? 32 : c == 8 ? 128 : 256))
  echo "== concurrency $c, $n requests, $max_tokens tokens each" >&2
  "$client" --address "$addr" bench --concurrency "$c" --num-requests "$n" --warmup 4 \
    --max-tokens "$max_tokens" --ignore-eos --json-out "$out/c$c.json"
  sent=$((sent + n + 4))
done

kill -TERM "$pid"
wait "$pid"
trap - EXIT
python3 - "$out" "$sent" "$mport" <<'PY'
import json, sys
out, sent = sys.argv[1], int(sys.argv[2])
print("| concurrency | requests | errors | lost | requests/s | output tokens/s | e2e p50 (ms) | e2e p99 (ms) "
      "| TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | acceptance | mean acc. length |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for c in (1, 8, 64):
    j = json.load(open(f"{out}/c{c}.json"))
    print(f"| {c} | {j['requests']} | {j['errors']} | {j['lost']} | {j['requests_per_s']:.1f} "
          f"| {j['output_tokens_per_s']:.0f} | {j['e2e_ms']['p50']:.1f} | {j['e2e_ms']['p99']:.1f} "
          f"| {j['ttft_ms']['p50']:.1f} | {j['ttft_ms']['p99']:.1f} | {j['itl_ms']['p50']:.2f} "
          f"| {j['acceptance_rate']:.3f} | {j['mean_acceptance_length']:.2f} |")
PY
# The server saw every request through: its success counter (logged per request) equals what
# was sent, warm-ups included.
done_n=$(grep -c "finished: reason=length" "$out/serve.log" || true)
echo "server: $done_n of $sent requests finished (reason=length)" >&2
[ "$done_n" -eq "$sent" ] || { echo "load_bench: lost requests" >&2; exit 1; }
