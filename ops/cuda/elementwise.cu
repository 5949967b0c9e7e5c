// CUDA kernels of ops/elementwise.h:
//   binary        y = a (+ - * /) b with NumPy broadcasting. Same-size operands: a contiguous map
//                 (16-byte vectors when aligned). Otherwise the axes are coalesced (adjacent axes that
//                 every operand walks contiguously, or broadcasts along together, become one; size-1 axes
//                 go) and each thread decodes its output position into operand offsets; when the
//                 innermost axis allows it (its length a multiple of the vector width, every operand
//                 either contiguous or broadcast along it, pointers aligned) a thread handles a whole
//                 16-byte vector per decode, otherwise one element. 32-bit index arithmetic when every
//                 offset fits (integer division is the cost of this kernel).
//   scale         y = alpha x, a contiguous map.
//   sum_to        y = x summed over the axes that y broadcasts along, accumulated in double in a fixed
//                 order (deterministic). Kept and reduced axes are coalesced; a block (32 x 8 threads)
//                 reduces a tile of outputs, with its threads along the axis x is contiguous in for
//                 coalesced reads; a long reduction with few outputs is split over blocks whose partial
//                 sums go through stream-ordered scratch (the context's workspace) and a second pass. A short
//                 reduction over contiguous rows (a broadcast bias or table's gradient) takes a vector kernel:
//                 a thread sums 16 bytes of outputs over every row, in order.
//   broadcast_to  any dtype, the broadcast path of binary with one operand and a plain copy.
//   fill          any dtype: the value's bit pattern replicated (cudaMemsetAsync when it is all zeros).
#include <cstring>

#include "ops/cuda/common.cuh"
#include "ops/cuda/device/reduce.cuh"
#include "ops/cuda/device/types.cuh"
#include "ops/cuda/device/vec.cuh"
#include "ops/cuda/elementwise_launch.h"
#include "ops/cuda/map.cuh"
#include "ops/elementwise.h"
#include "runtime/dispatch.h"

