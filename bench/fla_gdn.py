#!/usr/bin/env python3
"""FLA's gated delta rule on the shapes bench/gdn_bench times, for a side-by-side.

Qwen3.5-9B GDN heads: H = 16 q/k heads, HV = 32 value heads (FLA 0.6 supports this directly as
"GVA": value head i uses q/k head i // (HV // H), the same grouping as specd), K = V = 128, batch 1.

  chunk_gated_delta_rule           T = 8192 (and 512), bf16 q/k/v, fp32 log-space g, bf16 beta,
                                   q/k l2-normalised in the kernel, fp32 initial state, final state
                                   returned; median ms (triton.testing.do_bench).
  fused_recurrent_gated_delta_rule T = 9 and T = 1, same settings; median us.

With SPECD_GDN_DUMP=<file> (written by `SPECD_GDN_DUMP=<file> build/bench/gdn_bench`) it also runs
FLA's chunked kernel on specd's exact prep outputs (q already l2-normalised and scaled by K^-1/2,
so scale = 1 and no in-kernel norm) from the same initial state and prints the relative L2
difference of o and of the final state against specd's.

Installs nothing: expects `pip install --no-index --no-deps .whl/*.whl` (fla-core and
flash-linear-attention 0.6.0) next to torch, triton and einops. Exits 0 with a message when any of
them is missing or there is no GPU.
"""
import os
import sys

H, HV, K, V = 16, 32, 128, 128


def main() -> int:
    try:
        import torch
        import triton
        from triton.testing import do_bench
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except Exception as e:  # ImportError, or a transitive import failing at import time
        print(f"fla_gdn: FLA not importable ({type(e).__name__}: {e}); "
              "install with `pip install --no-index --no-deps .whl/*.whl` (needs torch, triton, einops). Skipping.")
        return 0
    if not torch.cuda.is_available():
        print("fla_gdn: no CUDA device. Skipping.")
        return 0
    import fla

    dev = "cuda"
    torch.manual_seed(0)
    print(f"FLA {getattr(fla, '__version__', '?')}, torch {torch.__version__}, triton {triton.__version__}, "
          f"{torch.cuda.get_device_name()}; H={H} HV={HV} K={K} V={V}, batch 1")

    def median_ms(fn):
        try:
            return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))
        except TypeError:  # triton without return_mode
            r = do_bench(fn, warmup=25, rep=200, quantiles=[0.5])
            return float(r[0] if isinstance(r, (list, tuple)) else r)

    def inputs(T):
        q = torch.randn(1, T, H, K, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, T, H, K, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, T, HV, V, device=dev, dtype=torch.bfloat16)
        # g = -exp(A_log) * softplus(a + dt_bias), as the model computes it, in fp32.
        a_log = 0.5 * torch.randn(HV, device=dev) - 1.0
        dt_bias = 0.5 * torch.randn(HV, device=dev)
        g = -torch.exp(a_log) * torch.nn.functional.softplus(torch.randn(1, T, HV, device=dev) + dt_bias)
        beta = torch.sigmoid(torch.randn(1, T, HV, device=dev)).to(torch.bfloat16)
        h0 = 0.05 * torch.randn(1, HV, K, V, device=dev, dtype=torch.float32)
        return q, k, v, g.float(), beta, h0

    print("chunk_gated_delta_rule (prefill, from an initial state, final state out):")
    for T in (512, 8192):
        q, k, v, g, beta, h0 = inputs(T)
        fn = lambda: chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                            use_qk_l2norm_in_kernel=True)
        fn()
        torch.cuda.synchronize()
        print(f"  T={T:5d}  {median_ms(fn):8.3f} ms")

    print("fused_recurrent_gated_delta_rule (decode / verify, per layer):")
    for T in (9, 1):
        q, k, v, g, beta, h0 = inputs(T)
        fn = lambda: fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0,
                                                      output_final_state=True, use_qk_l2norm_in_kernel=True)
        fn()
        torch.cuda.synchronize()
        print(f"  T={T:5d}  {median_ms(fn) * 1e3:8.2f} us  (includes the Python/launch overhead of one call)")

    path = os.environ.get("SPECD_GDN_DUMP")
    if path:
        compare_with_dump(torch, chunk_gated_delta_rule, path, dev)
    return 0


def compare_with_dump(torch, chunk_gated_delta_rule, path, dev):
    import numpy as np

    if not os.path.exists(path):
        print(f"fla_gdn: SPECD_GDN_DUMP={path} does not exist (run gdn_bench with it first); no comparison.")
        return
    with open(path, "rb") as f:
        if f.read(8) != b"SPECDGDN":
            print(f"fla_gdn: {path} is not a gdn_bench dump; no comparison.")
            return
        T, hk, hv, dk, dv = (int(x) for x in np.frombuffer(f.read(20), dtype=np.int32))
        data = np.frombuffer(f.read(), dtype=np.float32)
    sizes = [("q", (T, hk, dk)), ("k", (T, hk, dk)), ("v", (T, hv, dv)), ("g", (T, hv)), ("beta", (T, hv)),
             ("s0", (hv, dk, dv)), ("o", (T, hv, dv)), ("s1", (hv, dk, dv))]
    arrays, off = {}, 0
    for name, shape in sizes:
        n = int(np.prod(shape))
        arrays[name] = torch.from_numpy(data[off:off + n].copy()).reshape(shape).to(dev)
        off += n
    if off != data.size:
        print(f"fla_gdn: {path} has {data.size} floats, expected {off}; no comparison.")
        return

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    for dtype in (torch.bfloat16, torch.float32):
        try:
            o, s1 = chunk_gated_delta_rule(
                arrays["q"][None].to(dtype), arrays["k"][None].to(dtype), arrays["v"][None].to(dtype),
                arrays["g"][None], arrays["beta"][None].to(dtype), scale=1.0,
                initial_state=arrays["s0"][None].contiguous(), output_final_state=True,
                use_qk_l2norm_in_kernel=False)
        except Exception as e:  # fp32 inputs may not be supported by every kernel configuration
            print(f"  FLA with {dtype} inputs failed: {type(e).__name__}: {e}")
            continue
        torch.cuda.synchronize()
        print(f"  specd vs FLA ({str(dtype).split('.')[-1]} q/k/v) on specd's inputs, T={T}: "
              f"o rel L2 {rel(arrays['o'], o[0]):.2e}, final state rel L2 {rel(arrays['s1'], s1[0]):.2e}")


if __name__ == "__main__":
    sys.exit(main())
