// CPU kernels of ops/flash_attention.h: the oracle of the fused attention. Readable first; tiled so that the
// extra memory is O(block) per task, never Sq x Sk.
//
// Forward, one task per (b, h): queries in blocks of kQueryBlock; for each block the running max m, running
// sum l (both per query) and the output rows (used as the accumulator) are updated key block by key block with
// the online softmax
//     m' = max(m, max_j s_j),  l' = l e^(m - m') + sum_j e^(s_j - m'),  o' = o e^(m - m') + sum_j e^(s_j - m') z_j v_j
// and finally out = o / l, lse = m + log l. z_j is the dropout factor (1 / (1 - p) or 0; 1 without dropout).
// Causal: query i sees keys [0, min(Sk, i + 1)), so key blocks past the block's last query are skipped.
//
// Backward, one task per (b, kv head) so that dk and dv, summed over the G query heads of the kv head, have a
// single writer: for each of those heads and each query i, Delta_i = dout_i . out_i - dlse_i, and for each key
// j the query sees, P = e^(s - lse_i) (recomputed), dv_j += P z_j dout_i, dS = P (z_j dout_i . v_j - Delta_i),
// dq_i += scale dS k_j, dk_j += scale dS q_i. The dropout factors of a row are drawn a key block at a time.
// Parallelism is B * Hk tasks (so MQA with B = 1 runs on one thread: acceptable for the oracle).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <cblas.h>

#include "ops/cpu/parallel.h"
#include "ops/dropout.h"
#include "ops/flash_attention.h"
#include "runtime/dispatch.h"
#include "runtime/rng.h"

namespace xfr::cpu {

namespace {

// 32 queries x (running max, sum) and their output rows, with one key block of 64 keys x D, stay in L1/L2 for
// the head dims of interest (64 keys x 128 dims x 4 B = 32 KB).
constexpr int64_t kQueryBlock = 32;
constexpr int64_t kKeyBlock = 64;

// Everything the kernels need besides the data pointers.
template <class T>
struct Params {
  FlashAttentionShape s;
  int64_t G = 1;  // query heads per kv head
  T scale = 1;
  bool causal = false;
  bool dropout = false;
  uint32_t threshold = 0;  // keep when (bits >> 8) >= threshold (ops/dropout.h)
  T keep_scale = 1;        // 1 / (1 - p), rounded to T as the dropout op does
  uint64_t seed = 0, offset = 0;

