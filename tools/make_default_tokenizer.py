#!/usr/bin/env python3
"""Writes the byte-level BPE tokenizer of the embedded default model (vocab 512).

The default model pair is the tiny random-weight fixture (vocab 512, bos 1, eos 2, pad 0), so it
needs a tokenizer of exactly that id space for text prompts and streamed text to work:

  ids 0, 1, 2   <|endoftext|> (pad), <|im_start|> (bos), <|im_end|> (eos): special added tokens
  ids 3..258    the 256 ByteLevel byte symbols, in byte order (any text encodes)
  ids 259..511  253 BPE merges learned from some Python source

Same format as Qwen3's tokenizer.json (NFC normalizer, the Qwen split regex, ByteLevel) so the
C++ tokenizer loads it through the same code path as the real models. tokenizer_config.json
carries Qwen3's chat template (copied byte for byte from the tokenizer fixture so that chat
prompts render with the library's Qwen3 renderer).

Usage: python3 tools/make_default_tokenizer.py [--out models/default/target] [CORPUS_FILES...]
Needs the `regex` module (pip install regex); checks the result with HF `tokenizers` when it is
installed. Deterministic for a given corpus.
"""
import argparse
import collections
import json
import pathlib
import sys
import sysconfig

import regex

ROOT = pathlib.Path(__file__).resolve().parents[1]
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
              r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 512
FIRST_BYTE_ID = len(SPECIALS)
FIRST_MERGE_ID = FIRST_BYTE_ID + 256


def byte_to_char():
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def default_corpus():
    lib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    names = ["textwrap.py", "argparse.py", "json/decoder.py", "json/encoder.py", "csv.py", "shlex.py"]
    return [lib / n for n in names if (lib / n).exists()] + [pathlib.Path(__file__)]


def train(text, num_merges):
    b2c = byte_to_char()
    words = collections.Counter(regex.findall(QWEN_SPLIT, text))
    seqs = {w: [b2c[b] for b in w.encode("utf-8")] for w in words}
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for w, f in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += f
        if not pairs:
            break
        # Most frequent pair; ties go to the lexicographically smallest, for determinism.
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        for w in words:
            s = seqs[w]
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and s[i] == best[0] and s[i + 1] == best[1]:
                    out.append(joined)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def build(merges):
    b2c = byte_to_char()
    # The specials are in the model vocab too: HF numbers added tokens that are missing from the
    # vocab after the vocab's size, which would move them off ids 0..2.
    vocab = {c: i for i, c in enumerate(SPECIALS)}
    vocab.update({b2c[b]: FIRST_BYTE_ID + b for b in range(256)})
    for i, (a, b) in enumerate(merges):
        vocab[a + b] = FIRST_MERGE_ID + i
    assert len(vocab) == VOCAB, len(vocab)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, c in enumerate(SPECIALS)],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_SPLIT}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }


def tokenizer_config():
    qwen3 = json.loads((ROOT / "tests/fixtures/tokenizer/qwen3/tokenizer_config.json").read_text("utf-8"))
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for i, c in enumerate(SPECIALS)},
        "bos_token": None,
        "chat_template": qwen3["chat_template"],
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def check(path):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("tokenizers not installed: skipped the HF check", file=sys.stderr)
        return
    tok = Tokenizer.from_file(str(path))
    for s in ["def main():\n    return 0\n", "Hello, wörld! 😀", "<|im_start|>user\nhi<|im_end|>"]:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert all(0 <= i < VOCAB for i in ids), ids
        assert tok.decode(ids, skip_special_tokens=False) == s, (s, ids)
    assert [tok.token_to_id(c) for c in SPECIALS] == [0, 1, 2] and tok.get_vocab_size() == VOCAB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "models/default/target"))
    ap.add_argument("corpus", nargs="*")
    a = ap.parse_args()
    files = [pathlib.Path(p) for p in a.corpus] or default_corpus()
    text = "\n".join(f.read_text("utf-8") for f in files)
    merges = train(text, VOCAB - FIRST_MERGE_ID)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(build(merges), ensure_ascii=False, indent=1) + "\n", "utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), ensure_ascii=False, indent=2) + "\n",
                                               "utf-8")
    check(out / "tokenizer.json")
    print(f"wrote {out}/tokenizer.json ({len(merges)} merges from {len(text)} chars) and tokenizer_config.json")


if __name__ == "__main__":
    main()