namespace xfr::cuda {

namespace {

// Axes after coalescing: at most one per run of alternating broadcast patterns, so 8 covers any tensor of
// rank <= 8 (the runtime's tensors have rank <= 6).
constexpr int kMaxDims = 8;

// ---- broadcast geometry (binary, broadcast_to) -------------------------------------------------------

// The output's axes after coalescing, innermost first, with each input's stride along each (0 where the
// input is broadcast). For a vectorised launch, axis 0 counts vectors (size[0] and stride[k][0] are in
// units of the vector width) and inner[k] says whether input k is contiguous (1) or broadcast (0) within
// a vector.
template <int N>
struct BcastGeom {
  int ndim = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[N][kMaxDims] = {};
  int inner[N] = {};
};

template <int N>
BcastGeom<N> make_bcast_geom(const Shape& out, const Shape* const in[N], const char* op) {
  BcastGeom<N> g;
  const size_t r = out.size();
  Shape st[N];
  for (int k = 0; k < N; ++k) {  // strides of contiguous input k laid over out's axes (0 where broadcast)
    st[k].assign(r, 0);
    const Shape& s = *in[k];
    const size_t lead = r - s.size();
    int64_t acc = 1;
    for (size_t i = s.size(); i-- > 0;) {
      st[k][lead + i] = s[i] == 1 ? 0 : acc;
      acc *= s[i];
    }
  }
  for (size_t d = r; d-- > 0;) {  // innermost first
    if (out[d] == 1) continue;
    bool merge = g.ndim > 0;
    for (int k = 0; k < N && merge; ++k)
      merge = st[k][d] == g.stride[k][g.ndim - 1] * g.size[g.ndim - 1];
    if (merge) {
      g.size[g.ndim - 1] *= out[d];
      continue;
    }
    XF_CHECK(g.ndim < kMaxDims, op, "more than ", kMaxDims, " axes after coalescing for output ", shape_str(out));
    g.size[g.ndim] = out[d];
    for (int k = 0; k < N; ++k) g.stride[k][g.ndim] = st[k][d];
    ++g.ndim;
  }
  if (g.ndim == 0) {  // a single element
    g.ndim = 1;
    g.size[0] = 1;
  }
  return g;
}

template <class T, int N>
struct InPtrs {
  const T* p[N];
};

// y: (out), in[k]: broadcast to out per g. Chunk c is output elements [c W, c W + W) of contiguous y.
// N == 1 copies (broadcast_to, any storage type); N == 2 computes f(a, b) in float.
template <class T, class I, int W, int N, class F>
__global__ void bcast_kernel(T* y, InPtrs<T, N> in, BcastGeom<N> g, I chunks, F f) {
  using namespace dev;
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I c = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks; c += stride) {
    I off[N];
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    I rem = c;
#pragma unroll
    for (int d = 0; d < kMaxDims; ++d) {
      if (d < g.ndim) {
        const I sz = static_cast<I>(g.size[d]);
        const I idx = rem % sz;
        rem /= sz;
#pragma unroll
        for (int k = 0; k < N; ++k) off[k] += idx * static_cast<I>(g.stride[k][d]);
      }
    }
    if constexpr (W == 1) {
      if constexpr (N == 1) {
        y[c] = in.p[0][off[0]];
      } else {
        y[c] = from_float<T>(f(to_float(in.p[0][off[0]]), to_float(in.p[1][off[1]])));
      }
    } else {
      T v[N][W];
#pragma unroll
      for (int k = 0; k < N; ++k) {
        if (g.inner[k]) {
          const Vec<T> lv = load_vec(in.p[k] + off[k]);
#pragma unroll
          for (int e = 0; e < W; ++e) v[k][e] = lv.v[e];
        } else {
          const T s = in.p[k][off[k]];
#pragma unroll
          for (int e = 0; e < W; ++e) v[k][e] = s;
        }
      }
      Vec<T> out;
#pragma unroll
      for (int e = 0; e < W; ++e) {
        if constexpr (N == 1) {
          out.v[e] = v[0][e];
        } else {
          out.v[e] = from_float<T>(f(to_float(v[0][e]), to_float(v[1][e])));
        }
      }
      store_vec(y + static_cast<int64_t>(c) * W, out);
    }
  }
}

struct NoOp {};

// y: out, in[k]: in_shapes[k], each broadcasting to out; numel(out) > 0.
template <class T, int N, class F>
void launch_bcast(T* y, InPtrs<T, N> in, const Shape& out, const Shape* const in_shapes[N], const F& f,
                  const char* op, cudaStream_t stream) {
  BcastGeom<N> g = make_bcast_geom<N>(out, in_shapes, op);
  const int64_t n = numel_of(out);
  constexpr int W = dev::Vec<T>::kWidth;
  // Vectors along axis 0: its length a multiple of W, each input contiguous (stride 1, every outer stride a
  // multiple of W, aligned) or broadcast (stride 0) along it, and y aligned.
  bool vec = W > 1 && dev::aligned16(y) && g.size[0] % W == 0;
  for (int k = 0; k < N && vec; ++k) {
    if (g.stride[k][0] == 0) continue;
    vec = g.stride[k][0] == 1 && dev::aligned16(in.p[k]);
    for (int d = 1; d < g.ndim && vec; ++d) vec = g.stride[k][d] % W == 0;
  }
  // 32-bit indices when every chunk index and offset is below 2^31 (inputs are no larger than the output),
  // so that c + grid stride (< 2^24) cannot wrap.
  const bool small = n < (int64_t{1} << 31);
  if (vec) {
    for (int k = 0; k < N; ++k) {
      g.inner[k] = static_cast<int>(g.stride[k][0]);
      g.stride[k][0] *= W;
    }
    g.size[0] /= W;
    const int64_t chunks = n / W;
    if (small) {
      bcast_kernel<T, uint32_t, W, N, F><<<grid_1d(chunks), kBlock, 0, stream>>>(y, in, g, static_cast<uint32_t>(chunks), f);
    } else {
      bcast_kernel<T, int64_t, W, N, F><<<grid_1d(chunks), kBlock, 0, stream>>>(y, in, g, chunks, f);
    }
  } else if (small) {
    bcast_kernel<T, uint32_t, 1, N, F><<<grid_1d(n), kBlock, 0, stream>>>(y, in, g, static_cast<uint32_t>(n), f);
  } else {
    bcast_kernel<T, int64_t, 1, N, F><<<grid_1d(n), kBlock, 0, stream>>>(y, in, g, n, f);
  }
  XF_CUDA_CHECK_LAUNCH(op);
}

struct AddF {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct SubF {
  __device__ __forceinline__ float operator()(float a, float b) const { return a - b; }
};
struct MulF {
  __device__ __forceinline__ float operator()(float a, float b) const { return a * b; }
};
struct DivF {
  __device__ __forceinline__ float operator()(float a, float b) const { return a / b; }
};
struct ScaleF {
  float alpha;
  __device__ __forceinline__ float operator()(float x) const { return alpha * x; }
};

template <class T, class F>
void binary_typed(const T* a, const Shape& as, const T* b, const Shape& bs, T* y, const Shape& ys, const F& f,
                  cudaStream_t stream) {
  const int64_t n = numel_of(ys);
  if (n == 0) return;
  if (numel_of(as) == n && numel_of(bs) == n) {  // same shape up to leading 1s
    launch_map2(a, b, y, n, f, stream);
    return;
  }
  const Shape* shapes[2] = {&as, &bs};
  launch_bcast<T, 2, F>(y, InPtrs<T, 2>{{a, b}}, ys, shapes, f, "binary", stream);
}

// ---- sum_to ---------------------------------------------------------------------------------------------

// x's axes after dropping size-1 ones and merging neighbours of the same kind, innermost first: kept
// axes (y has them) and reduced axes (y is 1 there). Strides are x's, in elements.
struct ReduceGeom {
  int nk = 0, nr = 0;
  int64_t ksize[kMaxDims] = {}, kstride[kMaxDims] = {};
  int64_t rsize[kMaxDims] = {}, rstride[kMaxDims] = {};
  bool red_inner = false;  // x's innermost (non-1) axis is reduced
};

ReduceGeom make_reduce_geom(const Shape& xs, const Shape& ys) {
  ReduceGeom g;
  const size_t r = xs.size(), lead = r - ys.size();
  int last = -1;  // 0 kept, 1 reduced: the kind of the previous (inner) axis
  int64_t stride = 1;
  for (size_t d = r; d-- > 0;) {
    const int64_t n = xs[d];
    if (n == 1) continue;
    const bool reduced = d < lead || ys[d - lead] == 1;
    if (last < 0) g.red_inner = reduced;
    if (reduced) {
      if (last == 1) {
        g.rsize[g.nr - 1] *= n;
      } else {
        XF_CHECK(g.nr < kMaxDims, "sum_to", "too many reduced axes in ", shape_str(xs));
        g.rsize[g.nr] = n;
        g.rstride[g.nr++] = stride;
      }
    } else {
      if (last == 0) {
        g.ksize[g.nk - 1] *= n;
      } else {
        XF_CHECK(g.nk < kMaxDims, "sum_to", "too many kept axes in ", shape_str(xs));
        g.ksize[g.nk] = n;
        g.kstride[g.nk++] = stride;
      }
    }
    last = reduced ? 1 : 0;
    stride *= n;
  }
  return g;
}

// Block shape of the reduction: 32 x 8 = 256 threads (kBlock). Kept-inner layout: threadIdx.x picks one of 32
// consecutive outputs (consecutive x addresses) and threadIdx.y one of 8 reduction lanes; reduced-inner:
// threadIdx.y picks one of 8 outputs and the 32 lanes of its warp walk the contiguous reduced axis.
constexpr int kRedBlockX = 32, kRedBlockY = 8;
// Blocks a reduction aims for: 8 per SM of a 132-SM H200 (memory-bound; enough to saturate HBM).
constexpr int64_t kRedTargetBlocks = 1024;
// Fewest elements a reduction lane sums before the reduction is split over more blocks: below that the
// extra partial pass (a launch and a write and read of the partials) costs more than the parallelism gains.
constexpr int64_t kRedMinPerLane = 16;

struct ReducePlan {
  ReduceGeom g;
  int64_t ny = 1, R = 1, ntiles = 1, splits = 1, per_split = 1;
};

ReducePlan plan_sum_to(const Shape& xs, const Shape& ys, size_t workspace_bytes) {
  ReducePlan p;
  p.g = make_reduce_geom(xs, ys);
  for (int d = 0; d < p.g.nk; ++d) p.ny *= p.g.ksize[d];
  for (int d = 0; d < p.g.nr; ++d) p.R *= p.g.rsize[d];
  const int64_t outs = p.g.red_inner ? kRedBlockY : kRedBlockX, lanes = p.g.red_inner ? kRedBlockX : kRedBlockY;
  p.ntiles = (p.ny + outs - 1) / outs;
  if (p.ntiles < kRedTargetBlocks) {
    const int64_t by_blocks = kRedTargetBlocks / p.ntiles;
    const int64_t by_length = (p.R + lanes * kRedMinPerLane - 1) / (lanes * kRedMinPerLane);
    const int64_t by_space = static_cast<int64_t>(workspace_bytes / (sizeof(double) * static_cast<size_t>(p.ny)));
    p.splits = std::max<int64_t>(1, std::min({by_blocks, by_length, by_space}));
  }
  p.per_split = std::max<int64_t>(1, (p.R + p.splits - 1) / p.splits);
  p.splits = std::max<int64_t>(1, (p.R + p.per_split - 1) / p.per_split);  // no empty split
  return p;
}

// Offset in x of reduction index r (reduced axes, innermost first).
template <class I>
__device__ __forceinline__ I reduced_offset(I r, const ReduceGeom& g) {
  if (g.nr == 1) return r * static_cast<I>(g.rstride[0]);
  I off = 0;
#pragma unroll
  for (int d = 0; d < kMaxDims; ++d) {
    if (d < g.nr) {
      const I sz = static_cast<I>(g.rsize[d]);
      off += (r % sz) * static_cast<I>(g.rstride[d]);
      r /= sz;
    }
  }
  return off;
}

// Offset in x of output j (kept axes, innermost first: y's row-major order).
template <class I>
__device__ __forceinline__ I kept_offset(I j, const ReduceGeom& g) {
  I off = 0;
#pragma unroll
  for (int d = 0; d < kMaxDims; ++d) {
    if (d < g.nk) {
      const I sz = static_cast<I>(g.ksize[d]);
      off += (j % sz) * static_cast<I>(g.kstride[d]);
      j /= sz;
    }
  }
  return off;
}

// x: (xs), y: (ny) or partial: (splits, ny) doubles when splits > 1. Block (32, 8); grid (tiles, splits).
template <class T, class I, bool kRedInner>
__global__ void __launch_bounds__(kRedBlockX* kRedBlockY)
    sum_to_kernel(const T* x, T* y, double* partial, ReduceGeom g, I ny, I R, I per_split, int splits) {
  using namespace dev;
  constexpr int kOuts = kRedInner ? kRedBlockY : kRedBlockX;
  constexpr int kLanes = kRedInner ? kRedBlockX : kRedBlockY;
  __shared__ double part[kRedBlockY][kRedBlockX + 1];  // +1: no bank conflicts on the column sums
  const int o_lane = kRedInner ? threadIdx.y : threadIdx.x;
  const int r_lane = kRedInner ? threadIdx.x : threadIdx.y;
  const I r0 = static_cast<I>(blockIdx.y) * per_split;
  const I r1 = r0 + per_split < R ? r0 + per_split : R;
  const I ntiles = (ny + kOuts - 1) / kOuts;
  for (I tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    const I j = tile * kOuts + o_lane;
    double acc = 0.0;
    if (j < ny) {
      const T* xj = x + kept_offset(j, g);
      for (I r = r0 + r_lane; r < r1; r += kLanes) acc += static_cast<double>(to_float(xj[reduced_offset(r, g)]));
    }
    bool writer;
    if constexpr (kRedInner) {
      acc = warp_sum(acc);  // the warp is output j's 32 lanes
      writer = threadIdx.x == 0;
    } else {
      part[threadIdx.y][threadIdx.x] = acc;
      __syncthreads();
      acc = 0.0;
      if (threadIdx.y == 0)
        for (int k = 0; k < kRedBlockY; ++k) acc += part[k][threadIdx.x];
      __syncthreads();  // part is rewritten by the next tile
      writer = threadIdx.y == 0;
    }
    if (writer && j < ny) {
      if (splits == 1) {
        y[j] = from_float<T>(static_cast<float>(acc));
      } else {
        partial[static_cast<int64_t>(blockIdx.y) * ny + j] = acc;
      }
    }
  }
}

// partial: (splits, ny) -> y: (ny), summed over splits in order.
template <class T, class I>
__global__ void sum_partials_kernel(const double* partial, T* y, I ny, int splits) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I j = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; j < ny; j += stride) {
    double s = 0.0;
    for (int k = 0; k < splits; ++k) s += partial[static_cast<int64_t>(k) * ny + j];
    y[j] = dev::from_float<T>(static_cast<float>(s));
  }
}

