#!/usr/bin/env python3
"""The Qwen3.5 MTP head's forward in PyTorch, on transformers' own Qwen3.5 modules, and the
fixtures specd's C++ MTP forward is checked against (tests/fixtures/qwen35-tiny/*_mtp/).

transformers does not implement MTP (it skips mtp.* at load). The forward here follows the public
implementations (vLLM qwen3_5_mtp.py, SGLang): for target position t,
    e = RMSNorm_emb(E[x_{t+1}])           (1 + w) norm, the target's own embedding table
    u = RMSNorm_hid(h_t)                  h_t = the target's FINAL-NORMED hidden state at t
    z = fc([e ; u])                       embedding first, [H, 2H], no bias
    z = DecoderLayer(z)                   one gated full-attention layer (dense MLP or MoE), causal
                                          over the MTP's own sequence, RoPE position t
    logits = lm_head(RMSNorm_mtp(z))      the target's lm_head (the embedding when tied)
The decoder layer, the norms and the rotary embedding are transformers' classes
(Qwen3_5DecoderLayer / Qwen3_5MoeDecoderLayer with layer type full_attention, Qwen3_5RMSNorm).

For each case (an existing fixture model: dense, moe) it draws MTP weights (seeded), writes
  OUT/<case>_mtp/mtp.safetensors   the mtp.* tensors (fp32; MoE experts per expert)
  OUT/<case>_mtp/refs.safetensors  prompt_ids [T], hidden [T, H] (the target's final-normed
                                   hidden states), mtp_logits [T-1, V] (row t: from h_t and x_{t+1}),
                                   and the same in bf16 for the error budget (mtp_logits_bf16)
  OUT/<case>_mtp/refs.json         shapes, versions, the bf16-vs-fp32 error of this forward
Usage (needs torch, transformers >= 5, safetensors): python3 tools/mtp_reference.py [OUT]
"""
import json
import pathlib
import sys

import torch
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIX = ROOT / "tests/fixtures/qwen35-tiny"


def load_target(case):
    import transformers
    d = FIX / case / "model"
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def decoder_layer_cls(cfg):
    from transformers.models.qwen3_5 import modeling_qwen3_5 as dense
    if getattr(cfg, "num_experts", None):
        from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as m
        return m.Qwen3_5MoeDecoderLayer, getattr(m, "Qwen3_5MoeRMSNorm", dense.Qwen3_5RMSNorm)
    return dense.Qwen3_5DecoderLayer, dense.Qwen3_5RMSNorm


def make_head(cfg, seed):
    """The MTP modules, transformers' classes, with seeded random weights (norm weights near 0:
    the (1 + w) norms)."""
    import copy
    layer_cls, norm_cls = decoder_layer_cls(cfg)
    c = copy.deepcopy(cfg)
    c.layer_types = ["full_attention"] + list(c.layer_types[1:])
    torch.manual_seed(seed)
    H = cfg.hidden_size
    head = torch.nn.Module()
    head.pre_fc_norm_embedding = norm_cls(H, eps=cfg.rms_norm_eps)
    head.pre_fc_norm_hidden = norm_cls(H, eps=cfg.rms_norm_eps)
    head.fc = torch.nn.Linear(2 * H, H, bias=False)
    head.layer = layer_cls(c, 0)
    head.norm = norm_cls(H, eps=cfg.rms_norm_eps)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1)  # (1 + w) norms; biases none
            else:
                p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5))
    return head.float().eval()


def head_tensors(head, cfg):
    """mtp.* names as checkpoints store them (MoE experts per expert)."""
    out = {}
    for name, p in head.state_dict().items():
        key = "mtp." + name.replace("layer.", "layers.0.", 1) if name.startswith("layer.") else "mtp." + name
        if ".mlp.experts.gate_up_proj" in key:
            E, two_i, H = p.shape
            i = two_i // 2
            for e in range(E):
                out[key.replace("experts.gate_up_proj", f"experts.{e}.gate_proj.weight")] = p[e, :i].contiguous()
                out[key.replace("experts.gate_up_proj", f"experts.{e}.up_proj.weight")] = p[e, i:].contiguous()
            continue
        if ".mlp.experts.down_proj" in key:
            for e in range(p.shape[0]):
                out[key.replace("experts.down_proj", f"experts.{e}.down_proj.weight")] = p[e].contiguous()
            continue
        out[key] = p.detach().contiguous()
    return out


