#!/usr/bin/env bash
# The whole daemon on the GPU machine, from the bundle scripts/make_gpu_bundle.sh packs (carry
# `.bundle`): unpack to /tmp/specd-bundle, check every library resolves, start
# `specd serve --device cuda` on the embedded demo pair, then through specd-client: health, info,
# a greedy id-prompt generation with the draft drafter and the same with --drafter none (their
# ids must be equal), a text prompt (must be INVALID_ARGUMENT: no tokenizer in this build),
# a small bench, the OpenAI-compatible HTTP API (completions by token ids, one body and SSE; chat
# refused without a tokenizer), /metrics, and SIGTERM (exit 0); then a second daemon with
# --drafter mtp,draft,ngram (the demo target's own MTP head as the default, the draft model and
# n-gram beside it, each request naming one), whose greedy ids must equal the plain ones. Logs
# under $OUT; a summary table last; exit non-zero on any failure.
#
#   bash scripts/gpu_daemon_check.sh              # on the GPU machine
#   DEVICE=cpu bash scripts/gpu_daemon_check.sh   # anywhere: the bundle minus CUDA
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/out}
BUNDLE=${BUNDLE:-.bundle/specd-gpu.tar.xz}
dir=${BUNDLE_DIR:-/tmp/specd-bundle}
mkdir -p "$OUT"
t_start=$(date +%s)

results=()
failed=0
record() {  # name, ok|FAIL, detail
  results+=("$(printf '%-22s %-5s %s' "$1" "$2" "$3")")
  [ "$2" = ok ] || failed=1
  echo "[check] $1: $2 $3"
}
summary() {
  echo
  echo "== gpu_daemon_check (device $DEVICE, $(( $(date +%s) - t_start )) s) =="
  printf '%-22s %-5s %s\n' check result detail
  for r in "${results[@]}"; do echo "$r"; done
  if [ "$failed" = 0 ]; then echo "ALL OK"; else echo "FAILED (logs in $OUT)"; fi
}

# --- unpack and check the libraries ------------------------------------------------------------
if [ ! -f "$BUNDLE" ]; then
  echo "no $BUNDLE: run scripts/make_gpu_bundle.sh and carry .bundle" >&2
  exit 1
fi
rm -rf "$dir" && mkdir -p "$dir" && tar -C "$dir" -xJf "$BUNDLE" || { echo "cannot unpack $BUNDLE" >&2; exit 1; }
cat "$dir/BUILD_INFO" 2>/dev/null
export LD_LIBRARY_PATH=$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# cuBLAS from the CUDA toolkit, in case its folder is not in ld.so.conf (last: the system's first).
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d
done
specd=$dir/bin/specd
client=$dir/bin/specd-client
ldd "$specd" "$client" > "$OUT/ldd.txt" 2>&1
if grep -q "not found" "$OUT/ldd.txt"; then
  grep "not found" "$OUT/ldd.txt"
  record ldd FAIL "libraries not found (see ldd.txt)"
  summary
  exit 1
fi
record ldd ok "$(grep -c "=> $dir/lib" "$OUT/ldd.txt") from bundle, $(grep '=> /' "$OUT/ldd.txt" | grep -vc "=> $dir/lib") from system"
if [ "$DEVICE" = cuda ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | tee "$OUT/gpu.txt"
  grep -E 'libcublas|libcudart' "$OUT/ldd.txt" | sort -u
fi

# --- start the daemon --------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
PORT=${PORT:-0}                       # 0: any free port, read back from the port file
METRICS_PORT=${METRICS_PORT:-$(free_port)}
rm -f "$OUT/ports.json"
# SERVE_ARGS: extra serve flags (e.g. --batch-invariant).
# shellcheck disable=SC2086
"$specd" serve --device "$DEVICE" --host 127.0.0.1 --port "$PORT" --metrics-port "$METRICS_PORT" \
  --http-port 0 --port-file "$OUT/ports.json" --grace-seconds 10 --log-level info ${SERVE_ARGS:-} \
  > "$OUT/serve.log" 2>&1 &
pid=$!
cleanup() { kill -KILL "$pid" 2>/dev/null; }
trap cleanup EXIT

up=0
for _ in $(seq 1 600); do  # 60 s: CUDA context, cuBLAS handles, model upload
  [ -s "$OUT/ports.json" ] && { up=1; break; }
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ "$up" != 1 ]; then
  tail -30 "$OUT/serve.log"
  record serve FAIL "did not start (serve.log)"
  summary
  exit 1
