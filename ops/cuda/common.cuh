// Host-side helpers shared by the CUDA op kernels: the stream and handles of the kernel's context,
// dtype dispatch to device storage types, launch geometry. Every CUDA kernel file includes this.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "ops/cuda/device/types.cuh"
#include "runtime/cuda/check.h"
#include "runtime/cuda/context.h"
#include "runtime/kernel_registry.h"

namespace xfr::cuda {

inline CudaContext& context_of(const KernelContext& ctx) {
  XF_CHECK(ctx.device_ctx != nullptr && ctx.device.is_cuda(), "cuda", "a CUDA kernel ran without a CUDA context");
  return *static_cast<CudaContext*>(ctx.device_ctx);
}
inline cudaStream_t stream_of(const KernelContext& ctx) { return context_of(ctx).stream(); }

// Threads per block for elementwise kernels: 256 = 8 warps, the usual sweet spot for memory-bound
// grid-stride loops (enough warps to hide latency, small enough for many resident blocks per SM).
constexpr int kBlock = 256;

// Blocks for n items at `per_thread` items per thread, capped so that grid-stride loops take over for
// huge n (132 SMs x 16 resident 256-thread blocks... 65535 keeps gridDim.x portable).
inline unsigned grid_1d(int64_t n, int per_thread = 1) {
  const int64_t per_block = static_cast<int64_t>(kBlock) * per_thread;
  return static_cast<unsigned>(std::clamp<int64_t>((n + per_block - 1) / per_block, 1, 65535));
}

// The current device's opt-in limit of dynamic shared memory per block, in bytes (227 KB on sm_90, 99 KB on sm_86).
inline int64_t smem_optin_limit() {
  int dev = 0, bytes = 0;
  XF_CUDA_CHECK(cudaGetDevice(&dev));
  XF_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return bytes;
}

// Blocks of `kernel`, launched with `threads` threads and `smem` bytes of dynamic shared memory, that the current
// device keeps resident at once: the occupancy calculator's count per SM times the SMs. A grid-stride kernel whose
// blocks each take a fixed share of the work runs in one wave with this many blocks; with more, the surplus blocks
// run as a second, partial wave (1.48 waves cost about as much as 2).
template <class Kernel>
int64_t resident_blocks(Kernel kernel, int threads, size_t smem = 0) {
  int dev = 0, sms = 0, per_sm = 0;
  XF_CUDA_CHECK(cudaGetDevice(&dev));
  XF_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  XF_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  return static_cast<int64_t>(std::max(per_sm, 1)) * sms;
}

// Raises a kernel's dynamic shared-memory limit (past the default 48 KB) once per device; `done` is the kernel's
// own bit set of the devices already raised.
template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes, std::atomic<uint64_t>& done) {
  int dev = 0;
  XF_CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = 1ull << (dev & 63);
  if (done.load(std::memory_order_acquire) & bit) return;
  XF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  done.fetch_or(bit, std::memory_order_acq_rel);
}

}  // namespace xfr::cuda

// Dispatch over the CUDA compute dtypes: f32 -> float, f16 -> __half, bf16 -> __nv_bfloat16.
#define XF_CUDA_DISPATCH_FLOAT(dtype, op, T, ...)                                                   \
  switch (dtype) {                                                                                \
    case ::xfr::DType::f32: { using T = float; __VA_ARGS__; break; }                              \
    case ::xfr::DType::f16: { using T = __half; __VA_ARGS__; break; }                             \
    case ::xfr::DType::bf16: { using T = __nv_bfloat16; __VA_ARGS__; break; }                     \
    default:                                                                                      \
      throw ::xfr::Error(op, ::xfr::str_cat("the CUDA backend computes in f32, f16 or bf16, not ", \
                                            ::xfr::dtype_name(dtype)));                          \
  }
