#!/usr/bin/env bash
# The daemon on the GPU under real traffic (issue "The GPU daemon must survive real traffic"), from
# the bundle scripts/make_gpu_bundle.sh packs (carry `.bundle`). Every kernel or backend change runs
# this on the device (README, GPU). A 0.8B-shaped random target and draft (`random:0.8B`),
# --max-batch 32, --k 4, through scripts/soak.sh:
#
#   PHASE=main  ~2,000 requests (5 rounds x 400; concurrency 1, 8, 32, 64 in each round; prompts
#               16-400 tokens, max_tokens 32-256, k 1-7, drafter draft or none, greedy / rejection /
#               coupled sampling, 3 % cancels, 3 % short deadlines): device memory flat between the
#               last two rounds (<= 1 %), no unexpected error, no lost request, the greedy control
#               equal before and after, exit 0 on SIGTERM.
#   PHASE=rest  the n-gram drafter (a daemon of its own: one drafter per daemon), the same varied
#               traffic with graphs on and with --cuda-graph-limit 0 (tokens/s, same seed), and an
#               injected allocation failure (--debug-fail-alloc): RESOURCE_EXHAUSTED, then serving.
#   PHASE=mixed the embedded demo pair (trained: real acceptance, a meaningful greedy control) with
#               three drafters in one daemon (--drafter mtp,draft,ngram, CUDA graphs on), each
#               request naming one of them or none: the MTP head under concurrency and graphs.
#   PHASE=all   main and rest (longer than one 10-minute device call).
# Logs under $OUT/<phase>; a summary table last; exit non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
PHASE=${PHASE:-all}
BUNDLE=${BUNDLE:-.bundle/specd-gpu.tar.xz}
export BUNDLE_DIR=${BUNDLE_DIR:-/tmp/specd-bundle}
if [ -n "${SPECD:-}" ]; then
  unset BUNDLE_DIR  # binaries given directly (a dry run on the build tree)
elif [ ! -x "$BUNDLE_DIR/bin/specd" ]; then
  rm -rf "$BUNDLE_DIR" && mkdir -p "$BUNDLE_DIR" && tar -C "$BUNDLE_DIR" -xJf "$BUNDLE" ||
    { echo "gpu_soak: cannot unpack $BUNDLE (run scripts/make_gpu_bundle.sh, carry .bundle)" >&2; exit 1; }
fi
cat "${BUNDLE_DIR:-/nonexistent}/BUILD_INFO" 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
# Overridable for a dry run elsewhere (e.g. SERVE="--device cpu --max-batch 8" with small N_*).
SERVE=${SERVE:-"--device cuda --model random:0.8B --draft random:0.8B:2 --max-batch 32 --max-queue 512 --k 4 --max-context 2048"}
NGRAM_SERVE=${NGRAM_SERVE:-"--device cuda --model random:0.8B --drafter ngram --max-batch 32 --max-queue 512 --k 4 --max-context 2048"}
VARIED=${VARIED:-"--min-prompt-tokens 16 --max-prompt-tokens 400 --max-tokens-range 32,256 --k-range 1,7"}
N_MAIN=${N_MAIN:-400}  # requests per round of the main soak (5 rounds)
N_AB=${N_AB:-200}      # requests per round of each A/B arm (2 rounds)
N_NGRAM=${N_NGRAM:-120}
N_ALLOC=${N_ALLOC:-64}
N_MIXED=${N_MIXED:-300}
MIXED_SERVE=${MIXED_SERVE:-"--device cuda --drafter mtp,draft,ngram --max-batch 32 --max-queue 512 --k 3"}
FAIL_ALLOC=${FAIL_ALLOC:-3000}
results=()
failed=0
record() {  # name, ok|FAIL, detail
  results+=("$(printf '%-26s %-5s %s' "$1" "$2" "$3")")
  [ "$2" = ok ] || failed=1
}
tokps() {  # total generated tokens / total wall seconds over the rounds of a soak.json
  python3 - "$1" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
r = j.get("rounds", [])
t = sum(x.get("tokens", 0) for x in r)
w = sum(x.get("wall_s", 0) for x in r)
print(f"{t / w:.1f}" if w else "0")
EOF
}
soak() {  # name, serve args, soak args
  local dir=$OUT/$1
  mkdir -p "$dir"
  OUT=$dir SERVE_ARGS="$2" SOAK_ARGS="$3" bash scripts/soak.sh > "$dir/run.log" 2>&1
  local rc=$?
  sed -n '/^round /,/^control (after)/p' "$dir/soak.log" 2>/dev/null
  grep -E "^specd:(cuda_graph|device_pool|device_memory|allocation|process_resident)" "$dir/metrics_after.txt" 2>/dev/null
  tail -12 "$dir/run.log"
  return $rc
}

if [ "$PHASE" = main ] || [ "$PHASE" = all ]; then
  t0=$(date +%s)
  soak main "$SERVE" "--rounds 5 --requests-per-round $N_MAIN --concurrency-levels 1,8,32,64 $VARIED --drafters none,draft --seed 1"
  rc=$?
  record "soak: draft, graphs on" "$([ $rc = 0 ] && echo ok || echo FAIL)" \
    "$(( $(date +%s) - t0 )) s, $(tokps "$OUT/main/soak.json") tok/s, see main/soak.log"
