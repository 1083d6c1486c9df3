#!/usr/bin/env bash
# The soak must fail when something is wrong, and say which criterion failed. A tiny soak with
# three deliberate breakages: the server fails an engine step (--debug-fail-step: its requests
# get INTERNAL, unexpected), the after-control gets another prompt (--debug-perturb-control:
# ids differ), and the RSS limit is -100 % (any memory figure "grew" too much). scripts/soak.sh
# must exit non-zero, those three criteria must read FAIL, and the daemon must still exit 0 on
# SIGTERM (it survives a failed step).
#   soak_check.sh SOAK_SH   (SPECD, CLIENT, OUT in the environment, as for soak.sh)
set -uo pipefail
soak_sh=$1
OUT=${OUT:-/tmp/out}
export OUT
mkdir -p "$OUT"
export SERVE_ARGS="--debug-fail-step 60"
export SOAK_ARGS="--rounds 2 --requests-per-round 16 --concurrency-levels 1,8 --min-prompt-tokens 8
  --max-prompt-tokens 32 --max-tokens-range 8,32 --cancel-fraction 0 --deadline-fraction 0
  --rss-growth-pct -100 --debug-perturb-control"
bash "$soak_sh" > "$OUT/check.log" 2>&1
rc=$?
cat "$OUT/check.log"
fail=0
[ "$rc" != 0 ] || { echo "soak_check: soak.sh exited 0 despite the breakages"; fail=1; }
for c in unexpected_errors control_ids_equal resident_memory_growth; do
  grep -Eq "^$c +FAIL" "$OUT/soak.log" || { echo "soak_check: criterion $c did not report FAIL"; fail=1; }
done
for c in lost load_gauges_zero; do
  grep -Eq "^$c +PASS" "$OUT/soak.log" || { echo "soak_check: criterion $c should PASS here"; fail=1; }
done
grep -Eq "^unexpected_errors +FAIL .*INTERNAL=" "$OUT/soak.log" || { echo "soak_check: INTERNAL not counted by code"; fail=1; }
grep -q "^daemon exit on SIGTERM: 0$" "$OUT/check.log" || { echo "soak_check: the daemon did not exit 0"; fail=1; }
grep -q "^FAIL$" "$OUT/check.log" || { echo "soak_check: soak.sh did not print FAIL"; fail=1; }
[ "$fail" = 0 ] && echo "soak_check: every breakage was reported"
exit "$fail"
