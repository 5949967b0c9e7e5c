// Kernel lab: the LayerNorm backward through its launcher (ops/cuda/norm_launch.h), bf16, timed against a copy
// of the same bytes on the same GPU. Question: how far from the bandwidth is the backward GPT-2 runs 25 times a
// step (16384 x 768, gamma, the residual stream's gradient added, dgamma and dbeta), and how much of a call is
// the kernel that computes dx (the same call with no parameter gradients) against the partial rows' column
// reductions that follow it? And what does the sum of dx over the rows cost (a linear layer's bias gradient that
// the norm backward sums for the GEMM's output it reads: GPT-2's attention and MLP projections)?
//   rows x C     dadd  dgamma/dbeta  dx sum
//   16384 x 768  yes   yes           no      GPT-2's call for the first block's norm
//   16384 x 768  yes   yes           yes     GPT-2's call for the other 24 (a projection's bias gradient)
//   16384 x 768  yes   no            no      the dx kernel alone (no partial rows, no reductions)
//   16384 x 768  no    yes           no
//   32768 x 384  yes   yes           yes     the MiniLM encoder's width (16-lane row groups)
//   16384 x 4096 yes   yes           yes     a row past the grouped kernel (a block per row group)
// The calls pass the context's counters, as the graph kernel does (the partial rows added in one launch).
// XF_NORM_BACKWARD_BLOCKS=n sets the grid of every case with parameter gradients (the launcher's grid_blocks; default
// one wave of resident blocks): `for n in 0 792 1056 2112; do XF_NORM_BACKWARD_BLOCKS=$n xfrun_lab_norm_backward; done`
// sweeps it.
// Bytes of a call: x, dy, dadd (if any) read and dx written once (the partial rows, gamma and the statistics
// excluded). us: median over 15 samples of (10 back-to-back calls) / 10, as launches in a CUDA graph run, L2 warm.
// copy: cudaMemcpyAsync of half the call's bytes (read + write = the same traffic), timed the same way.
// Before timing, each case's dx, dgamma, dbeta and dx sum are checked against the CPU kernel in float64 (from the same
// bf16 inputs and f32 statistics): |err| <= 2e-2 * max(1, |ref|) (bf16 output rounding, 2^-8 relative, plus fp32 sums
// over up to 16384 rows for the parameter gradients).
//   xfrun_lab_norm_backward
#define LAB_NAME "lab norm_backward"
#include "tools/lab/lab_cuda.h"  // LAB_CHECK, lab::Event, lab::time_us

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "ops/cuda/norm_launch.h"
#include "ops/norm.h"
#include "runtime/env.h"
#include "runtime/kernel_registry.h"
#include "runtime/cuda/context.h"
#include "runtime/tensor.h"
#include "tools/lab/lab_tensors.h"

using namespace xfr;
using xfr::lab::random_bf16;

namespace {

struct Case {
  int64_t rows, C;
  bool dadd, params, dx_sum;
};

// Worst |got - ref| / max(1, |ref|) of dx, dgamma and dbeta against the CPU kernel in float64 (ops/cpu/norm.cpp) on
// the same bf16 inputs and f32 statistics. gamma: (C) or (1, C).
double check(const Tensor& x, const Tensor& mean, const Tensor& rstd, const Tensor& gamma, const Tensor& dy,
             const Tensor* dadd, const Tensor& dx, const Tensor* dgamma, const Tensor* dbeta, const Tensor* dx_sum,
             int64_t C) {
  auto f64 = [](const Tensor& t) { return t.to_host().to(DType::f64); };
  std::vector<Tensor> in{f64(x), f64(mean), f64(rstd), f64(gamma).view({C}), f64(dy)};
  if (dadd) in.push_back(f64(*dadd));
  const LayerNormBackwardOp op(true, dgamma != nullptr, dbeta != nullptr, dadd != nullptr, dx_sum != nullptr);
  const auto ref = run_op(op, in);
  double worst = 0;
  auto compare = [&](const Tensor& got, const Tensor& want) {
    const auto g = got.to_host().to_doubles(), w = want.to_doubles();
    for (size_t i = 0; i < g.size(); ++i) worst = std::max(worst, std::abs(g[i] - w[i]) / std::max(1.0, std::abs(w[i])));
  };
  compare(dx, ref[0]);
  if (dgamma) compare(*dgamma, ref[static_cast<size_t>(op.dgamma_output())]);
  if (dbeta) compare(*dbeta, ref[static_cast<size_t>(op.dbeta_output())]);
  if (dx_sum) compare(*dx_sum, ref[static_cast<size_t>(op.dx_sum_output())]);
  return worst;
}

}  // namespace