fi
port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$OUT/ports.json")
mport=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics_port"])' "$OUT/ports.json")
addr=127.0.0.1:$port
cl() { timeout "${CLIENT_TIMEOUT:-30}" "$client" --address "$addr" "$@"; }
healthy=0
for _ in $(seq 1 100); do
  cl health --timeout-ms 1000 >/dev/null 2>&1 && { healthy=1; break; }
  sleep 0.1
done
if [ "$healthy" = 1 ]; then record health ok "serving on $addr (metrics :$mport)"; else record health FAIL "$addr"; fi

# --- info ----------------------------------------------------------------------------------------
if cl info > "$OUT/info.json" 2> "$OUT/info.err"; then
  dev=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(" ".join("%s=%s" % (k, j.get(k)) for k in ("device","drafter","default_k","max_batch","has_tokenizer","version")))' "$OUT/info.json" 2>&1)
  case " $dev " in
    *" device=$DEVICE "*) record info ok "$dev" ;;
    *) record info FAIL "expected device=$DEVICE: $dev" ;;
  esac
else
  record info FAIL "$(head -c 200 "$OUT/info.err")"
fi

# --- greedy: speculation on (draft drafter) vs off -----------------------------------------------
# "import os\n\n\ndef read_config(path):\n    \"\"\"Read a config file and return a dict.\"\"\"\n"
# in the demo pair's tokenizer.
ids=718,638,697,319,770,994,1211,1273,305,261,362,2812,270,2091,509,371,329,270,1353,728
gen_ok=1
cl generate --prompt-ids "$ids" --max-tokens 96 --temperature 0 --k 4 --drafter draft --json \
  > "$OUT/gen_spec.json" 2> "$OUT/gen_spec.err" || gen_ok=0
cl generate --prompt-ids "$ids" --max-tokens 96 --temperature 0 --drafter none --json \
  > "$OUT/gen_plain.json" 2> "$OUT/gen_plain.err" || gen_ok=0
if [ "$gen_ok" = 1 ]; then
  cmp=$(python3 - "$OUT/gen_spec.json" "$OUT/gen_plain.json" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
s = a["stats"]
same = a["ids"] == b["ids"]
first = next((i for i, (x, y) in enumerate(zip(a["ids"], b["ids"])) if x != y), min(len(a["ids"]), len(b["ids"])))
print("%s %d tokens, acceptance %.3f, mean accepted length %.2f, draft %d%s" % (
    "EQUAL" if same else "DIFFER", len(a["ids"]), s["acceptance_rate"], s["mean_acceptance_length"],
    s["draft_tokens"], "" if same else " (first difference at %d; plain %d tokens)" % (first, len(b["ids"]))))
EOF
)
  echo "$cmp"
  case "$cmp" in
    EQUAL*" draft 0"*) record greedy_spec_eq_plain FAIL "no drafts were made: $cmp" ;;
    EQUAL*) record greedy_spec_eq_plain ok "${cmp#EQUAL }" ;;
    *) record greedy_spec_eq_plain FAIL "$cmp" ;;
  esac
else
  record greedy_spec_eq_plain FAIL "$(cat "$OUT/gen_spec.err" "$OUT/gen_plain.err" | head -c 300)"
fi

# --- sampled: token choice on the device ---------------------------------------------------------
# Coupled mode's promise: with speculation the output equals plain sampling with the same seed.
# Rejection mode: the same seed gives the same tokens twice, and drafts are accepted.
samp="--prompt-ids $ids --max-tokens 64 --temperature 0.8 --top-p 0.9 --top-k 40 --seed 11 --json"
s_ok=1
cl generate $samp --sampling-mode coupled --k 4 --drafter draft > "$OUT/cpl_spec.json" 2> "$OUT/cpl.err" || s_ok=0
cl generate $samp --sampling-mode coupled --drafter none > "$OUT/cpl_plain.json" 2>> "$OUT/cpl.err" || s_ok=0
cl generate $samp --sampling-mode rejection --k 4 --drafter draft > "$OUT/rej_a.json" 2>> "$OUT/cpl.err" || s_ok=0
cl generate $samp --sampling-mode rejection --k 4 --drafter draft > "$OUT/rej_b.json" 2>> "$OUT/cpl.err" || s_ok=0
if [ "$s_ok" = 1 ]; then
  sc=$(python3 - "$OUT/cpl_spec.json" "$OUT/cpl_plain.json" "$OUT/rej_a.json" "$OUT/rej_b.json" <<'EOF2'
import json, sys
c, p, a, b = (json.load(open(x)) for x in sys.argv[1:5])
ok = c["ids"] == p["ids"] and a["ids"] == b["ids"] and c["stats"]["draft_tokens"] > 0 and a["stats"]["acceptance_rate"] > 0
print("%s coupled spec %s plain (%d tokens, acceptance %.3f); rejection repeat %s (%d tokens, acceptance %.3f)" % (
    "OK" if ok else "BAD", "==" if c["ids"] == p["ids"] else "!=", len(c["ids"]), c["stats"]["acceptance_rate"],
    "==" if a["ids"] == b["ids"] else "!=", len(a["ids"]), a["stats"]["acceptance_rate"]))
EOF2
)
  echo "$sc"
  case "$sc" in
    OK*) record sampled ok "${sc#OK }" ;;
    *) record sampled FAIL "$sc" ;;
  esac