  // Keys query i sees: [0, key_end(i)).
  int64_t key_end(int64_t i) const { return causal ? std::min(s.Sk, i + 1) : s.Sk; }
  // Stream element of (b, h, i, j = 0) of the implicit (B, H, Sq, Sk) probability tensor.
  uint64_t row_stream(int64_t b, int64_t h, int64_t i) const {
    return offset + static_cast<uint64_t>(((b * s.H + h) * s.Sq + i) * s.Sk);
  }
};

template <class T>
Params<T> make_params(const FlashAttentionShape& s, const FlashAttentionAttrs& a, const KernelContext& ctx) {
  const double scale = a.scale, p = a.dropout;
  const bool causal = a.causal;
  Params<T> r;
  r.s = s;
  r.G = s.H / s.Hk;
  r.scale = static_cast<T>(scale);
  r.causal = causal;
  r.dropout = p > 0.0;
  if (r.dropout) {
    r.threshold = dropout_keep_threshold(p);
    r.keep_scale = static_cast<T>(1.0 / (1.0 - p));
  }
  r.seed = ctx.rng_seed;
  r.offset = ctx.rng_offset;
  return r;
}

// z[j] = the dropout factor of stream element start + j (keep_scale or 0), j < n; all 1 without dropout.
template <class T>
void dropout_factors(const Params<T>& p, uint64_t start, int64_t n, T* z) {
  if (!p.dropout) {
    std::fill(z, z + n, T(1));
    return;
  }
  int64_t j = 0;
  while (j < n) {  // one Philox block gives the four elements of its lanes
    const uint64_t c = start + static_cast<uint64_t>(j);
    const Philox4x32 r = philox_block(p.seed, c >> 2);
    for (unsigned lane = static_cast<unsigned>(c & 3u); lane < 4u && j < n; ++lane, ++j)
      z[j] = (r.x[lane] >> 8) >= p.threshold ? p.keep_scale : T(0);
  }
}

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T acc = 0;
  for (int64_t d = 0; d < n; ++d) acc += a[d] * b[d];
  return acc;
}

// y += a x
template <class T>
void axpy(T a, const T* x, T* y, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// q: (B, H, Sq, D) or (B, Sq, H, D), k, v: (B, Hk, Sk, D) or (B, Sk, Hk, D) -> out: q's shape, lse: (B, H, Sq);
// one (b, h) pair. Row i of a head is at qh + i * qs (qs, ks: the seq strides of q and k).
template <class T>
void forward_head(const Params<T>& p, int64_t b, int64_t h, const T* q, const T* k, const T* v, T* out, T* lse) {
  const FlashAttentionShape& s = p.s;
  const int64_t D = s.D, hk = h / p.G, qs = s.q.seq, ks = s.k.seq;
  const T* qh = q + b * s.q.batch + h * s.q.head;
  const T* kh = k + b * s.k.batch + hk * s.k.head;
  const T* vh = v + b * s.k.batch + hk * s.k.head;
  T* oh = out + b * s.q.batch + h * s.q.head;
  T* lh = lse + (b * s.H + h) * s.Sq;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  T m[kQueryBlock], l[kQueryBlock], sc[kKeyBlock], z[kKeyBlock];
  for (int64_t i0 = 0; i0 < s.Sq; i0 += kQueryBlock) {
    const int64_t i1 = std::min(s.Sq, i0 + kQueryBlock);
    std::fill(m, m + kQueryBlock, neg_inf);
    std::fill(l, l + kQueryBlock, T(0));
    for (int64_t i = i0; i < i1; ++i) std::fill(oh + i * qs, oh + i * qs + D, T(0));
    const int64_t block_end = p.key_end(i1 - 1);  // the last query of the block sees the most keys
    for (int64_t j0 = 0; j0 < block_end; j0 += kKeyBlock) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t n = std::min(j0 + kKeyBlock, p.key_end(i)) - j0;  // keys of this block query i sees
        if (n <= 0) continue;
        const T* qi = qh + i * qs;
        T* oi = oh + i * qs;
        T mb = neg_inf;
        for (int64_t jj = 0; jj < n; ++jj) {
          sc[jj] = p.scale * dot(qi, kh + (j0 + jj) * ks, D);
          mb = std::max(mb, sc[jj]);
        }
        const int64_t r = i - i0;
        const T m_new = std::max(m[r], mb);  // finite: the block has at least one visible key
        const T alpha = std::exp(m[r] - m_new);  // 0 when m was -inf (first block)
        l[r] *= alpha;
        for (int64_t d = 0; d < D; ++d) oi[d] *= alpha;
        dropout_factors(p, p.row_stream(b, h, i) + static_cast<uint64_t>(j0), n, z);
        for (int64_t jj = 0; jj < n; ++jj) {
          const T e = std::exp(sc[jj] - m_new);
          l[r] += e;  // the softmax's sum is over undropped probabilities
          if (z[jj] != T(0)) axpy(e * z[jj], vh + (j0 + jj) * ks, oi, D);
        }
        m[r] = m_new;
      }
    }
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = i - i0;
      T* oi = oh + i * qs;
      if (l[r] > T(0)) {
        const T inv = T(1) / l[r];
        for (int64_t d = 0; d < D; ++d) oi[d] *= inv;
        lh[i] = m[r] + std::log(l[r]);
      } else {  // no key visible (Sk = 0): out 0, lse -inf
        std::fill(oi, oi + D, T(0));
        lh[i] = neg_inf;
      }
    }
  }
}

