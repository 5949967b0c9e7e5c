// CUDA kernels of ops/dropout.h, and the fused bias + activation + dropout of DESIGN.md.
//
//   dropout  y[i] = x[i] * (1 / (1 - p)) if (philox_u32(seed, start + i) >> 8) >= ceil(p 2^24), else 0,
//            start = rng_offset (+ *rng_offset_device when set, read on the device so that a replayed CUDA
//            graph draws the numbers of its step). Exactly the CPU kernel's mask (runtime/rng.h's stream
//            layout) and, in f32, its values bit for bit (one float multiply by the same float scale).
//            The backward is this op again on the gradient with the forward's offset (ops/dropout.h), so it
//            replays the mask with no kernel of its own.
//   bias_act_dropout (launcher only) y = dropout(f(x + b)) in one pass, the same numbers and the same
//            roundings (x + b rounded to the dtype, f(.) rounded to the dtype) as bias_add, activation and
//            dropout run one after another.
//
// A thread takes kGroup consecutive elements per step: their stream elements start + i0 ... lie in 4
// Philox blocks, or 5 when start is not a multiple of 4 (start % 4 is the same for every group, so each
// case is a compile-time-unrolled body picked once per kernel). Values move as 16-byte vectors when every
// pointer is aligned (and, fused, when C is a multiple of the vector width), else one by one; the last
// n % kGroup elements take one Philox block each.
#include <cstring>

#include "ops/cuda/activation.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/device/types.cuh"
#include "ops/cuda/device/vec.cuh"
#include "ops/cuda/elementwise_launch.h"
#include "ops/dropout.h"
#include "runtime/rng.h"