// The short reduction over contiguous rows: y (ny) = sum over r of x[r] (ny), where the kept axes are one contiguous
// run (x's rows of ny elements, at the reduced axes' offsets). A thread sums one 16-byte vector of outputs over every
// row in order (r = 0, 1, ...; double accumulators), so its loads are whole 16-byte vectors, not the 2-byte ones
// the tiled kernel's 32 x 8 block reads for 16-bit types. GPT-2's position-embedding gradient, (16, 1024, 768) ->
// (1024, 768) bf16: 41 us in the tiled kernel (session 25's node profile), about 25 MB read.
// x: rows of ny at reduced_offset(r); y: (ny). A thread a vector of W outputs at a time (grid-stride).
template <class T, class I>
__global__ void __launch_bounds__(kBlock) sum_rows_vec_kernel(const T* __restrict__ x, T* __restrict__ y, ReduceGeom g,
                                                              I nvec, I R) {
  using namespace dev;
  constexpr int W = Vec<T>::kWidth;
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec; i += stride) {
    double acc[W] = {};
    const T* xi = x + i * W;
    constexpr int kInFlight = 4;  // rows loaded before they are added: 4 x 16 bytes in flight a thread
    I r = 0;
    for (; r + kInFlight <= R; r += kInFlight) {
      Vec<T> v[kInFlight];
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) v[u] = load_vec(xi + reduced_offset(r + u, g));
#pragma unroll
      for (int u = 0; u < kInFlight; ++u)
#pragma unroll
        for (int k = 0; k < W; ++k) acc[k] += static_cast<double>(to_float(v[u].v[k]));
    }
    for (; r < R; ++r) {
      const Vec<T> v = load_vec(xi + reduced_offset(r, g));
#pragma unroll
      for (int k = 0; k < W; ++k) acc[k] += static_cast<double>(to_float(v.v[k]));
    }
    Vec<T> out;
