#!/usr/bin/env bash
# The prefix cache on the GPU through the daemon (issue "Prefix caching for the hybrid state"), from
# the bundle scripts/make_gpu_bundle.sh packs (carry `.bundle`): for each model shape, one daemon
# with --prefix-cache on and one with it off, each driven by
# `specd-client bench --multi-turn` (chat sessions sharing a system prompt; turn t re-sends the whole
# history). Prints TTFT per turn for both, and the ratio turn 8 / turn 1. Random weights
# (random:0.8B, random:9B), so the n-gram drafter (acceptance is meaningless here; the point is
# prefill reuse). Logs and bench JSON under $OUT/prefix; a summary table last.
#
#   bash scripts/gpu_prefix_bench.sh                        # on the GPU machine
#   MODELS=demo DEVICE=cpu SYSTEM=512 TURN=32 bash scripts/gpu_prefix_bench.sh   # a dry run anywhere
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}/prefix
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-"random:0.8B random:9B"}
SYSTEM=${SYSTEM:-2048}   # shared system prompt tokens
TURN=${TURN:-128}        # user message tokens per turn
REPLY=${REPLY:-64}       # max_tokens per turn (ignore_eos: the reply is exactly this long)
TURNS=${TURNS:-8}
SESSIONS=${SESSIONS:-4}
# shellcheck source=bundle_env.sh
source scripts/bundle_env.sh
ctx=$(( SYSTEM + TURNS * (TURN + REPLY) + 64 ))
rows=()
failed=0

run_one() {  # model, on|off
  local model=$1 pc=$2 tag pid port
  tag=$(echo "$model" | tr -c 'A-Za-z0-9.\n' '_')_$pc
  local model_flag=()
  [ "$model" != demo ] && model_flag=(--model "$model")
  rm -f "$OUT/$tag.ports.json"
  "$specd" serve --device "$DEVICE" "${model_flag[@]}" --drafter "${DRAFTER:-ngram}" --k 3 --max-batch 8 --max-context "$ctx" \
    --prefix-cache "$pc" --prefix-cache-entries 256 --prefix-cache-tokens $(( 4 * ctx * SESSIONS )) \
    --host 127.0.0.1 --port 0 --metrics-port 0 --http-port -1 --port-file "$OUT/$tag.ports.json" \
    --log-level info > "$OUT/$tag.serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 1200); do  # 120 s: random 9B weights are generated on the host
    [ -s "$OUT/$tag.ports.json" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ ! -s "$OUT/$tag.ports.json" ]; then
    tail -20 "$OUT/$tag.serve.log"
    rows+=("$(printf '%-14s %-4s FAIL daemon did not start' "$model" "$pc")"); failed=1
    kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    return
  fi
  port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$OUT/$tag.ports.json")
  if timeout 300 "$client" --address "127.0.0.1:$port" bench --multi-turn "$TURNS" --sessions "$SESSIONS" \
      --system-tokens "$SYSTEM" --turn-tokens "$TURN" --max-tokens "$REPLY" --json-out "$OUT/$tag.json" \
      > "$OUT/$tag.bench.txt" 2>&1; then
    cat "$OUT/$tag.bench.txt"
    rows+=("$(python3 - "$OUT/$tag.json" "$model" "$pc" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1])); t = j["per_turn"]
first, last = t[0], t[-1]
err = j.get("errors", 0)
print("%-14s %-4s %10.1f %10.1f %7.2fx %9.0f/%-6.0f %s" % (sys.argv[2], sys.argv[3], first["ttft_ms_p50"],
      last["ttft_ms_p50"], last["ttft_ms_p50"] / first["ttft_ms_p50"], last["cached_tokens_mean"],
      last["prompt_tokens_mean"], "ok" if err == 0 else "FAIL %d errors" % err))
EOF
)")
    grep -q FAIL <<<"${rows[-1]}" && failed=1
  else
    cat "$OUT/$tag.bench.txt"
    rows+=("$(printf '%-14s %-4s FAIL bench exit (see %s.bench.txt)' "$model" "$pc" "$tag")"); failed=1
  fi
  kill -TERM "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}

for m in $MODELS; do
  for pc in on off; do run_one "$m" "$pc"; done
done
echo
echo "== gpu_prefix_bench (device $DEVICE; $SESSIONS sessions x $TURNS turns, system $SYSTEM, message $TURN, reply $REPLY tokens) =="
printf '%-14s %-4s %10s %10s %8s %16s %s\n' model pc "t1 p50 ms" "t${TURNS} p50 ms" ratio "cached/prompt" result
for r in "${rows[@]}"; do echo "$r"; done
exit $failed
