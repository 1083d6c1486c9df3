#!/usr/bin/env python3
"""Extra chat-template references for the Qwen3 template, beyond chat_ref.json's 16 cases.

Renders conversations with the template shipped in tests/fixtures/tokenizer/qwen3/
tokenizer_config.json through jinja2 configured like transformers' apply_chat_template
(trim_blocks, lstrip_blocks, loopcontrols; this setup reproduces all 16 renders of
chat_ref.json, which the script checks first), and encodes them with HF tokenizers.
Covers what chat_ref.json does not: reasoning in history, "<think>" inside content,
tool-response turns, a later system turn.

Usage: python3 tests/tokenizer/gen_chat_ref.py   (pip install jinja2 tokenizers)
Writes tests/tokenizer/data/qwen3_chat_extra_ref.json.
"""
import json
import pathlib

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
QWEN3 = ROOT / "tests/fixtures/tokenizer/qwen3"
OUT = pathlib.Path(__file__).resolve().parent / "data/qwen3_chat_extra_ref.json"

U = lambda c: {"role": "user", "content": c}  # noqa: E731
A = lambda c, **kw: {"role": "assistant", "content": c, **kw}  # noqa: E731
S = lambda c: {"role": "system", "content": c}  # noqa: E731
T = lambda c: {"role": "tool", "content": c}  # noqa: E731

CONVERSATIONS = [
    [U("2+2?"), A("<think>\nadd them\n</think>\n\n4")],
    [U("2+2?"), A("<think>\nadd them\n</think>\n\n4"), U("and 3+3?")],
    [U("q1"), A("a1", reasoning_content="r1"), U("q2"), A("a2", reasoning_content="r2")],
    [U("q1"), A("a1", reasoning_content="")],
    [U("q"), A("\n\nplain answer")],
    [U("q"), A("<think>x</think>y</think>\n\nz")],
    [U("q"), A("pre<think>\n\nthought\n\n</think>\n\n\nans")],
    [S("sys"), U("q"), A("a"), S("late system"), U("q2")],
    [U("weather?"), A("calling"), T("{\"t\": 21}"), T("{\"h\": 40}"), A("21C")],
    [U("weather?"), A("calling"), T("sunny")],
    [U("x"), A("<think>\nr\n</think>\n\nfirst"), U("<tool_response>\nok\n</tool_response>"),
     A("<think>\nr2\n</think>\n\nsecond")],
    [T("orphan tool output")],
    [S("only a system prompt")],
    [U("多语言 ✓ <think>literal</think>"), A("答 😀")],
]


def main():
    cfg = json.loads((QWEN3 / "tokenizer_config.json").read_text(encoding="utf-8"))
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    template = env.from_string(cfg["chat_template"])
    for c in json.loads((QWEN3 / "chat_ref.json").read_text(encoding="utf-8")):
        got = template.render(messages=c["messages"], add_generation_prompt=c["add_generation_prompt"],
                              enable_thinking=c["enable_thinking"])
        assert got == c["rendered"], "jinja setup does not reproduce chat_ref.json"
    tok = Tokenizer.from_file(str(QWEN3 / "tokenizer.json"))
    cases = []
    for messages in CONVERSATIONS:
        for gen in (True, False):
            for thinking in (True, False):
                rendered = template.render(messages=messages, add_generation_prompt=gen,
                                           enable_thinking=thinking)
                cases.append({"messages": messages, "add_generation_prompt": gen,
                              "enable_thinking": thinking, "rendered": rendered,
                              "ids": tok.encode(rendered, add_special_tokens=False).ids})
    OUT.write_text(json.dumps(cases, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