def captured_layer_inputs(model, ids):
    """position_embeddings and attention mask a full-attention layer of the target receives for
    `ids` (the same positions 0..T-1 and causal mask the MTP sequence uses)."""
    got = {}
    full = [i for i, t in enumerate(model.config.layer_types) if t == "full_attention"][0]
    layer = model.model.layers[full]

    def hook(_mod, args, kwargs):
        got["pos"] = kwargs.get("position_embeddings")
        got["mask"] = kwargs.get("attention_mask")
        got["position_ids"] = kwargs.get("position_ids")

    h = layer.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=ids[None], use_cache=False)
    h.remove()
    return got


def mtp_forward(model, head, hidden, next_ids, layer_inputs):
    emb = model.get_input_embeddings()(next_ids)
    z = head.fc(torch.cat([head.pre_fc_norm_embedding(emb), head.pre_fc_norm_hidden(hidden)], dim=-1))
    out = head.layer(z[None], position_embeddings=layer_inputs["pos"], attention_mask=layer_inputs["mask"],
                     position_ids=layer_inputs["position_ids"], use_cache=False)
    z = out[0] if isinstance(out, tuple) else out
    z = z[0] if z.dim() == 3 else z
    return model.lm_head(head.norm(z)), z


def run_case(case, out_dir, seed):
    model = load_target(case)
    cfg = model.config
    refs = load_file(str(FIX / case / "refs.safetensors"))
    ids = refs["prompt_ids"].long()
    with torch.no_grad():
        hidden = model.model(input_ids=ids[None]).last_hidden_state[0]  # final-normed
        head = make_head(cfg, seed)
        T = ids.shape[0]
        li = captured_layer_inputs(model, ids[: T - 1])
        logits, _ = mtp_forward(model, head, hidden[: T - 1], ids[1:], li)
        # The same forward in bf16 (weights and activations), against fp32: the error budget a
        # bf16 engine is judged by.
        import copy
        mb, hb = copy.deepcopy(model).to(torch.bfloat16), copy.deepcopy(head).to(torch.bfloat16)
        li_b = {k: (tuple(x.to(torch.bfloat16) for x in v) if isinstance(v, tuple) else
                    (v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v))
                for k, v in li.items()}
        logits_b, _ = mtp_forward(mb, hb, hidden[: T - 1].to(torch.bfloat16), ids[1:], li_b)
        logits_b = logits_b.float()
    rel = ((logits_b - logits).norm(dim=-1) / logits.norm(dim=-1)).max().item()
    d = out_dir / f"{case}_mtp"
    d.mkdir(parents=True, exist_ok=True)
    save_file(head_tensors(head, cfg), str(d / "mtp.safetensors"))
    save_file({"prompt_ids": ids.contiguous(), "hidden": hidden.contiguous(), "mtp_logits": logits.contiguous(),
               "mtp_logits_bf16": logits_b.contiguous()}, str(d / "refs.safetensors"))
    import transformers
    (d / "refs.json").write_text(json.dumps({
        "case": case, "seed": seed, "transformers": transformers.__version__, "torch": torch.__version__,
        "mtp_rows": T - 1, "bf16_vs_fp32_max_row_rel_l2": rel,
        "formula": "logits_t = lm_head(norm(Layer(fc([nE(E[x_{t+1}]); nH(h_t)])))), h = final-normed target hidden",
    }, indent=1) + "\n")
    print(f"{case}: {T - 1} MTP rows, bf16 vs fp32 max row rel L2 {rel:.4g} -> {d}")


def main():
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else FIX
    for seed, case in enumerate(["dense", "moe"], start=7):
        run_case(case, out, seed)


if __name__ == "__main__":
    main()
