"""CLI contract checks for `specd tokenize`, `specd generate` and `specd logits` (docs/server.md).

Usage: cli_test.py SPECD_BINARY SOURCE_DIR. Prints 'N passed, N failed' and exits non-zero on
any failure. A build without the tokenizer fails the tokenize checks with a clear message.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

specd, src = sys.argv[1], sys.argv[2]
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what)


def run(*args):
    return subprocess.run([specd, *args], capture_output=True, text=True, timeout=240)


# 1. tokenize: every public reference case, ids and decode equal to HF tokenizers'.
tok_dir = os.path.join(src, "tests/fixtures/tokenizer/qwen3")
cases = json.load(open(os.path.join(tok_dir, "tok_ref_public.json")))["cases"]
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump([c["text"] for c in cases], f)
    inp = f.name
r = run("tokenize", "--tokenizer", tok_dir, "--input", inp)
check(r.returncode == 0, f"tokenize exit {r.returncode}: {r.stderr.strip()}")
if r.returncode == 0:
    got = json.loads(r.stdout)["cases"]
    check(len(got) == len(cases), "one result per input text")
    for c, g in zip(cases, got):
        check(g["ids"] == c["ids"], f"ids of {c['text'][:40]!r}")
        check(g["decoded"] == c["decoded"], f"decoded of {c['text'][:40]!r}")
r = run("tokenize", "--tokenizer", tok_dir, "--text", "Hello, world")
check(r.returncode == 0 and json.loads(r.stdout)["cases"][0]["ids"] == [9707, 11, 1879], "--text Hello, world")
r = run("tokenize", "--tokenizer", "/nonexistent/dir", "--text", "x")
check(r.returncode != 0 and "nonexistent" in r.stderr, "missing tokenizer: clear error")

# 2. generate --prompt TEXT end to end on the default pair (byte-level tokenizer in the folder).
target = os.path.join(src, "models/demo/target")
r = run("generate", "--model", target, "--prompt", "def main():", "--max-tokens", "12", "--ignore-eos", "--json")
check(r.returncode == 0, f"generate --prompt exit {r.returncode}: {r.stderr.strip()}")
if r.returncode == 0:
    j = json.loads(r.stdout)
    check(len(j["ids"]) == 12 and j["finish_reason"] == "length", "12 tokens, finish length")
    check(set(j) >= {"ids", "text", "finish_reason", "stats"}, "JSON keys")
    check(set(j["stats"]) == {"draft_tokens", "accepted_tokens", "verify_steps", "acceptance_rate",
                              "mean_acceptance_length", "per_position_acceptance"}, "stats keys")
    # The text is the decode of the ids: re-encoding it round-trips through the same tokenizer.
    r2 = run("tokenize", "--tokenizer", target, "--text", j["text"])
    check(r2.returncode == 0 and json.loads(r2.stdout)["cases"][0]["decoded"] == j["text"],
          "the generated text round-trips through the model's tokenizer")

# 3. generate on a fixture pair: greedy ids equal transformers' greedy_ids.
def read_ids(path, name):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    s, e = h[name]["data_offsets"]
    return list(struct.unpack(f"<{(e - s) // 8}q", b[8 + n + s:8 + n + e]))

fx = os.path.join(src, "tests/fixtures/qwen35-tiny")
refs = os.path.join(fx, "dense/refs.safetensors")
prompt = ",".join(map(str, read_ids(refs, "prompt_ids")))
greedy = read_ids(refs, "greedy_ids")
for extra in (["--drafter", "none"], ["--drafter", "ngram", "--k", "3"],
              ["--draft", os.path.join(fx, "draft_near/model"), "--k", "4"]):
    r = run("generate", "--model", os.path.join(fx, "dense/model"), *extra, "--prompt-ids", prompt,
            "--max-tokens", str(len(greedy)), "--ignore-eos", "--json")
    check(r.returncode == 0 and json.loads(r.stdout)["ids"] == greedy, f"greedy ids with {extra}")
r = run("generate", "--model", os.path.join(fx, "dense/model"), "--prompt-ids", "1,2,9999", "--json")
check(r.returncode != 0 and "vocabulary" in r.stderr, "out-of-vocab id: clear error")

# 4. logits --split writes f32 [T, V] under the name 'logits'.
with tempfile.TemporaryDirectory() as d:
    out = os.path.join(d, "l.safetensors")
    r = run("logits", "--model", os.path.join(fx, "dense/model"), "--ids", prompt, "--split", "30", "--out", out)
    check(r.returncode == 0, f"logits exit {r.returncode}: {r.stderr.strip()}")
    if r.returncode == 0:
        b = open(out, "rb").read()
        h = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])
        check(h["logits"]["dtype"] == "F32" and h["logits"]["shape"] == [45, 512], "logits tensor")
        # Values: prefill 30 + one cached 15-token forward equal transformers' uncached logits.
        n = struct.unpack("<Q", b[:8])[0]
        s, e = h["logits"]["data_offsets"]
        got = struct.unpack(f"<{(e - s) // 4}f", b[8 + n + s:8 + n + e])
        rb = open(refs, "rb").read()
        rn = struct.unpack("<Q", rb[:8])[0]
        rh = json.loads(rb[8:8 + rn])
        rs, re_ = rh["prompt_logits"]["data_offsets"]
        ref = struct.unpack(f"<{(re_ - rs) // 4}f", rb[8 + rn + rs:8 + rn + re_])
        worst = 0.0
        for row in range(45):
            g, r_ = got[row * 512:(row + 1) * 512], ref[row * 512:(row + 1) * 512]
            num = sum((a - c) ** 2 for a, c in zip(g, r_)) ** 0.5
            den = sum(c * c for c in r_) ** 0.5
            worst = max(worst, num / den) if num == num else float("inf")
        check(worst <= 1e-4, f"logits --split 30 vs transformers: worst row rel err {worst:.3g}")

# 5. plan: the memory plan of a configuration from its config alone (docs/memory.md).
def plan(*args):
    r = run("plan", "--json", *args)
    return r, (json.loads(r.stdout) if r.returncode == 0 or r.stdout.startswith("{") else None)


base = ("--model", "random:9B", "--mtp", "--device-memory", "139G", "--k", "4", "--max-context", "32768")
r, j = plan(*base, "--max-batch", "16")
check(r.returncode == 0 and j is not None and j["fits"], f"plan 9B fits: {r.stderr.strip()}")
if j is not None and j["fits"]:
    check(17e9 < j["parts"]["target weights"] < 19e9, "9B shapes in bf16: 17-19 GB of weights")
    check(j["total_bytes"] <= j["budget_bytes"], "the plan is within its budget")
    check(j["kv_cache_tokens"] == 16 * 32768, "16 slots at full context fit on an H200")
    n = j["max_batch_at_full_context"]
    _, at = plan(*base, "--max-batch", str(n))
    _, past = plan(*base, "--max-batch", str(n + 1))
    check(at is not None and at["kv_cache_tokens"] == n * 32768, "at the largest batch, every slot gets full context")
    check(past is not None and past["fits"] and past["kv_cache_tokens"] < (n + 1) * 32768,
          "one slot more: the KV pool is what is left")
r, j = plan("--model", "random:27B", "--device-memory", "40G", "--max-batch", "1")
check(r.returncode != 0 and j is not None and not j["fits"] and "does not fit" in j["error"],
      "27B on 40 GiB: does not fit, with the reason")
r, j = plan("--model", os.path.join(fx, "dense/model"), "--device-memory", "1G", "--max-batch", "4", "--max-context", "256")
check(r.returncode == 0 and j is not None and j["fits"], "a checkpoint folder's config.json plans too")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
