// CUDA kernels of ops/norm.h (layernorm, layernorm_backward, rmsnorm, rmsnorm_backward).
//
// Forward: a row group per row (8 or 16 lanes of a warp, a warp, or a block of up to 512 threads: the fewest
// that hold the row in at most 4 packs of 16 bytes each; plan_forward), the row's slice held in registers, so x is
// read from memory once: mean, then the variance from the registers (two passes, no E[x^2] - E[x]^2
// cancellation), then y. Statistics in fp32, y rounded once. Rows longer than that (over 2048 packs: 16384
// 16-bit elements, or C not a multiple of the vector width beyond 2048) take the streaming kernel: a block per
// row that re-reads x (from L2) for each pass.
// Backward: row groups compute dx per row from two row sums, sum(g) and sum(g * xhat), and accumulate
// dy * xhat and dy for their columns over all the rows they visit (row group g takes rows g, g + G, g + 2G,
// ...). Rows that fit kBwdGroupMaxPacks packs a lane in at most a warp take the forward's groups (8 to 32
// lanes, several per 128-thread block, reductions by shuffles, each row's loads staged in shared memory by
// cp.async a row ahead) and add the block's groups' sums in a fixed order at the end; longer rows take a block per
// row group (plan_rows). The sums live in registers either way. Each block (or group) writes its partial
// dgamma/dbeta row (fp32) into the scratch memory, and a
// column reduction (ops/cuda/rowwise.cuh, fixed order) sums them: no atomics, the same bits every run. G
// depends only on the sizes and the device.
#include "ops/cuda/norm_launch.h"
#include "ops/cuda/rowwise.cuh"
#include "ops/norm.h"

