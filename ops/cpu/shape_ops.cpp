// CPU kernels of ops/shape_ops.h. All are byte copies (any dtype).
//
// permute/transpose: the output's axes are simplified first (size-1 axes dropped, neighbours that are
// also neighbours in the input merged). If the innermost output axis is the input's innermost axis, the
// copy is a sequence of contiguous runs (memcpy): this is the attention case (B, T, H, D) <-> (B, H, T, D),
// runs of D elements. Otherwise the innermost axes are swapped, which is done in 32x32 tiles so both
// sides touch whole cache lines.
// slice, pad_slice, concat, split: rows of contiguous bytes (everything before the axis is a row index),
// split into tasks over rows and, for few wide rows, over byte ranges within a row.
#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/cpu/odometer.h"
#include "ops/cpu/parallel.h"
#include "ops/shape_ops.h"

namespace xfr::cpu {

namespace {

// Bytes one copy task should move: 128 KB, the elementwise grain of 32k f32, amortises a task's dispatch.
constexpr int64_t kCopyGrainBytes = int64_t{1} << 17;
// Tile edge of the transposing copy: a 32x32 buffer of up to 8-byte elements is 8 KB, within L1.
constexpr int64_t kTile = 32;

// Runs fn(row, begin, end) over every row in [0, rows) and byte range [begin, end) of [0, width), in tasks
// of about kCopyGrainBytes.
template <class F>
void for_row_chunks(const KernelContext& ctx, int64_t rows, int64_t width, F fn) {
  if (rows <= 0 || width <= 0) return;
  const int64_t pieces = std::max<int64_t>(1, width / kCopyGrainBytes);  // per row: only rows wider than a grain split
  const int64_t piece = (width + pieces - 1) / pieces;
  parallel_for(ctx, rows * pieces, std::max<int64_t>(1, kCopyGrainBytes / piece), [&](int64_t s, int64_t e) {
    for (int64_t t = s; t < e; ++t) {
      const int64_t row = t / pieces, p = t % pieces;
      const int64_t b0 = p * piece, b1 = std::min(width, b0 + piece);
      fn(row, b0, b1);
    }
  });
}

// out[o] = x[offset of o], where the output's axes have sizes `sizes` and input strides `in_strides` (in
// elements), with the innermost being a swap: in_strides.back() != 1 and in_strides[j] == 1.
template <class E>
void transpose_tiles(const KernelContext& ctx, const E* x, E* y, const Shape& sizes, const Shape& in_strides, size_t j) {
  const size_t n = sizes.size();
  const Shape out_strides = contiguous_strides(sizes);
  const int64_t P = sizes[j], Q = sizes[n - 1];
  const int64_t in_q = in_strides[n - 1], out_p = out_strides[j];
  // The remaining axes index independent P x Q planes.
  Shape bs, bin, bout;
  for (size_t d = 0; d + 1 < n; ++d)
    if (d != j) {
      bs.push_back(sizes[d]);
      bin.push_back(in_strides[d]);
      bout.push_back(out_strides[d]);
    }
  const int64_t planes = numel_of(bs), pblocks = (P + kTile - 1) / kTile;
  parallel_for(ctx, planes * pblocks, std::max<int64_t>(1, kCopyGrainBytes / static_cast<int64_t>(sizeof(E)) / (kTile * Q)),
               [&](int64_t s, int64_t e) {
                 for (int64_t t = s; t < e; ++t) {
                   const int64_t m = t / pblocks, p0 = (t % pblocks) * kTile, p1 = std::min(P, p0 + kTile);
                   int64_t ib = 0, ob = 0, rem = m;
                   for (size_t d = bs.size(); d-- > 0;) {
                     const int64_t i = rem % bs[d];
                     rem /= bs[d];
                     ib += i * bin[d];
                     ob += i * bout[d];
                   }
                   E buf[kTile * kTile];  // the tile in input order: buf[q][p]
                   for (int64_t q0 = 0; q0 < Q; q0 += kTile) {
                     const int64_t q1 = std::min(Q, q0 + kTile), w = p1 - p0;
                     // Read: one contiguous run of p per q; write: one contiguous run of q per p. Going
                     // through an L1 buffer keeps both sides in whole cache lines and avoids the cache-set
                     // conflicts of walking power-of-two strides on one side.
                     for (int64_t q = q0; q < q1; ++q) std::memcpy(buf + (q - q0) * kTile, x + ib + p0 + q * in_q, static_cast<size_t>(w) * sizeof(E));
                     for (int64_t p = p0; p < p1; ++p) {
                       E* dst = y + ob + p * out_p;
                       for (int64_t q = q0; q < q1; ++q) dst[q] = buf[(q - q0) * kTile + (p - p0)];
                     }
                   }
                 }
               });
}

// y = x permuted by `order` (normalised), materialised contiguously.
//   x: (*)  ->  y: (x.shape[order[i]] for each i)
void permute_copy(const KernelContext& ctx, const Tensor& x, const std::vector<int>& order, const Tensor& y) {
  const int64_t n = x.numel();
  if (n == 0) return;
  const size_t es = dtype_size(x.dtype());
  const Shape xs = x.shape(), xst = contiguous_strides(xs);
  // Simplified output axes: (size, input stride).
  Shape sizes, strides;
  for (int ax : order) {
    const int64_t sz = xs[static_cast<size_t>(ax)], st = xst[static_cast<size_t>(ax)];
    if (sz == 1) continue;
    if (!sizes.empty() && strides.back() == st * sz) {  // contiguous with the previous output axis in x too
      sizes.back() *= sz;
      strides.back() = st;
    } else {
      sizes.push_back(sz);
      strides.push_back(st);
    }
  }
  const char* src = static_cast<const char*>(x.raw_data());
  char* dst = static_cast<char*>(y.raw_data());
  if (sizes.empty() || strides.back() == 1) {  // runs of the innermost axis
    const int64_t run = sizes.empty() ? 1 : sizes.back();
    const Shape os(sizes.begin(), sizes.empty() ? sizes.end() : sizes.end() - 1);
    const Shape ost(strides.begin(), strides.empty() ? strides.end() : strides.end() - 1);
    const size_t run_bytes = static_cast<size_t>(run) * es;
    parallel_for(ctx, n / run, std::max<int64_t>(1, kCopyGrainBytes / static_cast<int64_t>(run_bytes)),
                 [&](int64_t s, int64_t e) {
                   Odometer od(os, ost, s);
                   for (int64_t r = s; r < e; ++r, od.next())
                     std::memcpy(dst + static_cast<size_t>(r) * run_bytes, src + static_cast<size_t>(od.off) * es, run_bytes);
                 });
    return;
  }
  size_t j = 0;
  while (strides[j] != 1) ++j;  // exists: x's innermost non-unit axis has stride 1
  switch (es) {
    case 1: transpose_tiles(ctx, reinterpret_cast<const uint8_t*>(src), reinterpret_cast<uint8_t*>(dst), sizes, strides, j); break;
    case 2: transpose_tiles(ctx, reinterpret_cast<const uint16_t*>(src), reinterpret_cast<uint16_t*>(dst), sizes, strides, j); break;
    case 4: transpose_tiles(ctx, reinterpret_cast<const uint32_t*>(src), reinterpret_cast<uint32_t*>(dst), sizes, strides, j); break;
    case 8: transpose_tiles(ctx, reinterpret_cast<const uint64_t*>(src), reinterpret_cast<uint64_t*>(dst), sizes, strides, j); break;
    default: throw Error("permute", str_cat("unsupported element size ", es));
  }
}

void permute_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const auto& op = static_cast<const PermuteOp&>(op_);
  const int64_t r = static_cast<int64_t>(in[0].rank());
  std::vector<int> order;
  for (int64_t a : op.order) order.push_back(static_cast<int>(a < 0 ? a + r : a));
  permute_copy(ctx, in[0], order, out[0]);
}

void transpose_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                      const std::vector<Tensor>& out) {
  const auto& op = static_cast<const TransposeOp&>(op_);
  const int64_t r = static_cast<int64_t>(in[0].rank());
  std::vector<int> order(static_cast<size_t>(r));
  for (int i = 0; i < static_cast<int>(r); ++i) order[static_cast<size_t>(i)] = i;
  std::swap(order[static_cast<size_t>(op.a < 0 ? op.a + r : op.a)], order[static_cast<size_t>(op.b < 0 ? op.b + r : op.b)]);
  permute_copy(ctx, in[0], order, out[0]);
}

