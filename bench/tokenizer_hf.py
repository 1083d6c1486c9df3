#!/usr/bin/env python3
"""HF tokenizers on the corpus of bench/tokenizer_bench.cpp, for comparison.

    python3 bench/tokenizer_hf.py TOKENIZER_JSON [TEXT_FILE]

TEXT_FILE defaults to /tmp/specd_tokenizer_corpus.txt, written by tokenizer_bench. Measures
encode() of the whole text and encode_batch() of its lines (split on "\\n", like the C++
bench), add_special_tokens=False. encode_batch uses every core unless RAYON_NUM_THREADS is set
(set it to 1 for a one-core figure).
"""
import os
import sys
import time

import tokenizers
from tokenizers import Tokenizer


def main():
    tok_path = sys.argv[1]
    text_path = sys.argv[2] if len(sys.argv) > 2 else "/tmp/specd_tokenizer_corpus.txt"
    if os.path.isdir(tok_path):
        tok_path = os.path.join(tok_path, "tokenizer.json")
    tok = Tokenizer.from_file(tok_path)
    with open(text_path, "rb") as f:
        text = f.read().decode("utf-8")
    mb = len(text.encode("utf-8")) / 1e6
    print(f"tokenizers {tokenizers.__version__}; text: {mb:.2f} MB; "
          f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}")
    for run in range(2):
        t = time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False).ids
        dt = time.perf_counter() - t
        print(f"whole text  run {run}: {mb / dt:8.2f} MB/s  ({dt:.3f} s, {len(ids)} tokens)")
    lines = text.split("\n")
    for run in range(2):
        t = time.perf_counter()
        encs = tok.encode_batch(lines, add_special_tokens=False)
        dt = time.perf_counter() - t
        n = sum(len(e.ids) for e in encs)
        print(f"encode_batch run {run}: {mb / dt:8.2f} MB/s  ({dt:.3f} s, {len(lines)} lines, {n} tokens)")


if __name__ == "__main__":
    main()
