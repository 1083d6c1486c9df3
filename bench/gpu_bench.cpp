// GPU figures at batch 1 (issue "CUDA backend", item 5): the two ceilings (device copy bandwidth,
// bf16 GEMM rate), then decode ms/token and verify ms for T = 1..9 on random-weight models with
// Qwen3.5-0.8B and 9B shapes (bf16 weights generated on the GPU), each next to its floor:
// streamed weight bytes / measured copy bandwidth.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "qwen35/model.h"
#include "runtime/backend.h"

using namespace specd;

namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double CopyBandwidth() {
  const size_t bytes = size_t{2} << 30;
  void *a = nullptr, *b = nullptr;
  cudaMalloc(&a, bytes);
  cudaMalloc(&b, bytes);
  cudaMemset(a, 1, bytes);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int i = 0; i < 3; ++i) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  std::vector<double> t;
  for (int i = 0; i < 10; ++i) {
    cudaEventRecord(e0);
    cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    t.push_back(ms / 1e3);
  }
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / Median(t);  // bytes read + bytes written
}

double GemmRate(Backend& be) {
  const int64_t n = 8192;
  Tensor x = be.Random(DType::kBF16, {n, n}, 1.f, 0.f, 1), w = be.Random(DType::kBF16, {n, n}, 1.f, 0.f, 2);
  Tensor y = be.Alloc(DType::kBF16, {n, n});
  for (int i = 0; i < 3; ++i) be.Gemm(x, w, y);
  be.Synchronize();
  std::vector<double> t;
  for (int i = 0; i < 10; ++i) {
    const double t0 = Now();
    be.Gemm(x, w, y);
    be.Synchronize();
    t.push_back(Now() - t0);
  }
  return 2.0 * n * n * n / Median(t);
}

ModelConfig Shapes(bool nine_b) {
  ModelConfig c;
  c.model_type = "qwen3_5_text";
  c.vocab_size = 248320;
  c.hidden_size = nine_b ? 4096 : 1024;
  c.intermediate_size = nine_b ? 12288 : 3584;
  c.num_hidden_layers = nine_b ? 32 : 24;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    c.layer_types.push_back((i + 1) % 4 == 0 ? LayerType::kFullAttention : LayerType::kLinearAttention);
  }
  c.num_attention_heads = nine_b ? 16 : 8;
  c.num_key_value_heads = nine_b ? 4 : 2;
  c.head_dim = 256;
  c.linear_num_key_heads = 16;
  c.linear_num_value_heads = nine_b ? 32 : 16;
  c.linear_key_head_dim = c.linear_value_head_dim = 128;
  c.tie_word_embeddings = !nine_b;
  c.rope_theta = 1e7;
  return c;
}

}  // namespace

int main() {
  auto bo = MakeBackend("cuda");
  if (!bo.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", bo.status().ToString().c_str());
    return 1;
  }
  Backend& be = **bo;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const double bw = CopyBandwidth();
  const double flops = GemmRate(be);
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::printf("copy bandwidth (read+write): %.0f GB/s; bf16 GEMM 8192^3: %.0f TFLOP/s\n\n", bw / 1e9, flops / 1e12);
  std::printf("| model | weights GB | streamed GB | floor ms | decode ms | decode/floor |");
  for (int T = 1; T <= 9; ++T) std::printf(" verify T=%d ms |", T);
  std::printf("\n|---|---|---|---|---|---|");
  for (int T = 1; T <= 9; ++T) std::printf("---|");
  std::printf("\n");
  for (bool nine : {false, true}) {
    const ModelConfig c = Shapes(nine);
    auto model = Qwen35Model::Random(c, &be, 7);
    const double wgb = static_cast<double>(model->weight_bytes());
    const double embed = static_cast<double>(c.vocab_size) * c.hidden_size * 2;
    // Decode reads every weight once, except the embedding table (one row) when untied.
    const double streamed = c.tie_word_embeddings ? wgb : wgb - embed;
    CacheOptions co;
    co.max_ctx = 1024;
    co.log_capacity = 17;
    auto cache = std::move(model->NewCache(co)).value();
    const int slot = *cache->AllocSlot();
    std::vector<int32_t> prompt(128);
    for (int i = 0; i < 128; ++i) prompt[i] = (i * 7919) % 200000;
    auto check = [&](const StatusOr<ForwardOutput>& o) {
      if (!o.ok()) {
        std::fprintf(stderr, "forward failed: %s\n", o.status().ToString().c_str());
        std::exit(1);
      }
    };
    check(model->Forward({SeqInput{slot, prompt, StateMode::kUpdate, false}}, *cache));
    be.Synchronize();
    std::vector<double> dec;
    for (int i = 0; i < 40; ++i) {
      const double t0 = Now();
      check(model->Forward({SeqInput{slot, {prompt[i % 128]}, StateMode::kUpdate, false}}, *cache));
      be.Synchronize();
      if (i >= 5) dec.push_back(Now() - t0);
    }
    const double d = Median(dec);
    std::printf("| Qwen3.5-%s shapes | %.2f | %.2f | %.3f | %.3f | %.2f |", nine ? "9B" : "0.8B", wgb / 1e9,
                streamed / 1e9, streamed / bw * 1e3, d * 1e3, d / (streamed / bw));
    for (int T = 1; T <= 9; ++T) {
      std::vector<double> ts;
      for (int r = 0; r < 12; ++r) {
        std::vector<int32_t> toks(prompt.begin() + r, prompt.begin() + r + T);
        const double t0 = Now();
        (void)cache->BeginLog(slot, false);
        check(model->Forward({SeqInput{slot, toks, StateMode::kLog, true}}, *cache));
        (void)cache->Commit(slot, (T + 1) / 2);
        be.Synchronize();
        if (r >= 2) ts.push_back(Now() - t0);
        if (cache->length(slot) > 900) {
          cache->ResetSlot(slot);
          check(model->Forward({SeqInput{slot, prompt, StateMode::kUpdate, false}}, *cache));
          be.Synchronize();
        }
      }
      std::printf(" %.3f (%.2fx) |", Median(ts) * 1e3, Median(ts) / d);
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  return 0;
}
