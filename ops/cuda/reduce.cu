// CUDA kernels of ops/reduce.h (reduce: sum, mean, max with arg-max; reduce_max_backward).
//
// The input is seen through its ReduceLayout (ops/reduce.h):
//   (outer, reduce, inner) with inner == 1 (reducing trailing axes): a warp per output row, lanes over
//     the row (16-byte packs when aligned), the warp's shuffle tree on top;
//   inner > 1 (reducing leading or middle axes, e.g. a bias gradient: sum over the rows of (rows, C)): a
//     column reduction, 32 column packs x 8 row lanes per block, lanes combined in order in shared memory.
//   When the outputs alone would leave the GPU idle (a full reduction, a bias gradient over 16k rows), the
//   reduced axis is split into chunks whose fp32 partial results (in the context's workspace) a second pass
//   reduces: the two-stage tree of ops/cuda/rowwise.cuh. The split depends only on the sizes.
//   Interleaved kept and reduced axes (`generic`): a thread per output when the innermost axis is kept
//   (neighbouring threads read neighbouring columns), a warp per output when it is reduced.
// Everything accumulates in fp32 (16-bit inputs too) and rounds once to the input's dtype; no atomics, so
// every run gives the same bits. Max returns the first occurrence on ties and the first NaN if any.
#include "ops/cuda/rowwise.cuh"
#include "ops/reduce.h"

namespace xfr::cuda {

namespace {

// Merged axis groups of a generic layout (at most one per input axis).
constexpr int kMaxGroups = 8;
struct Groups {
  int nk = 0, nr = 0;
  int64_t ksize[kMaxGroups] = {}, kstride[kMaxGroups] = {};  // kept groups, output order
  int64_t rsize[kMaxGroups] = {}, rstride[kMaxGroups] = {};  // reduced groups, row-major
  int64_t count = 1;                                         // elements per reduced slice
};

Groups generic_groups(const ReduceLayout& L) {
  XF_CHECK(L.kept_sizes.size() <= kMaxGroups && L.red_sizes.size() <= kMaxGroups, "reduce",
           "the CUDA kernel takes at most ", kMaxGroups, " kept and reduced axis groups");
  Groups g;
  g.nk = static_cast<int>(L.kept_sizes.size());
  g.nr = static_cast<int>(L.red_sizes.size());
  for (int i = 0; i < g.nk; ++i) {
    g.ksize[i] = L.kept_sizes[static_cast<size_t>(i)];
    g.kstride[i] = L.kept_strides[static_cast<size_t>(i)];
  }
  for (int i = 0; i < g.nr; ++i) {
    g.rsize[i] = L.red_sizes[static_cast<size_t>(i)];
    g.rstride[i] = L.red_strides[static_cast<size_t>(i)];
  }
  g.count = L.count;
  return g;
}

// The same description for an (outer, reduce, inner) layout (used by the max backward's scatter).
Groups simple_groups(const ReduceLayout& L) {
  Groups g;
  g.nk = 2;
  g.ksize[0] = L.outer;
  g.kstride[0] = L.reduce * L.inner;
  g.ksize[1] = L.inner;
  g.kstride[1] = 1;
  g.nr = 1;
  g.rsize[0] = L.reduce;
  g.rstride[0] = L.inner;
  g.count = L.count;
  return g;
}

// Offset of flat index i over the first n of sizes (row-major) under strides.
__device__ __forceinline__ int64_t unravel(int64_t i, const int64_t* sizes, const int64_t* strides, int n) {
  int64_t off = 0;
  for (int d = n - 1; d >= 0; --d) {
    off += (i % sizes[d]) * strides[d];
    i /= sizes[d];
  }
  return off;
}

// Generic layout whose innermost group is kept (stride 1): a thread per output, neighbouring threads on
// neighbouring columns; the innermost reduced group is walked without divisions.
template <class T, ReduceMode kMode>
__global__ void __launch_bounds__(kBlock)
    reduce_generic_kept_kernel(const T* __restrict__ x,  // input, read through G's strides
                               T* __restrict__ y,        // (n_out)
                               int64_t* __restrict__ idx,  // (n_out), max only
                               Groups G, int64_t n_out, float scale) {
  constexpr bool kMax = kMode == ReduceMode::max;
  const int64_t run = G.rsize[G.nr - 1], run_stride = G.rstride[G.nr - 1], runs = G.count / run;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < n_out; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = unravel(o, G.ksize, G.kstride, G.nk);
    float acc = kMax ? -INFINITY : 0.f;
    int64_t at = dev::kNoIndex;
    for (int64_t q0 = 0; q0 < runs; ++q0) {
      const T* p = x + base + unravel(q0, G.rsize, G.rstride, G.nr - 1);
      for (int64_t j = 0; j < run; ++j) {
        const float v = dev::to_float(p[j * run_stride]);
        if constexpr (kMax) {
          if (dev::beats(v, q0 * run + j, acc, at)) {
            acc = v;
            at = q0 * run + j;
          }
        } else {
          acc += v;
        }
      }
    }
    y[o] = dev::from_float<T>(kMax ? acc : acc * scale);
    if constexpr (kMax) idx[o] = at;
  }
}

// Generic layout whose innermost group is reduced (contiguous runs): a warp per output, lanes over the
// flat reduced index, then the warp's shuffle tree. 8 warps per 256-thread block.
template <class T, ReduceMode kMode>
__global__ void __launch_bounds__(kBlock)
    reduce_generic_reduced_kernel(const T* __restrict__ x,    // input, read through G's strides
                                  T* __restrict__ y,          // (n_out)
                                  int64_t* __restrict__ idx,  // (n_out), max only
                                  Groups G, int64_t n_out, float scale) {
  constexpr bool kMax = kMode == ReduceMode::max;
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t o = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5); o < n_out; o += warps) {
    const T* base = x + unravel(o, G.ksize, G.kstride, G.nk);
    float acc = kMax ? -INFINITY : 0.f;
    int64_t at = dev::kNoIndex;
    for (int64_t q = lane; q < G.count; q += 32) {
      const float v = dev::to_float(base[unravel(q, G.rsize, G.rstride, G.nr)]);
      if constexpr (kMax) {
        if (dev::beats(v, q, acc, at)) {
          acc = v;
          at = q;
        }
      } else {
        acc += v;
      }
    }
    if constexpr (kMax) {
      dev::warp_argmax(acc, at);
    } else {
      acc = dev::warp_sum(acc);
    }
    if (lane == 0) {
      y[o] = dev::from_float<T>(kMax ? acc : acc * scale);
      if constexpr (kMax) idx[o] = at;
    }
  }
}

