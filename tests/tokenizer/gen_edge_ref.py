#!/usr/bin/env python3
"""Reference encodings of edge-case texts for the Qwen3 tokenizer, computed by HF tokenizers.

The texts target places where a re-implementation can drift from HF: characters whose regex
class differs between Oniguruma (HF) and PCRE2 (NEL, U+180E, long s under (?i)), NFC
composition, long runs (heap merge path), added tokens touching text, and multi-byte
characters split across tokens (prefix_decodes: HF's decode of every prefix of the ids).

Usage: python3 tests/tokenizer/gen_edge_ref.py   (pip install tokenizers)
Writes tests/tokenizer/data/qwen3_edge_ref.json.
"""
import json
import pathlib
import random

import tokenizers
from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOK = ROOT / "tests/fixtures/tokenizer/qwen3/tokenizer.json"
OUT = pathlib.Path(__file__).resolve().parent / "data/qwen3_edge_ref.json"

TEXTS = [
    # NEL is White_Space for Oniguruma's \s but not for PCRE2's UCP \s.
    "a\x85\x85b", "\x85", "x \x85 y", "end\x85", "\x85\x85\x85", " \x85\n",
    # U+180E is no longer White_Space (Unicode 6.3).
    "a\u180e", "\u180e\u180e x", "x\u180e ", "\u180e",
    # (?i:'s|...) folds long s; contractions in other cases.
    "it'\u017f", "IT'\u017f fine", "it's IT'S It'S", "we'LL they'Re I'M you'VE he'D",
    "'s'S'll", "''s", "x'", "'", "don't'",
    # NFC.
    "e\u0301", "a\u0301\u0301", "\u0301", "\u0301abc", "A\u030angstrom", "\u1100\u1161\u11a8",
    "\u1100\u1161\u11a8\u1100\u1161", "\u0958\u0959", "\u2126 ohm", "\u212b",
    "नमस्ते", "ক্ষ", "\u0915\u093c", "Z\u0327\u0301\u0300",
    # HF normalises with Unicode 9.0 tables: later marks (U+09FE, U+1DF6: Unicode 10) are not
    # reordered, later compositions (U+11935 U+11930 -> U+11938: Unicode 13) not formed.
    "\uacf9\u09fe\u05bf\ufe08", "a\u1df6\u05b0", "\U00011935\U00011930", "\U00011938",
    "x\u2000y",
    # Whitespace.
    " " * 300, "\t" * 100 + "x", "\n" * 200, " \n" * 50, "a" + " " * 70 + "b",
    "\u3000\u3000a", "\u00a0" * 5, "x\u2028y", "x\u2029 y", "\r", "\r\n\r\n", " \r\n ",
    "  \t \n\n  x", "x \n", "x  ", " \u00a0x",
    # Long runs: beyond the 64-byte short-merge path.
    "a" * 500, "ab" * 300, "\U0001F600" * 100, "x" * 65, "-" * 200, "=" * 1000,
    "abcdefghijklmnopqrstuvwxyz" * 8, "0123456789" * 30, "aaaa bbbb " * 40,
    # Added tokens against text.
    "<|im_start|><|im_start|>", "<|im_start", "<|im_start|", "a<|im_end|>b", " <|im_end|> ",
    "<think></think>", "<|endoftext|>\n", "<<|im_end|>>", "<tool_call>x</tool_call>",
    "<|im_start|>user\n<|im_end|>", "<|endoftext|><|endoftext|> <|endoftext|>",
    "<|box_start|>(1,2)<|box_end|>", "<tool_response>\n{}\n</tool_response>",
    # Assorted scripts and symbols.
    "\u200d", "\ufeffBOM", "\u2764\ufe0f", "\U0001F1EF\U0001F1F5\U0001F1FA\U0001F1F8",
    "\U00020000\U00020001", "\ue000", "\U0010ffff", "\u0661\u0662\u0663", "\u00b2\u00b3",
    "\u216b", "\U0001d400\U0001d401", "x\u0300y", "\U0001faf0", "\ua66e",
]

# Characters from classes the pre-tokenizer distinguishes, mixed at random.
POOL = (list("aZé ß\t\n\r'sStTlLdDmMvVrRe0189") +
        ["\x85", "\u180e", "\u017f", "\u0301", "\u00a0", "\u3000", "\u2028", "\U0001F600",
         "\u4e2d", "\u0928", "\u094d", "<|im_end|>", "<think>", "\u200b", "\u0661", "!", "?",
         ".", "_", "-", "(", "\"", "\\", "/", "\uff01", "\u00bd"])


def byte_char(b):
    """GPT-2 bytes_to_unicode(): the vocabulary character that stands for byte b."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    if b in printable:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in printable].index(b))


def main():
    tok = Tokenizer.from_file(str(TOK))
    rng = random.Random(20260518)
    texts = list(TEXTS)
    for _ in range(60):
        texts.append("".join(rng.choice(POOL) for _ in range(rng.randint(1, 40))))
    cases = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        case = {"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)}
        cases.append(case)
    # Characters that the vocabulary splits into several byte tokens.
    split_chars = []
    for text in ["\U00020000", "\ue000", "\U0010ffff", "\U0001faf0", "\ua66e", "\U0001d400",
                 "a\U00020000b\ue000c"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        split_chars.append({"text": text, "ids": ids,
                            "prefix_decodes": [tok.decode(ids[:k]) for k in range(len(ids) + 1)]})
    # Byte sequences that are not UTF-8, spelled with the single-byte tokens: HF's lossy
    # decode decides how many U+FFFD each becomes.
    lossy = []
    for seq in [[0x80], [0xE0, 0x80], [0xF0, 0x9F, 0x98, 0x61], [0xED, 0xA0, 0x80], [0xC0, 0xAF],
                [0xF4, 0x90, 0x80, 0x80], [0xF0, 0x9F, 0x41], [0xFF, 0xFE, 0x61],
                [0x61, 0xE2, 0x82], [0xE2, 0x82, 0xE2, 0x82, 0xAC], [0xC3]]:
        ids = [tok.token_to_id(byte_char(b)) for b in seq]
        lossy.append({"bytes": seq, "ids": ids, "decoded": tok.decode(ids)})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"tokenizers_version": tokenizers.__version__, "cases": cases,
                               "split_chars": split_chars, "lossy": lossy}, ensure_ascii=False, indent=0) + "\n",
                   encoding="utf-8")
    print(f"wrote {OUT} ({len(cases)} cases, {len(split_chars)} split-char cases)")


if __name__ == "__main__":
    main()
