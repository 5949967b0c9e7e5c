// Inputs shared by the kernel labs that run through the runtime (tools/lab/head_gemm.cpp, qkv_gemm.cpp).
#pragma once
#include <cstdint>
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

}  // namespace xfr::lab
