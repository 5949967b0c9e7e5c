// Contiguous elementwise maps shared by the CUDA elementwise kernels: y[i] = f(x[i]) and
// y[i] = f(a[i], b[i]) over n contiguous elements, with f working in float and the result rounded to
// the storage type once. When every pointer is 16-byte aligned the body moves Vec<T> (16 bytes) at a
// time and finishes the last n % width elements one by one; otherwise it is scalar throughout.
// Grid-stride loops with int64 indices.
#pragma once
#include "ops/cuda/common.cuh"
#include "ops/cuda/device/types.cuh"
#include "ops/cuda/device/vec.cuh"

namespace xfr::cuda {

// x, y: (n). F: float operator()(float) const.
template <class T, bool kVec, class F>
__global__ void map1_kernel(const T* x, T* y, int64_t n, F f) {
  using namespace dev;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if constexpr (kVec) {
    constexpr int W = Vec<T>::kWidth;
    const int64_t nv = n / W;
    for (int64_t v = tid; v < nv; v += stride) {
      const Vec<T> xv = load_vec(x + v * W);
      Vec<T> yv;
#pragma unroll
      for (int k = 0; k < W; ++k) yv.v[k] = from_float<T>(f(to_float(xv.v[k])));
      store_vec(y + v * W, yv);
    }
    done = nv * W;
  }
  for (int64_t i = done + tid; i < n; i += stride) y[i] = from_float<T>(f(to_float(x[i])));
}

// a, b, y: (n). F: float operator()(float, float) const.
template <class T, bool kVec, class F>
__global__ void map2_kernel(const T* a, const T* b, T* y, int64_t n, F f) {
  using namespace dev;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if constexpr (kVec) {
    constexpr int W = Vec<T>::kWidth;
    const int64_t nv = n / W;
    for (int64_t v = tid; v < nv; v += stride) {
      const Vec<T> av = load_vec(a + v * W), bv = load_vec(b + v * W);
      Vec<T> yv;
#pragma unroll
      for (int k = 0; k < W; ++k) yv.v[k] = from_float<T>(f(to_float(av.v[k]), to_float(bv.v[k])));
      store_vec(y + v * W, yv);
    }
    done = nv * W;
  }
  for (int64_t i = done + tid; i < n; i += stride) y[i] = from_float<T>(f(to_float(a[i]), to_float(b[i])));
}

// x, y: (n)
template <class T, class F>
void launch_map1(const T* x, T* y, int64_t n, const F& f, cudaStream_t stream) {
  if (n <= 0) return;
  if (dev::aligned16(x) && dev::aligned16(y)) {
    map1_kernel<T, true, F><<<grid_1d(n, dev::Vec<T>::kWidth), kBlock, 0, stream>>>(x, y, n, f);
  } else {
    map1_kernel<T, false, F><<<grid_1d(n), kBlock, 0, stream>>>(x, y, n, f);
  }
  XF_CUDA_CHECK_LAUNCH("map1");
}

// a, b, y: (n)
template <class T, class F>
void launch_map2(const T* a, const T* b, T* y, int64_t n, const F& f, cudaStream_t stream) {
  if (n <= 0) return;
  if (dev::aligned16(a) && dev::aligned16(b) && dev::aligned16(y)) {
    map2_kernel<T, true, F><<<grid_1d(n, dev::Vec<T>::kWidth), kBlock, 0, stream>>>(a, b, y, n, f);
  } else {
    map2_kernel<T, false, F><<<grid_1d(n), kBlock, 0, stream>>>(a, b, y, n, f);
  }
  XF_CUDA_CHECK_LAUNCH("map2");
}

}  // namespace xfr::cuda
