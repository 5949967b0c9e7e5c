// Small helpers CPU kernels share: run over [0, n) on the context's pool, or serially without one.
#pragma once
#include <cstdint>
#include <functional>

#include "runtime/cpu/threadpool.h"
#include "runtime/kernel_registry.h"

namespace xfr::cpu {

// `grain`: the least number of items worth a task (chosen per kernel from its cost per item).
inline void parallel_for(const KernelContext& ctx, int64_t n, int64_t grain,
                         const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (ctx.pool && n > grain) {
    ctx.pool->parallel_for(n, grain, fn);
  } else {
    fn(0, n);
  }
}

// Elementwise kernels: 32k elements (128 KB of f32) per task amortise the dispatch of a task.
constexpr int64_t kElementwiseGrain = 1 << 15;

}  // namespace xfr::cpu
