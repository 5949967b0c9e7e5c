// CUDA kernel of ops/bias_add.h: y = x + b over the last axis, one pass over the flattened (rows, C)
// elements; when C is a multiple of the vector width and every pointer is 16-byte aligned, each thread
// moves 16-byte vectors of x, b and y (a vector never straddles two rows), otherwise single elements.
// The backward is reduce_sum's and needs no kernel here. The fused bias + activation + dropout kernel
// lives in dropout.cu (it shares the Philox mask code).
#include "ops/bias_add.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/device/types.cuh"
#include "ops/cuda/device/vec.cuh"
#include "ops/cuda/elementwise_launch.h"

namespace xfr::cuda {

namespace {

// x, y: (n = rows * C), b: (C). kVec: C % W == 0 and x, b, y 16-byte aligned.
template <class T, class I, bool kVec>
__global__ void bias_add_kernel(const T* x, const T* b, T* y, I n, I C) {
  using namespace dev;
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  const I tid = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (kVec) {
    constexpr int W = Vec<T>::kWidth;
    const I nv = n / W;  // exact: C % W == 0
    for (I v = tid; v < nv; v += stride) {
      const I i = v * W;
      const Vec<T> xv = load_vec(x + i), bv = load_vec(b + i % C);
      Vec<T> yv;
#pragma unroll
      for (int k = 0; k < W; ++k) yv.v[k] = from_float<T>(to_float(xv.v[k]) + to_float(bv.v[k]));
      store_vec(y + i, yv);
    }
  } else {
    for (I i = tid; i < n; i += stride) y[i] = from_float<T>(to_float(x[i]) + to_float(b[i % C]));
  }
}

template <class T, class I>
void bias_add_typed(const T* x, const T* b, T* y, int64_t n, int64_t C, cudaStream_t stream) {
  constexpr int W = dev::Vec<T>::kWidth;
  if (C % W == 0 && dev::aligned16(x) && dev::aligned16(b) && dev::aligned16(y)) {
    bias_add_kernel<T, I, true><<<grid_1d(n, W), kBlock, 0, stream>>>(x, b, y, static_cast<I>(n), static_cast<I>(C));
  } else {
    bias_add_kernel<T, I, false><<<grid_1d(n), kBlock, 0, stream>>>(x, b, y, static_cast<I>(n), static_cast<I>(C));
  }
  XF_CUDA_CHECK_LAUNCH("bias_add");
}

// in: x (..., C), b (C);  out: y (..., C)
void bias_add_kernel_fn(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                        const std::vector<Tensor>& out) {
  const int64_t C = in[1].numel();
  launch_bias_add(out[0].dtype(), in[0].raw_data(), in[1].raw_data(), out[0].raw_data(), C == 0 ? 0 : in[0].numel() / C,
                  C, stream_of(ctx));
}

}  // namespace

void launch_bias_add(DType dtype, const void* x, const void* b, void* y, int64_t rows, int64_t C,
                     CUstream_st* stream) {
  const int64_t n = rows * C;
  if (n <= 0) return;
  // 32-bit index arithmetic (the modulo is this kernel's cost) when i + grid stride (< 2^24) cannot wrap.
  const bool small = n < (int64_t{1} << 31);
  XF_CUDA_DISPATCH_FLOAT(dtype, "bias_add", T, {
    const T* px = static_cast<const T*>(x);
    const T* pb = static_cast<const T*>(b);
    T* py = static_cast<T*>(y);
    if (small) {
      bias_add_typed<T, uint32_t>(px, pb, py, n, C, stream);
    } else {
      bias_add_typed<T, int64_t>(px, pb, py, n, C, stream);
    }
  });
}

void register_bias_add(KernelRegistry& r) { r.add("bias_add", Device::Kind::cuda, bias_add_kernel_fn); }

}  // namespace xfr::cuda