namespace xfr::cuda {

namespace {

// Elements per thread and step: 4 Philox blocks of 4 (a 5th when the start is unaligned: 25% extra work,
// against 100% for 4-element groups), and a whole number of 16-byte vectors for every dtype (4 x f32,
// 2 x f16/bf16).
constexpr int kGroup = 16;

struct MaskParams {
  uint64_t seed = 0;
  uint64_t offset = 0;                      // added to *offset_device when that is set
  const uint64_t* offset_device = nullptr;
  uint32_t threshold = 0;                   // keep when (bits >> 8) >= threshold (ops/dropout.h)
  float scale = 1.0f;                       // 1 / (1 - p), rounded to float as the CPU kernel does
};

// bits[e] = stream element c0 + e of `seed`, where c0 % 4 == O3.
template <int O3>
__device__ __forceinline__ void group_bits(uint64_t seed, uint64_t c0, uint32_t (&bits)[kGroup]) {
  constexpr int kBlocks = (O3 + kGroup + 3) / 4;
  const uint64_t block0 = c0 >> 2;
#pragma unroll
  for (int k = 0; k < kBlocks; ++k) {
    const Philox4x32 r = philox_block(seed, block0 + static_cast<uint64_t>(k));
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int e = 4 * k + l - O3;
      if (e >= 0 && e < kGroup) bits[e] = r.x[l];
    }
  }
}

// Plain dropout's values: x. x: (n)
template <class T>
struct DropoutSrc {
  const T* x;
  // v[e] = x[i0 + e]; vec: x is 16-byte aligned (i0 is a multiple of kGroup)
  __device__ __forceinline__ void load(int64_t i0, bool vec, float (&v)[kGroup]) const {
    using namespace dev;
    constexpr int W = Vec<T>::kWidth;
    if (vec) {
#pragma unroll
      for (int j = 0; j < kGroup / W; ++j) {
        const Vec<T> xv = load_vec(x + i0 + j * W);
#pragma unroll
        for (int k = 0; k < W; ++k) v[j * W + k] = to_float(xv.v[k]);
      }
    } else {
#pragma unroll
      for (int e = 0; e < kGroup; ++e) v[e] = to_float(x[i0 + e]);
    }
  }
  __device__ __forceinline__ float load1(int64_t i) const { return dev::to_float(x[i]); }
};

// Fused: f(h) with h = x + b rounded to T (and stored to pre when set), f(h) rounded to T, as the unfused
// ops would. x, pre: (rows, C), b: (C)
template <class T, class A>
struct BiasActSrc {
  const T* x;
  const T* b;
  T* pre;
  int64_t C;
  A act;
  __device__ __forceinline__ float one(int64_t i, int64_t c) const {
    using namespace dev;
    const T h = from_float<T>(to_float(x[i]) + to_float(b[c]));
    if (pre) pre[i] = h;
    return to_float(from_float<T>(act.f(to_float(h))));
  }
  // vec: x, b, pre 16-byte aligned and C % W == 0 (a vector never straddles two rows)
  __device__ __forceinline__ void load(int64_t i0, bool vec, float (&v)[kGroup]) const {
    using namespace dev;
    constexpr int W = Vec<T>::kWidth;
    int64_t c = i0 % C;  // one division per group; the column then advances and wraps
    if (vec) {
#pragma unroll
      for (int j = 0; j < kGroup / W; ++j) {
        const Vec<T> xv = load_vec(x + i0 + j * W), bv = load_vec(b + c);
        Vec<T> hv;
#pragma unroll
        for (int k = 0; k < W; ++k) {
          hv.v[k] = from_float<T>(to_float(xv.v[k]) + to_float(bv.v[k]));
          v[j * W + k] = to_float(from_float<T>(act.f(to_float(hv.v[k]))));
        }
        if (pre) store_vec(pre + i0 + j * W, hv);
        c += W;
        if (c >= C) c -= C;  // C >= W, so at most one wrap
      }
    } else {
#pragma unroll
      for (int e = 0; e < kGroup; ++e) {
        v[e] = one(i0 + e, c);
        if (++c == C) c = 0;
      }
    }
  }
  __device__ __forceinline__ float load1(int64_t i) const { return one(i, i % C); }
};

template <class T>
__device__ __forceinline__ T masked(float v, uint32_t bits, const MaskParams& m) {
  return dev::from_float<T>((bits >> 8) >= m.threshold ? v * m.scale : 0.0f);
}

// y: (n). kDrop false: y = the source's values (the fused kernel without dropout).
template <class T, bool kDrop, int O3, class Src>
__device__ __forceinline__ void masked_body(T* y, int64_t n, const Src& src, const MaskParams& m, uint64_t start,
                                            bool vec) {
  using namespace dev;
  constexpr int W = Vec<T>::kWidth;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t groups = n / kGroup;
  for (int64_t g = tid; g < groups; g += stride) {
    const int64_t i0 = g * kGroup;
    float v[kGroup];
    src.load(i0, vec, v);
    T out[kGroup];
    if constexpr (kDrop) {
      uint32_t bits[kGroup];
      group_bits<O3>(m.seed, start + static_cast<uint64_t>(i0), bits);
#pragma unroll
      for (int e = 0; e < kGroup; ++e) out[e] = masked<T>(v[e], bits[e], m);
    } else {
#pragma unroll
      for (int e = 0; e < kGroup; ++e) out[e] = from_float<T>(v[e]);
    }
    if (vec) {
#pragma unroll
      for (int j = 0; j < kGroup / W; ++j) {
        Vec<T> ov;
#pragma unroll
        for (int k = 0; k < W; ++k) ov.v[k] = out[j * W + k];
        store_vec(y + i0 + j * W, ov);
      }
    } else {
#pragma unroll
      for (int e = 0; e < kGroup; ++e) y[i0 + e] = out[e];
    }
  }
  for (int64_t i = groups * kGroup + tid; i < n; i += stride) {
    const float v = src.load1(i);
    if constexpr (kDrop) {
      y[i] = masked<T>(v, philox_u32(m.seed, start + static_cast<uint64_t>(i)), m);
    } else {
      y[i] = from_float<T>(v);
    }
  }
}

// y: (n); the source reads its own inputs. vec: every pointer 16-byte aligned (see the sources).
template <class T, bool kDrop, class Src>
__global__ void masked_kernel(T* y, int64_t n, Src src, MaskParams m, bool vec) {
  if constexpr (kDrop) {
    const uint64_t start = m.offset + (m.offset_device ? *m.offset_device : uint64_t{0});
    switch (static_cast<int>(start & 3u)) {
      case 0: masked_body<T, true, 0>(y, n, src, m, start, vec); break;
      case 1: masked_body<T, true, 1>(y, n, src, m, start, vec); break;
      case 2: masked_body<T, true, 2>(y, n, src, m, start, vec); break;
      default: masked_body<T, true, 3>(y, n, src, m, start, vec); break;
    }
  } else {
    masked_body<T, false, 0>(y, n, src, m, 0, vec);
  }
}

MaskParams mask_params(double p, const PhiloxOffset& rng) {
  MaskParams m;
  m.seed = rng.seed;
  m.offset = rng.offset;
  m.offset_device = rng.offset_device;
  m.threshold = dropout_keep_threshold(p);
  m.scale = static_cast<float>(1.0 / (1.0 - p));
  return m;
}

// in: x (...);  out: y (x's shape)
void dropout_kernel_fn(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                       const std::vector<Tensor>& out) {
  const auto& op = static_cast<const DropoutOp&>(op_);
  launch_dropout(out[0].dtype(), in[0].raw_data(), out[0].raw_data(), out[0].numel(), op.p,
                 PhiloxOffset{ctx.rng_seed, ctx.rng_offset, ctx.rng_offset_device}, stream_of(ctx));
}

}  // namespace