// y[i] = value for every i (sums and means of empty slices).
template <class T>
__global__ void __launch_bounds__(kBlock) fill_kernel(T* __restrict__ y, int64_t n, float value) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = dev::from_float<T>(value);
}

// dx[kept offset of o + reduced offset of argmax[o]] = dy[o]; dx is zero elsewhere (set before). An argmax
// outside the slice writes nothing (the CPU kernel throws; a GPU kernel cannot without a synchronisation).
template <class T>
__global__ void __launch_bounds__(kBlock)
    max_backward_scatter_kernel(const T* __restrict__ dy,         // (n_out)
                                const int64_t* __restrict__ arg,  // (n_out)
                                T* __restrict__ dx,               // input shape
                                Groups G, int64_t n_out) {
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < n_out; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = arg[o];
    if (a < 0 || a >= G.count) continue;
    dx[unravel(o, G.ksize, G.kstride, G.nk) + unravel(a, G.rsize, G.rstride, G.nr)] = dy[o];
  }
}

// x: the input (L's shape); y: (n_out); idx: (n_out), max only
template <class T, ReduceMode kMode>
void reduce_typed(const ReduceLayout& L, const T* x, T* y, int64_t* idx, int64_t n_out, float scale, Scratch scratch,
                  cudaStream_t stream) {
  if (!L.generic) {
    reduce_axis<T, T, kMode>(x, nullptr, y, idx, L.outer, L.reduce, L.inner, scale, scratch, stream);
    return;
  }
  const Groups G = generic_groups(L);
  if (G.kstride[G.nk - 1] == 1) {
    reduce_generic_kept_kernel<T, kMode><<<grid_1d(n_out), kBlock, 0, stream>>>(x, y, idx, G, n_out, scale);
    XF_CUDA_CHECK_LAUNCH("reduce_generic_kept");
  } else {
    const unsigned blocks = static_cast<unsigned>(std::clamp<int64_t>(ceil_div(n_out, kBlock / 32), 1, kMaxGrid));
    reduce_generic_reduced_kernel<T, kMode><<<blocks, kBlock, 0, stream>>>(x, y, idx, G, n_out, scale);
    XF_CUDA_CHECK_LAUNCH("reduce_generic_reduced");
  }
}

