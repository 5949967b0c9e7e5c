// Kernel lab: an attention layer's q, k and v projections as three GEMMs of width C (what the graph runs today:
// xFormers' separate q_proj, k_proj, v_proj) against one packed GEMM of width 3C (nanoGPT's c_attn, torch.compile's
// graph) and a batch-3 GEMM, each way of the step, bf16 with fp32 accumulation, through our launcher (ops/cuda/gemm.h,
// autotuned). GPT-2 124M's sizes by default: M = 16 x 1024 tokens, C = 768.
//   forward      y = x Wᵀ + b          x (M, C), W (C, C) each or (3C, C) packed
//   input grad   dx = sum_p dy_p W_p    three GEMMs chained with beta 1 (matmul_add) | one K = 3C GEMM
//   weight grad  dW = dyᵀ x, db = colsum(dy)   three BGRAD GEMMs | one (3C, C) BGRAD GEMM
// Each packed result is checked against the separate one (max |difference|). Prints one line per variant: median
// ms of 20 runs and TFLOP/s. Session 11's profile measured the separate ones at 40, 37 and 57 us each.
//   xfrun_lab_qkv_gemm [M C]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "ops/cuda/gemm.h"
#include "runtime/cuda/context.h"
#include "runtime/tensor.h"
#include "tools/lab/lab_tensors.h"

using namespace xfr;
using xfr::lab::max_diff;
using xfr::lab::random_bf16;

