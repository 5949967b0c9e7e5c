// CUDA kernels of ops/embedding.h.
//
// Forward: a gather, one thread per 16 bytes of output (one element when rows are not 16-byte multiples).
// Backward, deterministic without float atomics: the token ids are stably radix-sorted (CUB; tokens with the
// same id keep their order), then the (sorted position, column tile) block at the start of each id's run of tokens
// finds the run's end by binary search and sums their dy rows in token order in fp32, writing the row once (the
// table zeroed first for the rows no token uses), or, into an f32 gradient slot, adding it. Every element's sum
// therefore runs over the same tokens in the same order on every run, as on the CPU.
//
// Ids outside [0, V): the CPU kernel throws; a GPU kernel cannot without stopping the stream, so the
// forward writes NaN rows for them (visible in the loss at once, never a read out of bounds) and the
// backward ignores them.
#include <cub/device/device_radix_sort.cuh>

#include <cmath>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/device/vec.cuh"
#include "ops/embedding.h"
#include "runtime/dispatch.h"

namespace xfr::cuda {

namespace {

using dev::Vec;

// table: (V, C), ids: (n) -> y: (n, C). W elements per thread: Vec<T>::kWidth on the aligned path, else 1.
template <class T, class I, int W>
__global__ void embedding_forward(const T* __restrict__ table, const I* __restrict__ ids, T* __restrict__ y, int64_t n,
                                  int64_t V, int64_t C) {
  const int64_t per_row = C / W, total = n * per_row;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < total;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = u / per_row, c = (u - t * per_row) * W;
    const int64_t id = static_cast<int64_t>(ids[t]);
    T* dst = y + t * C + c;
    const bool valid = id >= 0 && id < V;
    if constexpr (W > 1) {
      Vec<T> v;
      if (valid) {
        v = dev::load_vec(table + id * C + c);
      } else {
#pragma unroll
        for (int i = 0; i < W; ++i) v.v[i] = dev::from_float<T>(NAN);
      }
      dev::store_vec(dst, v);
    } else {
      *dst = valid ? table[id * C + c] : dev::from_float<T>(NAN);
    }
  }
}

// keys[t] = ids[t] in [0, V), else V (sorted after every valid id and then skipped); vals[t] = t.
//   ids: (n) -> keys: (n) u32, vals: (n) i32
template <class I>
__global__ void embedding_sort_keys(const I* __restrict__ ids, uint32_t* __restrict__ keys, int32_t* __restrict__ vals,
                                    int64_t n, int64_t V) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t id = static_cast<int64_t>(ids[t]);
    keys[t] = static_cast<uint32_t>(id >= 0 && id < V ? id : V);
    vals[t] = static_cast<int32_t>(t);
  }
}