fi

if [ "$PHASE" = mixed ]; then
  t0=$(date +%s)
  soak mixed "$MIXED_SERVE" "--rounds 3 --requests-per-round $N_MIXED --concurrency-levels 1,8,32,64 --min-prompt-tokens 4 --max-prompt-tokens 200 --max-tokens-range 16,160 --k-range 1,5 --drafters none,mtp,draft,ngram --seed 5"
  rc=$?
  record "soak: mtp+draft+ngram" "$([ $rc = 0 ] && echo ok || echo FAIL)" \
    "$(( $(date +%s) - t0 )) s, $(tokps "$OUT/mixed/soak.json") tok/s, see mixed/soak.log"
  grep -E '^specd:spec_decode_drafter_(draft|accepted)_tokens_total' "$OUT/mixed/metrics_after.txt" 2>/dev/null
fi

if [ "$PHASE" = rest ] || [ "$PHASE" = all ]; then
  # These runs are short (graphs and pools still warming up): errors, lost streams, the control and
  # SIGTERM are checked; memory flatness is the main phase's (--memory-growth-pct 100 here).
  SHORT="--memory-growth-pct 100"
  soak ngram "$NGRAM_SERVE" "--rounds 3 --requests-per-round $N_NGRAM --concurrency-levels 1,16,64 $VARIED --drafters none,ngram --seed 2 $SHORT"
  rc=$?
  record "soak: ngram" "$([ $rc = 0 ] && echo ok || echo FAIL)" "$(tokps "$OUT/ngram/soak.json") tok/s"
  # The same requests (same seed) with graphs and without: graphs must pay off under varied traffic.
  AB="--rounds 2 --requests-per-round $N_AB --concurrency-levels 1,4,16,64 $VARIED --drafters none,draft --seed 3 --cancel-fraction 0 --deadline-fraction 0 $SHORT"
  soak graphs_on "$SERVE" "$AB"
  rc_on=$?
  soak graphs_off "$SERVE --cuda-graph-limit 0" "$AB"
  rc_off=$?
  on=$(tokps "$OUT/graphs_on/soak.json")
  off=$(tokps "$OUT/graphs_off/soak.json")
  win=$(python3 -c "print('ok' if $on > $off else 'FAIL')")
  record "varied traffic graphs on" "$([ $rc_on = 0 ] && echo ok || echo FAIL)" "$on tok/s"
  record "varied traffic graphs off" "$([ $rc_off = 0 ] && echo ok || echo FAIL)" "$off tok/s"
  record "graphs on beat off" "$win" "$(python3 -c "print(f'{$on / $off:.2f}x')")"
  # An allocation failure in the middle of serving: those requests RESOURCE_EXHAUSTED, the daemon
  # goes on (the soak's criteria would count the failure as unexpected: here it is expected).
  dir=$OUT/alloc
  mkdir -p "$dir"
  OUT=$dir SERVE_ARGS="$SERVE --debug-fail-alloc $FAIL_ALLOC" \
    SOAK_ARGS="--rounds 2 --requests-per-round $N_ALLOC --concurrency-levels 16 $VARIED --drafters none,draft --seed 4 --cancel-fraction 0 --deadline-fraction 0 $SHORT" \
    bash scripts/soak.sh > "$dir/run.log" 2>&1
  # Pass: some request got RESOURCE_EXHAUSTED (a round's or the control's), no other error code,
  # nothing lost, the last round all OK (serving again), exit 0 on SIGTERM.
  hit=$(grep -cE "RESOURCE_EXHAUSTED" "$dir/soak.log")
  other=$(grep -E "^unexpected_errors" "$dir/soak.log" | grep -oE "[A-Z_]+=[0-9]+" | grep -v "^RESOURCE_EXHAUSTED=" | tr '\n' ' ')
  sigterm=$(grep -oE "daemon exit on SIGTERM: [0-9]+" "$dir/run.log" | tail -1)
  last=$(awk '/^== soak summary/{s=1} s && $1 ~ /^[0-9]+$/ {r=$1; n=$2; ok=$6} END {print (n == ok) ? "all OK" : "not all OK"}' "$dir/soak.log")
  ok=FAIL
  if [ "$hit" -gt 0 ] && [ -z "$other" ] && echo "$sigterm" | grep -q ": 0$" && grep -q "^lost .*PASS" "$dir/soak.log" &&
     [ "$last" = "all OK" ]; then ok=ok; fi
  record "injected alloc failure" "$ok" "RESOURCE_EXHAUSTED seen ($hit lines), other codes: ${other:-none}, last round $last, $sigterm"
  grep -E "allocation failed|memory exhausted|engine step failed" "$dir/serve.log" | head -3
fi

echo
echo "== gpu_soak (phase $PHASE) =="
printf '%-26s %-5s %s\n' check result detail
for r in "${results[@]}"; do echo "$r"; done
if [ "$failed" = 0 ]; then echo "ALL OK"; else echo "FAILED (logs in $OUT)"; fi
exit $failed