// in: q, k, v, out, dout, lse, [dlse]; out: dq (q's shape), dk, dv (k's shape). One (b, kv head) pair: writes
// dk, dv of the kv head and dq of its G query heads.
template <class T>
void backward_kv_head(const Params<T>& p, int64_t b, int64_t hk, const T* q, const T* k, const T* v, const T* out,
                      const T* dout, const T* lse, const T* dlse, T* dq, T* dk, T* dv) {
  const FlashAttentionShape& s = p.s;
  const int64_t D = s.D, qs = s.q.seq, ks = s.k.seq;
  const int64_t kvoff = b * s.k.batch + hk * s.k.head;
  const T* kh = k + kvoff;
  const T* vh = v + kvoff;
  T* dkh = dk + kvoff;
  T* dvh = dv + kvoff;
  for (int64_t j = 0; j < s.Sk; ++j) {
    std::fill(dkh + j * ks, dkh + j * ks + D, T(0));
    std::fill(dvh + j * ks, dvh + j * ks + D, T(0));
  }
  T z[kKeyBlock];
  for (int64_t h = hk * p.G; h < (hk + 1) * p.G; ++h) {
    const int64_t row0 = (b * s.H + h) * s.Sq;  // row of (b, h, i = 0) in the (B, H, Sq) tensors
    const int64_t qoff = b * s.q.batch + h * s.q.head;
    for (int64_t i = 0; i < s.Sq; ++i) {
      const T* qi = q + qoff + i * qs;
      const T* oi = out + qoff + i * qs;
      const T* doi = dout + qoff + i * qs;
      T* dqi = dq + qoff + i * qs;
      std::fill(dqi, dqi + D, T(0));
      const T li = lse[row0 + i];
      if (li == -std::numeric_limits<T>::infinity()) continue;  // no key visible: P = 0, every gradient 0
      const T delta = dot(doi, oi, D) - (dlse ? dlse[row0 + i] : T(0));
      const int64_t end = p.key_end(i);
      for (int64_t j0 = 0; j0 < end; j0 += kKeyBlock) {
        const int64_t n = std::min(end - j0, kKeyBlock);
        dropout_factors(p, p.row_stream(b, h, i) + static_cast<uint64_t>(j0), n, z);
        for (int64_t jj = 0; jj < n; ++jj) {
          const int64_t j = j0 + jj;
          const T* kj = kh + j * ks;
          const T* vj = vh + j * ks;
          const T P = std::exp(p.scale * dot(qi, kj, D) - li);
          if (z[jj] != T(0)) axpy(P * z[jj], doi, dvh + j * ks, D);
          const T ds = p.scale * P * (z[jj] * dot(doi, vj, D) - delta);  // scale * dS
          axpy(ds, kj, dqi, D);
          axpy(ds, qi, dkh + j * ks, D);
        }
      }
    }
  }
}


// ---- the f32 path: the same blocks through sgemm ---------------------------------------------------------
// The scalar loops above are the oracle (and the f64 path the finite-difference checks use); f32 models take
// this path: per block of kBlasQueries queries the block's scores against every visible key (one sgemm,
// (kBlasQueries x Sk) floats: O(S) memory per task, never Sq x Sk), the softmax in place, and out = P V
// (one more sgemm). The backward recomputes P the same way and gets dV, dP, dQ and dK as four sgemms per
// block. Tasks run one after another (OpenBLAS threads each GEMM, as the matmul kernel does).
constexpr int64_t kBlasQueries = 64;  // 64 x Sk floats = 256 KB at Sk = 1024: an L2-sized score block

void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

// q, k, v, out as forward_head (either layout: the GEMMs take the seq strides as leading dimensions) -> out,
// lse: (B, H, Sq); one (b, h) pair.
void forward_head_blas(const Params<float>& p, int64_t b, int64_t h, const float* q, const float* k, const float* v,
                       float* out, float* lse, std::vector<float>& sc, std::vector<float>& z) {
  const FlashAttentionShape& s = p.s;
  const int64_t D = s.D, hk = h / p.G, qs = s.q.seq, ks = s.k.seq;
  const float* qh = q + b * s.q.batch + h * s.q.head;
  const float* kh = k + b * s.k.batch + hk * s.k.head;
  const float* vh = v + b * s.k.batch + hk * s.k.head;
  float* oh = out + b * s.q.batch + h * s.q.head;
  float* lh = lse + (b * s.H + h) * s.Sq;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t i0 = 0; i0 < s.Sq; i0 += kBlasQueries) {
    const int64_t i1 = std::min(s.Sq, i0 + kBlasQueries), rows = i1 - i0;
    const int64_t n = p.key_end(i1 - 1);  // keys the block's last query sees (the most of any)
    if (n == 0) {
      for (int64_t i = i0; i < i1; ++i) std::fill(oh + i * qs, oh + i * qs + D, 0.0f);
      std::fill(lh + i0, lh + i1, neg_inf);
      continue;
    }
    sgemm(false, true, rows, n, D, p.scale, qh + i0 * qs, qs, kh, ks, 0.0f, sc.data(), n);  // (rows, n)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r, end = p.key_end(i);
      float* row = sc.data() + r * n;
      float m = neg_inf;
      for (int64_t j = 0; j < end; ++j) m = std::max(m, row[j]);
      float l = 0;
      for (int64_t j = 0; j < end; ++j) {
        row[j] = std::exp(row[j] - m);
        l += row[j];
      }
      std::fill(row + end, row + n, 0.0f);  // hidden keys
      if (end == 0 || !(l > 0)) {
        std::fill(row, row + n, 0.0f);
        lh[i] = neg_inf;
        continue;
      }
      lh[i] = m + std::log(l);
      const float inv = 1.0f / l;
      if (p.dropout) {
        dropout_factors(p, p.row_stream(b, h, i), end, z.data());
        for (int64_t j = 0; j < end; ++j) row[j] *= inv * z[static_cast<size_t>(j)];
      } else {
        for (int64_t j = 0; j < end; ++j) row[j] *= inv;
      }
    }
    sgemm(false, false, rows, D, n, 1.0f, sc.data(), n, vh, ks, 0.0f, oh + i0 * qs, qs);  // (rows, D)
  }
}

