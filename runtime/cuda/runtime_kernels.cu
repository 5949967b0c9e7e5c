#include <algorithm>

#include "ops/cuda/device/types.cuh"
#include "ops/cuda/device/vec.cuh"
#include "runtime/cuda/check.h"
#include "runtime/cuda/runtime_kernels.h"

namespace xfr::cuda {

namespace {

// 256 threads, a grid of at most 4 blocks per SM-ish (grid-stride loops): enough to fill an H200
// (132 SMs x 2048 threads) without a launch per 1k elements.
constexpr int kThreads = 256;
inline int grid_for(size_t n, int per_thread) {
  const size_t blocks = (n + static_cast<size_t>(kThreads * per_thread) - 1) / static_cast<size_t>(kThreads * per_thread);
  return static_cast<int>(blocks < 65535 * 8 ? (blocks == 0 ? 1 : blocks) : 65535 * 8);
}

// dst[i] (+)= src[i], f32: 4 elements per access when aligned. kAdd false stores (dst is not read).
template <bool kAdd>
__global__ void add_inplace_f32_kernel(float* __restrict__ dst, const float* __restrict__ src, size_t n) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (dev::aligned16(dst) && dev::aligned16(src)) {
    const size_t nv = n / 4;
    for (size_t j = i; j < nv; j += stride) {
      float4 a = kAdd ? reinterpret_cast<float4*>(dst)[j] : make_float4(0.f, 0.f, 0.f, 0.f);
      const float4 b = reinterpret_cast<const float4*>(src)[j];
      a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
      reinterpret_cast<float4*>(dst)[j] = a;
    }
    for (size_t j = nv * 4 + i; j < n; j += stride) dst[j] = (kAdd ? dst[j] : 0.f) + src[j];
  } else {
    for (size_t j = i; j < n; j += stride) dst[j] = (kAdd ? dst[j] : 0.f) + src[j];
  }
}

// dst[i] (+)= float(src[i]) for 16-bit src: 8 elements (16 bytes of src, 32 of dst) per access when aligned. kAdd
// false stores the converted value (dst is not read: half the traffic of an add into zeroed memory).
template <class S, bool kAdd>
__global__ void accumulate_kernel(float* __restrict__ dst, const S* __restrict__ src, size_t n) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  size_t done = 0;
  if (dev::aligned16(dst) && dev::aligned16(src)) {
    const size_t nv = n / 8;
    for (size_t j = i; j < nv; j += stride) {
      const uint4 packed = reinterpret_cast<const uint4*>(src)[j];
      const S* h = reinterpret_cast<const S*>(&packed);
      float4* d = reinterpret_cast<float4*>(dst) + 2 * j;
      float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a;
      if (kAdd) a = d[0], b = d[1];
      a.x += dev::to_float<S>(h[0]); a.y += dev::to_float<S>(h[1]); a.z += dev::to_float<S>(h[2]); a.w += dev::to_float<S>(h[3]);
      b.x += dev::to_float<S>(h[4]); b.y += dev::to_float<S>(h[5]); b.z += dev::to_float<S>(h[6]); b.w += dev::to_float<S>(h[7]);
      d[0] = a;
      d[1] = b;
    }
    done = nv * 8;
  }
  for (size_t j = done + i; j < n; j += stride) dst[j] = (kAdd ? dst[j] : 0.f) + dev::to_float<S>(src[j]);
}

// Entry blockIdx.y of the table: dst[i] (+)= float(src[i]), a grid-stride loop over its n (small gradients: scalar
// accesses, the launch is what this saves).
template <bool kAdd>
__global__ void accumulate_batch_kernel(const F32Accumulation* __restrict__ table) {
  const F32Accumulation e = table[blockIdx.y];
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < e.n; i += stride) {
    float v;
    switch (static_cast<DType>(e.src_dtype)) {
      case DType::bf16: v = dev::to_float(static_cast<const __nv_bfloat16*>(e.src)[i]); break;
      case DType::f16: v = dev::to_float(static_cast<const __half*>(e.src)[i]); break;
      default: v = static_cast<const float*>(e.src)[i]; break;
    }
    e.dst[i] = (kAdd ? e.dst[i] : 0.f) + v;
  }
}