namespace xfr::cuda {

namespace {

// The forward's row groups: the fewest threads (a power of two, at least 8) that hold the row in at most
// kFwdMaxPacks packs of 16 bytes each, as the LayerNorm lab (tools/lab/layernorm.cu, H200) found fastest: 16
// lanes x 3 packs for a 384-wide bf16 row (91 % of copy bandwidth, against 69 % for the warp x 2 packs, half of
// them idle, this replaced), a warp x 3 for 768 (92 % against 74 %), 128 threads x 4 for 4096 (88 % against 59 %
// for 64 x 8). More packs per thread cost registers (each 16-bit value and its fp32 form are held across the
// row's two reductions), fewer resident warps and less in flight. Groups up to a warp share 128-thread blocks
// (four warps: enough rows per block to keep a launch's block count moderate).
constexpr int kFwdMaxPacks = 4;
constexpr int kGroupMinLanes = 8;
constexpr int kGroupBlockThreads = 128;
struct GroupPlan {
  int lanes = 32;          // threads per row
  int rows_per_block = 1;  // kGroupBlockThreads / lanes for groups up to a warp, else 1
  int iters = 0;           // packs per thread, 1..kFwdMaxPacks; 0: too long (the streaming kernel)
  dim3 block() const { return dim3(static_cast<unsigned>(lanes), static_cast<unsigned>(rows_per_block)); }
  unsigned grid(int64_t rows) const {
    return static_cast<unsigned>(std::clamp<int64_t>(ceil_div(rows, rows_per_block), 1, kMaxGrid));
  }
};
// The fewest lanes (a power of two, at least kGroupMinLanes, at most max_lanes) that hold a row of `cols` in at most
// max_packs packs each; iters 0 when none do.
inline GroupPlan plan_groups(int64_t cols, int width, int max_packs, int max_lanes) {
  const int64_t packs = ceil_div(cols, width);
  GroupPlan p;
  if (packs > int64_t(max_lanes) * max_packs) return p;  // iters 0
  const int64_t lanes = std::max<int64_t>(kGroupMinLanes, pow2_ceil(ceil_div(packs, max_packs)));
  if (lanes > max_lanes) return p;  // iters 0
  p.lanes = static_cast<int>(lanes);
  p.rows_per_block = lanes <= 32 ? kGroupBlockThreads / p.lanes : 1;
  p.iters = static_cast<int>(ceil_div(packs, lanes));
  return p;
}
inline GroupPlan plan_forward(int64_t cols, int width) { return plan_groups(cols, width, kFwdMaxPacks, kMaxRowThreads); }
// Calls f(std::integral_constant<int, N>{}) for N = packs per thread, 1..kMax (kMax <= 4): rowwise.cuh's with_count.
template <int kMax, class F>
void with_packs(int n, F&& f) {
  static_assert(kMax >= 1 && kMax <= 4, "packs per thread: 1 to 4");
  with_count<kMax, 1, 2, 3, 4>(n, f);
}
// Packs a backward thread holds: x and dy plus two fp32 accumulators per element (dgamma, dbeta), at most 16
// elements per thread: 32 accumulator registers and 8 (16-bit) or 16 (f32) for the packs. 32 elements of
// 16-bit data (4 packs) spill at the 128 registers of __launch_bounds__(512).
template <int W>
constexpr int bwd_max_iters() {
  return W == 1 ? 8 : 16 / W;
}
// Least rows a backward row group visits, so its partial row (C fp32 per parameter) adds at most 1/8 of
// the data it summarises to the memory traffic. (The grouped kernel writes a partial row per block: the bound
// is then on the block's rows.)
constexpr int64_t kBwdMinRowsPerGroup = 8;
// Packs a lane of the backward's grouped kernel holds (rows up to 32 x 3 packs: GPT-2's 768-wide bf16 row on a
// warp, the encoder's 384 on 16 lanes): two fp32 sums per element (dgamma, dbeta: 48 registers at 3 packs of 8)
// and gamma's packs, held across all the group's rows; x, dy and dadd wait in shared memory (kBwdStages rows).
// kBwdGroupMinBlocks 4: at most 128 registers (ptxas takes 121 at 3 bf16 packs, 2026-11-30, CUDA 13.0; at the
// 102 that 5 blocks allow it spills 72 bytes), 4 blocks of 128 threads (16 warps, each with its next row's
// copies in flight) resident on an SM of 64K registers; their 4 x 37 KB of stages fit too.
constexpr int kBwdGroupMaxPacks = 3;
constexpr int kBwdGroupMinBlocks = 4;
// With the dx sum (a third fp32 sum per element, 24 more registers at 3 bf16 packs): 3 blocks, at most 168 registers.
constexpr int kBwdGroupMinBlocksDxSum = 3;
constexpr int kBwdStages = 2;

// ---- forward ------------------------------------------------------------------------------------------------

// a + b per element in fp32, rounded to T once: the add op's result, so a fused residual norm sees the same
// input as an add followed by the norm.
template <class T, int W>
__device__ __forceinline__ dev::Pack<T, W> add_rounded(const dev::Pack<T, W>& a, const dev::Pack<T, W>& b) {
  dev::Pack<T, W> r;
#pragma unroll
  for (int e = 0; e < W; ++e) r.v[e] = dev::from_float<T>(dev::to_float(a.v[e]) + dev::to_float(b.v[e]));
  return r;
}

// The residual's row for x's row `row` (a broadcast residual of residual_rows rows repeats them): row itself when the
// residual has x's rows, else row % residual_rows, in 32 bits when it fits (a 64-bit remainder is a long software
// sequence; computed on every row, it cost the forward about 1.7 us a GPT-2 call, 2026-12-01).
__device__ __forceinline__ int64_t residual_row(int64_t row, int64_t rows, int64_t residual_rows) {
  if (residual_rows == rows) return row;
  if (rows <= INT32_MAX) return static_cast<uint32_t>(row) % static_cast<uint32_t>(residual_rows);
  return row % residual_rows;
}

// The ones column after a row of y (KernelContext::ones_column): a one and seven zeros.
template <class T>
__device__ __forceinline__ void write_ones_tail(T* tail) {
#pragma unroll
  for (int e = 0; e < kOnesColumnPad; ++e) tail[e] = dev::from_float<T>(e == 0 ? 1.f : 0.f);
}

// A row group of blockDim.x threads (8 or 16 lanes of a warp, a warp, or a block of up to 512) per row,
// blockDim.y rows per block; each thread holds kIters packs of the row (kIters = 1..4, not only powers of two:
// 16 lanes x 3 packs is the MiniLM encoder's 384-wide bf16 row with no idle lane). The row loop's condition is
// uniform over the block (narrow groups share warps and their shuffles need every lane): a row past the end is
// masked (zeros in, nothing out), not skipped. x and residual are read once, through the read-only path.
template <class T, int W, int kIters, bool kRms>
__global__ void __launch_bounds__(kMaxRowThreads)
    norm_forward_kernel(const T* __restrict__ x,         // (rows, C)
                        const T* __restrict__ residual,  // (residual_rows, C) or null: the norm's input is x + residual
                        int64_t residual_rows,           // row r of x adds row r % residual_rows (broadcast)
                        T* __restrict__ sum,             // (rows, C) or null: x + residual written out
                        const T* __restrict__ gamma,     // (C) or null
                        const T* __restrict__ beta,      // (C) or null; null for rmsnorm
                        T* __restrict__ y,               // (rows, C), rows ldy apart
                        float* __restrict__ mean,        // (rows); null for rmsnorm
                        float* __restrict__ rstd,        // (rows)
                        int64_t rows, int64_t C, int64_t ldy, bool ones_tail, float eps) {
  const int64_t tid = threadIdx.x, tpr = blockDim.x;
  const float inv_c = 1.f / static_cast<float>(C);
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < rows; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t row = base + threadIdx.y;
    const bool valid = row < rows;
    const T* xr = x + row * C;
    const T* rr = residual ? residual + residual_row(row, rows, residual_rows) * C : nullptr;
    dev::Pack<T, W> xv[kIters];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t c = (tid + k * tpr) * W;
      if (valid && c < C) {
        xv[k] = dev::load_pack_stream<T, W>(xr + c);
        if (residual) {
          xv[k] = add_rounded(xv[k], dev::load_pack_stream<T, W>(rr + c));
          if (sum) dev::store_pack<T, W>(sum + row * C + c, xv[k]);
        }
#pragma unroll
        for (int e = 0; e < W; ++e) s += kRms ? 0.f : dev::to_float(xv[k].v[e]);
      }
    }
    const float m = kRms ? 0.f : dev::row_sum(s) * inv_c;
    float q = 0.f;
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t c = (tid + k * tpr) * W;
      if (valid && c < C) {
#pragma unroll
        for (int e = 0; e < W; ++e) {
          const float d = dev::to_float(xv[k].v[e]) - m;
          q += d * d;
        }
      }
    }
    const float rs = 1.f / sqrtf(dev::row_sum(q) * inv_c + eps);
    if (valid && tid == 0) {
      if (mean) mean[row] = m;
      rstd[row] = rs;
    }
    T* yr = y + row * ldy;
    if (ones_tail && valid && tid == 0) write_ones_tail(yr + C);
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t c = (tid + k * tpr) * W;
      if (valid && c < C) {
        dev::Pack<T, W> g, b, out;
        if (gamma) g = dev::load_pack<T, W>(gamma + c);
        if (beta) b = dev::load_pack<T, W>(beta + c);
#pragma unroll
        for (int e = 0; e < W; ++e) {
          float v = (dev::to_float(xv[k].v[e]) - m) * rs;
          if (gamma) v *= dev::to_float(g.v[e]);
          if (beta) v += dev::to_float(b.v[e]);
          out.v[e] = dev::from_float<T>(v);
        }
        dev::store_pack<T, W>(yr + c, out);
      }
    }
  }
}

