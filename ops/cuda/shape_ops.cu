// CUDA kernels of ops/shape_ops.h. All are byte copies, so they serve every dtype: kernels are templated on
// the size of the unit they move (1, 2, 4, 8 or 16 bytes), never on the element's float type.
//
// permute/transpose: the output's axes are simplified first (size-1 axes dropped, neighbours that are also
// neighbours in the input merged), as on the CPU. If the innermost output axis is the input's innermost,
// the copy is a gather of contiguous runs (16-byte units when runs and offsets allow). Otherwise the
// innermost axis moves and the copy goes through 32x32 shared-memory tiles, so reads and writes are both
// coalesced.
// slice, pad_slice, concat, split: one kernel over rows of bytes ("pieces": each output row is made of
// runs copied from some source row, or zeros), in the widest unit that every pointer, pitch and width allows.
#include <algorithm>
#include <vector>

#include "ops/cuda/common.cuh"
#include "ops/shape_ops.h"

namespace xfr::cuda {

namespace {

// The widest unit (16, 8, 4, 2 or 1 bytes) dividing every value in `v` (byte addresses, pitches, widths).
int common_unit(const std::vector<int64_t>& v) {
  for (int u = 16; u > 1; u >>= 1)
    if (std::all_of(v.begin(), v.end(), [u](int64_t x) { return x % u == 0; })) return u;
  return 1;
}
int64_t addr(const void* p) { return static_cast<int64_t>(reinterpret_cast<uintptr_t>(p)); }

// Runs the statements with U bound to the unsigned type of `unit` bytes (uint4 for 16).
#define XF_WITH_UNIT(unit, U, ...)                           \
  switch (unit) {                                            \
    case 16: { using U = uint4; __VA_ARGS__; break; }        \
    case 8: { using U = uint64_t; __VA_ARGS__; break; }      \
    case 4: { using U = uint32_t; __VA_ARGS__; break; }      \
    case 2: { using U = uint16_t; __VA_ARGS__; break; }      \
    default: { using U = uint8_t; __VA_ARGS__; break; }      \
  }

// ---- row pieces (slice, pad_slice, concat, split) -----------------------------------------------------

// Pieces per launch: 16 keeps the kernel's argument block under 1 KB (16 x 48 bytes) and the per-unit
// search over pieces short; concat/split of more inputs run several launches.
constexpr int kMaxPieces = 16;

// One run of each row: dst[r * dst_pitch + c] = src ? src[r * src_pitch + c] : 0, c < width. Bytes on the host,
// units in the kernel's arguments.
struct Piece {
  const char* src;  // null: zeros
  char* dst;
  int64_t src_pitch, dst_pitch, width;
};

struct PieceArgs {
  Piece p[kMaxPieces];
  int64_t start[kMaxPieces];  // column where each piece begins within the launch's row, in units
  int count;
  int64_t rows, row_width;  // row_width: the pieces' widths summed, in units
};

template <class U>
__global__ void copy_pieces(const PieceArgs a) {
  const int64_t total = a.rows * a.row_width;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < total;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = u / a.row_width;
    int64_t c = u - r * a.row_width;
    int k = 0;
    while (k + 1 < a.count && c >= a.start[k + 1]) ++k;
    c -= a.start[k];
    const Piece& p = a.p[k];
    U* d = reinterpret_cast<U*>(p.dst) + r * p.dst_pitch + c;
    *d = p.src ? reinterpret_cast<const U*>(p.src)[r * p.src_pitch + c] : U{};
  }
}

// Copies `rows` rows made of `pieces` (bytes), in launches of up to kMaxPieces pieces.
void run_pieces(std::vector<Piece> pieces, int64_t rows, cudaStream_t s) {
  pieces.erase(std::remove_if(pieces.begin(), pieces.end(), [](const Piece& p) { return p.width == 0; }), pieces.end());
  if (rows == 0) return;
  for (size_t first = 0; first < pieces.size(); first += kMaxPieces) {
    const size_t last = std::min(pieces.size(), first + kMaxPieces);
    std::vector<int64_t> vals;
    for (size_t i = first; i < last; ++i) {
      const Piece& p = pieces[i];
      vals.insert(vals.end(), {addr(p.dst), p.dst_pitch, p.width});
      if (p.src) vals.insert(vals.end(), {addr(p.src), p.src_pitch});
    }
    const int unit = common_unit(vals);
    PieceArgs a{};
    a.count = static_cast<int>(last - first);
    a.rows = rows;
    int64_t col = 0;
    for (size_t i = first; i < last; ++i) {
      const Piece& p = pieces[i];
      a.p[i - first] = Piece{p.src, p.dst, p.src_pitch / unit, p.dst_pitch / unit, p.width / unit};
      a.start[i - first] = col;
      col += p.width / unit;
    }
    a.row_width = col;
    XF_WITH_UNIT(unit, U, copy_pieces<U><<<grid_1d(rows * col), kBlock, 0, s>>>(a));
    XF_CUDA_CHECK_LAUNCH("copy_pieces");
  }
}

// Rows before `axis` and bytes per step along `axis` of a contiguous shape.
void row_geometry(const Shape& s, int ax, size_t es, int64_t& rows, int64_t& unit) {
  rows = 1;
  unit = static_cast<int64_t>(es);
  for (int d = 0; d < ax; ++d) rows *= s[static_cast<size_t>(d)];
  for (size_t d = static_cast<size_t>(ax) + 1; d < s.size(); ++d) unit *= s[d];
}

int norm_axis(int64_t axis, size_t rank) { return static_cast<int>(axis < 0 ? axis + static_cast<int64_t>(rank) : axis); }

// x: (..., n, ...) -> y: (..., stop - begin, ...)
void slice_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const auto& op = static_cast<const SliceOp&>(op_);
  int ax;
  int64_t begin, stop, rows, unit;
  op.resolve(in[0].shape(), ax, begin, stop);
  row_geometry(in[0].shape(), ax, dtype_size(in[0].dtype()), rows, unit);
  const int64_t in_row = unit * in[0].shape()[static_cast<size_t>(ax)], out_row = unit * (stop - begin);
  const char* src = static_cast<const char*>(in[0].raw_data()) + begin * unit;
  run_pieces({Piece{src, static_cast<char*>(out[0].raw_data()), in_row, out_row, out_row}}, rows, stream_of(ctx));
}

