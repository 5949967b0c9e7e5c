// CUDA kernels of ops/activation.h:
//   activation           y = f(x), a contiguous map (16-byte vectors when aligned) with the kind's device
//                        functor (ops/cuda/device/activation.cuh), computed in float, rounded once.
//   activation_backward  dx = dy * f'(x), the same with two inputs.
//   star_relu            y = scale relu(x)^2 + bias, scale and bias read on the device (no host sync).
//   star_relu_backward   dx = dy 2 scale relu(x) in the same pass as the per-block partial sums of
//                        dy relu(x)^2 and dy (double); a second one-block pass adds the partials in block
//                        order (deterministic). The partials live in the context's workspace, stream-ordered.
#include "ops/activation.h"
#include "ops/cuda/activation.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/device/reduce.cuh"
#include "ops/cuda/device/types.cuh"
#include "ops/cuda/device/vec.cuh"
#include "ops/cuda/elementwise_launch.h"
#include "ops/cuda/map.cuh"

namespace xfr::cuda {

namespace {

// Most partial sums of star_relu_backward: 8 blocks per SM of a 132-SM H200 (a memory-bound pass),
// two doubles each.
constexpr int kStarMaxPartials = 1024;

// x, y: (n); scale, bias: (1)
template <class T, bool kVec>
__global__ void star_relu_kernel(const T* x, const T* scale, const T* bias, T* y, int64_t n) {
  using namespace dev;
  const float s = to_float(scale[0]), b = to_float(bias[0]);
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
      for (int k = 0; k < W; ++k) {
        const float r = act_relu(to_float(xv.v[k]));
        yv.v[k] = from_float<T>(s * r * r + b);
      }
      store_vec(y + v * W, yv);
    }
    done = nv * W;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    const float r = act_relu(to_float(x[i]));
    y[i] = from_float<T>(s * r * r + b);
  }
}

// x, dy, dx: (n); scale, dscale, dbias: (1); partial: (gridDim.x, 2) doubles when gridDim.x > 1.
template <class T, bool kVec>
__global__ void star_relu_backward_kernel(const T* x, const T* scale, const T* dy, T* dx, double* partial, T* dscale,
                                          T* dbias, int64_t n) {
  using namespace dev;
  const float s = to_float(scale[0]);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  double acc_s = 0.0, acc_b = 0.0;
  int64_t done = 0;
  if constexpr (kVec) {
    constexpr int W = Vec<T>::kWidth;
    const int64_t nv = n / W;
    for (int64_t v = tid; v < nv; v += stride) {
      const Vec<T> xv = load_vec(x + v * W), gv = load_vec(dy + v * W);
      Vec<T> dv;
      float ps = 0.0f, pb = 0.0f;  // this vector's terms in float, then one double add each
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const float r = act_relu(to_float(xv.v[k])), g = to_float(gv.v[k]);
        dv.v[k] = from_float<T>(g * (2.0f * s * r));
        ps += g * r * r;
        pb += g;
      }
      store_vec(dx + v * W, dv);
      acc_s += static_cast<double>(ps);
      acc_b += static_cast<double>(pb);
    }
    done = nv * W;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    const float r = act_relu(to_float(x[i])), g = to_float(dy[i]);
    dx[i] = from_float<T>(g * (2.0f * s * r));
    acc_s += static_cast<double>(g * r * r);
    acc_b += static_cast<double>(g);
  }
  acc_s = block_sum<double>(acc_s);
  acc_b = block_sum<double>(acc_b);
  if (threadIdx.x == 0) {
    if (gridDim.x == 1) {
      dscale[0] = from_float<T>(static_cast<float>(acc_s));
      dbias[0] = from_float<T>(static_cast<float>(acc_b));
    } else {
      partial[2 * blockIdx.x] = acc_s;
      partial[2 * blockIdx.x + 1] = acc_b;
    }
  }
}

// partial: (count, 2) -> dscale, dbias: (1). One block; each thread adds a strided subset in order, then a
// fixed-shape block reduction.
template <class T>
__global__ void star_relu_partials_kernel(const double* partial, int count, T* dscale, T* dbias) {
  using namespace dev;
  double s = 0.0, b = 0.0;
  for (int k = threadIdx.x; k < count; k += blockDim.x) {
    s += partial[2 * k];
    b += partial[2 * k + 1];
  }
  s = block_sum<double>(s);
  b = block_sum<double>(b);
  if (threadIdx.x == 0) {
    dscale[0] = from_float<T>(static_cast<float>(s));
    dbias[0] = from_float<T>(static_cast<float>(b));
  }
}

// in: x (...);  out: y (x's shape)
void activation_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                       const std::vector<Tensor>& out) {
  const auto& op = static_cast<const ActivationOp&>(op_);
  launch_activation(op.kind, op.params, out[0].dtype(), in[0].raw_data(), out[0].raw_data(), out[0].numel(),
                    stream_of(ctx));
}

// in: x (...), dy (x's shape);  out: dx (x's shape)
void activation_backward_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                                const std::vector<Tensor>& out) {
  const auto& op = static_cast<const ActivationBackwardOp&>(op_);
  launch_activation_backward(op.kind, op.params, out[0].dtype(), in[0].raw_data(), in[1].raw_data(),
                             out[0].raw_data(), out[0].numel(), stream_of(ctx));
}