// Rows too long for registers: a block per row, three passes over x (mean, variance, y).
template <class T, int W, bool kRms>
__global__ void __launch_bounds__(kMaxRowThreads)
    norm_forward_streaming_kernel(const T* __restrict__ x,         // (rows, C)
                                  const T* __restrict__ residual,  // (residual_rows, C) or null
                                  int64_t residual_rows,           // row r of x adds row r % residual_rows
                                  T* __restrict__ sum,             // (rows, C) or null
                                  const T* __restrict__ gamma,     // (C) or null
                                  const T* __restrict__ beta,      // (C) or null
                                  T* __restrict__ y,               // (rows, C), rows ldy apart
                                  float* __restrict__ mean,        // (rows) or null
                                  float* __restrict__ rstd,        // (rows)
                                  int64_t rows, int64_t C, int64_t ldy, bool ones_tail, float eps) {
  const int64_t tid = threadIdx.x, step = int64_t(blockDim.x) * W;
  const float inv_c = 1.f / static_cast<float>(C);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * C;
    const T* rr = residual ? residual + residual_row(row, rows, residual_rows) * C : nullptr;
    // The norm's input at column c: x, or x + residual rounded to T (what the add op would have stored).
    auto input = [&](int64_t c) {
      const dev::Pack<T, W> v = dev::load_pack<T, W>(xr + c);
      return rr ? add_rounded(v, dev::load_pack<T, W>(rr + c)) : v;
    };
    float s = 0.f;
    if (!kRms)
      for (int64_t c = tid * W; c < C; c += step) {
        const dev::Pack<T, W> v = input(c);
#pragma unroll
        for (int e = 0; e < W; ++e) s += dev::to_float(v.v[e]);
      }
    const float m = kRms ? 0.f : dev::block_sum(s) * inv_c;
    float q = 0.f;
    for (int64_t c = tid * W; c < C; c += step) {
      const dev::Pack<T, W> v = input(c);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        const float d = dev::to_float(v.v[e]) - m;
        q += d * d;
      }
    }
    const float rs = 1.f / sqrtf(dev::block_sum(q) * inv_c + eps);
    if (tid == 0) {
      if (mean) mean[row] = m;
      rstd[row] = rs;
    }
    T* yr = y + row * ldy;
    if (ones_tail && tid == 0) write_ones_tail(yr + C);
    for (int64_t c = tid * W; c < C; c += step) {
      const dev::Pack<T, W> v = input(c);
      if (sum) dev::store_pack<T, W>(sum + row * C + c, v);
      dev::Pack<T, W> g, b, out;
      if (gamma) g = dev::load_pack<T, W>(gamma + c);
      if (beta) b = dev::load_pack<T, W>(beta + c);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        float o = (dev::to_float(v.v[e]) - m) * rs;
        if (gamma) o *= dev::to_float(g.v[e]);
        if (beta) o += dev::to_float(b.v[e]);
        out.v[e] = dev::from_float<T>(o);
      }
      dev::store_pack<T, W>(yr + c, out);
    }
  }
}

// x: (rows, C); y: (rows, C) with rows ldy >= C apart (and the ones column after each with ones_tail: ldy >= C + 8);
// residual: (residual_rows, C) or null, row r of x adding row r % residual_rows; sum: (rows, C) or null;
// gamma, beta: (C) or null; mean: (rows) or null (rmsnorm); rstd: (rows)
template <class T, bool kRms>
void norm_forward(const T* x, const T* residual, int64_t residual_rows, T* sum, const T* gamma, const T* beta, T* y,
                  float* mean, float* rstd, int64_t rows, int64_t C, int64_t ldy, bool ones_tail, double eps,
                  cudaStream_t stream) {
  if (rows == 0) return;
  constexpr int V = vec_width<T>();
  const float feps = static_cast<float>(eps);
  auto run = [&](auto width) {
    constexpr int W = decltype(width)::value;
    const GroupPlan plan = plan_forward(C, W);
    if (plan.iters == 0) {
      const unsigned grid = static_cast<unsigned>(std::min(rows, kMaxGrid));
      norm_forward_streaming_kernel<T, W, kRms><<<grid, kMaxRowThreads, 0, stream>>>(
          x, residual, residual_rows, sum, gamma, beta, y, mean, rstd, rows, C, ldy, ones_tail, feps);
      XF_CUDA_CHECK_LAUNCH("norm_forward_streaming");
      return;
    }
    with_packs<kFwdMaxPacks>(plan.iters, [&](auto iters) {
      norm_forward_kernel<T, W, decltype(iters)::value, kRms><<<plan.grid(rows), plan.block(), 0, stream>>>(
          x, residual, residual_rows, sum, gamma, beta, y, mean, rstd, rows, C, ldy, ones_tail, feps);
      XF_CUDA_CHECK_LAUNCH("norm_forward");
    });
  };
  if (C % V == 0 && ldy % V == 0 && all_aligned16({x, residual, sum, gamma, beta, y}))
    run(std::integral_constant<int, V>{});
  else
    run(std::integral_constant<int, 1>{});
}

// ---- backward -------------------------------------------------------------------------------------------------

// A norm backward's fp32 partial rows of its column sums, (groups, C) each (a row per row group, or per block), null
// where not wanted: dy * xhat (dgamma), dy (dbeta) and dx (the dx sum, layernorm_backward's want_dx_sum).
struct NormPartials {
  float* gamma = nullptr;
  float* beta = nullptr;
  float* dx = nullptr;
  __host__ __device__ bool any() const { return gamma || beta || dx; }
};

// One pack's share of a row's backward (xhat = (x - m) rs; g = dy * gamma, or dy without gamma): adds g and
// g * xhat into the row sums sg, sgx, and dy * xhat and dy into the parameter sums ag, ab.
template <class T, int W>
__device__ __forceinline__ void add_backward_sums(const dev::Pack<T, W>& xv, const dev::Pack<T, W>& dv,
                                                  const dev::Pack<T, W>& gp, bool has_gamma, float m, float rs,
                                                  float& sg, float& sgx, float (&ag)[W], float (&ab)[W]) {
#pragma unroll
  for (int e = 0; e < W; ++e) {
    const float xh = (dev::to_float(xv.v[e]) - m) * rs, d = dev::to_float(dv.v[e]);
    const float g = has_gamma ? d * dev::to_float(gp.v[e]) : d;
    sg += g;
    sgx += g * xh;
    ag[e] += d * xh;
    ab[e] += d;
  }
}
// One pack of dx from the row's a = mean(g) (0 for rmsnorm) and b = mean(g * xhat): rs (g - a - xhat b), plus dadd's
// pack when has_dadd, rounded to T once. With dx_sum, its fp32 values (before the rounding) are added into ad.
template <class T, int W>
__device__ __forceinline__ dev::Pack<T, W> backward_dx_pack(const dev::Pack<T, W>& xv, const dev::Pack<T, W>& dv,
                                                            const dev::Pack<T, W>& gp, bool has_gamma,
                                                            const dev::Pack<T, W>& ap, bool has_dadd, float m,
                                                            float rs, float a, float b, bool dx_sum, float (&ad)[W]) {
  dev::Pack<T, W> out;
#pragma unroll
  for (int e = 0; e < W; ++e) {
    const float xh = (dev::to_float(xv.v[e]) - m) * rs, d = dev::to_float(dv.v[e]);
    const float g = has_gamma ? d * dev::to_float(gp.v[e]) : d;
    const float v = rs * (g - a - xh * b), dxv = has_dadd ? v + dev::to_float(ap.v[e]) : v;
    if (dx_sum) ad[e] += dxv;
    out.v[e] = dev::from_float<T>(dxv);
  }
  return out;
}