template <class S, class D>
__global__ void convert_kernel(D* __restrict__ dst, const S* __restrict__ src, size_t n) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = dev::from_float<D>(dev::to_float<S>(src[i]));
}

template <class S>
void convert_from(void* dst, DType dst_dtype, const S* src, size_t n, cudaStream_t stream) {
  const int grid = grid_for(n, 4);
  switch (dst_dtype) {
    case DType::f32: convert_kernel<S, float><<<grid, kThreads, 0, stream>>>(static_cast<float*>(dst), src, n); break;
    case DType::f16: convert_kernel<S, __half><<<grid, kThreads, 0, stream>>>(static_cast<__half*>(dst), src, n); break;
    case DType::bf16:
      convert_kernel<S, __nv_bfloat16><<<grid, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(dst), src, n);
      break;
    default: throw Error("cuda", str_cat("convert: no device conversion to ", dtype_name(dst_dtype)));
  }
}

}  // namespace

namespace {
template <bool kAdd>
void launch_f32_write(float* dst, const void* src, DType src_dtype, size_t n, cudaStream_t stream) {
  switch (src_dtype) {
    case DType::f32:
      add_inplace_f32_kernel<kAdd><<<grid_for(n, 16), kThreads, 0, stream>>>(dst, static_cast<const float*>(src), n);
      break;
    case DType::f16:
      accumulate_kernel<__half, kAdd><<<grid_for(n, 8), kThreads, 0, stream>>>(dst, static_cast<const __half*>(src), n);
      break;
    case DType::bf16:
      accumulate_kernel<__nv_bfloat16, kAdd>
          <<<grid_for(n, 8), kThreads, 0, stream>>>(dst, static_cast<const __nv_bfloat16*>(src), n);
      break;
    default: throw Error("cuda", str_cat("accumulate_f32: no device accumulation from ", dtype_name(src_dtype)));
  }
}
}  // namespace

void launch_accumulate_f32(float* dst, const void* src, DType src_dtype, size_t n, bool overwrite, CUstream_st* stream) {
  if (n == 0) return;
  if (overwrite) launch_f32_write<false>(dst, src, src_dtype, n, stream);
  else launch_f32_write<true>(dst, src, src_dtype, n, stream);
  XF_CUDA_CHECK_LAUNCH("accumulate_f32");
}

void launch_accumulate_f32_batch(const F32Accumulation* table, size_t count, size_t max_n, bool overwrite,
                                 CUstream_st* stream) {
  if (count == 0 || max_n == 0) return;
  XF_CHECK(count <= 65535, "accumulate_f32_batch", count, " entries: at most 65535 (the grid's y)");
  const dim3 grid(static_cast<unsigned>(std::min<size_t>((max_n + kThreads - 1) / kThreads, 64)),
                  static_cast<unsigned>(count));
  if (overwrite) accumulate_batch_kernel<false><<<grid, kThreads, 0, stream>>>(table);
  else accumulate_batch_kernel<true><<<grid, kThreads, 0, stream>>>(table);
  XF_CUDA_CHECK_LAUNCH("accumulate_f32_batch");
}

void launch_convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t n, CUstream_st* stream) {
  if (n == 0) return;
  switch (src_dtype) {
    case DType::f32: convert_from(dst, dst_dtype, static_cast<const float*>(src), n, stream); break;
    case DType::f16: convert_from(dst, dst_dtype, static_cast<const __half*>(src), n, stream); break;
    case DType::bf16: convert_from(dst, dst_dtype, static_cast<const __nv_bfloat16*>(src), n, stream); break;
    default: throw Error("cuda", str_cat("convert: no device conversion from ", dtype_name(src_dtype)));
  }
  XF_CUDA_CHECK_LAUNCH("convert");
}

}  // namespace xfr::cuda
