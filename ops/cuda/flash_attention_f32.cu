// f32 kernels of ops/flash_attention.h: a plain-FMA path with the algorithm of the tensor-core kernels (a warp per
// query row, lanes over keys for the scores and over head dims for the accumulators; dK/dV a warp per key row,
// lanes over queries; dbias a thread per bias element). Correct, not fast: training runs in bf16/f16. D <= 256:
// each lane holds dims lane + 32 c, c < 8. Masks: each row visits only the keys (queries) its band allows.
#include <cmath>
#include <cstdint>

#include "ops/cuda/common.cuh"
#include "ops/cuda/device/reduce.cuh"
#include "ops/cuda/flash_attention_params.cuh"

namespace xfr::cuda::fa {

namespace {

constexpr int kF32Warps = 8;
constexpr int kF32Chunks = 8;  // 256 / 32

unsigned f32_blocks(int64_t rows) { return static_cast<unsigned>((rows + kF32Warps - 1) / kF32Warps); }

// Query row `row` of lse's (B, H, Sq) or (H, Tq) rows: its (b, h), sequence and position i within it.
__device__ __forceinline__ void query_row(const Params& p, int64_t row, int& b, int& h, Seq& s, int& i) {
  if (!p.varlen) {
    const int64_t bh = row / p.Sq;
    b = static_cast<int>(bh / p.H);
    h = static_cast<int>(bh % p.H);
    s = seq_of(p, b);
    i = static_cast<int>(row % p.Sq);
    return;
  }
  h = static_cast<int>(row / p.Sq);
  const int t = static_cast<int>(row % p.Sq);  // packed position
  b = seq_of_row(p, p.cu_q, p.Sq, t);
  s = seq_of(p, b);
  i = t - s.q0;
}

// q: (B, H, Sq, D), k, v: (B, Hk, Sk, D) (logical; strides p.qs, p.ks), [bias] -> o, lse_out. A warp per query
// row: lanes take 32 keys at a time for the scores, then the head dims for O += p v. Dynamic shared memory:
// kF32Warps x D floats (the query rows).
__global__ void __launch_bounds__(256) fwd_f32_kernel(Params p) {
  extern __shared__ float sq_all[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kF32Warps + warp;
  if (row >= p.rows_lse()) return;
  int b = 0, h = 0, i = 0;
  Seq s{};
  query_row(p, row, b, h, s, i);
  const int D = p.D;
  const int64_t kld = p.ks.seq, qrow = p.q_head(b, h) + (s.q0 + i) * p.qs.seq;
  const int64_t orow_off = p.o_head(b, h) + (s.q0 + i) * p.os.seq;
  const float* kh = static_cast<const float*>(p.k) + p.k_head(b, h / p.G) + s.k0 * kld;
  const float* vh = static_cast<const float*>(p.v) + p.k_head(b, h / p.G) + s.k0 * kld;
  const float* bias = i < s.Sq && p.bias ? bias_row<float>(p, b, h, i) : nullptr;
  float* sq = sq_all + warp * D;
  for (int d = lane; d < D; d += 32) sq[d] = static_cast<const float*>(p.q)[qrow + d];
  __syncwarp();
  // A varlen row past its sequence cannot happen (rows are packed positions), so i < s.Sq here.
  const int lo = static_cast<int>(p.band.key_lo(i, s.Sq, s.Sk)), hi = static_cast<int>(p.band.key_hi(i, s.Sq, s.Sk));
  const uint64_t drow = p.drop.on ? drop_row(p, p.drop.start(), row, s) : 0;
  float m = -INFINITY, l = 0.f, acc[kF32Chunks];
#pragma unroll
  for (int c = 0; c < kF32Chunks; ++c) acc[c] = 0.f;
  for (int j0 = lo; j0 < hi; j0 += 32) {
    const int j = j0 + lane;
    float x = -INFINITY;
    if (j < hi) {
      const float* kj = kh + j * kld;
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot = fmaf(sq[d], kj[d], dot);
      x = p.scale * dot + (bias ? bias[j] : 0.f);
    }
    const float m_new = fmaxf(m, dev::warp_max(x));
    if (m_new == -INFINITY) continue;  // every key so far hidden by a -inf bias: nothing to add
    const float alpha = expf(m - m_new);
    const float e = j < hi ? expf(x - m_new) : 0.f;
    l = l * alpha + dev::warp_sum(e);
    const float pz = p.drop.on && e != 0.f ? e * drop_factor(p.drop, drow + j) : e;
    m = m_new;
#pragma unroll
    for (int c = 0; c < kF32Chunks; ++c) acc[c] *= alpha;
    const int n = min(32, hi - j0);
    for (int jj = 0; jj < n; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, pz, jj);
      const float* vj = vh + (j0 + jj) * kld;
#pragma unroll
      for (int c = 0; c < kF32Chunks; ++c)
        if (lane + 32 * c < D) acc[c] = fmaf(pj, vj[lane + 32 * c], acc[c]);
    }
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
  float* orow = static_cast<float*>(p.o) + orow_off;
#pragma unroll
  for (int c = 0; c < kF32Chunks; ++c)
    if (lane + 32 * c < D) orow[lane + 32 * c] = acc[c] * inv;
  if (lane == 0) p.lse_out[row] = l > 0.f ? m + logf(l) : -INFINITY;
}

// q, dout, k, v, [bias], lse, delta -> dq. A warp per query row. Shared: 2 x 8 x D floats.
__global__ void __launch_bounds__(256) dq_f32_kernel(Params p) {
  extern __shared__ float s_all[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kF32Warps + warp;
  if (row >= p.rows_lse()) return;
  int b = 0, h = 0, i = 0;
  Seq s{};
  query_row(p, row, b, h, s, i);
  const int D = p.D;
  const int64_t kld = p.ks.seq, qrow = p.q_head(b, h) + (s.q0 + i) * p.qs.seq;
  const int64_t dorow = p.o_head(b, h) + (s.q0 + i) * p.os.seq;
  const float* kh = static_cast<const float*>(p.k) + p.k_head(b, h / p.G) + s.k0 * kld;
  const float* vh = static_cast<const float*>(p.v) + p.k_head(b, h / p.G) + s.k0 * kld;
  const float* bias = p.bias ? bias_row<float>(p, b, h, i) : nullptr;
  float* sq = s_all + warp * 2 * D;
  float* sdo = sq + D;
  for (int d = lane; d < D; d += 32) {
    sq[d] = static_cast<const float*>(p.q)[qrow + d];
    sdo[d] = static_cast<const float*>(p.dout)[dorow + d];
  }
  __syncwarp();
  const float lse = p.lse[row], delta = p.delta[row];
  const int lo = static_cast<int>(p.band.key_lo(i, s.Sq, s.Sk));
  const int hi = lse == -INFINITY ? lo : static_cast<int>(p.band.key_hi(i, s.Sq, s.Sk));  // nothing visible: P = 0
  const uint64_t drow = p.drop.on ? drop_row(p, p.drop.start(), row, s) : 0;
  float acc[kF32Chunks];
#pragma unroll
  for (int c = 0; c < kF32Chunks; ++c) acc[c] = 0.f;
  for (int j0 = lo; j0 < hi; j0 += 32) {
    const int j = j0 + lane;
    float ds = 0.f;
    if (j < hi) {
      const float* kj = kh + j * kld;
      const float* vj = vh + j * kld;
      float sc = 0.f, dpv = 0.f;
      for (int d = 0; d < D; ++d) {
        sc = fmaf(sq[d], kj[d], sc);
        dpv = fmaf(sdo[d], vj[d], dpv);
      }
      const float P = expf(p.scale * sc + (bias ? bias[j] : 0.f) - lse);
      const float z = p.drop.on ? drop_factor(p.drop, drow + j) : 1.f;
      ds = P * (z * dpv - delta);
    }
    const int n = min(32, hi - j0);
    for (int jj = 0; jj < n; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
      const float* kj = kh + (j0 + jj) * kld;
#pragma unroll
      for (int c = 0; c < kF32Chunks; ++c)
        if (lane + 32 * c < D) acc[c] = fmaf(dsj, kj[lane + 32 * c], acc[c]);
    }
  }
  float* dqrow = static_cast<float*>(p.dq) + qrow;
#pragma unroll
  for (int c = 0; c < kF32Chunks; ++c)
    if (lane + 32 * c < D) dqrow[lane + 32 * c] = p.scale * acc[c];
}

// q, dout, k, v, [bias], lse, delta -> dk, dv. A warp per key row of a kv head ((B, Hk, Sk) or (Hk, Tk) rows),
// lanes over 32 queries at a time of each of the G query heads: the queries that see the key, [query_lo(j),
// query_hi(j + 1)). Shared: 2 x 8 x D floats (the key and value rows).
__global__ void __launch_bounds__(256) dkdv_f32_kernel(Params p) {
  extern __shared__ float s_all[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kF32Warps + warp;
  if (row >= static_cast<int64_t>(p.varlen ? 1 : p.B) * p.Hk * p.Sk) return;
  int b = 0, hk = 0, j = 0;
  Seq s{};
  if (!p.varlen) {
    const int64_t bhk = row / p.Sk;
    b = static_cast<int>(bhk / p.Hk);
    hk = static_cast<int>(bhk % p.Hk);
    s = seq_of(p, b);
    j = static_cast<int>(row % p.Sk);
  } else {
    hk = static_cast<int>(row / p.Sk);
    const int t = static_cast<int>(row % p.Sk);
    b = seq_of_row(p, p.cu_k, p.Sk, t);
    s = seq_of(p, b);
    j = t - s.k0;
  }
  const int D = p.D;
  const int64_t qld = p.qs.seq, dold = p.os.seq, krow = p.k_head(b, hk) + (s.k0 + j) * p.ks.seq;
  float* sk = s_all + warp * 2 * D;
  float* sv = sk + D;
  for (int d = lane; d < D; d += 32) {
    sk[d] = static_cast<const float*>(p.k)[krow + d];
    sv[d] = static_cast<const float*>(p.v)[krow + d];
  }
  __syncwarp();
  const uint64_t dstart = p.drop.on ? p.drop.start() : 0;
  float dk[kF32Chunks], dv[kF32Chunks];
#pragma unroll
  for (int c = 0; c < kF32Chunks; ++c) dk[c] = dv[c] = 0.f;
  const int ilo = static_cast<int>(p.band.query_lo(j, s.Sq, s.Sk));
  const int ihi = static_cast<int>(p.band.query_hi(j + 1, s.Sq, s.Sk));
  for (int g = 0; g < p.G; ++g) {
    const int h = hk * p.G + g;
    const float* qh = static_cast<const float*>(p.q) + p.q_head(b, h) + s.q0 * qld;
    const float* doh = static_cast<const float*>(p.dout) + p.o_head(b, h) + s.q0 * dold;
    for (int i0 = ilo; i0 < ihi; i0 += 32) {
      const int i = i0 + lane;
      float pz = 0.f, ds = 0.f;
      if (i < ihi) {
        const int64_t r = row_id(p, b, h, s, i);
        const float lse = p.lse[r];
        if (lse != -INFINITY) {
          const float* qi = qh + i * qld;
          const float* doi = doh + i * dold;
          float sc = 0.f, dpv = 0.f;
          for (int d = 0; d < D; ++d) {
            sc = fmaf(qi[d], sk[d], sc);
            dpv = fmaf(doi[d], sv[d], dpv);
          }
          const float bias = p.bias ? bias_row<float>(p, b, h, i)[j] : 0.f;
          const float P = expf(p.scale * sc + bias - lse);
          const float z = p.drop.on ? drop_factor(p.drop, drop_row(p, dstart, r, s) + j) : 1.f;
          pz = P * z;
          ds = P * (z * dpv - p.delta[r]);
        }
      }
      const int n = min(32, ihi - i0);
      for (int ii = 0; ii < n; ++ii) {
        const float pzi = __shfl_sync(0xffffffffu, pz, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
        const float* qi = qh + (i0 + ii) * qld;
        const float* doi = doh + (i0 + ii) * dold;
#pragma unroll
        for (int c = 0; c < kF32Chunks; ++c)
          if (lane + 32 * c < D) {
            dv[c] = fmaf(pzi, doi[lane + 32 * c], dv[c]);
            dk[c] = fmaf(dsi, qi[lane + 32 * c], dk[c]);
          }
      }
    }
  }
  float* dkrow = static_cast<float*>(p.dk) + krow;
  float* dvrow = static_cast<float*>(p.dv) + krow;
#pragma unroll
  for (int c = 0; c < kF32Chunks; ++c)
    if (lane + 32 * c < D) {
      dkrow[lane + 32 * c] = p.scale * dk[c];
      dvrow[lane + 32 * c] = dv[c];
    }
}

// dbias (Bb, Hb, Sq, Sk): a thread per element, dS summed over the (b, h) it serves (no atomics).
__global__ void __launch_bounds__(256) dbias_f32_kernel(Params p) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t plane = static_cast<int64_t>(p.Sq) * p.Sk;
  if (e >= p.Bb * p.Hb * plane) return;
  const int bh = static_cast<int>(e / plane), i = static_cast<int>((e % plane) / p.Sk), j = static_cast<int>(e % p.Sk);
  const int bb = bh / p.Hb, hb = bh % p.Hb;
  const Seq s = seq_of(p, 0);  // a bias excludes varlen
  float acc = 0.f;
  if (j >= p.band.key_lo(i, s.Sq, s.Sk) && j < p.band.key_hi(i, s.Sq, s.Sk)) {
    const uint64_t dstart = p.drop.on ? p.drop.start() : 0;
    const int nb = p.Bb == 1 ? p.B : 1, nh = p.Hb == 1 ? p.H : 1;
    for (int pair = 0; pair < nb * nh; ++pair) {
      const int b = p.Bb == 1 ? pair / nh : bb, h = p.Hb == 1 ? pair % nh : hb;
      const int64_t r = row_id(p, b, h, s, i);
      const float lse = p.lse[r];
      if (lse == -INFINITY) continue;
      const float* qi = static_cast<const float*>(p.q) + p.q_head(b, h) + i * p.qs.seq;
      const float* doi = static_cast<const float*>(p.dout) + p.o_head(b, h) + i * p.os.seq;
      const float* kj = static_cast<const float*>(p.k) + p.k_head(b, h / p.G) + j * p.ks.seq;
      const float* vj = static_cast<const float*>(p.v) + p.k_head(b, h / p.G) + j * p.ks.seq;
      float sc = 0.f, dpv = 0.f;
      for (int d = 0; d < p.D; ++d) {
        sc = fmaf(qi[d], kj[d], sc);
        dpv = fmaf(doi[d], vj[d], dpv);
      }
      const float P = expf(p.scale * sc + bias_row<float>(p, b, h, i)[j] - lse);
      const float z = p.drop.on ? drop_factor(p.drop, drop_row(p, dstart, r, s) + j) : 1.f;
      acc += P * (z * dpv - p.delta[r]);
    }
  }
  static_cast<float*>(p.dbias)[e] = acc;
}

}  // namespace

void launch_f32_forward(const Params& p, cudaStream_t stream) {
  fwd_f32_kernel<<<f32_blocks(p.rows_lse()), 32 * kF32Warps, kF32Warps * p.D * sizeof(float), stream>>>(p);
  XF_CUDA_CHECK_LAUNCH("flash_attention");
}

void launch_f32_backward(const Params& p, cudaStream_t stream) {
  const int64_t rows = p.rows_lse(), kv_rows = static_cast<int64_t>(p.varlen ? 1 : p.B) * p.Hk * p.Sk;
  // Every launch has a non-empty grid; with Sq == 0 (or H == 0) dk and dv are still written (zeros).
  if (rows > 0) dq_f32_kernel<<<f32_blocks(rows), 256, 2 * kF32Warps * p.D * sizeof(float), stream>>>(p);
  if (kv_rows > 0) dkdv_f32_kernel<<<f32_blocks(kv_rows), 256, 2 * kF32Warps * p.D * sizeof(float), stream>>>(p);
  const int64_t db = static_cast<int64_t>(p.Bb) * p.Hb * p.Sq * p.Sk;
  if (p.dbias && db > 0) dbias_f32_kernel<<<static_cast<unsigned>((db + 255) / 256), 256, 0, stream>>>(p);
  XF_CUDA_CHECK_LAUNCH("flash_attention_backward");
}

}  // namespace xfr::cuda::fa