else
  record sampled FAIL "$(head -c 300 "$OUT/cpl.err")"
fi

# --- a text prompt: this build has no tokenizer ---------------------------------------------------
cl generate --prompt "def f():" --max-tokens 4 > "$OUT/gen_text.out" 2> "$OUT/gen_text.err"
rc_text=$?
if [ "$rc_text" != 0 ] && grep -q INVALID_ARGUMENT "$OUT/gen_text.err"; then
  record text_prompt_rejected ok "$(head -1 "$OUT/gen_text.err" | head -c 100)"
else
  record text_prompt_rejected FAIL "rc $rc_text: $(head -c 200 "$OUT/gen_text.err")"
fi

# --- bench -----------------------------------------------------------------------------------------
if cl bench --num-requests ${BENCH_REQUESTS:-16} --concurrency 4 --warmup 2 --max-tokens 64 --temperature 0 \
    --json-out "$OUT/bench.json" > "$OUT/bench.txt" 2>&1; then
  cat "$OUT/bench.txt"
  b=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%d/%d completed, %d errors, %.0f tok/s, acceptance %.3f, e2e p50 %.1f ms" % (j["completed"], j["requests"], j["errors"], j["output_tokens_per_s"], j["acceptance_rate"], j["e2e_ms"]["p50"]))' "$OUT/bench.json" 2>&1)
  if python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j["errors"]==0 and j["completed"]==j["requests"] else 1)' "$OUT/bench.json"; then
    record bench ok "$b"
  else
    record bench FAIL "$b"
  fi
else
  tail -5 "$OUT/bench.txt"
  record bench FAIL "$(tail -1 "$OUT/bench.txt" | head -c 200)"
fi

# --- the OpenAI-compatible HTTP API (python3's http.client: the GPU machine has no `openai`) ---------
hport=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http_port"])' "$OUT/ports.json")
if hc=$(timeout 60 python3 - "$hport" 2> "$OUT/http.err" <<'PYEOF'
import http.client, json, sys
port = int(sys.argv[1])
def post(path, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, r.read().decode()
prompt = [11, 12, 13, 14, 15, 16, 17, 18]
code, one = post("/v1/completions", {"prompt": prompt, "max_tokens": 48, "ignore_eos": True})
assert code == 200, (code, one)
one = json.loads(one)
assert one["usage"]["completion_tokens"] == 48 and one["usage"]["speculative"]["draft_tokens"] > 0, one["usage"]
code, sse = post("/v1/completions", {"prompt": prompt, "max_tokens": 48, "ignore_eos": True, "stream": True,
                                     "stream_options": {"include_usage": True}})
events = sse.split("\n\n")
assert code == 200 and events[-2] == "data: [DONE]" and events[-1] == "", events[-3:]
usage = json.loads(events[-3][6:])["usage"]
assert usage["completion_tokens"] == 48, usage
code, err = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
assert code == 400 and "tokenizer" in json.loads(err)["error"]["message"], (code, err)
code, err = post("/v1/completions", {"prompt": prompt, "n": 3})
assert code == 400 and json.loads(err)["error"]["type"] == "invalid_request_error", (code, err)
s = usage["speculative"]
print(f"completions one-body + SSE ({len(events) - 2} events), 48 tokens, acceptance {s['acceptance_rate']:.3f}; errors 400")
PYEOF
); then
  record http_api ok "$hc"
else
  record http_api FAIL "$(tail -3 "$OUT/http.err" | head -c 300)"
fi

# --- /metrics --------------------------------------------------------------------------------------
if [ "$mport" -gt 0 ] 2>/dev/null; then
  if python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=10).read().decode())' \
      "$mport" > "$OUT/metrics.txt" 2> "$OUT/metrics.err"; then
    record metrics ok "$(grep -vc '^#' "$OUT/metrics.txt") samples"
    grep -E '^specd:(spec_decode_num_(draft|accepted)_tokens_total|request_(success|failure)_total|generation_tokens_total|engine_step_failures_total)' \
      "$OUT/metrics.txt" | head -10
  else
    record metrics FAIL "$(tail -1 "$OUT/metrics.err")"
  fi
