// CPU kernels of ops/reduce.h.
//
// The input is seen through its ReduceLayout as (outer, reduce, inner) or as a generic pattern.
//   inner == 1 (reducing the last axes): one contiguous row per output, summed with 8 double accumulators.
//   inner > 1 (reducing leading or middle axes): rows of `inner` contiguous columns are accumulated into a
//     block of per-column accumulators, so the inner loop runs over contiguous memory.
//   generic (kept and reduced axes interleaved): the same two schemes, with the reduced positions'
//     offsets enumerated once (innermost axis kept) or as contiguous runs (innermost axis reduced).
// Work is split over outputs (rows, column blocks); when there are too few of those to feed the pool, the
// reduced axis is also split into fixed chunks whose partial results are combined in chunk order. Every
// split is decided from the sizes alone, so results do not depend on the number of threads.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "ops/cpu/odometer.h"
#include "ops/cpu/parallel.h"
#include "ops/reduce.h"
#include "runtime/dispatch.h"

namespace xfr::cpu {

namespace {

// Columns per block when reducing over rows: 256 double accumulators are 2 KB, which stay in L1.
constexpr int64_t kColBlock = 256;
// Fewer independent outputs (rows or column blocks) than this and the reduced axis is split into chunks
// as well (a full reduction has a single output). 16 covers the thread counts of common CPUs.
constexpr int64_t kMinTasks = 16;
// Least rows (reduced items) in one chunk of a split reduced axis: 4k elements make a task worth its dispatch.
constexpr int64_t kMinChunk = 4096;
// Most chunks a reduced axis is split into; bounds the partial-result buffers.
constexpr int64_t kMaxChunks = 64;

// Sum of n contiguous values in double. Eight independent accumulators break the dependency chain
// so the loop vectorises and pipelines without reassociating one sum.
template <class T>
inline double row_sum(const T* p, int64_t n) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) a[j] += static_cast<double>(p[i + j]);
  double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  for (; i < n; ++i) s += static_cast<double>(p[i]);
  return s;
}

// Whether v replaces the running maximum `best`: greater, or the first NaN (NaN propagates, as in PyTorch).
template <class T>
inline bool takes_max(T v, T best) {
  return v > best || (v != v && best == best);
}

// The arg-max of n >= 1 contiguous values, first occurrence on ties, the first NaN if any. One scalar
// pass: the update branch is rarely taken, so it predicts well (the max is not on a transformer's hot path).
template <class T>
inline void row_argmax(const T* p, int64_t n, T& best, int64_t& at) {
  best = p[0];
  at = 0;
  if (best != best) return;
  for (int64_t i = 1; i < n; ++i) {
    const T v = p[i];
    if (takes_max(v, best)) {
      best = v;
      at = i;
      if (v != v) return;
    }
  }
}

// Column accumulation over rows r in [r0, r1), each row_at(r) pointing at w contiguous values:
// acc[c] = sum of row_at(r)[c]. Four rows per pass quarter the accumulator traffic.
template <class T, class RowAt>
inline void column_sum(RowAt row_at, int64_t r0, int64_t r1, int64_t w, double* acc) {
  std::fill(acc, acc + w, 0.0);
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const T *a = row_at(r), *b = row_at(r + 1), *c2 = row_at(r + 2), *d = row_at(r + 3);
    for (int64_t c = 0; c < w; ++c)
      acc[c] += (static_cast<double>(a[c]) + static_cast<double>(b[c])) +
                (static_cast<double>(c2[c]) + static_cast<double>(d[c]));
  }
  for (; r < r1; ++r) {
    const T* a = row_at(r);
    for (int64_t c = 0; c < w; ++c) acc[c] += static_cast<double>(a[c]);
  }
}

