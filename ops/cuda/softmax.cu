// CUDA kernels of ops/softmax.h (softmax, softmax_backward).
//
// Forward: one row per warp (Sk up to 32 lanes x 8 packs) or per block (up to 512 threads), the row's
// z = scale * x + mask held in registers as fp32, so x and the mask are read once: row max, exp and row sum,
// then y = e / sum rounded once. Causal rows mask keys j > i (top-left aligned, i = the row's index along
// axis -2); a row whose every entry is masked gives zeros. The mask is broadcast through per-axis strides
// (0 on broadcast axes): per element (its last axis is Sk) or one value per row (its last axis is 1).
// Rows longer than the registers hold take the streaming kernel: a block per row, an online max/sum pass
// and a second pass (from L2) that writes y.
// Backward: the same row groups hold y and dy: s = sum(y * dy) over y != 0, dz = y * (dy - s) (0 where
// y == 0, so an infinite dy at a masked key never makes 0 * inf), dx = scale * dz.
#include "ops/cuda/norm_launch.h"
#include "ops/cuda/rowwise.cuh"
#include "ops/softmax.h"

namespace xfr::cuda {

namespace {

// How the mask is read: absent, one element per score (its last axis has Sk entries), or one value per row
// (its last axis is broadcast).
enum MaskMode : int { kNoMask = 0, kMaskPerElement = 1, kMaskPerRow = 2 };

// Packs per thread in the forward: z is kept in fp32, at most 32 values per thread (32 registers) so that
// the kernel stays well inside the 128 registers of __launch_bounds__(512).
template <int W>
constexpr int fwd_max_iters() {
  return W == 1 ? 8 : (32 / W < 8 ? 32 / W : 8);
}
// Packs per thread in the backward: y and dy stay in their storage type (4 registers per 16-byte pack), up
// to 32 elements each (8 packs of f32: 64 registers); 8 packs of 16-bit data (64 elements) spill at 128.
template <int W>
constexpr int bwd_max_iters() {
  return W == 8 ? 4 : 8;
}

// Offset of the mask row that row `row` of x reads (x's leading axes unravelled, times the mask strides).
__device__ __forceinline__ int64_t mask_row_offset(int64_t row, const SoftmaxLayout& L) {
  int64_t off = 0;
  for (int d = L.rank - 2; d >= 0; --d) {
    const int64_t n = L.shape[d];
    off += (row % n) * L.mask_strides[d];
    row /= n;
  }
  return off;
}

// Pre-softmax value of the W elements of a pack at column c: scale * x + mask, -inf beyond `limit`.
template <class T, int W, int kMode>
__device__ __forceinline__ void scores(const T* xr, const T* mr, int64_t c, int64_t limit, float scale,
                                       float (&z)[W]) {
  const dev::Pack<T, W> xv = dev::load_pack<T, W>(xr + c);
  dev::Pack<T, W> mv;
  if constexpr (kMode == kMaskPerElement) mv = dev::load_pack<T, W>(mr + c);
  const float mrow = kMode == kMaskPerRow ? dev::to_float(mr[0]) : 0.f;
#pragma unroll
  for (int e = 0; e < W; ++e) {
    float v = scale * dev::to_float(xv.v[e]);
    if constexpr (kMode == kMaskPerElement) v += dev::to_float(mv.v[e]);
    if constexpr (kMode == kMaskPerRow) v += mrow;
    z[e] = c + e < limit ? v : -INFINITY;
  }
}

template <class T, int W, int kIters, int kMode>
__global__ void __launch_bounds__(kMaxRowThreads)
    softmax_forward_kernel(const T* __restrict__ x,     // (rows, Sk), rows = (..., Sq)
                           const T* __restrict__ mask,  // broadcast as L.mask_strides, or null
                           T* __restrict__ y,           // (rows, Sk)
                           SoftmaxLayout L, int64_t rows, int64_t Sk, int64_t Sq, float scale, bool causal) {
  const int64_t tid = threadIdx.x, tpr = blockDim.x;
  for (int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += int64_t(gridDim.x) * blockDim.y) {
    const int64_t limit = causal ? min(Sk, row % Sq + 1) : Sk;  // keys j < limit are visible
    const T* xr = x + row * Sk;
    const T* mr = kMode == kNoMask ? nullptr : mask + mask_row_offset(row, L);
    T* yr = y + row * Sk;
    float z[kIters][W];
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t c = (tid + k * tpr) * W;
      if (c < Sk) {
        scores<T, W, kMode>(xr, mr, c, limit, scale, z[k]);
#pragma unroll
        for (int e = 0; e < W; ++e) mx = fmaxf(mx, z[k][e]);
      }
    }
    const float M = dev::row_max(mx);
    float s = 0.f;
    if (M != -INFINITY) {
#pragma unroll
      for (int k = 0; k < kIters; ++k) {
        const int64_t c = (tid + k * tpr) * W;
        if (c < Sk)
#pragma unroll
          for (int e = 0; e < W; ++e) {
            z[k][e] = __expf(z[k][e] - M);
            s += z[k][e];
          }
      }
    }
    // Every entry masked: zeros (M is the same for the whole row group, so all its threads agree).
    const float inv = M != -INFINITY ? 1.f / dev::row_sum(s) : 0.f;
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t c = (tid + k * tpr) * W;
      if (c < Sk) {
        dev::Pack<T, W> out;
#pragma unroll
        for (int e = 0; e < W; ++e) out.v[e] = dev::from_float<T>(M != -INFINITY ? z[k][e] * inv : 0.f);
        dev::store_pack<T, W>(yr + c, out);
      }
    }
  }
}