#pragma unroll
    for (int k = 0; k < W; ++k) out.v[k] = from_float<T>(static_cast<float>(acc[k]));
    store_vec(y + i * W, out);
  }
}

// Longest reduction the vector kernel takes: a thread walks every row itself, so a long one has too few threads
// (the tiled kernel splits it over blocks instead).
constexpr int64_t kVecSumMaxRows = 64;
// Fewest vectors of outputs for the vector kernel: 64 blocks of kBlock threads, half a wave of the H200's 132
// SMs; below that the tiled kernel's split reductions keep more SMs busy.
constexpr int64_t kVecSumMinVectors = 64 * kBlock;

template <class T>
bool sum_rows_vec_applies(const T* x, const T* y, const ReducePlan& p) {
  constexpr int W = dev::Vec<T>::kWidth;
  return !p.g.red_inner && p.g.nk == 1 && p.g.kstride[0] == 1 && p.ny % W == 0 && p.ny / W >= kVecSumMinVectors &&
         p.R <= kVecSumMaxRows && dev::aligned16(x) && dev::aligned16(y) &&
         [&] {  // every row starts on 16 bytes
           for (int d = 0; d < p.g.nr; ++d)
             if (p.g.rstride[d] % W != 0) return false;
           return true;
         }();
}

template <class T, class I>
void sum_to_typed(const T* x, T* y, const ReducePlan& p, void* workspace, cudaStream_t stream) {
  if (sum_rows_vec_applies(x, y, p)) {
    const int64_t nvec = p.ny / dev::Vec<T>::kWidth;
    sum_rows_vec_kernel<T, I><<<grid_1d(nvec), kBlock, 0, stream>>>(
        x, y, p.g, static_cast<I>(nvec), static_cast<I>(p.R));
    XF_CUDA_CHECK_LAUNCH("sum_to (rows)");
    return;
  }
  const dim3 block(kRedBlockX, kRedBlockY);
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(p.ntiles, 65535)), static_cast<unsigned>(p.splits));
  double* partial = p.splits > 1 ? static_cast<double*>(workspace) : nullptr;
  const I ny = static_cast<I>(p.ny), R = static_cast<I>(p.R), per = static_cast<I>(p.per_split);
  const int splits = static_cast<int>(p.splits);
  if (p.g.red_inner) {
    sum_to_kernel<T, I, true><<<grid, block, 0, stream>>>(x, y, partial, p.g, ny, R, per, splits);
  } else {
    sum_to_kernel<T, I, false><<<grid, block, 0, stream>>>(x, y, partial, p.g, ny, R, per, splits);
  }
  XF_CUDA_CHECK_LAUNCH("sum_to");
  if (p.splits > 1) {
    sum_partials_kernel<T, I><<<grid_1d(p.ny), kBlock, 0, stream>>>(partial, y, ny, splits);
    XF_CUDA_CHECK_LAUNCH("sum_to partials");
  }
}