// Column arg-max over rows r in [r0, r1) (r1 > r0): best[c], at[c] (the row r, first on ties).
template <class T, class RowAt>
inline void column_argmax(RowAt row_at, int64_t r0, int64_t r1, int64_t w, T* best, int64_t* at) {
  const T* first = row_at(r0);
  for (int64_t c = 0; c < w; ++c) {
    best[c] = first[c];
    at[c] = r0;
  }
  for (int64_t r = r0 + 1; r < r1; ++r) {
    const T* row = row_at(r);
    for (int64_t c = 0; c < w; ++c)
      if (takes_max(row[c], best[c])) {
        best[c] = row[c];
        at[c] = r;
      }
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// (outer, reduce, inner) layouts.
//   x: (outer, reduce, inner)  ->  y: (outer, inner), idx (max only): (outer, inner)
template <class T>
void reduce_simple(ReduceKind kind, const KernelContext& ctx, const ReduceLayout& L, const T* x, T* y,
                   int64_t* idx) {
  const int64_t O = L.outer, R = L.reduce, K = L.inner;
  const int64_t col_blocks = K == 1 ? 1 : ceil_div(K, kColBlock);
  const int64_t independent = O * col_blocks;
  int64_t chunks = 1;
  if (independent < kMinTasks && R >= 2 * kMinChunk) chunks = std::min(kMaxChunks, R / kMinChunk);
  const bool is_max = kind == ReduceKind::max;
  const double inv_count = 1.0 / static_cast<double>(L.count);

  // Partial results per (chunk, output) when the reduced axis is split; otherwise outputs go straight to y.
  std::vector<double> psum;
  std::vector<T> pmax;
  std::vector<int64_t> parg;
  if (chunks > 1) {
    if (is_max) {
      pmax.resize(static_cast<size_t>(chunks * O * K));
      parg.resize(static_cast<size_t>(chunks * O * K));
    } else {
      psum.resize(static_cast<size_t>(chunks * O * K));
    }
  }
  // Writes one finished (or partial) result for output j of chunk ch.
  auto put_sum = [&](int64_t ch, int64_t j, double s) {
    if (chunks > 1) {
      psum[static_cast<size_t>(ch * O * K + j)] = s;
    } else {
      y[j] = static_cast<T>(kind == ReduceKind::mean ? s * inv_count : s);
    }
  };
  auto put_max = [&](int64_t ch, int64_t j, T v, int64_t at) {
    if (chunks > 1) {
      pmax[static_cast<size_t>(ch * O * K + j)] = v;
      parg[static_cast<size_t>(ch * O * K + j)] = at;
    } else {
      y[j] = v;
      idx[j] = at;
    }
  };

  const int64_t tasks = O * chunks * col_blocks;
  const int64_t per_task = ceil_div(R, chunks) * std::min(K, kColBlock);
  parallel_for(ctx, tasks, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(per_task, 1)),
               [&](int64_t s, int64_t e) {
                 double acc[kColBlock];
                 T best[kColBlock];
                 int64_t at[kColBlock];
                 for (int64_t t = s; t < e; ++t) {
                   const int64_t cb = t % col_blocks, ch = (t / col_blocks) % chunks, o = t / (col_blocks * chunks);
                   const int64_t r0 = R * ch / chunks, r1 = R * (ch + 1) / chunks;
                   if (K == 1) {
                     const T* row = x + o * R + r0;
                     if (is_max) {
                       T b;
                       int64_t a;
                       row_argmax(row, r1 - r0, b, a);
                       put_max(ch, o, b, a + r0);
                     } else {
                       put_sum(ch, o, row_sum(row, r1 - r0));
                     }
                     continue;
                   }
                   const int64_t c0 = cb * kColBlock, w = std::min(kColBlock, K - c0);
                   const T* base = x + o * R * K + c0;
                   auto row_at = [&](int64_t r) { return base + r * K; };
                   if (is_max) {
                     column_argmax<T>(row_at, r0, r1, w, best, at);
                     for (int64_t c = 0; c < w; ++c) put_max(ch, o * K + c0 + c, best[c], at[c]);
                   } else {
                     column_sum<T>(row_at, r0, r1, w, acc);
                     for (int64_t c = 0; c < w; ++c) put_sum(ch, o * K + c0 + c, acc[c]);
                   }
                 }
               });
  if (chunks == 1) return;
  // Combine the chunks in order (deterministic).
  const int64_t n = O * K;
  parallel_for(ctx, n, kElementwiseGrain / chunks, [&](int64_t s, int64_t e) {
    for (int64_t j = s; j < e; ++j) {
      if (is_max) {
        T b = pmax[static_cast<size_t>(j)];
        int64_t a = parg[static_cast<size_t>(j)];
        for (int64_t ch = 1; ch < chunks; ++ch) {
          const size_t k = static_cast<size_t>(ch * n + j);
          if (takes_max(pmax[k], b)) {
            b = pmax[k];
            a = parg[k];
          }
        }
        y[j] = b;
        idx[j] = a;
      } else {
        double sum = 0;
        for (int64_t ch = 0; ch < chunks; ++ch) sum += psum[static_cast<size_t>(ch * n + j)];
        y[j] = static_cast<T>(kind == ReduceKind::mean ? sum * inv_count : sum);
      }
    }
  });
}

// Offset of flat index i over `sizes` (row-major) with the given strides.
inline int64_t unravel_offset(int64_t i, const Shape& sizes, const Shape& strides) {
  int64_t off = 0;
  for (size_t d = sizes.size(); d-- > 0;) {
    off += (i % sizes[d]) * strides[d];
    i /= sizes[d];
  }
  return off;
}

// Any other pattern (kept and reduced groups interleaved).
//   x: (*)  ->  y: (kept groups), idx (max only): the same
template <class T>
void reduce_generic(ReduceKind kind, const KernelContext& ctx, const ReduceLayout& L, const T* x, T* y,
                    int64_t* idx, int64_t n_out) {
  const bool last_kept = L.kept_strides.back() == 1;
  const double inv_count = 1.0 / static_cast<double>(L.count);
  if (last_kept) {
    // The innermost group is kept: K contiguous outputs per outer index, and every reduced position
    // contributes a contiguous row of K, accumulated per column block as in the simple layout.
    const int64_t K = L.kept_sizes.back();
    const Shape os(L.kept_sizes.begin(), L.kept_sizes.end() - 1), ost(L.kept_strides.begin(), L.kept_strides.end() - 1);
    const int64_t col_blocks = ceil_div(K, kColBlock), outer = n_out / K;
    // Row offsets of the reduced positions, in order (count is at most the input's size / K).
    std::vector<int64_t> rows(static_cast<size_t>(L.count));
    Odometer od(L.red_sizes, L.red_strides, 0);
    for (auto& r : rows) {
      r = od.off;
      od.next();
    }
    parallel_for(ctx, outer * col_blocks,
                 std::max<int64_t>(1, kElementwiseGrain / (L.count * std::min(K, kColBlock))), [&](int64_t s, int64_t e) {
                   double acc[kColBlock];
                   T best[kColBlock];
                   int64_t at[kColBlock];
                   for (int64_t t = s; t < e; ++t) {
                     const int64_t o = t / col_blocks, c0 = (t % col_blocks) * kColBlock, w = std::min(kColBlock, K - c0);
                     const T* base = x + unravel_offset(o, os, ost) + c0;
                     auto row_at = [&](int64_t q) { return base + rows[static_cast<size_t>(q)]; };
                     if (kind == ReduceKind::max) {
                       column_argmax<T>(row_at, 0, L.count, w, best, at);
                       for (int64_t c = 0; c < w; ++c) {
                         y[o * K + c0 + c] = best[c];
                         idx[o * K + c0 + c] = at[c];
                       }
                     } else {
                       column_sum<T>(row_at, 0, L.count, w, acc);
                       for (int64_t c = 0; c < w; ++c)
                         y[o * K + c0 + c] = static_cast<T>(kind == ReduceKind::mean ? acc[c] * inv_count : acc[c]);
                     }
                   }
                 });
    return;
  }
  // The innermost group is reduced: each output reduces contiguous runs of it, one run per position of
  // the other reduced groups.
  const int64_t run = L.red_sizes.back();
  const Shape rs(L.red_sizes.begin(), L.red_sizes.end() - 1), rst(L.red_strides.begin(), L.red_strides.end() - 1);
  const int64_t runs = L.count / run;
  parallel_for(ctx, n_out, std::max<int64_t>(1, kElementwiseGrain / L.count), [&](int64_t s, int64_t e) {
    for (int64_t o = s; o < e; ++o) {
      const T* base = x + unravel_offset(o, L.kept_sizes, L.kept_strides);
      Odometer od(rs, rst, 0);
      if (kind == ReduceKind::max) {
        T b = base[0];
        int64_t a = 0;
        for (int64_t q = 0; q < runs; ++q, od.next()) {
          T rb;
          int64_t ra;
          row_argmax(base + od.off, run, rb, ra);
          if (q == 0 || takes_max(rb, b)) {
            b = rb;
            a = q * run + ra;
          }
        }
        y[o] = b;
        idx[o] = a;
      } else {
        double sum = 0;
        for (int64_t q = 0; q < runs; ++q, od.next()) sum += row_sum(base + od.off, run);
        y[o] = static_cast<T>(kind == ReduceKind::mean ? sum * inv_count : sum);
      }
    }
  });
}

void reduce_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                   const std::vector<Tensor>& out) {
  const auto& op = static_cast<const ReduceOp&>(op_);
  const ReduceLayout L = reduce_layout(op.axes, op.keepdim, in[0].shape(), op.kind);
  const int64_t n_out = out[0].numel();
  if (n_out == 0) return;
  XF_DISPATCH_FLOAT(in[0].dtype(), "reduce", T, {
    const T* x = in[0].data<T>();
    T* y = out[0].data<T>();
    int64_t* idx = op.kind == ReduceKind::max ? out[1].data<int64_t>() : nullptr;
    if (L.count == 0) {  // sums of empty slices: 0; their means: 0/0
      std::fill(y, y + n_out, op.kind == ReduceKind::mean ? std::numeric_limits<T>::quiet_NaN() : T(0));
    } else if (L.generic) {
      reduce_generic<T>(op.kind, ctx, L, x, y, idx, n_out);
    } else {
      reduce_simple<T>(op.kind, ctx, L, x, y, idx);
    }
  });
}