// dx = rs * (g - mean(g) - xhat * mean(g * xhat)) (layernorm; rmsnorm drops mean(g)), g = dy * gamma.
// parts.gamma[group] += dy * xhat, parts.beta[group] += dy and parts.dx[group] += dx over the group's rows.
template <class T, int W, int kIters, bool kRms>
__global__ void __launch_bounds__(kMaxRowThreads)
    norm_backward_kernel(const T* __restrict__ x,         // (rows, C)
                         const float* __restrict__ mean,  // (rows); null for rmsnorm
                         const float* __restrict__ rstd,  // (rows)
                         const T* __restrict__ gamma,     // (C) or null
                         const T* __restrict__ dy,        // (rows, C)
                         const T* __restrict__ dadd,      // (rows, C) or null: added to dx
                         T* __restrict__ dx,              // (rows, C)
                         NormPartials parts,              // (groups, C) each
                         int64_t rows, int64_t C) {
  const int64_t tid = threadIdx.x, tpr = blockDim.x;
  const int64_t group = int64_t(blockIdx.x) * blockDim.y + threadIdx.y, groups = int64_t(gridDim.x) * blockDim.y;
  const float inv_c = 1.f / static_cast<float>(C);
  float ag[kIters][W], ab[kIters][W], ad[kIters][W];
#pragma unroll
  for (int k = 0; k < kIters; ++k)
#pragma unroll
    for (int e = 0; e < W; ++e) ag[k][e] = ab[k][e] = ad[k][e] = 0.f;
  for (int64_t row = group; row < rows; row += groups) {
    const float m = kRms ? 0.f : mean[row], rs = rstd[row];
    // Every load of the row (dadd's too) is issued before the row's reduction: one memory round trip per row.
    dev::Pack<T, W> xv[kIters], dv[kIters], gp[kIters], ap[kIters];
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t c = (tid + k * tpr) * W;
      if (c < C) {
        xv[k] = dev::load_pack<T, W>(x + row * C + c);
        dv[k] = dev::load_pack<T, W>(dy + row * C + c);
        if (gamma) gp[k] = dev::load_pack<T, W>(gamma + c);
        if (dadd) ap[k] = dev::load_pack<T, W>(dadd + row * C + c);
      }
    }
    float sg = 0.f, sgx = 0.f;  // sum(g), sum(g * xhat)
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t c = (tid + k * tpr) * W;
      if (c < C) add_backward_sums(xv[k], dv[k], gp[k], gamma != nullptr, m, rs, sg, sgx, ag[k], ab[k]);
    }
    const float2 sums = dev::row_sum2(sg, sgx);
    const float a = kRms ? 0.f : sums.x * inv_c, b = sums.y * inv_c;
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t c = (tid + k * tpr) * W;
      if (c < C)
        dev::store_pack<T, W>(dx + row * C + c, backward_dx_pack(xv[k], dv[k], gp[k], gamma != nullptr, ap[k],
                                                                dadd != nullptr, m, rs, a, b, parts.dx, ad[k]));
    }
  }
  if (!parts.any()) return;
#pragma unroll
  for (int k = 0; k < kIters; ++k) {
    const int64_t c = (tid + k * tpr) * W;
    if (c < C)
#pragma unroll
      for (int e = 0; e < W; ++e) {
        if (parts.gamma) parts.gamma[group * C + c + e] = ag[k][e];
        if (parts.beta) parts.beta[group * C + c + e] = ab[k][e];
        if (parts.dx) parts.dx[group * C + c + e] = ad[k][e];
      }
  }
}