// ---- fill -------------------------------------------------------------------------------------------------

// y: (n) elements of storage type S, each set to `bits`.
template <class S>
__global__ void fill_kernel(S* y, int64_t n, S bits) {
  using namespace dev;
  constexpr int W = Vec<S>::kWidth;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (aligned16(y)) {
    Vec<S> v;
#pragma unroll
    for (int k = 0; k < W; ++k) v.v[k] = bits;
    const int64_t nv = n / W;
    for (int64_t i = tid; i < nv; i += stride) store_vec(y + i * W, v);
    done = nv * W;
  }
  for (int64_t i = done + tid; i < n; i += stride) y[i] = bits;
}

// The storage type of an element of `size` bytes.
template <class Body>
void with_storage(size_t size, const char* op, Body&& body) {
  switch (size) {
    case 1: body(uint8_t{}); return;
    case 2: body(uint16_t{}); return;
    case 4: body(uint32_t{}); return;
    case 8: body(uint64_t{}); return;
    default: throw Error(op, str_cat("no storage type of ", size, " bytes"));
  }
}

// ---- registered kernels -------------------------------------------------------------------------------

// in: a (as), b (bs);  out: y (broadcast(as, bs))
void binary_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                   const std::vector<Tensor>& out) {
  const auto& op = static_cast<const BinaryOp&>(op_);
  launch_binary(op.kind, out[0].dtype(), in[0].raw_data(), in[0].shape(), in[1].raw_data(), in[1].shape(),
                out[0].raw_data(), out[0].shape(), stream_of(ctx));
}