// dx = 0 except dx[slice o][argmax[o]] = dy[o].
//   dy: (out), argmax: (out) i64  ->  dx: (in_shape)
void reduce_max_backward_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                                const std::vector<Tensor>& out) {
  const auto& op = static_cast<const ReduceMaxBackwardOp&>(op_);
  const ReduceLayout L = reduce_layout(op.axes, op.keepdim, op.in_shape, ReduceKind::max);
  XF_DISPATCH_FLOAT(out[0].dtype(), "reduce_max_backward", T, {
    const T* dy = in[0].data<T>();
    const int64_t* arg = in[1].data<int64_t>();
    T* dx = out[0].data<T>();
    const int64_t nx = out[0].numel(), ny = in[0].numel();
    parallel_for(ctx, nx, kElementwiseGrain, [&](int64_t s, int64_t e) { std::fill(dx + s, dx + e, T(0)); });
    for (int64_t o = 0; o < ny; ++o)  // cheap validation first, so no write goes out of bounds
      XF_CHECK(arg[o] >= 0 && arg[o] < L.count, "reduce_max_backward", "argmax ", arg[o], " at position ", o,
               " is outside the reduced slice of ", L.count, " elements of ", shape_str(op.in_shape));
    const Shape red_sizes = L.generic ? L.red_sizes : Shape{L.reduce};
    const Shape red_strides = L.generic ? L.red_strides : Shape{L.inner};
    // Each output owns a distinct input element: no two tasks write the same place.
    parallel_for(ctx, ny, kElementwiseGrain, [&](int64_t s, int64_t e) {
      for (int64_t o = s; o < e; ++o) {
        const int64_t kept =
            L.generic ? unravel_offset(o, L.kept_sizes, L.kept_strides) : (o / L.inner) * L.reduce * L.inner + o % L.inner;
        dx[kept + unravel_offset(arg[o], red_sizes, red_strides)] = dy[o];
      }
    });
  });
}

}  // namespace

void register_reduce(KernelRegistry& r) {
  r.add("reduce", Device::Kind::cpu, reduce_kernel);
  r.add("reduce_max_backward", Device::Kind::cpu, reduce_max_backward_kernel);
}

}  // namespace xfr::cpu