// Rows of up to a warp x kBwdGroupMaxPacks: row groups of blockDim.x lanes (8 to 32), blockDim.y of them per
// block, as the forward's. The row loop's condition is uniform over the block (narrow groups share warps, and
// their shuffles need every lane): a row past the end is masked, not skipped.
// The loads are staged: each thread copies its packs of the group's next row (x, dy, dadd) into shared memory
// with cp.async while it computes the current one, so a row's latency is hidden by the thread itself, not only
// by other warps (the register-held version, every load of a row issued before its reductions, ran GPT-2's
// 768-wide rows at 2.2 TB/s, 58 % of a copy: 20 warps an SM, each with one row's loads in flight at best). A
// thread reads back only the slots it wrote, so cp.async.wait_group alone orders them (no barrier). gamma is
// read once, into registers; dy * xhat and dy accumulate in registers over the group's rows. At the end the
// block's groups add their sums in shared memory in a fixed order (group 0 first) and the block writes one
// partial row per parameter.
// dx = rs * (g - mean(g) - xhat * mean(g * xhat)) (layernorm; rmsnorm drops mean(g)), g = dy * gamma.
// kDxSum: parts.dx is wanted (a third sum per element: 24 more registers at 3 bf16 packs, so 3 blocks an SM).
template <class T, int W, int kIters, bool kRms, bool kDxSum>
__global__ void __launch_bounds__(kGroupBlockThreads, kDxSum ? kBwdGroupMinBlocksDxSum : kBwdGroupMinBlocks)
    norm_backward_grouped_kernel(const T* __restrict__ x,         // (rows, C)
                                 const float* __restrict__ mean,  // (rows); null for rmsnorm
                                 const float* __restrict__ rstd,  // (rows)
                                 const T* __restrict__ gamma,     // (C) or null
                                 const T* __restrict__ dy,        // (rows, C)
                                 const T* __restrict__ dadd,      // (rows, C) or null: added to dx
                                 T* __restrict__ dx,              // (rows, C)
                                 NormPartials parts,              // (gridDim.x, C) each; parts.dx set iff kDxSum
                                 int64_t rows, int64_t C) {
  // [stage][x, dy, dadd][pack][thread]: consecutive threads, consecutive 16 bytes (no bank conflicts). Two
  // stages: 36 KB at 3 packs of 16 bytes.
  __shared__ dev::Pack<T, W> staged[kBwdStages][3][kIters][kGroupBlockThreads];
  const int64_t tid = threadIdx.x, tpr = blockDim.x;
  const int flat = threadIdx.y * blockDim.x + threadIdx.x;
  const float inv_c = 1.f / static_cast<float>(C);
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  dev::Pack<T, W> gp[kIters] = {};
#pragma unroll
  for (int k = 0; k < kIters; ++k) {
    const int64_t c = (tid + k * tpr) * W;
    if (gamma && c < C) gp[k] = dev::load_pack<T, W>(gamma + c);
  }
  // Starts the copies of the row at base + threadIdx.y (none past the end) into stage s, one commit group per row,
  // and loads its statistics into next_m / next_rs (read an iteration later, so their latency is hidden too: loaded
  // at the row's own iteration they cost a DRAM round trip a row, 2026-11-30).
  float next_m = 0.f, next_rs = 0.f;
  auto issue = [&](int64_t base, int s) {
    const int64_t row = base + threadIdx.y;
    if (row < rows) {
      if (!kRms) next_m = mean[row];
      next_rs = rstd[row];
#pragma unroll
      for (int k = 0; k < kIters; ++k) {
        const int64_t c = (tid + k * tpr) * W;
        if (c < C) {
          dev::stage_pack<T, W>(&staged[s][0][k][flat], x + row * C + c);
          dev::stage_pack<T, W>(&staged[s][1][k][flat], dy + row * C + c);
          if (dadd) dev::stage_pack<T, W>(&staged[s][2][k][flat], dadd + row * C + c);
        }
      }
    }
    dev::cp_async_commit();
  };
  float ag[kIters][W], ab[kIters][W], ad[kIters][W];
#pragma unroll
  for (int k = 0; k < kIters; ++k)
#pragma unroll
    for (int e = 0; e < W; ++e) ag[k][e] = ab[k][e] = ad[k][e] = 0.f;
  int s = 0;
  issue(int64_t(blockIdx.x) * blockDim.y, 0);
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < rows; base += step, s ^= 1) {
    const int64_t row = base + threadIdx.y;
    const bool valid = row < rows;
    const float m = next_m, rs = next_rs;  // this row's (issued an iteration ago; unused when !valid)
    issue(base + step, s ^ 1);  // the next row's copies run while this row is computed
    dev::cp_async_wait<1>();    // this row's copies (this thread's own) have landed
    asm volatile("" ::: "memory");
    float sg = 0.f, sgx = 0.f;  // sum(g), sum(g * xhat)
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t c = (tid + k * tpr) * W;
      if (valid && c < C) {
        const dev::Pack<T, W> xv = staged[s][0][k][flat], dv = staged[s][1][k][flat];  // one access a pack
        add_backward_sums(xv, dv, gp[k], gamma != nullptr, m, rs, sg, sgx, ag[k], ab[k]);
      }
    }
    const float sums_g = dev::segment_sum(sg), sums_gx = dev::segment_sum(sgx);  // groups of at most a warp
    const float a = kRms ? 0.f : sums_g * inv_c, b = sums_gx * inv_c;
    // Read the packs again from shared memory rather than hold their fp32 forms across the reductions.
    asm volatile("" ::: "memory");
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t c = (tid + k * tpr) * W;
      if (valid && c < C) {
        const dev::Pack<T, W> xv = staged[s][0][k][flat], dv = staged[s][1][k][flat];  // one access a pack
        dev::Pack<T, W> ap;
        if (dadd) ap = staged[s][2][k][flat];
        dev::store_pack<T, W>(dx + row * C + c, backward_dx_pack(xv, dv, gp[k], gamma != nullptr, ap,
                                                                dadd != nullptr, m, rs, a, b, kDxSum, ad[k]));
      }
    }
  }
  dev::cp_async_wait<0>();  // the last (empty) group
  if (!parts.any()) return;
  // The block's partial rows: every group's sums in shared memory (group y at y * C, reusing the stages), then
  // each column added over the groups in order by the threads of the block.
  constexpr int kSums = kDxSum ? 3 : 2;
  static_assert(sizeof(staged) >= kSums * sizeof(float) * kGroupBlockThreads * kIters * W, "room for the sums");
  float* all_gamma = reinterpret_cast<float*>(&staged[0][0][0][0]);
  float* all_beta = all_gamma + kGroupBlockThreads * kIters * W;
  float* all_dx = all_beta + kGroupBlockThreads * kIters * W;
  __syncthreads();  // every thread is past its last read of the stages
#pragma unroll
  for (int k = 0; k < kIters; ++k) {
    const int64_t c = (tid + k * tpr) * W;
    if (c < C)
#pragma unroll
      for (int e = 0; e < W; ++e) {
        all_gamma[threadIdx.y * C + c + e] = ag[k][e];
        all_beta[threadIdx.y * C + c + e] = ab[k][e];
        if (kDxSum) all_dx[threadIdx.y * C + c + e] = ad[k][e];
      }
  }
  __syncthreads();
  const int64_t groups = blockDim.y;
  for (int64_t c = flat; c < C; c += kGroupBlockThreads) {
    float sgam = 0.f, sbet = 0.f, sdx = 0.f;
    for (int64_t y = 0; y < groups; ++y) {
      sgam += all_gamma[y * C + c];
      sbet += all_beta[y * C + c];
      if (kDxSum) sdx += all_dx[y * C + c];
    }
    if (parts.gamma) parts.gamma[int64_t(blockIdx.x) * C + c] = sgam;
    if (parts.beta) parts.beta[int64_t(blockIdx.x) * C + c] = sbet;
    if (kDxSum) parts.dx[int64_t(blockIdx.x) * C + c] = sdx;
  }
}