// in: x (...), scale (1 element), bias (1 element);  out: y (x's shape)
void star_relu_kernel_fn(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                         const std::vector<Tensor>& out) {
  launch_star_relu(out[0].dtype(), in[0].raw_data(), in[1].raw_data(), in[2].raw_data(), out[0].raw_data(),
                   out[0].numel(), stream_of(ctx));
}

// in: x (...), scale (1 element), dy (x's shape);  out: dx (x's shape), dscale (scale's shape), dbias (same)
void star_relu_backward_kernel_fn(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                                  const std::vector<Tensor>& out) {
  CudaContext& c = context_of(ctx);
  launch_star_relu_backward(out[0].dtype(), in[0].raw_data(), in[1].raw_data(), in[2].raw_data(), out[0].raw_data(),
                            out[1].raw_data(), out[2].raw_data(), in[0].numel(), c.workspace(), c.workspace_bytes(),
                            c.stream());
}

}  // namespace

void launch_activation(ActivationKind kind, const ActivationParams& params, DType dtype, const void* x, void* y,
                       int64_t n, CUstream_st* stream) {
  with_activation(kind, params, "activation", [&](auto act) {
    XF_CUDA_DISPATCH_FLOAT(dtype, "activation", T, {
      launch_map1(static_cast<const T*>(x), static_cast<T*>(y), n, dev::ActForward<decltype(act)>{act}, stream);
    });
  });
}

void launch_activation_backward(ActivationKind kind, const ActivationParams& params, DType dtype, const void* x,
                                const void* dy, void* dx, int64_t n, CUstream_st* stream) {
  with_activation(kind, params, "activation_backward", [&](auto act) {
    XF_CUDA_DISPATCH_FLOAT(dtype, "activation_backward", T, {
      launch_map2(static_cast<const T*>(x), static_cast<const T*>(dy), static_cast<T*>(dx), n,
                  dev::ActBackward<decltype(act)>{act}, stream);
    });
  });
}

void launch_star_relu(DType dtype, const void* x, const void* scale, const void* bias, void* y, int64_t n,
                      CUstream_st* stream) {
  if (n <= 0) return;
  XF_CUDA_DISPATCH_FLOAT(dtype, "star_relu", T, {
    const T* px = static_cast<const T*>(x);
    T* py = static_cast<T*>(y);
    const T* ps = static_cast<const T*>(scale);
    const T* pb = static_cast<const T*>(bias);
    if (dev::aligned16(px) && dev::aligned16(py)) {
      star_relu_kernel<T, true><<<grid_1d(n, dev::Vec<T>::kWidth), kBlock, 0, stream>>>(px, ps, pb, py, n);
    } else {
      star_relu_kernel<T, false><<<grid_1d(n), kBlock, 0, stream>>>(px, ps, pb, py, n);
    }
  });
  XF_CUDA_CHECK_LAUNCH("star_relu");
}

size_t star_relu_backward_workspace_bytes() { return kStarMaxPartials * 2 * sizeof(double); }

void launch_star_relu_backward(DType dtype, const void* x, const void* scale, const void* dy, void* dx, void* dscale,
                               void* dbias, int64_t n, void* workspace, size_t workspace_bytes, CUstream_st* stream) {
  XF_CUDA_DISPATCH_FLOAT(dtype, "star_relu_backward", T, {
    const T* px = static_cast<const T*>(x);
    const T* pg = static_cast<const T*>(dy);
    T* pdx = static_cast<T*>(dx);
    T* pds = static_cast<T*>(dscale);
    T* pdb = static_cast<T*>(dbias);
    const bool vec = dev::aligned16(px) && dev::aligned16(pg) && dev::aligned16(pdx);
    // Blocks: what the elements need, at most kStarMaxPartials and what the workspace holds (one without it:
    // then that block writes the sums itself). n = 0 still runs one block, which writes zero sums.
    int64_t blocks = std::min<int64_t>(grid_1d(n, vec ? dev::Vec<T>::kWidth : 1), kStarMaxPartials);
    blocks = std::min<int64_t>(blocks, workspace ? static_cast<int64_t>(workspace_bytes / (2 * sizeof(double))) : 1);
    blocks = std::max<int64_t>(blocks, 1);
    double* partial = blocks > 1 ? static_cast<double*>(workspace) : nullptr;
    const unsigned grid = static_cast<unsigned>(blocks);
    if (vec) {
      star_relu_backward_kernel<T, true><<<grid, kBlock, 0, stream>>>(px, static_cast<const T*>(scale), pg, pdx, partial,
                                                                     pds, pdb, n);
    } else {
      star_relu_backward_kernel<T, false><<<grid, kBlock, 0, stream>>>(px, static_cast<const T*>(scale), pg, pdx,
                                                                      partial, pds, pdb, n);
    }
    XF_CUDA_CHECK_LAUNCH("star_relu_backward");
    if (blocks > 1) {
      star_relu_partials_kernel<T><<<1, kBlock, 0, stream>>>(partial, static_cast<int>(blocks), pds, pdb);
      XF_CUDA_CHECK_LAUNCH("star_relu_backward partials");
    }
  });
}

void register_activation(KernelRegistry& r) {
  r.add("activation", Device::Kind::cuda, activation_kernel);
  r.add("activation_backward", Device::Kind::cuda, activation_backward_kernel);
  r.add("star_relu", Device::Kind::cuda, star_relu_kernel_fn);
  r.add("star_relu_backward", Device::Kind::cuda, star_relu_backward_kernel_fn);
}

}  // namespace xfr::cuda