// Rows before `axis` and bytes per unit of `axis` for a contiguous shape.
inline void row_geometry(const Shape& s, int ax, size_t es, int64_t& rows, int64_t& unit) {
  rows = 1;
  unit = static_cast<int64_t>(es);
  for (int d = 0; d < ax; ++d) rows *= s[static_cast<size_t>(d)];
  for (size_t d = static_cast<size_t>(ax) + 1; d < s.size(); ++d) unit *= s[d];
}

// x: (..., n, ...) -> y: (..., stop - begin, ...)
void slice_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const auto& op = static_cast<const SliceOp&>(op_);
  int ax;
  int64_t begin, stop, rows, unit;
  op.resolve(in[0].shape(), ax, begin, stop);
  row_geometry(in[0].shape(), ax, dtype_size(in[0].dtype()), rows, unit);
  const int64_t in_row = unit * in[0].shape()[static_cast<size_t>(ax)], out_row = unit * (stop - begin);
  const char* src = static_cast<const char*>(in[0].raw_data()) + begin * unit;
  char* dst = static_cast<char*>(out[0].raw_data());
  for_row_chunks(ctx, rows, out_row, [&](int64_t r, int64_t b0, int64_t b1) {
    std::memcpy(dst + r * out_row + b0, src + r * in_row + b0, static_cast<size_t>(b1 - b0));
  });
}