// Rows too long for registers: a block per row group, two passes over the row (the sums, then dx), the
// group's partial rows accumulated in place in the scratch memory (each column owned by one thread).
template <class T, int W, bool kRms>
__global__ void __launch_bounds__(kMaxRowThreads)
    norm_backward_streaming_kernel(const T* __restrict__ x,         // (rows, C)
                                   const float* __restrict__ mean,  // (rows) or null
                                   const float* __restrict__ rstd,  // (rows)
                                   const T* __restrict__ gamma,     // (C) or null
                                   const T* __restrict__ dy,        // (rows, C)
                                   const T* __restrict__ dadd,      // (rows, C) or null: added to dx
                                   T* __restrict__ dx,              // (rows, C)
                                   NormPartials parts,              // (gridDim.x, C) each
                                   int64_t rows, int64_t C) {
  const int64_t tid = threadIdx.x, step = int64_t(blockDim.x) * W;
  const float inv_c = 1.f / static_cast<float>(C);
  float* pg = parts.gamma ? parts.gamma + int64_t(blockIdx.x) * C : nullptr;
  float* pb = parts.beta ? parts.beta + int64_t(blockIdx.x) * C : nullptr;
  float* pd = parts.dx ? parts.dx + int64_t(blockIdx.x) * C : nullptr;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const bool first = row == blockIdx.x;
    const float m = kRms ? 0.f : mean[row], rs = rstd[row];
    const T* xr = x + row * C;
    const T* dr = dy + row * C;
    float sg = 0.f, sgx = 0.f;
    for (int64_t c = tid * W; c < C; c += step) {
      const dev::Pack<T, W> xv = dev::load_pack<T, W>(xr + c), dv = dev::load_pack<T, W>(dr + c);
      dev::Pack<T, W> gp;
      if (gamma) gp = dev::load_pack<T, W>(gamma + c);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        const float xh = (dev::to_float(xv.v[e]) - m) * rs, d = dev::to_float(dv.v[e]);
        const float g = gamma ? d * dev::to_float(gp.v[e]) : d;
        sg += g;
        sgx += g * xh;
      }
    }
    const float2 sums = dev::block_sum2(sg, sgx);
    const float a = kRms ? 0.f : sums.x * inv_c, b = sums.y * inv_c;
    for (int64_t c = tid * W; c < C; c += step) {
      const dev::Pack<T, W> xv = dev::load_pack<T, W>(xr + c), dv = dev::load_pack<T, W>(dr + c);
      dev::Pack<T, W> gp, ap, out;
      if (gamma) gp = dev::load_pack<T, W>(gamma + c);
      if (dadd) ap = dev::load_pack<T, W>(dadd + row * C + c);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        const float xh = (dev::to_float(xv.v[e]) - m) * rs, d = dev::to_float(dv.v[e]);
        const float g = gamma ? d * dev::to_float(gp.v[e]) : d;
        const float v = rs * (g - a - xh * b), dxv = dadd ? v + dev::to_float(ap.v[e]) : v;
        out.v[e] = dev::from_float<T>(dxv);
        if (pg) pg[c + e] = (first ? 0.f : pg[c + e]) + d * xh;
        if (pb) pb[c + e] = (first ? 0.f : pb[c + e]) + d;
        if (pd) pd[c + e] = (first ? 0.f : pd[c + e]) + dxv;
      }
      dev::store_pack<T, W>(dx + row * C + c, out);
    }
  }
}