// Rows too long for registers: a block per row; pass 1 keeps a running (max, sum of exp) per thread,
// pass 2 recomputes z and writes y.
template <class T, int W, int kMode>
__global__ void __launch_bounds__(kMaxRowThreads)
    softmax_forward_streaming_kernel(const T* __restrict__ x,     // (rows, Sk)
                                     const T* __restrict__ mask,  // broadcast, or null
                                     T* __restrict__ y,           // (rows, Sk)
                                     SoftmaxLayout L, int64_t rows, int64_t Sk, int64_t Sq, float scale,
                                     bool causal) {
  const int64_t tid = threadIdx.x, step = int64_t(blockDim.x) * W;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t limit = causal ? min(Sk, row % Sq + 1) : Sk;
    const T* xr = x + row * Sk;
    const T* mr = kMode == kNoMask ? nullptr : mask + mask_row_offset(row, L);
    T* yr = y + row * Sk;
    float m = -INFINITY, s = 0.f;
    for (int64_t c = tid * W; c < Sk; c += step) {
      float z[W];
      scores<T, W, kMode>(xr, mr, c, limit, scale, z);
      float pm = z[0];
#pragma unroll
      for (int e = 1; e < W; ++e) pm = fmaxf(pm, z[e]);
      if (pm > m) {
        s *= __expf(m - pm);  // m == -inf: s is 0 and stays 0
        m = pm;
      }
      if (m != -INFINITY)
#pragma unroll
        for (int e = 0; e < W; ++e) s += __expf(z[e] - m);
    }
    const float M = dev::block_max(m);
    const float S = dev::block_sum(m == -INFINITY ? 0.f : s * __expf(m - M));
    const float inv = M != -INFINITY ? 1.f / S : 0.f;
    for (int64_t c = tid * W; c < Sk; c += step) {
      float z[W];
      scores<T, W, kMode>(xr, mr, c, limit, scale, z);
      dev::Pack<T, W> out;
#pragma unroll
      for (int e = 0; e < W; ++e) out.v[e] = dev::from_float<T>(M != -INFINITY ? __expf(z[e] - M) * inv : 0.f);
      dev::store_pack<T, W>(yr + c, out);
    }
  }
}