// x: (*)  ->  y: the reduced shape, [argmax (i64, y's shape) for max]
void reduce_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                   const std::vector<Tensor>& out) {
  const auto& op = static_cast<const ReduceOp&>(op_);
  const ReduceLayout L = reduce_layout(op.axes, op.keepdim, in[0].shape(), op.kind);
  const int64_t n_out = out[0].numel();
  // (ReduceOp::infer gives y x's dtype; a caller outside a graph that hands another one would get x's bytes in it)
  XF_CHECK(out[0].dtype() == in[0].dtype(), "reduce", "y ", out[0].desc(), " is not in x's dtype (", in[0].desc(), ")");
  if (n_out == 0) return;
  CudaContext& cc = context_of(ctx);
  const Scratch scratch{cc.workspace(), cc.workspace_bytes(), cc.launch_counters()};
  cudaStream_t stream = cc.stream();
  XF_CUDA_DISPATCH_FLOAT(in[0].dtype(), "reduce", T, {
    const T* x = static_cast<const T*>(in[0].raw_data());
    T* y = static_cast<T*>(out[0].raw_data());
    if (L.count == 0) {  // sums of empty slices: 0; their means: 0/0 (max refuses empty slices in infer)
      fill_kernel<T><<<grid_1d(n_out), kBlock, 0, stream>>>(y, n_out, op.kind == ReduceKind::mean ? NAN : 0.f);
      XF_CUDA_CHECK_LAUNCH("reduce_fill");
    } else if (op.kind == ReduceKind::max) {
      reduce_typed<T, ReduceMode::max>(L, x, y, out[1].data<int64_t>(), n_out, 1.f, scratch, stream);
    } else {
      const float scale = op.kind == ReduceKind::mean ? static_cast<float>(1.0 / static_cast<double>(L.count)) : 1.f;
      reduce_typed<T, ReduceMode::sum>(L, x, y, nullptr, n_out, scale, scratch, stream);
    }
  });
}

// dy: (out), argmax: (out) i64  ->  dx: (in_shape), zero except at each slice's arg-max
void reduce_max_backward_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                                const std::vector<Tensor>& out) {
  const auto& op = static_cast<const ReduceMaxBackwardOp&>(op_);
  const ReduceLayout L = reduce_layout(op.axes, op.keepdim, op.in_shape, ReduceKind::max);
  cudaStream_t stream = stream_of(ctx);
  if (out[0].numel() == 0) return;
  XF_CUDA_CHECK(cudaMemsetAsync(out[0].raw_data(), 0, out[0].nbytes(), stream));
  const int64_t ny = in[0].numel();
  if (ny == 0) return;
  const Groups G = L.generic ? generic_groups(L) : simple_groups(L);
  XF_CUDA_DISPATCH_FLOAT(out[0].dtype(), "reduce_max_backward", T, {
    max_backward_scatter_kernel<T><<<grid_1d(ny), kBlock, 0, stream>>>(
        static_cast<const T*>(in[0].raw_data()), in[1].data<int64_t>(), static_cast<T*>(out[0].raw_data()), G, ny);
    XF_CUDA_CHECK_LAUNCH("reduce_max_backward");
  });
}

}  // namespace

void register_reduce(KernelRegistry& r) {
  r.add("reduce", Device::Kind::cuda, reduce_kernel);
  r.add("reduce_max_backward", Device::Kind::cuda, reduce_max_backward_kernel);
}

}  // namespace xfr::cuda
