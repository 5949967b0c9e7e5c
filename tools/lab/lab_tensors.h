// Inputs, checks and timing shared by the kernel labs that run through the runtime (tools/lab/head_gemm.cpp,
// qkv_gemm.cpp, wgrad_gemm.cu).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "runtime/device_context.h"
#include "runtime/tensor.h"

namespace xfr::lab {

// A (rows, cols) bf16 tensor on ctx's device, uniform in [-scale, scale) from `seed`.
inline Tensor random_bf16(DeviceContext* ctx, int64_t rows, int64_t cols, uint64_t seed, float scale = 1.f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (auto& x : v) x = d(rng);
  return Tensor::from_vector(v, {rows, cols}).to(DType::bf16).to_device(ctx);
}

// max |a - b| over two tensors of one shape (any device, any dtype), and max |a|.
inline double max_diff(const Tensor& a, const Tensor& b) {
  const auto x = a.to_host().to(DType::f32).to_doubles(), y = b.to_host().to(DType::f32).to_doubles();
  double e = 0;
  for (size_t i = 0; i < x.size(); ++i) e = std::max(e, std::abs(x[i] - y[i]));
  return e;
}
inline double max_abs(const Tensor& a) {
  double e = 0;
  for (double v : a.to_host().to(DType::f32).to_doubles()) e = std::max(e, std::abs(v));
  return e;
}

// Median milliseconds of `runs` runs of fn on ctx's stream (events around each), after one untimed run (the first
// call of a GEMM plans and autotunes).
inline double median_ms(DeviceContext& ctx, const std::function<void()>& fn, int runs = 20) {
  fn();
  std::vector<double> ms;
  for (int r = 0; r < runs; ++r) {
    auto e0 = ctx.record_event();
    fn();
    ms.push_back(ctx.elapsed_ms(e0, ctx.record_event()));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace xfr::lab