// x, y: L.shape; mask: broadcast through L.mask_strides, or null
template <class T>
void softmax_forward(const T* x, const T* mask, T* y, const SoftmaxLayout& L, double scale, bool causal,
                     cudaStream_t stream) {
  XF_CHECK(L.rank >= 1 && L.rank <= kSoftmaxMaxRank, "softmax", "the CUDA kernel takes x of rank 1 to ",
           kSoftmaxMaxRank, ", got rank ", L.rank);
  int64_t n = 1;
  for (int d = 0; d < L.rank; ++d) n *= L.shape[d];
  const int64_t Sk = L.shape[L.rank - 1];
  if (n == 0) return;
  const int64_t rows = n / Sk, Sq = L.rank >= 2 ? L.shape[L.rank - 2] : 1;
  const int mode = !mask ? kNoMask : L.mask_strides[L.rank - 1] != 0 ? kMaskPerElement : kMaskPerRow;
  const float fscale = static_cast<float>(scale);
  constexpr int V = vec_width<T>();
  auto run = [&](auto width, auto mode_c) {
    constexpr int W = decltype(width)::value, kMode = decltype(mode_c)::value;
    constexpr int kMaxIters = fwd_max_iters<W>();
    const RowPlan plan = plan_rows(Sk, W, kMaxIters);
    if (plan.iters == 0) {
      softmax_forward_streaming_kernel<T, W, kMode>
          <<<static_cast<unsigned>(std::min(rows, kMaxGrid)), kMaxRowThreads, 0, stream>>>(x, mask, y, L, rows, Sk,
                                                                                          Sq, fscale, causal);
      XF_CUDA_CHECK_LAUNCH("softmax_forward_streaming");
      return;
    }
    with_iters<kMaxIters>(plan.iters, [&](auto iters) {
      softmax_forward_kernel<T, W, decltype(iters)::value, kMode>
          <<<plan.grid(rows), plan.block(), 0, stream>>>(x, mask, y, L, rows, Sk, Sq, fscale, causal);
      XF_CUDA_CHECK_LAUNCH("softmax_forward");
    });
  };
  auto with_mode = [&](auto width) {
    switch (mode) {
      case kNoMask: return run(width, std::integral_constant<int, kNoMask>{});
      case kMaskPerElement: return run(width, std::integral_constant<int, kMaskPerElement>{});
      default: return run(width, std::integral_constant<int, kMaskPerRow>{});
    }
  };
  // Vector access needs every row start aligned: x's and y's rows are Sk apart, the mask's rows (per-element
  // mode) are multiples of its last axis, Sk, apart.
  const bool vec = Sk % V == 0 && all_aligned16({x, y, mode == kMaskPerElement ? mask : nullptr});
  if (vec)
    with_mode(std::integral_constant<int, V>{});
  else
    with_mode(std::integral_constant<int, 1>{});
}

// ---- backward ---------------------------------------------------------------------------------------------------

template <class T, int W, int kIters>
__global__ void __launch_bounds__(kMaxRowThreads)
    softmax_backward_kernel(const T* __restrict__ y,   // (rows, Sk)
                            const T* __restrict__ dy,  // (rows, Sk)
                            T* __restrict__ dx,        // (rows, Sk)
                            T* __restrict__ dz,        // (rows, Sk) or null
                            int64_t rows, int64_t Sk, float scale) {
  const int64_t tid = threadIdx.x, tpr = blockDim.x;
  for (int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += int64_t(gridDim.x) * blockDim.y) {
    dev::Pack<T, W> yv[kIters], gv[kIters];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t c = (tid + k * tpr) * W;
      if (c < Sk) {
        yv[k] = dev::load_pack<T, W>(y + row * Sk + c);
        gv[k] = dev::load_pack<T, W>(dy + row * Sk + c);
#pragma unroll
        for (int e = 0; e < W; ++e) {
          const float yy = dev::to_float(yv[k].v[e]);
          if (yy != 0.f) s += yy * dev::to_float(gv[k].v[e]);
        }
      }
    }
    s = dev::row_sum(s);
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t c = (tid + k * tpr) * W;
      if (c < Sk) {
        dev::Pack<T, W> ox, oz;
#pragma unroll
        for (int e = 0; e < W; ++e) {
          const float yy = dev::to_float(yv[k].v[e]);
          const float d = yy != 0.f ? yy * (dev::to_float(gv[k].v[e]) - s) : 0.f;
          ox.v[e] = dev::from_float<T>(scale * d);
          oz.v[e] = dev::from_float<T>(d);
        }
        dev::store_pack<T, W>(dx + row * Sk + c, ox);
        if (dz) dev::store_pack<T, W>(dz + row * Sk + c, oz);
      }
    }
  }
}