// x, dy, dx: (rows, C); mean: (rows) or null (rmsnorm); rstd: (rows); gamma: (C) or null;
// dgamma, dbeta, dx_sum: (C) or null (not wanted)
template <class T, bool kRms>
void norm_backward(const T* x, const float* mean, const float* rstd, const T* gamma, const T* dy, const T* dadd, T* dx,
                   T* dgamma, T* dbeta, T* dx_sum, int64_t rows, int64_t C, Scratch scratch, cudaStream_t stream,
                   int64_t grid_blocks = 0) {
  const char* op = kRms ? "rmsnorm_backward" : "layernorm_backward";
  if (rows == 0) {  // sums over no rows
    for (T* sum : {dgamma, dbeta, dx_sum})
      if (sum) XF_CUDA_CHECK(cudaMemsetAsync(sum, 0, static_cast<size_t>(C) * sizeof(T), stream));
    return;
  }
  constexpr int V = vec_width<T>();
  // The wanted sums, in the order of their partial rows (one array, (nparts, partials, C)).
  T* sums[3];
  int nparts = 0;
  for (T* sum : {dgamma, dbeta, dx_sum})
    if (sum) sums[nparts++] = sum;
  auto run = [&](auto width) {
    constexpr int W = decltype(width)::value;
    // Sizes the grid for `kernel` (block `block`, rpb row groups a block, a partial row per group or, when
    // block_partials, per block), takes the partial rows, launches it, then sums the partial rows.
    auto launch = [&](auto kernel, dim3 block, int rpb, bool block_partials, const char* name) {
      const int partials_per_block = block_partials ? 1 : rpb;
      int64_t blocks = ceil_div(rows, rpb);
      NormPartials parts;
      float* part = nullptr;
      if (nparts > 0) {
        const int64_t rows_per_partial = block_partials ? kBwdMinRowsPerGroup : kBwdMinRowsPerGroup * rpb;
        blocks = std::min(blocks, ceil_div(rows, rows_per_partial));
        // No more row groups than stay resident: each group owns a fixed share of the rows, so a surplus would run
        // as a second wave, and would only add partial rows to reduce. (GPT-2's 768-wide rows had 1365 groups of 96
        // threads at 83 registers, where an H200 keeps 6 blocks on each of its 132 SMs, 792: 1.72 waves. One wave:
        // 42-43 us a call in ncu against 47-49, 2026-11-30.)
        blocks = std::min(blocks, resident_blocks(kernel, static_cast<int>(block.x * block.y)));
        // grid_blocks > 0: the grid, in place of the above (the LayerNorm backward lab's sweep of one wave of looping
        // blocks against more blocks, each with fewer rows and its own partial row).
        if (grid_blocks > 0) blocks = std::min(grid_blocks, ceil_div(rows, rpb));
        // Room for the partial rows (room() keeps 256 bytes for the alignment).
        const int64_t fit = scratch.room<float>() / (nparts * C * partials_per_block);
        blocks = std::max<int64_t>(1, std::min({blocks, fit, kMaxGrid}));
        const int64_t partials = blocks * partials_per_block;
        part = scratch.take<float>(nparts * partials * C, op);
        float* slice = part;
        if (dgamma) parts.gamma = std::exchange(slice, slice + partials * C);
        if (dbeta) parts.beta = std::exchange(slice, slice + partials * C);
        if (dx_sum) parts.dx = slice;
      }
      blocks = std::min(blocks, kMaxGrid);
      kernel<<<static_cast<unsigned>(blocks), block, 0, stream>>>(x, mean, rstd, gamma, dy, dadd, dx, parts, rows, C);
      XF_CUDA_CHECK_LAUNCH(name);
      // Every wanted sum from its partial rows: one launch with the context's counters.
      if (part) sum_columns_to<float, T>(part, sums, nparts, blocks * partials_per_block, C, scratch, stream);
    };
    // Rows that fit a warp x kBwdGroupMaxPacks: the grouped kernel. ncu on the H200 (2026-11-30) had GPT-2's 768-wide
    // rows on the block-per-row kernel (96 threads, a block reduction per row) latency-bound: 6 rows in flight per
    // SM, 42-43 us a call. The grouped kernel: ~37 us, plus ~11 for the partial rows' reductions (the LayerNorm
    // backward lab, tools/lab/norm_backward.cpp: 48.8 us a call, 30.9 without dgamma / dbeta).
    const GroupPlan grouped = plan_groups(C, W, kBwdGroupMaxPacks, 32);
    if (grouped.iters != 0) {
      with_packs<kBwdGroupMaxPacks>(grouped.iters, [&](auto iters) {
        constexpr int kIters = decltype(iters)::value;
        if constexpr (!kRms) {  // (rmsnorm_backward has no dx sum)
          if (dx_sum) {
            launch(norm_backward_grouped_kernel<T, W, kIters, kRms, true>, grouped.block(), grouped.rows_per_block,
                   true, "norm_backward_grouped (dx sum)");
            return;
          }
        }
        launch(norm_backward_grouped_kernel<T, W, kIters, kRms, false>, grouped.block(), grouped.rows_per_block, true,
               "norm_backward_grouped");
      });
      return;
    }
    // Longer rows: a block per row group. One pack per thread whenever the row fits in kMaxRowThreads threads:
    // fewer registers, so more resident threads and bytes in flight (ncu on the H200, 2026-11-30, found the two-pack
    // plan of GPT-2's 768-wide row, 64 threads at 127 registers and 25% occupancy, at 1.6 TB/s, 61 us a call, before
    // that row moved to the grouped kernel).
    constexpr int kMaxIters = bwd_max_iters<W>();
    const int max_iters = ceil_div(C, W) <= kMaxRowThreads ? 1 : kMaxIters;
    const RowPlan plan = plan_rows(C, W, max_iters);
    if (plan.iters == 0)
      launch(norm_backward_streaming_kernel<T, W, kRms>, dim3(kMaxRowThreads), 1, false, "norm_backward_streaming");
    else
      with_iters<kMaxIters>(plan.iters, [&](auto iters) {
        launch(norm_backward_kernel<T, W, decltype(iters)::value, kRms>, plan.block(), plan.rows_per_block, false,
               "norm_backward");
      });
  };
  if (C % V == 0 && all_aligned16({x, gamma, dy, dadd, dx}))
    run(std::integral_constant<int, V>{});
  else
    run(std::integral_constant<int, 1>{});
}

// ---- graph kernels ---------------------------------------------------------------------------------------------

// in: x (..., C), [residual (..., C), or a suffix of that shape: broadcast], [gamma (C)], [beta (C)];
// out: y (..., C), mean (rows) f32, rstd (rows) f32, [sum (..., C)]
void layernorm_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                      const std::vector<Tensor>& out) {
  const auto& op = static_cast<const LayerNormOp&>(op_);
  const int64_t C = in[0].shape().back(), rows = in[0].numel() / C;
  const void* residual = op.has_residual ? in[1].raw_data() : nullptr;
  const void* gamma = op.has_gamma ? in[static_cast<size_t>(op.gamma_index())].raw_data() : nullptr;
  const void* beta = op.has_beta ? in[static_cast<size_t>(op.beta_index())].raw_data() : nullptr;
  // y is packed, or with KernelContext::ones_column the (rows, C) view of rows at least C + 8 long.
  const int64_t ldy = out[0].shape().size() >= 2 ? out[0].row_stride() : C;
  XF_CHECK(ctx.ones_column ? ldy >= C + kOnesColumnPad : ldy == C, "layernorm", "y ", out[0].desc(),
           ctx.ones_column ? " is not the view of rows with the ones column" : " is not packed");
  launch_layernorm_forward(in[0].dtype(), in[0].raw_data(), residual, op.write_sum ? out[3].raw_data() : nullptr, gamma,
                           beta, out[0].raw_data(), out[1].data<float>(), out[2].data<float>(), rows, C, op.eps,
                           stream_of(ctx), ldy, ctx.ones_column, op.has_residual ? in[1].numel() / C : 0);
}

