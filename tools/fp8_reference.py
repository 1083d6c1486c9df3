#!/usr/bin/env python3
"""FP8 (block-wise e4m3) fixtures for specd's FP8 checkpoint loading, made with transformers.

The on-disk format is the one Qwen publishes for its Qwen3.5 / Qwen3.6 FP8 checkpoints and that
transformers' FineGrainedFP8 integration reads and writes:
  config.json  quantization_config = {"quant_method": "fp8", "fmt": "e4m3",
               "activation_scheme": "dynamic", "weight_block_size": [bm, bn],
               "modules_to_not_convert": [...]}
  X.weight            F8_E4M3 [rows, cols]   (or [E, rows, cols] for fused experts)
  X.weight_scale_inv  F32 or BF16 [ceil(rows/bm), ceil(cols/bn)]; weight = fp8 * scale_inv
Quantized, as in Qwen's releases: every projection of the attention and GDN mixers
(q/k/v/o_proj, in_proj_qkv, in_proj_z, out_proj), the dense MLP, the shared expert and every
routed expert. Kept in BF16: embed_tokens, lm_head, norms, conv1d, A_log, dt_bias, in_proj_a/b,
the router (mlp.gate) and shared_expert_gate.

Quantization is transformers' own Fp8Quantize op (per-block amax / 448), on the fp32 fixture
weights; the reference forward is transformers loading the FP8 checkpoint on the CPU (which
dequantizes it: weight = fp8 * scale_inv) and running in fp32. Blocks here are 64x64 (dense) and
32x32 (MoE: its shared expert is 96 wide), so the tiny fixture models (hidden 128) get several
blocks per matrix and their experts are quantized too; real checkpoints use 128x128
(tests/unit/fp8_test.cpp checks that block size on the op fixture below).

Writes, under tests/fixtures/:
  qwen35-tiny/dense_fp8/{model/,refs.safetensors,refs.json}  scales F32 (what transformers writes)
  qwen35-tiny/moe_fp8/{model/,refs.safetensors,refs.json}    scales BF16 (what Qwen publishes),
                                                             experts per expert (Qwen's layout)
  fp8/ops.safetensors   torch's e4m3 casts, transformers' quantizer and dequantizer outputs
refs.safetensors has the same keys as the fp32 fixtures (prompt_logits, long_prompt_logits,
greedy_ids, KV after prefill / prompt) so the same parity tests run on it. refs.json also records
the FP8 checkpoint's logit error against the fp32 model and transformers' bf16 error against
fp32 on the same prompt (the budget the GPU FP8 path is judged by).

Usage (torch, transformers >= 5, accelerate, safetensors; CPU is enough):
    python3 tools/fp8_reference.py
"""
import json
import pathlib
import shutil

import torch
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIX = ROOT / "tests/fixtures/qwen35-tiny"

QUANTIZED = ("q_proj", "k_proj", "v_proj", "o_proj", "in_proj_qkv", "in_proj_z", "out_proj", "gate_proj",
             "up_proj", "down_proj")
NOT_CONVERTED = ["lm_head", "embed_tokens", "in_proj_a", "in_proj_b", "mlp.gate", "shared_expert_gate"]


def quantizer(block):
    from transformers import FineGrainedFP8Config
    from transformers.integrations.finegrained_fp8 import Fp8Quantize

    class Stub:
        quantization_config = FineGrainedFP8Config(weight_block_size=block)
    return Fp8Quantize(Stub())


def should_quantize(name):
    if not name.endswith(".weight"):
        return False
    module = name[: -len(".weight")].rsplit(".", 1)[-1]
    return module in QUANTIZED


def quantize_checkpoint(case, scale_dtype, block):
    src = FIX / case / "model"
    dst = FIX / f"{case}_fp8" / "model"
    if dst.parent.exists():
        shutil.rmtree(dst.parent)
    dst.mkdir(parents=True)
    q = quantizer(block)
    tensors = load_file(src / "model.safetensors")
    out = {}
    for name, t in tensors.items():
        if should_quantize(name):
            got = q._quantize_one(name, t)
            assert len(got) == 2, f"{name} {tuple(t.shape)} was not tiled by {block}"
            out[name] = got[name]
            out[name + "_scale_inv"] = got[name + "_scale_inv"].to(scale_dtype)
        else:
            out[name] = t.to(torch.bfloat16)
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": list(block), "modules_to_not_convert": NOT_CONVERTED}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    for extra in ("generation_config.json",):
        if (src / extra).exists():
            shutil.copy(src / extra, dst / extra)
    return dst, sum(1 for n in out if n.endswith("_scale_inv"))


def load(d, dtype):
    import transformers
    return transformers.AutoModelForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation="eager").eval()


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


@torch.no_grad()
def references(model, prompt, long_prompt, n_greedy):
    from transformers import DynamicCache
    refs = {}
    refs["prompt_logits"] = model(prompt[None]).logits[0].float()
    refs["long_prompt_logits"] = model(long_prompt[None]).logits[0].float()
    cache = DynamicCache(config=model.config)
    model(prompt[None, :30], past_key_values=cache, use_cache=True)
    attn = [i for i, t in enumerate(model.config.layer_types) if t == "full_attention"]
    for i in attn:
        refs[f"after_prefill.layer{i}.keys"] = cache.layers[i].keys.float().clone()
        refs[f"after_prefill.layer{i}.values"] = cache.layers[i].values.float().clone()
    model(prompt[None, 30:], past_key_values=cache, use_cache=True)
    for i in attn:
        refs[f"after_prompt.layer{i}.keys"] = cache.layers[i].keys.float().clone()
        refs[f"after_prompt.layer{i}.values"] = cache.layers[i].values.float().clone()
    cache = DynamicCache(config=model.config)
    logits = model(prompt[None], past_key_values=cache, use_cache=True).logits[0, -1]
    greedy, margins = [], []
    for _ in range(n_greedy):
        top2 = logits.topk(2).values
        margins.append((top2[0] - top2[1]).item())
        nxt = int(logits.argmax())
        greedy.append(nxt)
        logits = model(torch.tensor([[nxt]]), past_key_values=cache, use_cache=True).logits[0, -1]
    refs["greedy_ids"] = torch.tensor(greedy, dtype=torch.int64)
    return refs, min(margins)


