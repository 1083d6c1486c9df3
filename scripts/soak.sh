#!/usr/bin/env bash
# Soak test of the daemon (docs/soak.md): start `specd serve`, run `specd-client soak` against it
# (rounds of varied requests; memory, errors by code, lost streams, load gauges, a greedy control
# before and after), then SIGTERM the daemon and require exit 0. Logs under $OUT: serve.log,
# soak.log, soak.json, ports.json. A summary last; exit non-zero on any failure.
#
#   bash scripts/soak.sh                                    # build/ binaries, CPU, default scale
#   SERVE_ARGS="--device cuda --max-batch 32 --k 4" BUNDLE_DIR=/tmp/specd-bundle bash scripts/soak.sh
#   SOAK_ARGS="--rounds 4 --requests-per-round 60 --concurrency-levels 1,4,16" bash scripts/soak.sh
#
# Environment: SPECD, CLIENT (binaries; default build/server/specd, build/client/specd-client),
# BUNDLE_DIR (an unpacked scripts/make_gpu_bundle.sh bundle: bin/ and lib/; sets SPECD, CLIENT and
# LD_LIBRARY_PATH), SERVE_ARGS (extra serve flags), SOAK_ARGS (extra soak flags), OUT (default
# /tmp/out), SOAK_TIMEOUT (seconds for the soak client; default none), GRACE (serve
# --grace-seconds, default 30). Needs bash and coreutils; python3 (stdlib) if present, for a free port.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${BUNDLE_DIR:-}" ]; then
  SPECD=${SPECD:-$BUNDLE_DIR/bin/specd}
  CLIENT=${CLIENT:-$BUNDLE_DIR/bin/specd-client}
  export LD_LIBRARY_PATH=$BUNDLE_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # cuBLAS from the CUDA toolkit, in case its folder is not in ld.so.conf (as gpu_daemon_check).
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d
  done
fi
SPECD=${SPECD:-$root/build/server/specd}
CLIENT=${CLIENT:-$root/build/client/specd-client}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
t_start=$(date +%s)
for b in "$SPECD" "$CLIENT"; do
  [ -x "$b" ] || { echo "soak.sh: no executable $b (set SPECD / CLIENT / BUNDLE_DIR)" >&2; exit 1; }
done

free_port() {
  if command -v python3 >/dev/null; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  # No python3: a random high port that nothing answers on (the start is retried if it was taken).
  for _ in $(seq 1 50); do
    p=$(( 20000 + RANDOM % 40000 ))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
  done
  return 1
}
json_int() { sed -n "s/.*\"$1\": *\([0-9][0-9]*\).*/\1/p" "$2"; }

# --- start the daemon (the metrics port comes from a probe bind: another process may take it
# first, so retry a few times when that is why it did not start) --------------------------------
pid=
cleanup() { [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; }
trap cleanup EXIT
up=0
for attempt in 1 2 3; do
  mport_req=$(free_port) || { echo "soak.sh: FAIL: no free port for /metrics" >&2; exit 1; }
  rm -f "$OUT/ports.json"
  # shellcheck disable=SC2086
  "$SPECD" serve --host 127.0.0.1 --port 0 --port-file "$OUT/ports.json" --metrics-port "$mport_req" \
    --grace-seconds "${GRACE:-30}" --log-level info ${SERVE_ARGS:-} > "$OUT/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 1200); do  # 120 s: CUDA context, cuBLAS handles, model upload
    [ -s "$OUT/ports.json" ] && { up=1; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [ "$up" = 1 ] && break
  kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=
  grep -q "cannot listen for /metrics" "$OUT/serve.log" || break
  echo "soak.sh: metrics port $mport_req was taken; retrying" >&2
done
if [ "$up" != 1 ]; then
  tail -30 "$OUT/serve.log"
  echo "soak.sh: FAIL: specd serve did not start within 120 s (serve.log)"
  exit 1
fi
sleep 0.2  # the port file is written whole, but let a slow filesystem catch up
port=$(json_int port "$OUT/ports.json")
mport=$(json_int metrics_port "$OUT/ports.json")
addr=127.0.0.1:$port
echo "soak.sh: specd serve pid $pid on $addr, metrics :$mport (${SERVE_ARGS:-no extra flags})"

# --- the soak --------------------------------------------------------------------------------------
to=()
[ -n "${SOAK_TIMEOUT:-}" ] && to=(timeout "$SOAK_TIMEOUT")
# shellcheck disable=SC2086
"${to[@]}" "$CLIENT" --address "$addr" soak --metrics-address "127.0.0.1:$mport" --server-pid "$pid" \
  --json-out "$OUT/soak.json" ${SOAK_ARGS:-} 2>&1 | tee "$OUT/soak.log"
soak_rc=${PIPESTATUS[0]}
alive=1
kill -0 "$pid" 2>/dev/null || alive=0
# The daemon's own figures after the run (graphs, pools, failures): kept beside the soak's.
if [ "$alive" = 1 ]; then
  { exec 3<>"/dev/tcp/127.0.0.1/$mport" && printf 'GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n' >&3 &&
    timeout 5 cat <&3 > "$OUT/metrics_after.txt"; exec 3<&-; } 2>/dev/null
fi

# --- SIGTERM: the daemon must drain and exit 0 -----------------------------------------------------
exit_rc=
if [ "$alive" = 1 ]; then
  kill -TERM "$pid"
  for _ in $(seq 1 600); do  # 60 s
    if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; exit_rc=$?; break; fi
    sleep 0.1
  done
  if [ -z "$exit_rc" ]; then
    kill -KILL "$pid" 2>/dev/null
    exit_rc="none (still running 60 s after SIGTERM; killed)"
  fi
else
  wait "$pid"
  exit_rc="$? (the daemon died during the soak)"
fi
pid=
trap - EXIT

# --- summary ---------------------------------------------------------------------------------------
failed=0
[ "$soak_rc" = 0 ] || failed=1
[ "$exit_rc" = 0 ] || failed=1
echo
echo "== soak.sh summary ($(( $(date +%s) - t_start )) s; logs in $OUT) =="
# The client's own summary: the per-round table, outcomes and each criterion.
sed -n '/^== soak summary/,$p' "$OUT/soak.log" | grep -v '^SOAK '
case "$soak_rc" in
  0) echo "soak client:          exit 0" ;;
  124) echo "soak client:          TIMED OUT after $SOAK_TIMEOUT s" ;;
  *) echo "soak client:          exit $soak_rc" ;;
esac
echo "daemon exit on SIGTERM: $exit_rc"
echo "serve.log: $(grep -c 'engine step failed: .*resetting the engine' "$OUT/serve.log") failed engine steps, $(grep -c ' failed: ' "$OUT/serve.log") failed requests (cancels and deadlines included)"
if [ "$failed" = 0 ]; then echo "PASS"; else echo "FAIL"; fi
exit "$failed"