template <class T, int W>
__global__ void __launch_bounds__(kMaxRowThreads)
    softmax_backward_streaming_kernel(const T* __restrict__ y,   // (rows, Sk)
                                      const T* __restrict__ dy,  // (rows, Sk)
                                      T* __restrict__ dx,        // (rows, Sk)
                                      T* __restrict__ dz,        // (rows, Sk) or null
                                      int64_t rows, int64_t Sk, float scale) {
  const int64_t tid = threadIdx.x, step = int64_t(blockDim.x) * W;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* yr = y + row * Sk;
    const T* gr = dy + row * Sk;
    float s = 0.f;
    for (int64_t c = tid * W; c < Sk; c += step) {
      const dev::Pack<T, W> yv = dev::load_pack<T, W>(yr + c), gv = dev::load_pack<T, W>(gr + c);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        const float yy = dev::to_float(yv.v[e]);
        if (yy != 0.f) s += yy * dev::to_float(gv.v[e]);
      }
    }
    s = dev::block_sum(s);
    for (int64_t c = tid * W; c < Sk; c += step) {
      const dev::Pack<T, W> yv = dev::load_pack<T, W>(yr + c), gv = dev::load_pack<T, W>(gr + c);
      dev::Pack<T, W> ox, oz;
#pragma unroll
      for (int e = 0; e < W; ++e) {
        const float yy = dev::to_float(yv.v[e]);
        const float d = yy != 0.f ? yy * (dev::to_float(gv.v[e]) - s) : 0.f;
        ox.v[e] = dev::from_float<T>(scale * d);
        oz.v[e] = dev::from_float<T>(d);
      }
      dev::store_pack<T, W>(dx + row * Sk + c, ox);
      if (dz) dev::store_pack<T, W>(dz + row * Sk + c, oz);
    }
  }
}

// y, dy, dx: (rows, Sk); dz: (rows, Sk) or null
template <class T>
void softmax_backward(const T* y, const T* dy, T* dx, T* dz, int64_t rows, int64_t Sk, double scale,
                      cudaStream_t stream) {
  if (rows == 0 || Sk == 0) return;
  const float fscale = static_cast<float>(scale);
  constexpr int V = vec_width<T>();
  auto run = [&](auto width) {
    constexpr int W = decltype(width)::value;
    constexpr int kMaxIters = bwd_max_iters<W>();
    const RowPlan plan = plan_rows(Sk, W, kMaxIters);
    if (plan.iters == 0) {
      softmax_backward_streaming_kernel<T, W>
          <<<static_cast<unsigned>(std::min(rows, kMaxGrid)), kMaxRowThreads, 0, stream>>>(y, dy, dx, dz, rows, Sk,
                                                                                          fscale);
      XF_CUDA_CHECK_LAUNCH("softmax_backward_streaming");
      return;
    }
    with_iters<kMaxIters>(plan.iters, [&](auto iters) {
      softmax_backward_kernel<T, W, decltype(iters)::value>
          <<<plan.grid(rows), plan.block(), 0, stream>>>(y, dy, dx, dz, rows, Sk, fscale);
      XF_CUDA_CHECK_LAUNCH("softmax_backward");
    });
  };
  if (Sk % V == 0 && all_aligned16({y, dy, dx, dz}))
    run(std::integral_constant<int, V>{});
  else
    run(std::integral_constant<int, 1>{});
}

