// What the CPU kernels of ops/flash_attention.h share (ops/cpu/flash_attention.cpp: the scalar oracle, the dbias
// pass and the registration; ops/cpu/flash_attention_blas.cpp: the f32 sgemm path): the parameters, the
// per-sequence spans, the addressing of every tensor and the dropout factors.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/dropout.h"
#include "ops/flash_attention.h"
#include "runtime/kernel_registry.h"
#include "runtime/rng.h"
#include "runtime/tensor.h"

namespace xfr::cpu::fa {

// The rows of sequence b: queries [q0, q0 + Sq) and keys [k0, k0 + Sk) along the seq axes (q0 = k0 = 0 without
// varlen, where every batch entry is a whole sequence).
struct Span {
  int64_t q0 = 0, Sq = 0, k0 = 0, Sk = 0;
};

// The offsets of a varlen input (i32 or i64, nseq + 1 entries) as int64, checked: 0 first, non-decreasing, `total`
// last. Errors name `op` and the offending entry.
std::vector<int64_t> read_offsets(const char* op, const char* what, const Tensor& t, int64_t total);

// Everything the kernels need besides the q, k, v, out... pointers.
template <class T>
struct Params {
  FlashAttentionShape s;
  AttentionBand band;
  int64_t G = 1;  // query heads per kv head
  T scale = 1;
  bool dropout = false;
  uint32_t threshold = 0;  // keep when (bits >> 8) >= threshold (ops/dropout.h)
  T keep_scale = 1;        // 1 / (1 - p), rounded to T as the dropout op does
  uint64_t seed = 0, offset = 0;
  const T* bias = nullptr;            // (Bb, Hb, Sq, Sk) or null
  std::vector<int64_t> cu_q, cu_k;    // varlen: the sequence offsets; empty otherwise

  Span span(int64_t b) const {
    if (cu_q.empty()) return {0, s.Sq, 0, s.Sk};
    const size_t i = static_cast<size_t>(b);
    return {cu_q[i], cu_q[i + 1] - cu_q[i], cu_k[i], cu_k[i + 1] - cu_k[i]};
  }
  // Keys query i of span sp sees: [key_lo, key_hi) (positions within the sequence; empty when hi <= lo).
  int64_t key_lo(const Span& sp, int64_t i) const { return band.key_lo(i, sp.Sq, sp.Sk); }
  int64_t key_hi(const Span& sp, int64_t i) const { return band.key_hi(i, sp.Sq, sp.Sk); }
  // Element offsets of row 0 of head h of q (dq), of head h of out (dout) and of kv head hk of k (v, dk, dv) in
  // sequence b; row i is s.q.seq (s.o.seq, s.k.seq) elements further.
  int64_t q_off(int64_t b, int64_t h, const Span& sp) const { return b * s.q.batch + h * s.q.head + sp.q0 * s.q.seq; }
  int64_t o_off(int64_t b, int64_t h, const Span& sp) const { return b * s.o.batch + h * s.o.head + sp.q0 * s.o.seq; }
  int64_t k_off(int64_t b, int64_t hk, const Span& sp) const {
    return b * s.k.batch + hk * s.k.head + sp.k0 * s.k.seq;
  }
  // Index of (b, h, i) in lse, dlse: (B, H, Sq) or (H, Tq).
  int64_t row(int64_t b, int64_t h, const Span& sp, int64_t i) const {
    return b * s.lse_batch + h * s.lse_head + sp.q0 + i;
  }
  // Dropout stream element of (b, h, i, j = 0) (ops/flash_attention.h: e = row Sk + k0 + j, Sk = Tk for varlen).
  uint64_t row_stream(int64_t b, int64_t h, const Span& sp, int64_t i) const {
    return offset + static_cast<uint64_t>(row(b, h, sp, i) * s.Sk + sp.k0);
  }
  // Bias row (b, h, i) (Sk entries), or null without a bias.
  const T* bias_row(int64_t b, int64_t h, int64_t i) const {
    return bias ? bias + b * s.bias_batch + h * s.bias_head + i * s.Sk : nullptr;
  }
};

template <class T>
Params<T> make_params(const char* op, const FlashAttentionShape& s, const FlashAttentionAttrs& a,
                      const KernelContext& ctx, const Tensor* bias, const Tensor* cu_q, const Tensor* cu_k) {
  Params<T> r;
  r.s = s;
  r.band = a.band();
  r.G = s.H / s.Hk;
  r.scale = static_cast<T>(a.scale);
  r.dropout = a.dropout > 0.0;
  if (r.dropout) {
    r.threshold = dropout_keep_threshold(a.dropout);
    r.keep_scale = static_cast<T>(1.0 / (1.0 - a.dropout));
  }
  r.seed = ctx.rng_seed;
  r.offset = ctx.rng_offset;
  if (bias) r.bias = bias->data<T>();
  if (cu_q) {
    r.cu_q = read_offsets(op, "cu_seqlens_q", *cu_q, s.Sq);
    r.cu_k = read_offsets(op, "cu_seqlens_k", *cu_k, s.Sk);
  }
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

// Zeroes `rows` rows of D elements, `ld` apart.
template <class T>
void zero_rows(T* x, int64_t rows, int64_t ld, int64_t D) {
  for (int64_t r = 0; r < rows; ++r) std::fill(x + r * ld, x + r * ld + D, T(0));
}

// The tensors of one call, by role (null where absent).
template <class T>
struct Tensors {
  const T *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr, *dout = nullptr, *lse = nullptr, *dlse = nullptr;
  T *o = nullptr, *lse_out = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr, *dbias = nullptr;
};

// The f32 sgemm path (ops/cpu/flash_attention_blas.cpp): sequence/batch b, head h (forward) or kv head hk.
void forward_head_blas(const Params<float>& p, int64_t b, int64_t h, const Tensors<float>& t, std::vector<float>& sc,
                       std::vector<float>& z);
void backward_kv_head_blas(const Params<float>& p, int64_t b, int64_t hk, const Tensors<float>& t,
                           std::vector<float>& P, std::vector<float>& dP, std::vector<float>& z);
// Scratch floats per task of the sgemm path (a block of queries against every key of a sequence).
size_t blas_scratch(const FlashAttentionShape& s);

}  // namespace xfr::cpu::fa