def make_case(case, scale_dtype, block):
    import transformers
    model_dir, n_scales = quantize_checkpoint(case, scale_dtype, block)
    fp32_refs = load_file(FIX / case / "refs.safetensors")
    prompt, long_prompt = fp32_refs["prompt_ids"], fp32_refs["long_prompt_ids"]
    fp8 = load(model_dir, torch.float32)
    # transformers dequantized on load: check it really did (no FP8 module left, weights fp32).
    assert all(p.dtype == torch.float32 for p in fp8.parameters())
    refs, margin = references(fp8, prompt, long_prompt, len(fp32_refs["greedy_ids"]))
    refs["prompt_ids"] = prompt
    refs["long_prompt_ids"] = long_prompt
    save_file({k: v.contiguous() for k, v in refs.items()}, model_dir.parent / "refs.safetensors")
    with torch.no_grad():
        bf16 = load(FIX / case / "model", torch.bfloat16)
        bf16_logits = bf16(prompt[None]).logits[0].float()
    info = {
        "case": f"{case}_fp8", "source": f"{case} (fp32)", "transformers": transformers.__version__,
        "torch": torch.__version__, "weight_block_size": list(block), "scale_dtype": str(scale_dtype),
        "quantized_tensors": n_scales,
        "fp8_vs_fp32_prompt_logits_max_row_rel_err": rel_err(refs["prompt_logits"], fp32_refs["prompt_logits"]),
        "bf16_vs_fp32_prompt_logits_max_row_rel_err": rel_err(bf16_logits, fp32_refs["prompt_logits"]),
        "greedy_min_top2_margin": margin,
    }
    (model_dir.parent / "refs.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


def make_ops():
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    g = torch.Generator().manual_seed(7)
    out = {}
    # Casts: normal, subnormal and tie values, both signs, up to the e4m3 maximum 448.
    vals = torch.cat([torch.randn(4000, generator=g) * s for s in (0.003, 0.05, 1.0, 40.0, 150.0)])
    vals = torch.cat([vals, torch.tensor([0.0, -0.0, 448.0, -448.0, 2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -10,
                                          2.0 ** -6, 1.0625, 1.1875, 17.0, 19.0, 240.0, 232.0, 416.0])])
    vals = vals.clamp(-448.0, 448.0)
    # Past the largest finite value: torch's CPU cast saturates to +-448 (infinities too); NaN keeps
    # its sign.
    nan = torch.tensor([float("nan")])
    vals = torch.cat([vals, torch.tensor([456.0, 460.0, 464.0, 464.5, 470.0, 480.0, 500.0, -470.0, 1e6,
                                          float("inf"), float("-inf")]), nan, -nan])
    out["cast_in"] = vals.float()
    out["cast_out"] = vals.to(torch.float8_e4m3fn).view(torch.uint8)
    every = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    out["decode_table"] = torch.where(torch.isnan(every), torch.zeros_like(every), every)
    out["decode_is_nan"] = torch.isnan(every).to(torch.uint8)
    # The quantizer on bf16 weights (a real checkpoint's dtype), two block sizes.
    for tag, block, shape in (("b128", (128, 128), (256, 384)), ("b64", (64, 64), (192, 320))):
        w = (torch.randn(*shape, generator=g) * 0.05).to(torch.bfloat16)
        w[:128, :128] = 0  # all-zero blocks keep scale 1
        got = quantizer(block)._quantize_one("w.weight", w)
        out[f"quant_{tag}_src"] = w
        out[f"quant_{tag}_fp8"] = got["w.weight"].view(torch.uint8)
        out[f"quant_{tag}_scale_inv"] = got["w.weight_scale_inv"]
        out[f"quant_{tag}_dequant"] = Fp8Dequantize(None)._dequantize_one(
            got["w.weight"], got["w.weight_scale_inv"], torch.float32)
    # Dequantizing partial blocks (rows, cols not multiples of 128; DeepSeek-style ceil grid).
    # transformers' dequantizer needs whole blocks, so it runs on the weight padded to them.
    rows, cols = 200, 300
    fp8 = (torch.randn(rows, cols, generator=g) * 60).clamp(-448, 448).to(torch.float8_e4m3fn)
    scale = torch.rand(2, 3, generator=g) * 0.01 + 1e-4
    padded = torch.zeros(256, 384, dtype=torch.float8_e4m3fn)
    padded[:rows, :cols] = fp8
    out["partial_fp8"] = fp8.view(torch.uint8)
    out["partial_scale_inv"] = scale
    out["partial_dequant"] = Fp8Dequantize(None)._dequantize_one(padded, scale, torch.float32)[:rows, :cols].contiguous()
    d = ROOT / "tests/fixtures/fp8"
    d.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, d / "ops.safetensors")
    print("ops:", {k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    make_ops()
    make_case("dense", torch.float32, (64, 64))
    make_case("moe", torch.bfloat16, (32, 32))
