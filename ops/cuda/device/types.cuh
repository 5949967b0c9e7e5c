// Device-side element types and conversions: the storage types of the runtime's dtypes (float, __half,
// __nv_bfloat16) read into float and rounded back (round to nearest even, as the CPU's f16/bf16 do).
// Includes nothing outside CUDA.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace xfr::cuda::dev {

template <class T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// 2^x in one MUFU.EX2 (ex2.approx, flushing denormals; 2^-inf = +0): exp(y) is ex2(y log2(e)), whose multiply folds
// into the instruction that forms y (an FFMA), where __expf(a - b) takes an FADD, an FMUL and the EX2.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace xfr::cuda::dev