// One (b, kv head) pair: dk, dv of the kv head and dq of its G query heads.
void backward_kv_head_blas(const Params<float>& p, int64_t b, int64_t hk, const float* q, const float* k,
                           const float* v, const float* out, const float* dout, const float* lse, const float* dlse,
                           float* dq, float* dk, float* dv, std::vector<float>& P, std::vector<float>& dP,
                           std::vector<float>& z) {
  const FlashAttentionShape& s = p.s;
  const int64_t D = s.D, qs = s.q.seq, ks = s.k.seq;
  const int64_t kvoff = b * s.k.batch + hk * s.k.head;
  const float* kh = k + kvoff;
  const float* vh = v + kvoff;
  float* dkh = dk + kvoff;
  float* dvh = dv + kvoff;
  for (int64_t j = 0; j < s.Sk; ++j) {
    std::fill(dkh + j * ks, dkh + j * ks + D, 0.0f);
    std::fill(dvh + j * ks, dvh + j * ks + D, 0.0f);
  }
  for (int64_t h = hk * p.G; h < (hk + 1) * p.G; ++h) {
    const int64_t row0 = (b * s.H + h) * s.Sq;     // lse row of (b, h, i = 0)
    const int64_t qoff = b * s.q.batch + h * s.q.head;
    for (int64_t i0 = 0; i0 < s.Sq; i0 += kBlasQueries) {
      const int64_t i1 = std::min(s.Sq, i0 + kBlasQueries), rows = i1 - i0;
      const int64_t n = p.key_end(i1 - 1);
      float* dqb = dq + qoff + i0 * qs;
      if (n == 0) {
        for (int64_t r = 0; r < rows; ++r) std::fill(dqb + r * qs, dqb + r * qs + D, 0.0f);
        continue;
      }
      const float* qb = q + qoff + i0 * qs;
      const float* dob = dout + qoff + i0 * qs;
      sgemm(false, true, rows, n, D, p.scale, qb, qs, kh, ks, 0.0f, P.data(), n);      // scale q k^T
      sgemm(false, true, rows, n, D, 1.0f, dob, qs, vh, ks, 0.0f, dP.data(), n);       // dout v^T
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r, end = p.key_end(i);
        float* pr = P.data() + r * n;
        float* dr = dP.data() + r * n;
        const float li = lse[row0 + i];
        const float delta = dot(dout + qoff + i * qs, out + qoff + i * qs, D) - (dlse ? dlse[row0 + i] : 0.0f);
        if (p.dropout) dropout_factors(p, p.row_stream(b, h, i), end, z.data());
        for (int64_t j = 0; j < n; ++j) {
          if (j >= end || li == -std::numeric_limits<float>::infinity()) {
            pr[j] = 0.0f;
            dr[j] = 0.0f;
            continue;
          }
          const float P_ij = std::exp(pr[j] - li);
          const float zj = p.dropout ? z[static_cast<size_t>(j)] : 1.0f;
          dr[j] = p.scale * P_ij * (zj * dr[j] - delta);  // scale * dS
          pr[j] = P_ij * zj;                               // dropout(P), what dV sums
        }
      }
      sgemm(true, false, n, D, rows, 1.0f, P.data(), n, dob, qs, 1.0f, dvh, ks);   // dv += dropout(P)^T dout
      sgemm(false, false, rows, D, n, 1.0f, dP.data(), n, kh, ks, 0.0f, dqb, qs);  // dq = scale dS k
      sgemm(true, false, n, D, rows, 1.0f, dP.data(), n, qb, qs, 1.0f, dkh, ks);   // dk += scale dS^T q
    }
  }
}