int main(int argc, char** argv) {
  const int64_t M = argc > 2 ? std::stoll(argv[1]) : 16384, C = argc > 2 ? std::stoll(argv[2]) : 768;
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "xfrun_lab_qkv_gemm: %s\n", cuda_unavailable_reason().c_str());
    return 1;
  }
  auto ctx = cuda::CudaContext::create(0);
  cuda::CudaContext& cc = *ctx;
  // Packed tensors; the separate ways address their thirds (W_p: rows [pC, (p+1)C) of W; dy_p: columns of dy).
  const Tensor x = random_bf16(ctx.get(), M, C, 1), w = random_bf16(ctx.get(), 3 * C, C, 2, 0.05f);
  const Tensor b = random_bf16(ctx.get(), 1, 3 * C, 3), dy = random_bf16(ctx.get(), M, 3 * C, 4);
  // dy_p as separate packed (M, C) tensors, as the graph holds them.
  std::vector<Tensor> dy_sep;
  for (int p = 0; p < 3; ++p) dy_sep.push_back(dy.slice(1, p * C, (p + 1) * C).contiguous());
  auto empty = [&](int64_t r, int64_t c) { return Tensor::empty({r, c}, DType::bf16, ctx.get()); };
  Tensor y_sep = empty(M, 3 * C), y_pack = empty(M, 3 * C), dx_sep = empty(M, C), dx_pack = empty(M, C);
  Tensor dx_s0 = empty(M, C), dx_s1 = empty(M, C), dw_sep = empty(3 * C, C), dw_pack = empty(3 * C, C), db_sep = empty(1, 3 * C),
         db_pack = empty(1, 3 * C);
  // Element `elems` of t's storage (bf16: 2 bytes each).
  auto at = [](const Tensor& t, int64_t elems) { return static_cast<char*>(t.raw_data()) + elems * 2; };

  struct Variant {
    std::string name;
    double flops;
    std::function<void()> run;
  };
  const double f1 = 2.0 * M * C * C;  // one C x C projection
  std::vector<Variant> vs;
  // Forward: separate writes y_p into its own (M, C) block of y_sep (viewed as three packed (M, C) tensors).
  vs.push_back({"forward, 3 GEMMs of width C (bias epilogue)", 3 * f1, [&] {
                  for (int p = 0; p < 3; ++p) {
                    cuda::GemmArgs g = cuda::plain_gemm(DType::bf16, false, M, C, C, x.raw_data(), at(w, p * C * C), at(y_sep, p * M * C));
                    g.trans_b = true;
                    g.epilogue = cuda::GemmEpilogue::bias;
                    g.bias = at(b, p * C);
                    cuda::gemm(cc, g);
                  }
                }});
  vs.push_back({"forward, 1 GEMM of width 3C (bias epilogue)", 3 * f1, [&] {
                  cuda::GemmArgs g = cuda::plain_gemm(DType::bf16, false, M, 3 * C, C, x.raw_data(), w.raw_data(), y_pack.raw_data());
                  g.trans_b = true;
                  g.epilogue = cuda::GemmEpilogue::bias;
                  g.bias = b.raw_data();
                  cuda::gemm(cc, g);
                }});
  // The graph's chain: s0 = dy_0 W_0, s1 = dy_1 W_1 + s0, dx = dy_2 W_2 + s1 (each matmul_add a new buffer).
  vs.push_back({"input grad, 3 GEMMs K = C chained (beta 1, c_in)", 3 * f1, [&] {
                  const Tensor* outs[3] = {&dx_s0, &dx_s1, &dx_sep};
                  for (int p = 0; p < 3; ++p) {
                    cuda::GemmArgs g = cuda::plain_gemm(DType::bf16, false, M, C, C, dy_sep[p].raw_data(), at(w, p * C * C), outs[p]->raw_data());
                    if (p > 0) {
                      g.beta = 1.0f;
                      g.c_in = outs[p - 1]->raw_data();
                    }
                    cuda::gemm(cc, g);
                  }
                }});
  vs.push_back({"input grad, 1 GEMM K = 3C", 3 * f1, [&] {
                  cuda::gemm(cc, cuda::plain_gemm(DType::bf16, false, M, C, 3 * C, dy.raw_data(), w.raw_data(), dx_pack.raw_data()));
                }});
  vs.push_back({"weight grad, 3 BGRAD GEMMs (C, C)", 3 * f1, [&] {
                  for (int p = 0; p < 3; ++p) {
                    cuda::GemmArgs g = cuda::plain_gemm(DType::bf16, false, C, C, M, dy_sep[p].raw_data(), x.raw_data(), at(dw_sep, p * C * C));
                    g.trans_a = true;
                    g.epilogue = cuda::GemmEpilogue::bgrad_a;
                    g.bias = at(db_sep, p * C);
                    cuda::gemm(cc, g);
                  }
                }});
  vs.push_back({"weight grad, 1 BGRAD GEMM (3C, C)", 3 * f1, [&] {
                  cuda::GemmArgs g = cuda::plain_gemm(DType::bf16, false, 3 * C, C, M, dy.raw_data(), x.raw_data(), dw_pack.raw_data());
                  g.trans_a = true;
                  g.epilogue = cuda::GemmEpilogue::bgrad_a;
                  g.bias = db_pack.raw_data();
                  cuda::gemm(cc, g);
                }});
  for (const Variant& v : vs) {
    const double med = lab::median_ms(*ctx, v.run);
    std::printf("lab qkv_gemm M=%lld C=%lld %s: %.1f us, %.0f TFLOP/s\n", static_cast<long long>(M),
                static_cast<long long>(C), v.name.c_str(), med * 1e3, v.flops / med / 1e9);
  }
  // The packed results against the separate ones: y's blocks are laid out differently (p-major against row-major),
  // so y is compared block by block.
  double ey = 0;
  for (int p = 0; p < 3; ++p)
    ey = std::max(ey, max_diff(y_sep.view({3, M, C}).slice(0, p, p + 1).contiguous().view({M, C}),
                               y_pack.slice(1, p * C, (p + 1) * C).contiguous()));
  std::printf("lab qkv_gemm check: max |packed - separate| y %.3g, dx %.3g, dW %.3g, db %.3g\n", ey,
              max_diff(dx_pack, dx_sep), max_diff(dw_pack, dw_sep), max_diff(db_pack, db_sep));
  return 0;
}