// g: (..., m, ...) -> y: (..., size, ...), zeros outside [start, start + m)
void pad_slice_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                      const std::vector<Tensor>& out) {
  const auto& op = static_cast<const PadSliceOp&>(op_);
  const int ax = norm_axis(op.axis, in[0].rank());
  int64_t rows, unit;
  row_geometry(in[0].shape(), ax, dtype_size(in[0].dtype()), rows, unit);
  const int64_t in_row = unit * in[0].shape()[static_cast<size_t>(ax)], out_row = unit * op.size;
  const int64_t d0 = unit * op.start, d1 = d0 + in_row;  // the data's bytes within an output row
  char* y = static_cast<char*>(out[0].raw_data());
  const char* g = static_cast<const char*>(in[0].raw_data());
  run_pieces({Piece{nullptr, y, 0, out_row, d0}, Piece{g, y + d0, in_row, out_row, in_row},
              Piece{nullptr, y + d1, 0, out_row, out_row - d1}},
             rows, stream_of(ctx));
}

// xs[k]: (..., n_k, ...) -> y: (..., sum n_k, ...)
void concat_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const auto& op = static_cast<const ConcatOp&>(op_);
  const int ax = norm_axis(op.axis, out[0].rank());
  int64_t rows, unit;
  row_geometry(out[0].shape(), ax, dtype_size(out[0].dtype()), rows, unit);
  const int64_t out_row = unit * out[0].shape()[static_cast<size_t>(ax)];
  char* y = static_cast<char*>(out[0].raw_data());
  std::vector<Piece> pieces;
  int64_t start = 0;
  for (const Tensor& x : in) {
    const int64_t w = unit * x.shape()[static_cast<size_t>(ax)];
    pieces.push_back(Piece{static_cast<const char*>(x.raw_data()), y + start, w, out_row, w});
    start += w;
  }
  run_pieces(std::move(pieces), rows, stream_of(ctx));
}

// x: (..., sum sizes, ...) -> ys[k]: (..., sizes[k], ...)
void split_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const auto& op = static_cast<const SplitOp&>(op_);
  const int ax = norm_axis(op.axis, in[0].rank());
  int64_t rows, unit;
  row_geometry(in[0].shape(), ax, dtype_size(in[0].dtype()), rows, unit);
  const int64_t in_row = unit * in[0].shape()[static_cast<size_t>(ax)];
  const char* x = static_cast<const char*>(in[0].raw_data());
  std::vector<Piece> pieces;
  int64_t offset = 0;
  for (size_t k = 0; k < out.size(); ++k) {
    const int64_t w = unit * op.sizes[k];
    pieces.push_back(Piece{x + offset, static_cast<char*>(out[k].raw_data()), in_row, w, w});
    offset += w;
  }
  run_pieces(std::move(pieces), rows, stream_of(ctx));
}