void forward_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                    const std::vector<Tensor>& out) {
  const auto& op = static_cast<const FlashAttentionOp&>(op_);
  const FlashAttentionShape s = flash_attention_shape(
      "flash_attention", op.a.layout, TensorMeta{in[0].shape(), in[0].dtype()}, TensorMeta{in[1].shape(), in[1].dtype()},
      TensorMeta{in[2].shape(), in[2].dtype()});
  if (in[0].dtype() == DType::f32) {  // the sgemm path
    const Params<float> p = make_params<float>(s, op.a, ctx);
    std::vector<float> sc(static_cast<size_t>(kBlasQueries * std::max<int64_t>(s.Sk, 1))), z(static_cast<size_t>(s.Sk + 1));
    for (int64_t t = 0; t < s.B * s.H; ++t)
      forward_head_blas(p, t / s.H, t % s.H, in[0].data<float>(), in[1].data<float>(), in[2].data<float>(),
                        out[0].data<float>(), out[1].data<float>(), sc, z);
    return;
  }
  XF_DISPATCH_FLOAT(in[0].dtype(), "flash_attention", T, {
    const Params<T> p = make_params<T>(s, op.a, ctx);
    const T *q = in[0].data<T>(), *k = in[1].data<T>(), *v = in[2].data<T>();
    T* o = out[0].data<T>();
    T* lse = out[1].data<T>();
    parallel_for(ctx, s.B * s.H, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) forward_head(p, t / s.H, t % s.H, q, k, v, o, lse);
    });
  });
}

void backward_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                     const std::vector<Tensor>& out) {
  const auto& op = static_cast<const FlashAttentionBackwardOp&>(op_);
  const FlashAttentionShape s = flash_attention_shape(
      "flash_attention_backward", op.a.layout, TensorMeta{in[0].shape(), in[0].dtype()}, TensorMeta{in[1].shape(), in[1].dtype()},
      TensorMeta{in[2].shape(), in[2].dtype()});
  if (in[0].dtype() == DType::f32) {  // the sgemm path
    const Params<float> p = make_params<float>(s, op.a, ctx);
    const size_t blk = static_cast<size_t>(kBlasQueries * std::max<int64_t>(s.Sk, 1));
    std::vector<float> P(blk), dP(blk), z(static_cast<size_t>(s.Sk + 1));
    for (int64_t t = 0; t < s.B * s.Hk; ++t)
      backward_kv_head_blas(p, t / s.Hk, t % s.Hk, in[0].data<float>(), in[1].data<float>(), in[2].data<float>(),
                            in[3].data<float>(), in[4].data<float>(), in[5].data<float>(),
                            op.has_dlse ? in[6].data<float>() : nullptr, out[0].data<float>(), out[1].data<float>(),
                            out[2].data<float>(), P, dP, z);
    return;
  }
  XF_DISPATCH_FLOAT(in[0].dtype(), "flash_attention_backward", T, {
    const Params<T> p = make_params<T>(s, op.a, ctx);
    const T *q = in[0].data<T>(), *k = in[1].data<T>(), *v = in[2].data<T>();
    const T *o = in[3].data<T>(), *dout = in[4].data<T>(), *lse = in[5].data<T>();
    const T* dlse = op.has_dlse ? in[6].data<T>() : nullptr;
    T *dq = out[0].data<T>(), *dk = out[1].data<T>(), *dv = out[2].data<T>();
    parallel_for(ctx, s.B * s.Hk, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        backward_kv_head(p, t / s.Hk, t % s.Hk, q, k, v, o, dout, lse, dlse, dq, dk, dv);
    });
  });
}

}  // namespace

void register_flash_attention(KernelRegistry& r) {
  r.add("flash_attention", Device::Kind::cpu, forward_kernel);
  r.add("flash_attention_backward", Device::Kind::cpu, backward_kernel);
}

}  // namespace xfr::cpu
