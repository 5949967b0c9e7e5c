// 16-byte vector access: a Vec<T> holds 16 / sizeof(T) elements (4 floats, 8 halves) moved with one
// 128-bit load or store. Callers check alignment (pointer % 16 == 0 and a length divisible by the
// width) and fall back to scalar access otherwise. Includes nothing outside CUDA.
#pragma once
#include <cstdint>

namespace xfr::cuda::dev {

template <class T>
struct alignas(16) Vec {
  static constexpr int kWidth = 16 / sizeof(T);
  T v[kWidth];
};

template <class T>
__device__ __forceinline__ Vec<T> load_vec(const T* p) {  // p: 16-byte aligned
  Vec<T> r;
  *reinterpret_cast<uint4*>(&r) = *reinterpret_cast<const uint4*>(p);
  return r;
}

template <class T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T>& r) {  // p: 16-byte aligned
  *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(&r);
}

__host__ __device__ inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace xfr::cuda::dev
