// CUDA kernel of ops/rotary.h. One block per (position s, group of rows at that position): the block first
// computes its position's hd/2 (cos, sin) pairs in double, rounded once to float (the CPU's table, computed
// in double and rounded to f32), into shared memory, then rotates the pairs (x[i], x[i + h]) of its rows in
// fp32, rounding once on store. Rows are vectors of 16 bytes when h allows, else scalars.
#include <cmath>

#include "ops/cuda/common.cuh"
#include "ops/cuda/device/vec.cuh"
#include "ops/rotary.h"

namespace xfr::cuda {

namespace {

using dev::Vec;

// Rows (of the (..., S) rows at one position) per block: 16 rows of hd elements amortise the block's
// h double-precision sincos over 16 * hd loads and stores, and still give S * Z / 16 blocks to spread.
constexpr int64_t kRowsPerBlock = 16;
constexpr int kRotaryThreads = 128;  // 4 warps: enough for h <= 128 pairs in one pass for the table

// x: (Zo, S, inner, 2h) -> y (the same), inner = 1 for (..., S, hd) and H for (..., S, H, hd). Z = Zo inner rows
// sit at each position, row z being (z / inner, s, z % inner); block (s, .) handles groups of kRowsPerBlock of them.
// W pairs per thread (W consecutive i), W = Vec<T>::kWidth on the aligned path.
template <class T, int W>
__global__ void rotary_rows(const T* __restrict__ x, T* __restrict__ y, int64_t Z, int64_t S, int64_t inner,
                            int64_t h, int64_t offset, float sign) {
  extern __shared__ float2 cs[];  // (h): (cos, sign * sin) of position s
  const int64_t s = blockIdx.x;
  const double t = static_cast<double>(s + offset);
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) {
    // inv_freq_i = base^(-2i / hd), hd = 2h, in double as the CPU.
    const double a = t * pow(kRotaryBase, -static_cast<double>(2 * i) / static_cast<double>(2 * h));
    double sn, c;
    sincos(a, &sn, &c);
    cs[i] = make_float2(static_cast<float>(c), sign * static_cast<float>(sn));
  }
  __syncthreads();
  const int64_t groups = h / W, zblocks = (Z + kRowsPerBlock - 1) / kRowsPerBlock;
  for (int64_t zb = blockIdx.y; zb < zblocks; zb += gridDim.y) {
    const int64_t z0 = zb * kRowsPerBlock, work = (min(Z, z0 + kRowsPerBlock) - z0) * groups;
    for (int64_t u = threadIdx.x; u < work; u += blockDim.x) {
      const int64_t z = z0 + u / groups, i0 = (u % groups) * W;
      const int64_t row = (((z / inner) * S + s) * inner + z % inner) * 2 * h;
      if constexpr (W > 1) {
        const Vec<T> a = dev::load_vec(x + row + i0), b = dev::load_vec(x + row + h + i0);
        Vec<T> ya, yb;
#pragma unroll
        for (int k = 0; k < W; ++k) {
          const float2 r = cs[i0 + k];
          const float av = dev::to_float(a.v[k]), bv = dev::to_float(b.v[k]);
          ya.v[k] = dev::from_float<T>(av * r.x - bv * r.y);
          yb.v[k] = dev::from_float<T>(bv * r.x + av * r.y);
        }
        dev::store_vec(y + row + i0, ya);
        dev::store_vec(y + row + h + i0, yb);
      } else {
        const float2 r = cs[i0];
        const float av = dev::to_float(x[row + i0]), bv = dev::to_float(x[row + h + i0]);
        y[row + i0] = dev::from_float<T>(av * r.x - bv * r.y);
        y[row + h + i0] = dev::from_float<T>(bv * r.x + av * r.y);
      }
    }
  }
}

template <class T>
void launch_rotary(const RotaryOp& op, const Tensor& xt, const Tensor& yt, cudaStream_t stream) {
  const RotaryDims dims = rotary_dims(xt.shape(), op.seq_axis);
  const int64_t hd = dims.hd, h = hd / 2, S = dims.S, inner = dims.inner;
  const int64_t Z = dims.Z * inner;  // rows per position
  if (xt.numel() == 0) return;
  XF_CHECK(S <= INT32_MAX, "rotary", "x ", shape_str(xt.shape()), " has more positions than a grid's x extent");
  const T* x = static_cast<const T*>(xt.raw_data());
  T* y = static_cast<T*>(yt.raw_data());
  // gridDim.y is at most 65535; blocks loop over further row groups.
  const dim3 grid(static_cast<unsigned>(S), static_cast<unsigned>(std::min<int64_t>((Z + kRowsPerBlock - 1) / kRowsPerBlock, 65535)));
  const size_t smem = static_cast<size_t>(h) * sizeof(float2);
  XF_CHECK(smem <= 48 * 1024, "rotary", "head dimension ", hd, " exceeds the 48 KB of shared memory for its table");
  const float sign = op.inverse ? -1.0f : 1.0f;
  constexpr int VW = Vec<T>::kWidth;
  if (h % VW == 0 && dev::aligned16(x) && dev::aligned16(y))
    rotary_rows<T, VW><<<grid, kRotaryThreads, smem, stream>>>(x, y, Z, S, inner, h, op.offset, sign);
  else
    rotary_rows<T, 1><<<grid, kRotaryThreads, smem, stream>>>(x, y, Z, S, inner, h, op.offset, sign);
  XF_CUDA_CHECK_LAUNCH("rotary_rows");
}

// x: (..., S, hd) -> y: (..., S, hd)
void rotary_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const auto& op = static_cast<const RotaryOp&>(op_);
  const cudaStream_t s = stream_of(ctx);
  XF_CUDA_DISPATCH_FLOAT(in[0].dtype(), "rotary", T, launch_rotary<T>(op, in[0], out[0], s));
}

}  // namespace

void register_rotary(KernelRegistry& r) { r.add("rotary", Device::Kind::cuda, rotary_kernel); }

}  // namespace xfr::cuda
