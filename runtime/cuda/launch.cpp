#include <cuda_runtime_api.h>

#include <atomic>

#include "runtime/cuda/launch.cuh"
#include "runtime/env.h"

namespace xfr::cuda {

bool pdl_enabled() {
  static const bool allowed = env_flag_default_on("XF_PDL");
  if (!allowed) return false;
  constexpr int kDevices = 64;  // devices remembered; beyond that each launch queries (never on one host so far)
  static std::atomic<int> known[kDevices];  // 0 unknown, 1 without PDL, 2 with
  int dev = 0;
  XF_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < kDevices) {
    const int k = known[dev].load(std::memory_order_relaxed);
    if (k != 0) return k == 2;
  }
  int major = 0;
  XF_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  const bool on = major >= 9;
  if (dev >= 0 && dev < kDevices) known[dev].store(on ? 2 : 1, std::memory_order_relaxed);
  return on;
}

}  // namespace xfr::cuda