// in: x (..., C), mean (rows) f32, rstd (rows) f32, [gamma (C)], dy (..., C), [dadd (..., C)];
// out: dx (..., C), [dgamma (C)], [dbeta (C)], [dx_sum (C)]
void layernorm_backward_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                               const std::vector<Tensor>& out) {
  const auto& op = static_cast<const LayerNormBackwardOp&>(op_);
  const int64_t C = in[0].shape().back(), rows = in[0].numel() / C;
  const auto output = [&](int k) { return k < 0 ? nullptr : out[static_cast<size_t>(k)].raw_data(); };
  CudaContext& cc = context_of(ctx);
  launch_layernorm_backward(in[0].dtype(), in[0].raw_data(), in[1].data<float>(), in[2].data<float>(),
                            op.has_gamma ? in[3].raw_data() : nullptr, in[static_cast<size_t>(op.dy_index())].raw_data(),
                            op.has_dadd ? in.back().raw_data() : nullptr, out[0].raw_data(), output(op.dgamma_output()),
                            output(op.dbeta_output()), output(op.dx_sum_output()), rows, C, cc.workspace(),
                            cc.workspace_bytes(), cc.stream(), cc.launch_counters());
}

// in: x (..., C), [gamma (C)];  out: y (..., C), rstd (rows) f32
void rmsnorm_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                    const std::vector<Tensor>& out) {
  const auto& op = static_cast<const RMSNormOp&>(op_);
  const int64_t C = in[0].shape().back(), rows = in[0].numel() / C;
  launch_rmsnorm_forward(in[0].dtype(), in[0].raw_data(), op.has_gamma ? in[1].raw_data() : nullptr,
                         out[0].raw_data(), out[1].data<float>(), rows, C, op.eps, stream_of(ctx));
}

// in: x (..., C), rstd (rows) f32, [gamma (C)], dy (..., C);  out: dx (..., C), [dgamma (C)]
void rmsnorm_backward_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                             const std::vector<Tensor>& out) {
  const auto& op = static_cast<const RMSNormBackwardOp&>(op_);
  const int64_t C = in[0].shape().back(), rows = in[0].numel() / C;
  CudaContext& cc = context_of(ctx);
  launch_rmsnorm_backward(in[0].dtype(), in[0].raw_data(), in[1].data<float>(),
                          op.has_gamma ? in[2].raw_data() : nullptr, in.back().raw_data(), out[0].raw_data(),
                          op.want_dgamma ? out[1].raw_data() : nullptr, rows, C, cc.workspace(),
                          cc.workspace_bytes(), cc.stream(), cc.launch_counters());
}

}  // namespace

// ---- plain launchers (ops/cuda/norm_launch.h) --------------------------------------------------------------------

void launch_layernorm_forward(DType dtype, const void* x, const void* residual, void* sum, const void* gamma,
                              const void* beta, void* y, float* mean, float* rstd, int64_t rows, int64_t C, double eps,
                              CUstream_st* stream, int64_t ldy, bool ones_tail, int64_t residual_rows) {
  ldy = ldy == 0 ? C : ldy;
  residual_rows = residual_rows == 0 ? rows : residual_rows;
  XF_CHECK(!residual || (residual_rows > 0 && (rows == 0 || rows % residual_rows == 0)), "layernorm", "the residual's ",
           residual_rows, " rows do not divide x's ", rows);
  XF_CHECK(ldy >= C + (ones_tail ? kOnesColumnPad : 0), "layernorm", "y's rows are ", ldy, " apart, shorter than C = ",
           C, ones_tail ? " and the ones column" : "");
  XF_CUDA_DISPATCH_FLOAT(
      dtype, "layernorm", T,
      norm_forward<T, false>(static_cast<const T*>(x), static_cast<const T*>(residual), residual_rows,
                             static_cast<T*>(sum), static_cast<const T*>(gamma), static_cast<const T*>(beta),
                             static_cast<T*>(y), mean, rstd, rows, C, ldy, ones_tail, eps, stream));
}

void launch_layernorm_backward(DType dtype, const void* x, const float* mean, const float* rstd, const void* gamma,
                               const void* dy, const void* dadd, void* dx, void* dgamma, void* dbeta, void* dx_sum,
                               int64_t rows, int64_t C, void* workspace, size_t workspace_bytes, CUstream_st* stream,
                               LaunchCounters counters, int64_t grid_blocks) {
  XF_CUDA_DISPATCH_FLOAT(
      dtype, "layernorm_backward", T,
      norm_backward<T, false>(static_cast<const T*>(x), mean, rstd, static_cast<const T*>(gamma),
                              static_cast<const T*>(dy), static_cast<const T*>(dadd), static_cast<T*>(dx),
                              static_cast<T*>(dgamma), static_cast<T*>(dbeta), static_cast<T*>(dx_sum), rows, C,
                              Scratch{workspace, workspace_bytes, counters}, stream, grid_blocks));
}

void launch_rmsnorm_forward(DType dtype, const void* x, const void* gamma, void* y, float* rstd, int64_t rows,
                            int64_t C, double eps, CUstream_st* stream) {
  XF_CUDA_DISPATCH_FLOAT(
      dtype, "rmsnorm", T,
      norm_forward<T, true>(static_cast<const T*>(x), nullptr, rows, nullptr, static_cast<const T*>(gamma), nullptr,
                            static_cast<T*>(y), nullptr, rstd, rows, C, C, false, eps, stream));
}

void launch_rmsnorm_backward(DType dtype, const void* x, const float* rstd, const void* gamma, const void* dy,
                             void* dx, void* dgamma, int64_t rows, int64_t C, void* workspace,
                             size_t workspace_bytes, CUstream_st* stream, LaunchCounters counters) {
  XF_CUDA_DISPATCH_FLOAT(dtype, "rmsnorm_backward", T,
                         norm_backward<T, true>(static_cast<const T*>(x), nullptr, rstd, static_cast<const T*>(gamma),
                                                static_cast<const T*>(dy), nullptr, static_cast<T*>(dx),
                                                static_cast<T*>(dgamma), nullptr, nullptr, rows, C,
                                                Scratch{workspace, workspace_bytes, counters},
                                                stream));
}

void register_norm(KernelRegistry& r) {
  r.add("layernorm", Device::Kind::cuda, layernorm_kernel);
  r.add("layernorm_backward", Device::Kind::cuda, layernorm_backward_kernel);
  r.add("rmsnorm", Device::Kind::cuda, rmsnorm_kernel);
  r.add("rmsnorm_backward", Device::Kind::cuda, rmsnorm_backward_kernel);
}

}  // namespace xfr::cuda