// ---- graph kernels ---------------------------------------------------------------------------------------------

// x's shape and the mask's strides over it (0 on broadcast axes), as ops/cpu/broadcast.h.
SoftmaxLayout softmax_layout(const Shape& x, const Shape* mask) {
  XF_CHECK(!x.empty() && x.size() <= static_cast<size_t>(kSoftmaxMaxRank), "softmax",
           "the CUDA kernel takes x of rank 1 to ", kSoftmaxMaxRank, ", got ", shape_str(x));
  SoftmaxLayout L;
  L.rank = static_cast<int>(x.size());
  for (size_t i = 0; i < x.size(); ++i) L.shape[i] = x[i];
  if (mask) {
    const Shape cs = contiguous_strides(*mask);
    const size_t lead = x.size() - mask->size();
    for (size_t i = 0; i < mask->size(); ++i) L.mask_strides[lead + i] = (*mask)[i] == 1 ? 0 : cs[i];
  }
  return L;
}

// in: x (..., Sq, Sk), [mask broadcastable to x];  out: y (..., Sq, Sk)
void softmax_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                    const std::vector<Tensor>& out) {
  const auto& op = static_cast<const SoftmaxOp&>(op_);
  const SoftmaxLayout L = softmax_layout(in[0].shape(), op.has_mask ? &in[1].shape() : nullptr);
  launch_softmax_forward(in[0].dtype(), in[0].raw_data(), op.has_mask ? in[1].raw_data() : nullptr,
                         out[0].raw_data(), L, op.scale, op.causal, stream_of(ctx));
}

// in: y (..., Sk), dy (..., Sk);  out: dx (..., Sk), [dz (..., Sk)]
void softmax_backward_kernel_fn(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                                const std::vector<Tensor>& out) {
  const auto& op = static_cast<const SoftmaxBackwardOp&>(op_);
  const int64_t Sk = in[0].shape().back();
  const int64_t rows = Sk == 0 ? 0 : in[0].numel() / Sk;
  launch_softmax_backward(in[0].dtype(), in[0].raw_data(), in[1].raw_data(), out[0].raw_data(),
                          op.emit_dz ? out[1].raw_data() : nullptr, rows, Sk, op.scale, stream_of(ctx));
}

}  // namespace

// ---- plain launchers (ops/cuda/norm_launch.h) --------------------------------------------------------------------

void launch_softmax_forward(DType dtype, const void* x, const void* mask, void* y, const SoftmaxLayout& layout,
                            double scale, bool causal, CUstream_st* stream) {
  XF_CUDA_DISPATCH_FLOAT(dtype, "softmax",
                         T, softmax_forward<T>(static_cast<const T*>(x), static_cast<const T*>(mask),
                                               static_cast<T*>(y), layout, scale, causal, stream));
}

void launch_softmax_backward(DType dtype, const void* y, const void* dy, void* dx, void* dz, int64_t rows,
                             int64_t Sk, double scale, CUstream_st* stream) {
  XF_CUDA_DISPATCH_FLOAT(dtype, "softmax_backward", T,
                         softmax_backward<T>(static_cast<const T*>(y), static_cast<const T*>(dy), static_cast<T*>(dx),
                                             static_cast<T*>(dz), rows, Sk, scale, stream));
}

void register_softmax(KernelRegistry& r) {
  r.add("softmax", Device::Kind::cuda, softmax_kernel);
  r.add("softmax_backward", Device::Kind::cuda, softmax_backward_kernel_fn);
}

}  // namespace xfr::cuda
