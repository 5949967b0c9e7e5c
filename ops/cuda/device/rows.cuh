// Device helpers for row-wise kernels (normalisation, softmax, cross-entropy, reductions): packs of W
// contiguous elements moved with one access, reductions over the threads that share a row, and the
// (value, index) combine of an arg-max. Includes nothing outside CUDA.
//
// Row groups: a kernel either gives each row one warp (blockDim = (32, rows per block)) or one block
// (blockDim = (threads, 1)); row_sum / row_max reduce over that group, so one kernel body serves both.
#pragma once
#include <cstdint>

#include "ops/cuda/device/mma.cuh"  // cp.async
#include "ops/cuda/device/reduce.cuh"
#include "ops/cuda/device/types.cuh"
#include "ops/cuda/device/vec.cuh"

namespace xfr::cuda::dev {

// W contiguous elements: W = 16 / sizeof(T) is one 16-byte vector access (the address must be 16-byte
// aligned), W = 1 a scalar access (any address).
template <class T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

template <class T, int W>
__device__ __forceinline__ Pack<T, W> load_pack(const T* p) {
  static_assert(sizeof(Pack<T, W>) == 16 || W == 1, "a pack is one 16-byte vector or one scalar");
  Pack<T, W> r;
  if constexpr (W == 1) {
    r.v[0] = *p;
  } else {
    *reinterpret_cast<uint4*>(&r) = *reinterpret_cast<const uint4*>(p);
  }
  return r;
}

// A 16-byte pack of data the kernel only reads, once: ld.global.nc.L1::no_allocate (read-only path, no L1 line
// kept). The LayerNorm lab (tools/lab/layernorm.cu) measured these loads worth 3-6 % of copy bandwidth on the
// H200's residual norms. Other widths take load_pack.
template <class T, int W>
__device__ __forceinline__ Pack<T, W> load_pack_stream(const T* p) {
  if constexpr (sizeof(Pack<T, W>) == 16) {
    Pack<T, W> r;
    uint4 u;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w)
        : "l"(p));
    *reinterpret_cast<uint4*>(&r) = u;
    return r;
  } else {
    return load_pack<T, W>(p);
  }
}

// A pack global -> shared: asynchronously (cp.async, 16 bytes; both addresses 16-byte aligned on the vector path;
// the caller commits and waits: cp_async_commit, cp_async_wait) or, for a scalar pack, a plain load and store.
template <class T, int W>
__device__ __forceinline__ void stage_pack(Pack<T, W>* dst, const T* src) {
  if constexpr (sizeof(Pack<T, W>) == 16)
    cp_async_16(dst, src, 16);
  else
    *dst = load_pack<T, W>(src);
}

template <class T, int W>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, W>& r) {
  if constexpr (W == 1) {
    *p = r.v[0];
  } else {
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(&r);
  }
}

// Two sums over the block at once (one round of shared memory instead of two); every thread gets both.
// Same contract as block_sum: blockDim.x a multiple of 32, at most 1024, blockDim.y == 1, all threads call.
__device__ __forceinline__ float2 block_sum2(float a, float b) {
  __shared__ float2 partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  a = warp_sum(a);
  b = warp_sum(b);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = make_float2(a, b);
  __syncthreads();
  const float2 p = lane < warps ? partial[lane] : make_float2(0.f, 0.f);
  return make_float2(warp_sum(p.x), warp_sum(p.y));
}

// Reductions over the threads of one row group: the warp when blockDim.x == 32, the blockDim.x lanes of a
// narrower group, else the whole block (which then holds one row: blockDim.y == 1). blockDim.x is uniform over
// the block, so the branch holding __syncthreads is taken by all of its threads or by none.
// Row groups narrower than a warp (blockDim.x 8 or 16: several rows per warp, each on blockDim.x aligned lanes)
// reduce over their own lanes; every lane of the warp must call (a masked row contributes zeros).
__device__ __forceinline__ float segment_sum(float v) {
  for (int o = static_cast<int>(blockDim.x) / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float row_sum(float v) {
  return blockDim.x == 32 ? warp_sum(v) : blockDim.x < 32 ? segment_sum(v) : block_sum(v);
}
__device__ __forceinline__ float row_max(float v) { return blockDim.x == 32 ? warp_max(v) : block_max(v); }
__device__ __forceinline__ float2 row_sum2(float a, float b) {
  if (blockDim.x == 32) return make_float2(warp_sum(a), warp_sum(b));
  return block_sum2(a, b);
}

// ---- arg-max ------------------------------------------------------------------------------------------
// Whether (v, i) wins over (w, j) in a maximum that returns the first occurrence on ties and the first NaN
// if any (NaN propagates, as in PyTorch). Order-independent, so any reduction tree gives the answer of a
// sequential scan. The empty candidate is (-inf, INT64_MAX): every real element beats it.
__device__ __forceinline__ bool beats(float v, int64_t i, float w, int64_t j) {
  const bool vn = v != v, wn = w != w;
  if (vn || wn) return vn && (!wn || i < j);
  return v > w || (v == w && i < j);
}

constexpr int64_t kNoIndex = INT64_MAX;

// Arg-max over the warp; every lane gets the winner.
__device__ __forceinline__ void warp_argmax(float& v, int64_t& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    const int64_t j = __shfl_xor_sync(0xffffffffu, static_cast<long long>(i), o);
    if (beats(w, j, v, i)) {
      v = w;
      i = j;
    }
  }
}

}  // namespace xfr::cuda::dev