// ---- permute ------------------------------------------------------------------------------------------

// Axes after simplification: a rank-8 tensor stays within this whatever its permutation.
constexpr int kMaxAxes = 8;

// Output rows of `run` units gathered from the input: row r (row-major over `sizes`) starts at
// sum(index_d * strides[d]) units into x.
struct GatherArgs {
  int64_t sizes[kMaxAxes], strides[kMaxAxes];
  int rank;
  int64_t rows, run;
};

template <class U>
__global__ void permute_gather(const U* __restrict__ x, U* __restrict__ y, const GatherArgs a) {
  const int64_t total = a.rows * a.run;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < total;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t r = u / a.run;
    const int64_t c = u - r * a.run;
    int64_t off = c;
    for (int d = a.rank - 1; d >= 0; --d) {
      const int64_t i = r % a.sizes[d];
      r /= a.sizes[d];
      off += i * a.strides[d];
    }
    y[u] = x[off];
  }
}

// Tile edge of the transposing copy: 32 elements = one warp across, so a warp reads 32 consecutive input
// elements and writes 32 consecutive output elements. kTileRows = 8 rows per pass: a (32, 8) block of 256
// threads covers the tile in 4 passes.
constexpr int kTile = 32, kTileRows = 8;

// Planes of P x Q: out[ob + p * out_p + q] = x[ib + p + q * in_q]; planes indexed row-major over `sizes`
// with input strides `in_strides` and output strides `out_strides` (elements).
struct TileArgs {
  int64_t sizes[kMaxAxes], in_strides[kMaxAxes], out_strides[kMaxAxes];
  int rank;
  int64_t planes, P, Q, in_q, out_p, p_tiles, q_tiles;
};

template <class E>
__global__ void permute_tiled(const E* __restrict__ x, E* __restrict__ y, const TileArgs a) {
  __shared__ E tile[kTile][kTile + 1];  // +1: column reads of the tile hit 32 different banks
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tiles = a.planes * a.p_tiles * a.q_tiles;
  for (int64_t b = blockIdx.x; b < tiles; b += gridDim.x) {
    int64_t plane = b / (a.p_tiles * a.q_tiles);
    const int64_t rem = b - plane * a.p_tiles * a.q_tiles;
    const int64_t p0 = (rem / a.q_tiles) * kTile, q0 = (rem % a.q_tiles) * kTile;
    int64_t ib = 0, ob = 0;
    for (int d = a.rank - 1; d >= 0; --d) {
      const int64_t i = plane % a.sizes[d];
      plane /= a.sizes[d];
      ib += i * a.in_strides[d];
      ob += i * a.out_strides[d];
    }
    // Read: consecutive threads walk p, contiguous in the input.
    for (int i = ty; i < kTile; i += kTileRows) {
      const int64_t p = p0 + tx, q = q0 + i;
      if (p < a.P && q < a.Q) tile[i][tx] = x[ib + p + q * a.in_q];
    }
    __syncthreads();
    // Write: consecutive threads walk q, contiguous in the output.
    for (int i = ty; i < kTile; i += kTileRows) {
      const int64_t p = p0 + i, q = q0 + tx;
      if (p < a.P && q < a.Q) y[ob + p * a.out_p + q] = tile[tx][i];
    }
    __syncthreads();  // the tile is refilled by the next iteration
  }
}

