#!/usr/bin/env bash
# The embedded demo pair's acceptance on the GPU (issue "MTP drafter", item 4), from the bundle
# scripts/make_gpu_bundle.sh packs (carry `.bundle`; the GPU build has no tokenizer, so the
# prompts come as ids: bench/demo_prompt_ids.json, the 5 held-out prompts of bench/demo_bench.cpp).
# One daemon serving mtp, draft and ngram; for each drafter and k = 1..4, greedy and temperature
# 0.7, 64 new tokens per prompt: acceptance rate and tokens per verify step over the 5 prompts, as
# demo_bench prints them on the CPU. Logs under $OUT/demo_acc; the table last.
#
#   bash scripts/gpu_demo_acceptance.sh                    # on the GPU machine
#   DEVICE=cpu SPECD=build/server/specd SPECD_CLIENT=build/client/specd-client bash scripts/gpu_demo_acceptance.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}/demo_acc
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
# shellcheck source=bundle_env.sh
source scripts/bundle_env.sh
rm -f "$OUT/ports.json"
"$specd" serve --device "$DEVICE" --drafter mtp,draft,ngram --max-k 8 --max-batch 4 --host 127.0.0.1 --port 0 \
  --metrics-port 0 --http-port -1 --port-file "$OUT/ports.json" > "$OUT/serve.log" 2>&1 &
pid=$!
trap 'kill -KILL $pid 2>/dev/null' EXIT
for _ in $(seq 1 600); do
  [ -s "$OUT/ports.json" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
[ -s "$OUT/ports.json" ] || { tail -20 "$OUT/serve.log"; echo "daemon did not start"; exit 1; }
port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$OUT/ports.json")
python3 - "$client" "127.0.0.1:$port" bench/demo_prompt_ids.json "$OUT" "$DEVICE" <<'EOF'
import json, subprocess, sys
client, addr, prompts_file, out, device = sys.argv[1:]
prompts = json.load(open(prompts_file))["prompts"]
failed = 0
rows = {}
for temp in (0.0, 0.7):
    for k in (1, 2, 3, 4):
        for d in ("mtp", "draft", "ngram"):
            drafts = accepted = steps = 0
            for i, p in enumerate(prompts):
                cmd = [client, "--address", addr, "generate", "--prompt-ids", ",".join(map(str, p)), "--max-tokens", "64",
                       "--ignore-eos", "--drafter", d, "--k", str(k), "--temperature", str(temp), "--seed", str(7 + i), "--json"]
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                if r.returncode != 0:
                    failed += 1
                    print("FAIL", d, k, temp, r.stderr.strip()[:200])
                    continue
                st = json.loads(r.stdout)["stats"]
                drafts += st["draft_tokens"]; accepted += st["accepted_tokens"]; steps += st["verify_steps"]
            rows[(temp, k, d)] = (accepted / drafts if drafts else 0.0, (accepted + steps) / steps if steps else 0.0)
json.dump({"%s/%d/%s" % key: v for key, v in rows.items()}, open(out + "/acceptance.json", "w"), indent=1)
print("\n== demo pair acceptance on %s (%d held-out prompts, 64 new tokens each): acceptance rate / tokens per verify step ==" % (device, len(prompts)))
for temp in (0.0, 0.7):
    print("temperature %.1f" % temp)
    print("|k|mtp acc|mtp len|draft acc|draft len|ngram acc|ngram len|\n|---|---|---|---|---|---|---|")
    for k in (1, 2, 3, 4):
        print("|%d|%s|" % (k, "|".join("%.3f|%.2f" % rows[(temp, k, d)] for d in ("mtp", "draft", "ngram"))))
sys.exit(1 if failed else 0)
EOF
rc=$?
kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null
exit $rc
