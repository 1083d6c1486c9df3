#!/usr/bin/env bash
# Sets up, builds and runs the main job: the gRPC daemon `specd serve` on its embedded default
# model (models/demo: a small Qwen3.5 target trained on Python source with its own MTP head, and a
# draft model) on an ephemeral loopback port, drafting with the target's MTP head, the demo's best
# drafter (docs/PERFORMANCE.md); once it is healthy, one streamed speculative generation with
# `specd-client` (Python code on stdout, the acceptance rate on stderr) and the same request's
# JSON; then the daemon is stopped with SIGTERM (it drains and exits 0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The daemon and the client only: tests and benchmarks are test.sh's business.
TARGETS="specd specd-client" bash scripts/build.sh

work=$(mktemp -d)
./build/server/specd serve --drafter mtp --k 3 --host 127.0.0.1 --port 0 --metrics-port 0 \
  --port-file "$work/ports.json" >"$work/serve.log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 1 600); do
  [ -s "$work/ports.json" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log" >&2; echo "run.sh: specd serve failed to start" >&2; exit 1; }
  sleep 0.1
done
port=$(grep -o '"port":[0-9]*' "$work/ports.json" | cut -d: -f2)
addr="127.0.0.1:$port"
client=./build/client/specd-client
for _ in $(seq 1 100); do
  "$client" --address "$addr" health >/dev/null 2>&1 && break
  sleep 0.1
done
"$client" --address "$addr" health >&2

prompt=$'import os\n\n\ndef read_config(path):\n    """Read a config file and return a dict."""\n'
printf '%s' "$prompt"
"$client" --address "$addr" generate --prompt "$prompt" --max-tokens 160 --temperature 0.7 --seed 1
echo
"$client" --address "$addr" generate --prompt "$prompt" --max-tokens 64 --json

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
trap 'rm -rf "$work"' EXIT
sed 's/^/[specd serve] /' "$work/serve.log" >&2
if [ "$rc" -ne 0 ]; then
  echo "run.sh: specd serve exited with $rc" >&2
  exit 1
fi
