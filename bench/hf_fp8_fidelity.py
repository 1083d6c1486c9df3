#!/usr/bin/env python3
"""FP8 fidelity on the GPU (issue 17, item 3): for each FP8 fixture checkpoint (made by
transformers, tools/fp8_reference.py), the prompt logits' max relative error per row against the
fixture's reference (transformers' fp32 forward of the dequantized checkpoint), for
  - transformers' own FP8 forward on the GPU (FP8Linear: FP8 weights, activations quantized per
    row and 128 columns, FP8 tensor-core GEMMs),
  - transformers' dequantized forward in bf16 on the GPU (what specd's CUDA path computes today),
  - specd's CUDA forward (`specd logits --device cuda`), when SPECD names the binary.
specd's bar: within transformers' own FP8 error. Prints one markdown row per case.

    SPECD=/path/to/specd python3 bench/hf_fp8_fidelity.py [CASE ...]   (default dense_fp8 moe_fp8)
"""
import os
import pathlib
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIX = ROOT / "tests/fixtures/qwen35-tiny"


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


@torch.no_grad()
def hf_logits(model_dir, ids, **kw):
    import transformers
    m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, device_map="cuda", **kw).eval()
    return m(ids[None].cuda()).logits[0].float().cpu()


def specd_logits(model_dir, ids):
    specd = os.environ.get("SPECD")
    if not specd:
        return None
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "l.safetensors")
        subprocess.run([specd, "logits", "--model", str(model_dir), "--ids", ",".join(map(str, ids.tolist())),
                        "--device", "cuda", "--out", out], check=True)
        return load_file(out)["logits"]


def main():
    from transformers import FineGrainedFP8Config
    cases = sys.argv[1:] or ["dense_fp8", "moe_fp8"]
    print("| case | transformers FP8 (W8A8) | transformers dequantized, bf16 | specd CUDA | specd / transformers FP8 |")
    print("|---|---|---|---|---|")
    for case in cases:
        d = FIX / case / "model"
        refs = load_file(FIX / case / "refs.safetensors")
        ids, ref = refs["prompt_ids"], refs["prompt_logits"]
        row = [case]
        try:
            fp8 = rel_err(hf_logits(d, ids), ref)
            row.append(f"{fp8:.4g}")
        except Exception as e:  # the FP8 kernels may refuse the fixtures' small blocks
            fp8 = None
            row.append(f"failed: {type(e).__name__}: {str(e)[:80]}")
        deq = rel_err(hf_logits(d, ids, dtype=torch.bfloat16,
                                quantization_config=FineGrainedFP8Config(dequantize=True)), ref)
        row.append(f"{deq:.4g}")
        got = specd_logits(d, ids)
        if got is None:
            row += ["(SPECD not set)", ""]
        else:
            e = rel_err(got, ref)
            row += [f"{e:.4g}", f"{e / fp8:.2f}" if fp8 else "-"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
