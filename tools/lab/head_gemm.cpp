// Kernel lab: the MiniLM encoder's logits GEMM, logits (M, N) = x (M, K) . W^T with W (N, K) the tied
// embedding, M = 256 x 128 tokens, N = 30522 (BERT's vocabulary: rows of 61044 bytes, 4 bytes off 16-byte
// alignment), K = 384, bf16 with fp32 accumulation. Measured 2026-11-29 on the H200: cuBLASLt runs it at
// ~200 TFLOP/s (3.7 ms) however C's rows are padded, while torch.compile's graph runs it at ~600 TFLOP/s
// (1.25 ms) after copying W^T into a padded (K, N) buffer. This lab times the layouts side by side through
// our GEMM launcher (ops/cuda/gemm.h, autotuned), each checked against variant 0:
//   0  x . W^T          C packed (ld N)           what the graph did first
//   1  x . W^T          C rows padded (ld Np)     the executor's row-padded output
//   2  x . Wt           Wt = W^T (K, Np), C ld Np  torch.compile's layout (Wt computed once: a constant)
//   3  x . Wt, n = Np   every padded column too
// where Np = N rounded up to 8 elements (16 bytes). Prints one line per variant: median ms of 20 runs,
// TFLOP/s, max |C - C0|.
//   xfrun_lab_head_gemm [M N K]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "ops/cuda/gemm.h"
#include "runtime/cuda/context.h"
#include "runtime/tensor.h"
#include "tools/lab/lab_tensors.h"

using namespace xfr;
using xfr::lab::random_bf16;

int main(int argc, char** argv) {
  const int64_t M = argc > 3 ? std::stoll(argv[1]) : 32768, N = argc > 3 ? std::stoll(argv[2]) : 30522,
                K = argc > 3 ? std::stoll(argv[3]) : 384;
  const int64_t Np = (N + 7) / 8 * 8;  // 8 bf16 = 16 bytes
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "xfrun_lab_head_gemm: %s\n", cuda_unavailable_reason().c_str());
    return 1;
  }
  auto ctx = cuda::CudaContext::create(0);
  const Tensor x = random_bf16(ctx.get(), M, K, 1), w = random_bf16(ctx.get(), N, K, 2);
  // Wt (K, Np): W^T with padded rows, built on the host (a lab; the graph would do it once on the device).
  const Tensor wt = [&] {
    const auto wv = w.to_host().to(DType::f32).to_doubles();
    std::vector<float> t(static_cast<size_t>(K * Np), 0.f);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) t[static_cast<size_t>(k * Np + n)] = static_cast<float>(wv[static_cast<size_t>(n * K + k)]);
    return Tensor::from_vector(t, {K, Np}).to(DType::bf16).to_device(ctx.get());
  }();
  Tensor c0 = Tensor::empty({M, N}, DType::bf16, ctx.get()), c = Tensor::empty({M, Np}, DType::bf16, ctx.get());
  struct Variant {
    const char* name;
    cuda::GemmArgs g;
  };
  auto base = [&] { return cuda::plain_gemm(DType::bf16, false, M, N, K, x.raw_data(), nullptr, nullptr); };
  std::vector<Variant> variants;
  {
    cuda::GemmArgs g = base();
    g.trans_b = true;
    g.b = w.raw_data();
    g.c = c0.raw_data();
    variants.push_back({"x.W^T, C packed", g});
    g.c = c.raw_data();
    g.ldc = Np;
    variants.push_back({"x.W^T, C rows padded", g});
    cuda::GemmArgs h = base();
    h.b = wt.raw_data();
    h.ldb = Np;
    h.c = c.raw_data();
    h.ldc = Np;
    variants.push_back({"x.Wt (K, Np), C padded", h});
    h.n = Np;
    variants.push_back({"x.Wt, n = Np", h});
  }
  std::vector<double> ref;
  const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  for (size_t v = 0; v < variants.size(); ++v) {
    const auto& g = variants[v].g;
    cuda::gemm(*ctx, g);  // plan and autotune
    std::vector<double> ms;
    for (int r = 0; r < 20; ++r) {
      auto e0 = ctx->record_event();
      cuda::gemm(*ctx, g);
      ms.push_back(ctx->elapsed_ms(e0, ctx->record_event()));
    }
    std::sort(ms.begin(), ms.end());
    const Tensor out = (v == 0 ? c0 : c.slice(1, 0, N)).to_host().to(DType::f32);
    const auto vals = out.to_doubles();
    double err = 0;
    if (v == 0) ref = vals;
    for (size_t i = 0; i < vals.size(); ++i) err = std::max(err, std::abs(vals[i] - ref[i]));
    std::printf("lab head_gemm M=%lld N=%lld K=%lld variant %zu (%s): %.3f ms, %.0f TFLOP/s, max|C-C0| %.3g\n",
                static_cast<long long>(M), static_cast<long long>(N), static_cast<long long>(K), v, variants[v].name,
                ms[ms.size() / 2], flops / ms[ms.size() / 2] / 1e9, err);
  }
  return 0;
}
