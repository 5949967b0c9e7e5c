// The f32 path of the CPU flash_attention kernels: the oracle's blocks through sgemm. The scalar loops of
// ops/cpu/flash_attention.cpp are the oracle (and the f64 path the finite-difference checks use); f32 models take
// this path: per block of kBlasQueries queries, the block's scores against the keys its queries see (one sgemm,
// at most kBlasQueries x Sk floats: O(S) memory per task, never Sq x Sk; with a window the keys [key_lo of the
// first query, key_hi of the last), so local attention costs O(S W)), the bias, mask and softmax in place, and
// out = P V (one more sgemm). The backward recomputes P the same way and gets dV, dP, dQ and dK as four sgemms per
// block. Tasks run one after another (OpenBLAS threads each GEMM, as the matmul kernel does). Every tensor is
// addressed through its strides: the seq stride is the GEMMs' leading dimension, so both layouts take one path.
#include <cmath>
#include <limits>

#include <cblas.h>

#include "ops/cpu/flash_attention_common.h"

namespace xfr::cpu::fa {

namespace {

constexpr int64_t kBlasQueries = 64;  // 64 x Sk floats = 256 KB at Sk = 1024: an L2-sized score block

void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

size_t blas_scratch(const FlashAttentionShape& s) {
  return static_cast<size_t>(kBlasQueries * std::max<int64_t>(s.Sk, 1));
}

// q, k, v in either layout -> out, lse; one (sequence b, head h) pair.
void forward_head_blas(const Params<float>& p, int64_t b, int64_t h, const Tensors<float>& t, std::vector<float>& sc,
                       std::vector<float>& z) {
  const FlashAttentionShape& s = p.s;
  const Span sp = p.span(b);
  const int64_t D = s.D, hk = h / p.G, qs = s.q.seq, ks = s.k.seq, os = s.o.seq;
  const float* qh = t.q + p.q_off(b, h, sp);
  const float* kh = t.k + p.k_off(b, hk, sp);
  const float* vh = t.v + p.k_off(b, hk, sp);
  float* oh = t.o + p.o_off(b, h, sp);
  for (int64_t i0 = 0; i0 < sp.Sq; i0 += kBlasQueries) {
    const int64_t i1 = std::min(sp.Sq, i0 + kBlasQueries), rows = i1 - i0;
    // The keys some query of the block sees: from the first query's first to the last query's last.
    const int64_t jlo = p.key_lo(sp, i0), n = p.key_hi(sp, i1 - 1) - jlo;
    if (n <= 0) {
      zero_rows(oh + i0 * os, rows, os, D);
      for (int64_t i = i0; i < i1; ++i) t.lse_out[p.row(b, h, sp, i)] = kNegInf;
      continue;
    }
    sgemm(false, true, rows, n, D, p.scale, qh + i0 * qs, qs, kh + jlo * ks, ks, 0.0f, sc.data(), n);  // (rows, n)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      const int64_t lo = std::max<int64_t>(0, p.key_lo(sp, i) - jlo), hi = std::max(lo, p.key_hi(sp, i) - jlo);
      float* row = sc.data() + r * n;
      if (const float* bias = p.bias_row(b, h, i))
        for (int64_t j = lo; j < hi; ++j) row[j] += bias[jlo + j];
      float m = kNegInf;
      for (int64_t j = lo; j < hi; ++j) m = std::max(m, row[j]);
      std::fill(row, row + lo, 0.0f);  // hidden keys
      std::fill(row + hi, row + n, 0.0f);
      float& lse = t.lse_out[p.row(b, h, sp, i)];
      if (m == kNegInf) {  // no key visible (mask or a -inf bias): out 0, lse -inf
        std::fill(row + lo, row + hi, 0.0f);
        lse = kNegInf;
        continue;
      }
      float l = 0;
      for (int64_t j = lo; j < hi; ++j) {
        row[j] = std::exp(row[j] - m);
        l += row[j];
      }
      lse = m + std::log(l);
      const float inv = 1.0f / l;
      if (p.dropout) {
        dropout_factors(p, p.row_stream(b, h, sp, i) + static_cast<uint64_t>(jlo + lo), hi - lo, z.data());
        for (int64_t j = lo; j < hi; ++j) row[j] *= inv * z[static_cast<size_t>(j - lo)];
      } else {
        for (int64_t j = lo; j < hi; ++j) row[j] *= inv;
      }
    }
    sgemm(false, false, rows, D, n, 1.0f, sc.data(), n, vh + jlo * ks, ks, 0.0f, oh + i0 * os, os);  // (rows, D)
  }
}

// One (sequence b, kv head hk) pair: dk, dv of the kv head and dq of its G query heads.
void backward_kv_head_blas(const Params<float>& p, int64_t b, int64_t hk, const Tensors<float>& t,
                           std::vector<float>& P, std::vector<float>& dP, std::vector<float>& z) {
  const FlashAttentionShape& s = p.s;
  const Span sp = p.span(b);
  const int64_t D = s.D, qs = s.q.seq, ks = s.k.seq, os = s.o.seq;
  const int64_t kvoff = p.k_off(b, hk, sp);
  const float* kh = t.k + kvoff;
  const float* vh = t.v + kvoff;
  float* dkh = t.dk + kvoff;
  float* dvh = t.dv + kvoff;
  zero_rows(dkh, sp.Sk, ks, D);
  zero_rows(dvh, sp.Sk, ks, D);
  for (int64_t h = hk * p.G; h < (hk + 1) * p.G; ++h) {
    const int64_t qoff = p.q_off(b, h, sp), ooff = p.o_off(b, h, sp);
    for (int64_t i0 = 0; i0 < sp.Sq; i0 += kBlasQueries) {
      const int64_t i1 = std::min(sp.Sq, i0 + kBlasQueries), rows = i1 - i0;
      const int64_t jlo = p.key_lo(sp, i0), n = p.key_hi(sp, i1 - 1) - jlo;
      float* dqb = t.dq + qoff + i0 * qs;
      if (n <= 0) {
        zero_rows(dqb, rows, qs, D);
        continue;
      }
      const float* qb = t.q + qoff + i0 * qs;
      const float* dob = t.dout + ooff + i0 * os;
      sgemm(false, true, rows, n, D, p.scale, qb, qs, kh + jlo * ks, ks, 0.0f, P.data(), n);  // scale q k^T
      sgemm(false, true, rows, n, D, 1.0f, dob, os, vh + jlo * ks, ks, 0.0f, dP.data(), n);   // dout v^T
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r, lr = p.row(b, h, sp, i);
        const int64_t lo = std::max<int64_t>(0, p.key_lo(sp, i) - jlo), hi = std::max(lo, p.key_hi(sp, i) - jlo);
        float* pr = P.data() + r * n;
        float* dr = dP.data() + r * n;
        const float li = t.lse[lr];
        const float delta = dot(t.dout + ooff + i * os, t.out + ooff + i * os, D) - (t.dlse ? t.dlse[lr] : 0.0f);
        const float* bias = p.bias_row(b, h, i);
        if (p.dropout) dropout_factors(p, p.row_stream(b, h, sp, i) + static_cast<uint64_t>(jlo + lo), hi - lo, z.data());
        for (int64_t j = 0; j < n; ++j) {
          if (j < lo || j >= hi || li == kNegInf) {
            pr[j] = 0.0f;
            dr[j] = 0.0f;
            continue;
          }
          const float P_ij = std::exp(pr[j] + (bias ? bias[jlo + j] : 0.0f) - li);
          const float zj = p.dropout ? z[static_cast<size_t>(j - lo)] : 1.0f;
          dr[j] = p.scale * P_ij * (zj * dr[j] - delta);  // scale * dS
          pr[j] = P_ij * zj;                               // dropout(P), what dV sums
        }
      }
      sgemm(true, false, n, D, rows, 1.0f, P.data(), n, dob, os, 1.0f, dvh + jlo * ks, ks);  // dv += dropout(P)^T dout
      sgemm(false, false, rows, D, n, 1.0f, dP.data(), n, kh + jlo * ks, ks, 0.0f, dqb, qs);  // dq = scale dS k
      sgemm(true, false, n, D, rows, 1.0f, dP.data(), n, qb, qs, 1.0f, dkh + jlo * ks, ks);   // dk += scale dS^T q
    }
  }
}

}  // namespace xfr::cpu::fa