// in: x (...);  out: y (x's shape)
void scale_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                  const std::vector<Tensor>& out) {
  launch_scale(out[0].dtype(), in[0].raw_data(), out[0].raw_data(), out[0].numel(),
               static_cast<const ScaleOp&>(op_).alpha, stream_of(ctx));
}

// in: x (xs);  out: y (op.shape, broadcasting to xs)
void sum_to_kernel_fn(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                      const std::vector<Tensor>& out) {
  CudaContext& c = context_of(ctx);
  launch_sum_to(out[0].dtype(), in[0].raw_data(), in[0].shape(), out[0].raw_data(), out[0].shape(), c.workspace(),
                c.workspace_bytes(), c.stream());
}

// in: x (xs);  out: y (op.shape)
void broadcast_to_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                         const std::vector<Tensor>& out) {
  launch_broadcast_to(out[0].dtype(), in[0].raw_data(), in[0].shape(), out[0].raw_data(), out[0].shape(),
                      stream_of(ctx));
}

// out: y (op.meta)
void fill_kernel_fn(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>&,
                    const std::vector<Tensor>& out) {
  launch_fill(out[0].dtype(), out[0].raw_data(), out[0].numel(), static_cast<const FillOp&>(op_).value,
              stream_of(ctx));
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------------------

void launch_binary(BinaryKind kind, DType dtype, const void* a, const Shape& a_shape, const void* b,
                   const Shape& b_shape, void* y, const Shape& y_shape, CUstream_st* stream) {
  XF_CUDA_DISPATCH_FLOAT(dtype, "binary", T, {
    const T* pa = static_cast<const T*>(a);
    const T* pb = static_cast<const T*>(b);
    T* py = static_cast<T*>(y);
    switch (kind) {
      case BinaryKind::add: binary_typed(pa, a_shape, pb, b_shape, py, y_shape, AddF{}, stream); break;
      case BinaryKind::sub: binary_typed(pa, a_shape, pb, b_shape, py, y_shape, SubF{}, stream); break;
      case BinaryKind::mul: binary_typed(pa, a_shape, pb, b_shape, py, y_shape, MulF{}, stream); break;
      case BinaryKind::div: binary_typed(pa, a_shape, pb, b_shape, py, y_shape, DivF{}, stream); break;
    }
  });
}

void launch_add(DType dtype, const void* a, const void* b, void* y, int64_t n, CUstream_st* stream) {
  XF_CUDA_DISPATCH_FLOAT(dtype, "add", T, {
    launch_map2(static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(y), n, AddF{}, stream);
  });
}

void launch_scale(DType dtype, const void* x, void* y, int64_t n, double alpha, CUstream_st* stream) {
  // alpha rounded to float once, as the CPU kernel does
  XF_CUDA_DISPATCH_FLOAT(dtype, "scale", T, {
    launch_map1(static_cast<const T*>(x), static_cast<T*>(y), n, ScaleF{static_cast<float>(alpha)}, stream);
  });
}

size_t sum_to_workspace_bytes(const Shape& x_shape, const Shape& y_shape) {
  const ReducePlan p = plan_sum_to(x_shape, y_shape, ~size_t{0} / 2);
  return p.splits > 1 ? static_cast<size_t>(p.splits * p.ny) * sizeof(double) : 0;
}

void launch_sum_to(DType dtype, const void* x, const Shape& x_shape, void* y, const Shape& y_shape, void* workspace,
                   size_t workspace_bytes, CUstream_st* stream) {
  const int64_t ny = numel_of(y_shape);
  if (ny == 0) return;
  if (numel_of(x_shape) == 0) {  // a sum of nothing
    launch_fill(dtype, y, ny, 0.0, stream);
    return;
  }
  const ReducePlan p = plan_sum_to(x_shape, y_shape, workspace ? workspace_bytes : 0);
  const bool small = numel_of(x_shape) < (int64_t{1} << 31);  // 32-bit offsets (tile * 32 + lane stays below 2^32)
  XF_CUDA_DISPATCH_FLOAT(dtype, "sum_to", T, {
    if (small) {
      sum_to_typed<T, uint32_t>(static_cast<const T*>(x), static_cast<T*>(y), p, workspace, stream);
    } else {
      sum_to_typed<T, int64_t>(static_cast<const T*>(x), static_cast<T*>(y), p, workspace, stream);
    }
  });
}

void launch_broadcast_to(DType dtype, const void* x, const Shape& x_shape, void* y, const Shape& y_shape,
                         CUstream_st* stream) {
  if (numel_of(y_shape) == 0) return;
  with_storage(dtype_size(dtype), "broadcast_to", [&](auto tag) {
    using S = decltype(tag);
    const Shape* shapes[1] = {&x_shape};
    launch_bcast<S, 1, NoOp>(static_cast<S*>(y), InPtrs<S, 1>{{static_cast<const S*>(x)}}, y_shape, shapes, NoOp{},
                             "broadcast_to", stream);
  });
}

void launch_fill(DType dtype, void* y, int64_t n, double value, CUstream_st* stream) {
  if (n <= 0) return;
  uint64_t bits = 0;  // value in dtype, as Tensor::fill converts it
  XF_DISPATCH_ALL(dtype, "fill", V, {
    const V v = from_double<V>(value);
    std::memcpy(&bits, &v, sizeof(V));
  });
  if (bits == 0) {  // all-zero bytes (not -0.0)
    XF_CUDA_CHECK(cudaMemsetAsync(y, 0, static_cast<size_t>(n) * dtype_size(dtype), stream));
    return;
  }
  with_storage(dtype_size(dtype), "fill", [&](auto tag) {
    using S = decltype(tag);
    fill_kernel<S><<<grid_1d(n, dev::Vec<S>::kWidth), kBlock, 0, stream>>>(static_cast<S*>(y), n, static_cast<S>(bits));
  });
  XF_CUDA_CHECK_LAUNCH("fill");
}

void register_elementwise(KernelRegistry& r) {
  r.add("binary", Device::Kind::cuda, binary_kernel);
  r.add("scale", Device::Kind::cuda, scale_kernel);
  r.add("sum_to", Device::Kind::cuda, sum_to_kernel_fn);
  r.add("broadcast_to", Device::Kind::cuda, broadcast_to_kernel);
  r.add("fill", Device::Kind::cuda, fill_kernel_fn);
}

}  // namespace xfr::cuda
