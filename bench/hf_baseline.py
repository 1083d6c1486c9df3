#!/usr/bin/env python3
"""The baseline a user would pick instead of specd: Hugging Face transformers, eager attention,
bf16, on the GPU, greedy generate with its own cache. Random weights with the Qwen3.5-0.8B and 9B
text shapes (the same numbers as engine/checkpoint/presets.cpp), so it runs without network or a
checkpoint and compares with bench/gpu_e2e_bench on the same shapes: 128-token prompt, 128 new
tokens, batch 1 and 8.

Reported per row: end-to-end seconds of one generate (prefill + 128 tokens) and decode tokens/s,
(128 - 1) * batch / (t(128 new tokens) - t(1 new token)): the prefill is timed apart and left
out, as gpu_e2e_bench leaves it out. The Gated DeltaNet path transformers used is printed: the
flash-linear-attention / causal-conv1d kernels when importable, else its torch fallback.

Usage: python3 bench/hf_baseline.py [--models 0.8B,9B] [--batches 1,8] [--new-tokens 128]
       python3 bench/hf_baseline.py --tiny      (tiny shapes on the CPU: checks the script works)
Exits 0 with a message when CUDA (or torch/transformers) is absent, so a check script can call it
anywhere.
"""

import argparse
import importlib.util
import sys
import time

# Qwen3.5 dense text shapes (engine/checkpoint/presets.cpp): hidden, intermediate, layers, q heads,
# kv heads, GDN value heads, tied embeddings. Shared by all: vocab 248320, head_dim 256, GDN key
# heads 16, GDN head dims 128, conv kernel 4, every 4th layer full attention, rope theta 1e7,
# partial rotary 0.25.
SHAPES = {
    "0.8B": (1024, 3584, 24, 8, 2, 16, True),
    "9B": (4096, 12288, 32, 16, 4, 32, False),
}


def make_config(name, tiny):
    from transformers import Qwen3_5TextConfig

    if tiny:
        H, I, L, hq, hkv, hv, tied = 64, 128, 4, 2, 1, 4, True
        vocab, head_dim, hk, dk = 1024, 32, 2, 16
    else:
        H, I, L, hq, hkv, hv, tied = SHAPES[name]
        vocab, head_dim, hk, dk = 248320, 256, 16, 128
    rope = {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25}
    if not tiny:
        # The released checkpoints' text rope (rotary dim 64 = 32 frequencies = 11 + 11 + 10).
        rope.update({"mrope_section": [11, 11, 10], "mrope_interleaved": True})
    else:
        rope.update({"mrope_section": [2, 1, 1], "mrope_interleaved": True})  # rotary dim 8
    cfg = Qwen3_5TextConfig(
        vocab_size=vocab, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
        num_attention_heads=hq, num_key_value_heads=hkv, head_dim=head_dim,
        linear_num_key_heads=hk, linear_num_value_heads=hv, linear_key_head_dim=dk,
        linear_value_head_dim=dk, linear_conv_kernel_dim=4,
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(L)],
        rope_parameters=rope, rms_norm_eps=1e-6, tie_word_embeddings=tied, hidden_act="silu",
        max_position_embeddings=4096, initializer_range=0.02, attention_dropout=0.0,
        pad_token_id=0, bos_token_id=None, eos_token_id=None)
    cfg._attn_implementation = "eager"
    return cfg


def gdn_path(model):
    """Which Gated DeltaNet implementation the first linear-attention layer calls."""
    fla = importlib.util.find_spec("fla") is not None
    conv = importlib.util.find_spec("causal_conv1d") is not None
    mod = sys.modules.get(type(model).__module__)
    fast = getattr(mod, "is_fast_path_available", None)
    impl = None
    for layer in model.model.layers:
        gdn = getattr(layer, "linear_attn", None)
        if gdn is None:
            continue
        fn = getattr(gdn, "chunk_gated_delta_rule", None)
        if fn is not None:
            impl = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', type(fn).__name__)}"
        break
    if impl is None:
        # Newer transformers resolve kernels per call (hub first, then the fla package, then
        # torch); with no network the hub is out, so the fla package decides.
        impl = "fla kernels (package importable)" if fla else "torch fallback (torch_chunk/recurrent_gated_delta_rule)"
    elif "fla" not in impl:
        impl = f"torch fallback ({impl})"
    return (f"{impl}; fla importable: {fla}, causal_conv1d importable: {conv}"
            + (f", is_fast_path_available: {fast}" if fast is not None else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="0.8B,9B")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (a check that the script works)")
    args = ap.parse_args()

    try:
        import torch
        import transformers
        from transformers import Qwen3_5ForCausalLM
    except ImportError as e:
        print(f"hf_baseline: skipped: {e} (needs torch and transformers with Qwen3.5)")
        return 0
    if args.tiny:
        device = torch.device("cpu")
        models = ["tiny"]
    else:
        if not torch.cuda.is_available():
            print("hf_baseline: skipped: no CUDA device (use --tiny for a CPU check)")
            return 0
        device = torch.device("cuda")
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        for m in models:
            if m not in SHAPES:
                print(f"hf_baseline: unknown model shape '{m}' (0.8B, 9B)", file=sys.stderr)
                return 2
    batches = [int(b) for b in args.batches.split(",")]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dev_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"device: {dev_name}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"eager attention, bf16, greedy, prompt {args.prompt}, {args.new_tokens} new tokens")
    t_start = time.time()
    rows = []
    for name in models:
        cfg = make_config(name, args.tiny)
        torch.manual_seed(0)
        t0 = time.time()
        # Built in place on the device in bf16: no host copy of 9B random weights.
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with device:
                model = Qwen3_5ForCausalLM(cfg)
        finally:
            torch.set_default_dtype(prev)
        model = model.to(device=device, dtype=torch.bfloat16).eval()
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        path = gdn_path(model)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"\nQwen3.5-{name} shapes: {n_params / 1e9:.2f} B parameters, built in {time.time() - t0:.1f} s; "
              f"GDN path: {path}")
        sys.stdout.flush()
        for B in batches:
            g = torch.Generator().manual_seed(B)
            ids = torch.randint(0, cfg.vocab_size, (B, args.prompt), generator=g).to(device)
            mask = torch.ones_like(ids)

            def generate(n):
                sync()
                t = time.time()
                with torch.inference_mode():
                    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                         do_sample=False, use_cache=True)
                sync()
                assert out.shape == (B, args.prompt + n), out.shape
                return time.time() - t

            try:
                generate(4)  # warm-up: kernels, allocator, generation config
                t1 = min(generate(1) for _ in range(2))
                tn = generate(args.new_tokens)
            except torch.cuda.OutOfMemoryError:
                print(f"  batch {B}: out of memory, skipped")
                torch.cuda.empty_cache()
                continue
            decode = (args.new_tokens - 1) * B / max(tn - t1, 1e-9)
            rows.append((name, B, tn, t1, decode, path.split(";")[0]))
            print(f"  batch {B}: generate {args.new_tokens} tokens {tn:.2f} s (prefill + 1 token {t1:.3f} s); "
                  f"decode {decode:.1f} tok/s")
            sys.stdout.flush()
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\n## HF transformers baseline (eager, bf16, greedy, {dev_name})\n")
    print("| model | batch | generate s (prefill + new) | prefill + 1 token s | decode tok/s | GDN path |")
    print("|---|---|---|---|---|---|")
    for name, B, tn, t1, decode, path in rows:
        print(f"| Qwen3.5-{name} | {B} | {tn:.2f} | {t1:.3f} | {decode:.1f} | {path} |")
    print(f"\ntotal runtime {time.time() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