void launch_dropout(DType dtype, const void* x, void* y, int64_t n, double p, const PhiloxOffset& rng,
                    CUstream_st* stream) {
  if (n <= 0) return;
  XF_CUDA_DISPATCH_FLOAT(dtype, "dropout", T, {
    if (p == 0.0) {  // the identity, as on the CPU
      if (x != y) XF_CUDA_CHECK(cudaMemcpyAsync(y, x, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToDevice, stream));
      return;
    }
    const T* px = static_cast<const T*>(x);
    T* py = static_cast<T*>(y);
    const bool vec = dev::aligned16(px) && dev::aligned16(py);
    masked_kernel<T, true, DropoutSrc<T>><<<grid_1d(n, kGroup), kBlock, 0, stream>>>(py, n, DropoutSrc<T>{px},
                                                                                      mask_params(p, rng), vec);
  });
  XF_CUDA_CHECK_LAUNCH("dropout");
}

void launch_bias_act_dropout(ActivationKind kind, const ActivationParams& params, DType dtype, const void* x,
                             const void* b, void* y, void* pre_act, int64_t rows, int64_t C, double p,
                             const PhiloxOffset& rng, CUstream_st* stream) {
  const int64_t n = rows * C;
  if (n <= 0) return;
  const MaskParams m = mask_params(p, rng);
  with_activation(kind, params, "bias_act_dropout", [&](auto act) {
    using A = decltype(act);
    XF_CUDA_DISPATCH_FLOAT(dtype, "bias_act_dropout", T, {
      const T* px = static_cast<const T*>(x);
      const T* pb = static_cast<const T*>(b);
      T* py = static_cast<T*>(y);
      T* pre = static_cast<T*>(pre_act);
      const bool vec = C % dev::Vec<T>::kWidth == 0 && dev::aligned16(px) && dev::aligned16(pb) &&
                       dev::aligned16(py) && (pre == nullptr || dev::aligned16(pre));
      const BiasActSrc<T, A> src{px, pb, pre, C, act};
      if (p == 0.0) {
        masked_kernel<T, false, BiasActSrc<T, A>><<<grid_1d(n, kGroup), kBlock, 0, stream>>>(py, n, src, m, vec);
      } else {
        masked_kernel<T, true, BiasActSrc<T, A>><<<grid_1d(n, kGroup), kBlock, 0, stream>>>(py, n, src, m, vec);
      }
    });
  });
  XF_CUDA_CHECK_LAUNCH("bias_act_dropout");
}

void register_dropout(KernelRegistry& r) { r.add("dropout", Device::Kind::cuda, dropout_kernel_fn); }

}  // namespace xfr::cuda