else
  record metrics FAIL "no metrics port"
fi

# --- SIGTERM -----------------------------------------------------------------------------------------
kill -TERM "$pid"
rc=
for _ in $(seq 1 200); do  # 20 s (grace 10 s)
  if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; rc=$?; break; fi
  sleep 0.1
done
trap - EXIT
if [ -z "$rc" ]; then
  kill -KILL "$pid" 2>/dev/null
  record sigterm FAIL "still running 20 s after SIGTERM (killed)"
elif [ "$rc" = 0 ]; then
  record sigterm ok "exit 0"
else
  record sigterm FAIL "exit $rc"
fi
grep -iE "error|warn|device|cuda|listening|serving" "$OUT/serve.log" | head -15

# --- the demo target's own MTP head as the drafter: greedy output equals plain greedy's ----------
rm -f "$OUT/ports_mtp.json"
"$specd" serve --device "$DEVICE" --host 127.0.0.1 --port 0 --metrics-port 0 --drafter mtp,draft,ngram --k 3 \
  --port-file "$OUT/ports_mtp.json" --grace-seconds 10 > "$OUT/serve_mtp.log" 2>&1 &
pid=$!
trap cleanup EXIT
for _ in $(seq 1 600); do
  [ -s "$OUT/ports_mtp.json" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -s "$OUT/ports_mtp.json" ]; then
  addr=127.0.0.1:$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$OUT/ports_mtp.json")
  if cl generate --prompt-ids "$ids" --max-tokens 96 --temperature 0 --json > "$OUT/gen_mtp.json" 2> "$OUT/gen_mtp.err" \
     && [ -s "$OUT/gen_plain.json" ]; then
    m=$(python3 - "$OUT/gen_mtp.json" "$OUT/gen_plain.json" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
s = a["stats"]
print("%s %d tokens, acceptance %.3f, mean accepted length %.2f, draft %d" % (
    "EQUAL" if a["ids"] == b["ids"] else "DIFFER", len(a["ids"]), s["acceptance_rate"], s["mean_acceptance_length"],
    s["draft_tokens"]))
EOF
)
    case "$m" in
      EQUAL*" draft 0") record mtp_eq_plain FAIL "no drafts: $m" ;;
      EQUAL*) record mtp_eq_plain ok "${m#EQUAL }" ;;
      *) record mtp_eq_plain FAIL "$m" ;;
    esac
    # The same daemon serves the draft model and n-gram beside the head: a request names one.
    for d in draft ngram; do
      if cl generate --prompt-ids "$ids" --max-tokens 96 --temperature 0 --drafter "$d" --json > "$OUT/gen_mixed_$d.json" \
         2> "$OUT/gen_mixed_$d.err"; then
        m=$(python3 -c 'import json,sys; a,b=(json.load(open(p)) for p in sys.argv[1:3]); print(("EQUAL" if a["ids"]==b["ids"] else "DIFFER"), "draft", a["stats"]["draft_tokens"], "accepted", a["stats"]["accepted_tokens"])' \
          "$OUT/gen_mixed_$d.json" "$OUT/gen_plain.json")
        case "$m" in
          EQUAL*" draft 0 "*) record "mixed_${d}_eq_plain" FAIL "no drafts: $m" ;;
          EQUAL*) record "mixed_${d}_eq_plain" ok "${m#EQUAL }" ;;
          *) record "mixed_${d}_eq_plain" FAIL "$m" ;;
        esac
      else
        record "mixed_${d}_eq_plain" FAIL "$(tail -1 "$OUT/gen_mixed_$d.err")"
      fi
    done
  else
    record mtp_eq_plain FAIL "$(tail -1 "$OUT/gen_mtp.err")"
  fi
  kill -TERM "$pid"; wait "$pid"; rc=$?
  if [ "$rc" = 0 ]; then record mtp_sigterm ok "exit 0"; else record mtp_sigterm FAIL "exit $rc"; fi
else
  tail -20 "$OUT/serve_mtp.log"
  record mtp_serve FAIL "--drafter mtp did not start (serve_mtp.log)"
fi
trap - EXIT
summary
exit "$failed"