// g: (..., m, ...) -> y: (..., size, ...), zeros outside [start, start + m)
void pad_slice_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                      const std::vector<Tensor>& out) {
  const auto& op = static_cast<const PadSliceOp&>(op_);
  const int64_t r = static_cast<int64_t>(in[0].rank());
  const int ax = static_cast<int>(op.axis < 0 ? op.axis + r : op.axis);
  int64_t rows, unit;
  row_geometry(in[0].shape(), ax, dtype_size(in[0].dtype()), rows, unit);
  const int64_t in_row = unit * in[0].shape()[static_cast<size_t>(ax)], out_row = unit * op.size;
  const int64_t d0 = unit * op.start, d1 = d0 + in_row;  // the data's bytes within an output row
  const char* src = static_cast<const char*>(in[0].raw_data());
  char* dst = static_cast<char*>(out[0].raw_data());
  for_row_chunks(ctx, rows, out_row, [&](int64_t row, int64_t b0, int64_t b1) {
    char* o = dst + row * out_row;
    const int64_t c0 = std::clamp(d0, b0, b1), c1 = std::clamp(d1, b0, b1);
    std::memset(o + b0, 0, static_cast<size_t>(c0 - b0));
    if (c1 > c0) std::memcpy(o + c0, src + row * in_row + (c0 - d0), static_cast<size_t>(c1 - c0));
    std::memset(o + c1, 0, static_cast<size_t>(b1 - c1));
  });
}

// xs[k]: (..., n_k, ...) -> y: (..., sum n_k, ...): one pass over the output's rows.
void concat_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const auto& op = static_cast<const ConcatOp&>(op_);
  const int64_t r = static_cast<int64_t>(out[0].rank());
  const int ax = static_cast<int>(op.axis < 0 ? op.axis + r : op.axis);
  int64_t rows, unit;
  row_geometry(out[0].shape(), ax, dtype_size(out[0].dtype()), rows, unit);
  std::vector<int64_t> start(in.size() + 1, 0);  // byte offset of each input within an output row
  for (size_t k = 0; k < in.size(); ++k) start[k + 1] = start[k] + unit * in[k].shape()[static_cast<size_t>(ax)];
  const int64_t out_row = start.back();
  char* dst = static_cast<char*>(out[0].raw_data());
  for_row_chunks(ctx, rows, out_row, [&](int64_t row, int64_t b0, int64_t b1) {
    for (size_t k = 0; k < in.size(); ++k) {
      const int64_t c0 = std::max(b0, start[k]), c1 = std::min(b1, start[k + 1]);
      if (c1 <= c0) continue;
      const int64_t w = start[k + 1] - start[k];
      const char* src = static_cast<const char*>(in[k].raw_data()) + row * w + (c0 - start[k]);
      std::memcpy(dst + row * out_row + c0, src, static_cast<size_t>(c1 - c0));
    }
  });
}

// x: (..., sum sizes, ...) -> ys[k]: (..., sizes[k], ...)
void split_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const auto& op = static_cast<const SplitOp&>(op_);
  const int64_t r = static_cast<int64_t>(in[0].rank());
  const int ax = static_cast<int>(op.axis < 0 ? op.axis + r : op.axis);
  int64_t rows, unit;
  row_geometry(in[0].shape(), ax, dtype_size(in[0].dtype()), rows, unit);
  const int64_t in_row = unit * in[0].shape()[static_cast<size_t>(ax)];
  int64_t offset = 0;
  for (size_t k = 0; k < out.size(); ++k) {
    const int64_t w = unit * op.sizes[k];
    const char* src = static_cast<const char*>(in[0].raw_data()) + offset;
    char* dst = static_cast<char*>(out[k].raw_data());
    for_row_chunks(ctx, rows, w, [&](int64_t row, int64_t b0, int64_t b1) {
      std::memcpy(dst + row * w + b0, src + row * in_row + b0, static_cast<size_t>(b1 - b0));
    });
    offset += w;
  }
}

}  // namespace

void register_shape_ops(KernelRegistry& r) {
  r.add("transpose", Device::Kind::cpu, transpose_kernel);
  r.add("permute", Device::Kind::cpu, permute_kernel);
  r.add("slice", Device::Kind::cpu, slice_kernel);
  r.add("pad_slice", Device::Kind::cpu, pad_slice_kernel);
  r.add("concat", Device::Kind::cpu, concat_kernel);
  r.add("split", Device::Kind::cpu, split_kernel);
}

}  // namespace xfr::cpu