// y = x permuted by `order` (normalised), materialised contiguously.
//   x: (*) contiguous -> y: (x.shape[order[i]] for each i)
void permute_copy(const Tensor& x, const std::vector<int>& order, const Tensor& y, cudaStream_t s) {
  const int64_t n = x.numel();
  if (n == 0) return;
  const int64_t es = static_cast<int64_t>(dtype_size(x.dtype()));
  const Shape xs = x.shape(), xst = contiguous_strides(xs);
  Shape sizes, strides;  // simplified output axes: size and input stride (elements)
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
  XF_CHECK(sizes.size() <= static_cast<size_t>(kMaxAxes), "permute", "more than ", kMaxAxes,
           " axes remain after merging neighbours of ", shape_str(xs));
  const void* src = x.raw_data();
  void* dst = y.raw_data();
  if (sizes.empty() || strides.back() == 1) {  // runs along the innermost axis
    const int64_t run_bytes = (sizes.empty() ? 1 : sizes.back()) * es;
    std::vector<int64_t> vals{addr(src), addr(dst), run_bytes};
    for (size_t d = 0; d + 1 < sizes.size(); ++d) vals.push_back(strides[d] * es);
    const int unit = common_unit(vals);
    GatherArgs a{};
    a.rank = sizes.empty() ? 0 : static_cast<int>(sizes.size()) - 1;
    for (int d = 0; d < a.rank; ++d) {
      a.sizes[d] = sizes[static_cast<size_t>(d)];
      a.strides[d] = strides[static_cast<size_t>(d)] * es / unit;
    }
    a.run = run_bytes / unit;
    a.rows = n * es / run_bytes;
    XF_WITH_UNIT(unit, U,
                 permute_gather<U><<<grid_1d(a.rows * a.run), kBlock, 0, s>>>(static_cast<const U*>(src),
                                                                              static_cast<U*>(dst), a));
    XF_CUDA_CHECK_LAUNCH("permute_gather");
    return;
  }
  // The innermost axis moves: j is the output axis that is x's innermost (stride 1; it exists because x's
  // innermost non-unit axis survives the merging with stride 1).
  const size_t r = sizes.size();
  size_t j = 0;
  while (strides[j] != 1) ++j;
  const Shape out_strides = contiguous_strides(sizes);
  TileArgs a{};
  a.P = sizes[j];
  a.Q = sizes[r - 1];
  a.in_q = strides[r - 1];
  a.out_p = out_strides[j];
  a.planes = 1;
  for (size_t d = 0; d + 1 < r; ++d) {
    if (d == j) continue;
    a.sizes[a.rank] = sizes[d];
    a.in_strides[a.rank] = strides[d];
    a.out_strides[a.rank] = out_strides[d];
    ++a.rank;
    a.planes *= sizes[d];
  }
  a.p_tiles = (a.P + kTile - 1) / kTile;
  a.q_tiles = (a.Q + kTile - 1) / kTile;
  // One block per tile up to 2^20 blocks (far more than the GPU holds at once); beyond that blocks loop.
  const int64_t tiles = a.planes * a.p_tiles * a.q_tiles;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(tiles, int64_t{1} << 20));
  const dim3 block(kTile, kTileRows);
  switch (es) {
    case 1: permute_tiled<uint8_t><<<grid, block, 0, s>>>(static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst), a); break;
    case 2: permute_tiled<uint16_t><<<grid, block, 0, s>>>(static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst), a); break;
    case 4: permute_tiled<uint32_t><<<grid, block, 0, s>>>(static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), a); break;
    case 8: permute_tiled<uint64_t><<<grid, block, 0, s>>>(static_cast<const uint64_t*>(src), static_cast<uint64_t*>(dst), a); break;
    default: throw Error("permute", str_cat("unsupported element size ", es));
  }
  XF_CUDA_CHECK_LAUNCH("permute_tiled");
}

// x: (*) -> y: x.shape permuted by op.order
void permute_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const auto& op = static_cast<const PermuteOp&>(op_);
  std::vector<int> order;
  for (int64_t a : op.order) order.push_back(norm_axis(a, in[0].rank()));
  permute_copy(in[0], order, out[0], stream_of(ctx));
}

// x: (*) -> y: x with axes a and b swapped
void transpose_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                      const std::vector<Tensor>& out) {
  const auto& op = static_cast<const TransposeOp&>(op_);
  const size_t r = in[0].rank();
  std::vector<int> order(r);
  for (size_t i = 0; i < r; ++i) order[i] = static_cast<int>(i);
  std::swap(order[static_cast<size_t>(norm_axis(op.a, r))], order[static_cast<size_t>(norm_axis(op.b, r))]);
  permute_copy(in[0], order, out[0], stream_of(ctx));
}

}  // namespace

void register_shape_ops(KernelRegistry& r) {
  r.add("transpose", Device::Kind::cuda, transpose_kernel);
  r.add("permute", Device::Kind::cuda, permute_kernel);
  r.add("slice", Device::Kind::cuda, slice_kernel);
  r.add("pad_slice", Device::Kind::cuda, pad_slice_kernel);
  r.add("concat", Device::Kind::cuda, concat_kernel);
  r.add("split", Device::Kind::cuda, split_kernel);
}

}  // namespace xfr::cuda