int main() {
  if (cuda_device_count() == 0) {
    std::printf("lab norm_backward: %s\n", cuda_unavailable_reason().c_str());
    return 1;
  }
  auto ctx = cuda::CudaContext::create(0);
  cuda::CudaContext* cc = ctx.get();
  const int64_t grid_blocks = env_int("XF_NORM_BACKWARD_BLOCKS", 0);  // 0: the launcher's one wave
  cudaStream_t s = cc->stream();
  const Case cases[] = {{16384, 768, true, true, false},  {16384, 768, true, true, true},
                        {16384, 768, true, false, false}, {16384, 768, false, true, false},
                        {32768, 384, true, true, true},   {16384, 4096, true, true, true}};
  int failed = 0;
  uint64_t seed = 1;
  for (const Case& k : cases) {
    const Tensor x = random_bf16(ctx.get(), k.rows, k.C, ++seed, 2.f), dy = random_bf16(ctx.get(), k.rows, k.C, ++seed);
    const Tensor add = random_bf16(ctx.get(), k.rows, k.C, ++seed), gamma = random_bf16(ctx.get(), 1, k.C, ++seed);
    Tensor y = Tensor::empty({k.rows, k.C}, DType::bf16, ctx.get()), dx = Tensor::empty({k.rows, k.C}, DType::bf16, ctx.get());
    Tensor mean = Tensor::empty({k.rows}, DType::f32, ctx.get()), rstd = Tensor::empty({k.rows}, DType::f32, ctx.get());
    Tensor dg = Tensor::empty({k.C}, DType::bf16, ctx.get()), db = Tensor::empty({k.C}, DType::bf16, ctx.get());
    Tensor ds = Tensor::empty({k.C}, DType::bf16, ctx.get());
    cuda::launch_layernorm_forward(DType::bf16, x.raw_data(), nullptr, nullptr, gamma.raw_data(), nullptr, y.raw_data(),
                                   mean.data<float>(), rstd.data<float>(), k.rows, k.C, 1e-5, s);
    auto call = [&] {
      cuda::launch_layernorm_backward(DType::bf16, x.raw_data(), mean.data<float>(), rstd.data<float>(),
                                      gamma.raw_data(), dy.raw_data(), k.dadd ? add.raw_data() : nullptr,
                                      dx.raw_data(), k.params ? dg.raw_data() : nullptr,
                                      k.params ? db.raw_data() : nullptr, k.dx_sum ? ds.raw_data() : nullptr,
                                      k.rows, k.C, cc->workspace(), cc->workspace_bytes(), s,
                                      cc->launch_counters(), grid_blocks);
    };
    LAB_CHECK(cudaMemsetAsync(dx.raw_data(), 0xFF, static_cast<size_t>(k.rows * k.C) * 2, s));  // poison
    LAB_CHECK(cudaMemsetAsync(dg.raw_data(), 0xFF, static_cast<size_t>(k.C) * 2, s));
    LAB_CHECK(cudaMemsetAsync(db.raw_data(), 0xFF, static_cast<size_t>(k.C) * 2, s));
    LAB_CHECK(cudaMemsetAsync(ds.raw_data(), 0xFF, static_cast<size_t>(k.C) * 2, s));
    call();
    LAB_CHECK(cudaStreamSynchronize(s));
    const double err = check(x, mean, rstd, gamma, dy, k.dadd ? &add : nullptr, dx, k.params ? &dg : nullptr,
                             k.params ? &db : nullptr, k.dx_sum ? &ds : nullptr, k.C);
    const bool ok = err <= 2e-2;
    failed += !ok;
    const double bytes = double(k.rows * k.C) * 2 * (k.dadd ? 4 : 3);
    const double us = ::lab::time_us(s, call);
    const size_t half = static_cast<size_t>(bytes / 2);
    Tensor src = Tensor::empty({static_cast<int64_t>(half)}, DType::u8, ctx.get()),
           dst = Tensor::empty({static_cast<int64_t>(half)}, DType::u8, ctx.get());
    const double copy_us = ::lab::time_us(s, [&] { LAB_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), half, cudaMemcpyDeviceToDevice, s)); });
    std::printf("lab norm_backward: %lld x %lld dadd=%d params=%d dx_sum=%d: %s (max rel err %.2e), %.1f us, %.2f TB/s, "
                "copy of the same bytes %.1f us (%.0f%% of copy)\n",
                static_cast<long long>(k.rows), static_cast<long long>(k.C), k.dadd, k.params, k.dx_sum,
                ok ? "ok" : "FAILED", err,
                us, bytes / us * 1e-6, copy_us, 100.0 * copy_us / us);
  }
  return failed ? 1 : 0;
}