// First index in sorted keys[0, n) whose key is >= v.
__device__ __forceinline__ int64_t lower_bound(const uint32_t* keys, int64_t n, uint32_t v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (keys[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Block (j, tile): when sorted position j starts the run of an id v < V (the first of its equal keys), dtable[v, tile's
// columns] = sum of dy[order[i], ...] over the run, in token order (the sort is stable), summed in fp32 and rounded to
// TOut once; with kAdd (TOut f32: a gradient slot) added to the row instead. Every other block returns at once: a
// block per token rather than per vocabulary row (GPT-2: 16384 against 50304, most of which no token uses), and the
// run's end found by one binary search from its start. Rows no id uses are not written (the launcher zeroes the
// table first unless kAdd).
//   dy: (n, C), sorted_keys: (n), order: (n) token indices sorted by id (stable) -> dtable: (V, C)
template <class T, class TOut, int W, bool kAdd>
__global__ void embedding_backward_rows(const T* __restrict__ dy, const uint32_t* __restrict__ sorted_keys,
                                        const int32_t* __restrict__ order, TOut* __restrict__ dtable, int64_t n,
                                        int64_t V, int64_t C) {
  static_assert(!kAdd || std::is_same_v<TOut, float>, "adds into f32 only");
  const int64_t begin = blockIdx.x;
  const uint32_t v = sorted_keys[begin];
  if (v >= V || (begin > 0 && sorted_keys[begin - 1] == v)) return;  // an invalid id, or not a run's start (uniform)
  const int64_t end = begin + 1 + lower_bound(sorted_keys + begin + 1, n - begin - 1, v + 1);
  for (int64_t c = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * W; c < C;
       c += static_cast<int64_t>(gridDim.y) * blockDim.x * W) {
    float acc[W];
#pragma unroll
    for (int i = 0; i < W; ++i) acc[i] = 0.0f;
    for (int64_t j = begin; j < end; ++j) {
      const T* src = dy + static_cast<int64_t>(order[j]) * C + c;
      if constexpr (W > 1) {
        const Vec<T> g = dev::load_vec(src);
#pragma unroll
        for (int i = 0; i < W; ++i) acc[i] += dev::to_float(g.v[i]);
      } else {
        acc[0] += dev::to_float(*src);
      }
    }
    TOut* dst = dtable + static_cast<int64_t>(v) * C + c;
    if constexpr (!std::is_same_v<TOut, T>) {  // the fp32 sums into an f32 table
#pragma unroll
      for (int i = 0; i < W; ++i) dst[i] = (kAdd ? dst[i] : 0.0f) + acc[i];
    } else if constexpr (W > 1) {
      Vec<T> o;
#pragma unroll
      for (int i = 0; i < W; ++i) o.v[i] = dev::from_float<T>(acc[i]);
      dev::store_vec(dst, o);
    } else {
      *dst = dev::from_float<T>(acc[0]);
    }
  }
}

template <class T, class I>
void launch_forward(const Tensor& table, const Tensor& ids, const Tensor& y, cudaStream_t s) {
  const int64_t V = table.dim(0), C = table.dim(1), n = ids.numel();
  if (n == 0 || C == 0) return;
  const T* tp = static_cast<const T*>(table.raw_data());
  T* yp = static_cast<T*>(y.raw_data());
  const I* ip = static_cast<const I*>(ids.raw_data());
  constexpr int W = Vec<T>::kWidth;
  if (C % W == 0 && dev::aligned16(tp) && dev::aligned16(yp)) {
    embedding_forward<T, I, W><<<grid_1d(n * C / W), kBlock, 0, s>>>(tp, ip, yp, n, V, C);
  } else {
    embedding_forward<T, I, 1><<<grid_1d(n * C), kBlock, 0, s>>>(tp, ip, yp, n, V, C);
  }
  XF_CUDA_CHECK_LAUNCH("embedding_forward");
}

// table: (V, C), ids: (*) i32/i64 -> y: (*, C)
void embedding_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const cudaStream_t s = stream_of(ctx);
  XF_CUDA_DISPATCH_FLOAT(in[0].dtype(), "embedding", T, {
    XF_DISPATCH_INDEX(in[1].dtype(), "embedding", I, launch_forward<T, I>(in[0], in[1], out[0], s));
  });
}

// Columns per backward block: 128 threads (4 warps) x W; few enough threads that a block per token stays cheap for
// the (many) tokens that do not start a run, enough to keep a row's loads coalesced.
constexpr int kBackwardThreads = 128;

template <class T, class TOut, bool kAdd>
void launch_backward_rows(const Tensor& dy, const uint32_t* sorted_keys, const int32_t* order, const Tensor& dtable,
                          int64_t n, cudaStream_t s) {
  const int64_t V = dtable.dim(0), C = dtable.dim(1);
  const T* gp = static_cast<const T*>(dy.raw_data());
  TOut* tp = static_cast<TOut*>(dtable.raw_data());
  constexpr int VW = Vec<T>::kWidth;
  const bool vec = C % VW == 0 && dev::aligned16(gp) && dev::aligned16(tp);
  const int W = vec ? VW : 1;
  if (!kAdd) XF_CUDA_CHECK(cudaMemsetAsync(tp, 0, dtable.nbytes(), s));  // the rows no id uses
  // gridDim.y is at most 65535; a block loops over further column tiles.
  const int64_t tiles = std::min<int64_t>((C + int64_t{kBackwardThreads} * W - 1) / (int64_t{kBackwardThreads} * W), 65535);
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(tiles));
  if (vec)
    embedding_backward_rows<T, TOut, VW, kAdd><<<grid, kBackwardThreads, 0, s>>>(gp, sorted_keys, order, tp, n, V, C);
  else
    embedding_backward_rows<T, TOut, 1, kAdd><<<grid, kBackwardThreads, 0, s>>>(gp, sorted_keys, order, tp, n, V, C);
  XF_CUDA_CHECK_LAUNCH("embedding_backward_rows");
}

// Bits that hold every key in [0, V] (V itself marks an invalid id): fewer radix passes than 32 bits.
int key_bits(int64_t V) {
  int bits = 1;
  while (bits < 32 && (int64_t{1} << bits) <= V) ++bits;
  return bits;
}

size_t round_up_256(size_t b) { return (b + 255) / 256 * 256; }  // keeps each carved buffer 256-byte aligned

// dy: (*, C), ids: (*) -> dtable: (vocab, C) in dy's dtype, or f32 for a 16-bit dy (EmbeddingBackwardOp::stores_f32:
// stored, or with ctx.add_f32_outputs added to the rows the ids use)
void embedding_backward_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                               const std::vector<Tensor>& out) {
  const auto& op = static_cast<const EmbeddingBackwardOp&>(op_);
  CudaContext& cc = context_of(ctx);
  const cudaStream_t s = cc.stream();
  const Tensor &dy = in[0], &ids = in[1], &dt = out[0];
  const int64_t V = op.vocab, C = dt.dim(1), n = ids.numel();
  const bool f32_out = dt.dtype() != dy.dtype();
  XF_CHECK(!f32_out || (dt.dtype() == DType::f32 && (dy.dtype() == DType::bf16 || dy.dtype() == DType::f16)),
           "embedding_backward", "the table gradient ", dt.desc(), " must have dy's dtype (", dtype_name(dy.dtype()),
           "), or be f32 for a 16-bit dy");
  const bool add = f32_out && ctx.add_f32_outputs;
  if (V * C == 0 || (add && n == 0)) return;
  XF_CHECK(V < INT32_MAX && n <= INT32_MAX, "embedding_backward", "vocabulary ", V, " and ", n,
           " tokens must each fit 31 bits (the sort's keys and token indices)");
  if (n == 0) {
    XF_CUDA_CHECK(cudaMemsetAsync(dt.raw_data(), 0, dt.nbytes(), s));
    return;
  }
  const int nn = static_cast<int>(n), end_bit = key_bits(V);
  size_t sort_bytes = 0;
  XF_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr),
                                                static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                                static_cast<int32_t*>(nullptr), nn, 0, end_bit, s));
  const size_t n4 = round_up_256(static_cast<size_t>(n) * 4);
  // One scratch allocation: keys, sorted keys, token indices, sorted token indices, CUB's temporary storage.
  const std::shared_ptr<void> scratch = cc.allocate(4 * n4 + round_up_256(sort_bytes));
  char* base = static_cast<char*>(scratch.get());
  auto* keys = reinterpret_cast<uint32_t*>(base);
  auto* sorted_keys = reinterpret_cast<uint32_t*>(base + n4);
  auto* vals = reinterpret_cast<int32_t*>(base + 2 * n4);
  auto* order = reinterpret_cast<int32_t*>(base + 3 * n4);
  void* temp = base + 4 * n4;
  XF_DISPATCH_INDEX(ids.dtype(), "embedding_backward", I, {
    embedding_sort_keys<I><<<grid_1d(n), kBlock, 0, s>>>(static_cast<const I*>(ids.raw_data()), keys, vals, n, V);
    XF_CUDA_CHECK_LAUNCH("embedding_sort_keys");
  });
  XF_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, sort_bytes, keys, sorted_keys, vals, order, nn, 0, end_bit, s));
  XF_CUDA_DISPATCH_FLOAT(dy.dtype(), "embedding_backward", T, {
    if constexpr (std::is_same_v<T, float>) {
      launch_backward_rows<T, T, false>(dy, sorted_keys, order, dt, n, s);
    } else {
      if (!f32_out) launch_backward_rows<T, T, false>(dy, sorted_keys, order, dt, n, s);
      else if (add) launch_backward_rows<T, float, true>(dy, sorted_keys, order, dt, n, s);
      else launch_backward_rows<T, float, false>(dy, sorted_keys, order, dt, n, s);
    }
  });
  // `scratch` is returned to the pool when it goes out of scope; the pool's reuse is ordered on this stream.
}

}  // namespace

void register_embedding(KernelRegistry& r) {
  r.add("embedding", Device::Kind::cuda, embedding_kernel);
  r.add("embedding_backward", Device::Kind::cuda, embedding_backward_kernel);
}

}  // namespace xfr::cuda
