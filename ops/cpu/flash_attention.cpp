// CPU kernels of ops/flash_attention.h: the oracle of the fused attention. Readable first; tiled so that the
// extra memory is O(block) per task, never Sq x Sk. f32 takes the sgemm path (ops/cpu/flash_attention_blas.cpp),
// f64 (references, finite-difference checks) these scalar loops.
//
// Forward, one task per (sequence or batch entry b, head h): queries in blocks of kQueryBlock; for each block the
// running max m, running sum l (both per query) and the output rows (used as the accumulator) are updated key
// block by key block with the online softmax
//     m' = max(m, max_j s_j),  l' = l e^(m - m') + sum_j e^(s_j - m'),  o' = o e^(m - m') + sum_j e^(s_j - m') z_j v_j
// and finally out = o / l, lse = m + log l. z_j is the dropout factor (1 / (1 - p) or 0; 1 without dropout).
// Masks: query i sees keys [key_lo(i), key_hi(i)) (AttentionBand), so the key blocks a query block visits run
// from its first query's key_lo to its last query's key_hi: causal skips the blocks past the diagonal, a window
// those outside it (O(S W) work for local attention).
//
// Backward, one task per (b, kv head) so that dk and dv, summed over the G query heads of the kv head, have a
// single writer: for each of those heads and each query i, Delta_i = dout_i . out_i - dlse_i, and for each key
// j the query sees, P = e^(s - lse_i) (recomputed), dv_j += P z_j dout_i, dS = P (z_j dout_i . v_j - Delta_i),
// dq_i += scale dS k_j, dk_j += scale dS q_i. The dropout factors of a row are drawn a key block at a time.
// Parallelism is B * Hk tasks (so MQA with B = 1 runs on one thread: acceptable for the oracle).
// dbias, a separate pass: one task per row (bb, hb, i) of the bias, summing dS over the (b, h) pairs that
// broadcast it in a fixed order (deterministic, no two tasks write one element).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "ops/cpu/flash_attention_common.h"
#include "ops/cpu/parallel.h"
#include "runtime/dispatch.h"
#include "runtime/error.h"

namespace xfr::cpu {

namespace fa {

std::vector<int64_t> read_offsets(const char* op, const char* what, const Tensor& t, int64_t total) {
  std::vector<int64_t> r(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < r.size(); ++i)
    r[i] = t.dtype() == DType::i32 ? t.data<int32_t>()[i] : t.data<int64_t>()[i];
  XF_CHECK(!r.empty() && r.front() == 0, op, what, " must start at 0, got ", r.empty() ? -1 : r.front());
  for (size_t i = 1; i < r.size(); ++i)
    XF_CHECK(r[i] >= r[i - 1], op, what, " must not decrease, got ", r[i - 1], " then ", r[i], " at entry ", i);
  XF_CHECK(r.back() == total, op, what, " must end at the packed length ", total, ", got ", r.back());
  return r;
}

}  // namespace fa

namespace {

using fa::Params;
using fa::Span;
using fa::Tensors;

// 32 queries x (running max, sum) and their output rows, with one key block of 64 keys x D, stay in L1/L2 for
// the head dims of interest (64 keys x 128 dims x 4 B = 32 KB).
constexpr int64_t kQueryBlock = 32;
constexpr int64_t kKeyBlock = 64;

// q, k, v in either layout -> out, lse; one (b, h) pair. Row i of a head is s.q.seq (out: s.o.seq) elements after
// row 0.
template <class T>
void forward_head(const Params<T>& p, int64_t b, int64_t h, const Tensors<T>& t) {
  const FlashAttentionShape& s = p.s;
  const Span sp = p.span(b);
  const int64_t D = s.D, hk = h / p.G, qs = s.q.seq, ks = s.k.seq, os = s.o.seq;
  const T* qh = t.q + p.q_off(b, h, sp);
  const T* kh = t.k + p.k_off(b, hk, sp);
  const T* vh = t.v + p.k_off(b, hk, sp);
  T* oh = t.o + p.o_off(b, h, sp);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  T m[kQueryBlock], l[kQueryBlock], sc[kKeyBlock], z[kKeyBlock];
  for (int64_t i0 = 0; i0 < sp.Sq; i0 += kQueryBlock) {
    const int64_t i1 = std::min(sp.Sq, i0 + kQueryBlock);
    std::fill(m, m + kQueryBlock, neg_inf);
    std::fill(l, l + kQueryBlock, T(0));
    fa::zero_rows(oh + i0 * os, i1 - i0, os, D);
    // The first query of the block sees the earliest keys, the last one the latest.
    for (int64_t j0 = p.key_lo(sp, i0); j0 < p.key_hi(sp, i1 - 1); j0 += kKeyBlock) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t lo = std::max(j0, p.key_lo(sp, i)), hi = std::min(j0 + kKeyBlock, p.key_hi(sp, i));
        if (hi <= lo) continue;  // no key of this block visible to query i
        const int64_t n = hi - lo;
        const T* qi = qh + i * qs;
        T* oi = oh + i * os;
        const T* bias = p.bias_row(b, h, i);
        T mb = neg_inf;
        for (int64_t jj = 0; jj < n; ++jj) {
          sc[jj] = p.scale * fa::dot(qi, kh + (lo + jj) * ks, D) + (bias ? bias[lo + jj] : T(0));
          mb = std::max(mb, sc[jj]);
        }
        if (mb == neg_inf) continue;  // every key of the block hidden by a -inf bias: nothing to add
        const int64_t r = i - i0;
        const T m_new = std::max(m[r], mb);      // finite
        const T alpha = std::exp(m[r] - m_new);  // 0 when m was -inf (first block)
        l[r] *= alpha;
        for (int64_t d = 0; d < D; ++d) oi[d] *= alpha;
        fa::dropout_factors(p, p.row_stream(b, h, sp, i) + static_cast<uint64_t>(lo), n, z);
        for (int64_t jj = 0; jj < n; ++jj) {
          const T e = std::exp(sc[jj] - m_new);
          l[r] += e;  // the softmax's sum is over undropped probabilities
          if (z[jj] != T(0) && e != T(0)) fa::axpy(e * z[jj], vh + (lo + jj) * ks, oi, D);
        }
        m[r] = m_new;
      }
    }
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = i - i0;
      T* oi = oh + i * os;
      T& lse = t.lse_out[p.row(b, h, sp, i)];
      if (l[r] > T(0)) {
        const T inv = T(1) / l[r];
        for (int64_t d = 0; d < D; ++d) oi[d] *= inv;
        lse = m[r] + std::log(l[r]);
      } else {  // no key visible (Sk = 0, the mask, or a -inf bias): out 0, lse -inf
        std::fill(oi, oi + D, T(0));
        lse = neg_inf;
      }
    }
  }
}

// One (b, kv head) pair: writes dk, dv of the kv head and dq of its G query heads.
template <class T>
void backward_kv_head(const Params<T>& p, int64_t b, int64_t hk, const Tensors<T>& t) {
  const FlashAttentionShape& s = p.s;
  const Span sp = p.span(b);
  const int64_t D = s.D, qs = s.q.seq, ks = s.k.seq, os = s.o.seq;
  const int64_t kvoff = p.k_off(b, hk, sp);
  const T* kh = t.k + kvoff;
  const T* vh = t.v + kvoff;
  T* dkh = t.dk + kvoff;
  T* dvh = t.dv + kvoff;
  fa::zero_rows(dkh, sp.Sk, ks, D);
  fa::zero_rows(dvh, sp.Sk, ks, D);
  T z[kKeyBlock];
  for (int64_t h = hk * p.G; h < (hk + 1) * p.G; ++h) {
    const int64_t qoff = p.q_off(b, h, sp), ooff = p.o_off(b, h, sp);
    for (int64_t i = 0; i < sp.Sq; ++i) {
      const T* qi = t.q + qoff + i * qs;
      const T* oi = t.out + ooff + i * os;
      const T* doi = t.dout + ooff + i * os;
      T* dqi = t.dq + qoff + i * qs;
      std::fill(dqi, dqi + D, T(0));
      const int64_t lr = p.row(b, h, sp, i);
      const T li = t.lse[lr];
      if (li == -std::numeric_limits<T>::infinity()) continue;  // no key visible: P = 0, every gradient 0
      const T delta = fa::dot(doi, oi, D) - (t.dlse ? t.dlse[lr] : T(0));
      const T* bias = p.bias_row(b, h, i);
      const int64_t end = p.key_hi(sp, i);
      for (int64_t j0 = p.key_lo(sp, i); j0 < end; j0 += kKeyBlock) {
        const int64_t n = std::min(end - j0, kKeyBlock);
        fa::dropout_factors(p, p.row_stream(b, h, sp, i) + static_cast<uint64_t>(j0), n, z);
        for (int64_t jj = 0; jj < n; ++jj) {
          const int64_t j = j0 + jj;
          const T* kj = kh + j * ks;
          const T* vj = vh + j * ks;
          const T P = std::exp(p.scale * fa::dot(qi, kj, D) + (bias ? bias[j] : T(0)) - li);
          if (z[jj] != T(0)) fa::axpy(P * z[jj], doi, dvh + j * ks, D);
          const T ds = p.scale * P * (z[jj] * fa::dot(doi, vj, D) - delta);  // scale * dS
          fa::axpy(ds, kj, dqi, D);
          fa::axpy(ds, qi, dkh + j * ks, D);
        }
      }
    }
  }
}

// dbias row (bb, hb, i) (Sk entries) = sum over the (b, h) the bias row serves of dS[b, h, i, :].
template <class T>
void dbias_row(const Params<T>& p, int64_t Bb, int64_t Hb, int64_t bb, int64_t hb, int64_t i, const Tensors<T>& t) {
  const FlashAttentionShape& s = p.s;
  const Span sp = p.span(0);  // no varlen with a bias: every batch entry is (0, Sq, 0, Sk)
  const int64_t D = s.D, qs = s.q.seq, ks = s.k.seq, os = s.o.seq;
  T* db = t.dbias + (bb * Hb + hb) * s.Sq * s.Sk + i * s.Sk;
  std::fill(db, db + s.Sk, T(0));
  const int64_t lo = p.key_lo(sp, i), hi = p.key_hi(sp, i);
  std::vector<T> z(static_cast<size_t>(std::max<int64_t>(hi - lo, 0)));
  for (int64_t b = Bb == 1 ? 0 : bb; b < (Bb == 1 ? s.B : bb + 1); ++b)
    for (int64_t h = Hb == 1 ? 0 : hb; h < (Hb == 1 ? s.H : hb + 1); ++h) {
      const int64_t lr = p.row(b, h, sp, i), qoff = p.q_off(b, h, sp) + i * qs, kvoff = p.k_off(b, h / p.G, sp);
      const int64_t ooff = p.o_off(b, h, sp) + i * os;
      const T li = t.lse[lr];
      if (li == -std::numeric_limits<T>::infinity() || hi <= lo) continue;
      const T delta = fa::dot(t.dout + ooff, t.out + ooff, D) - (t.dlse ? t.dlse[lr] : T(0));
      const T* bias = p.bias_row(b, h, i);
      fa::dropout_factors(p, p.row_stream(b, h, sp, i) + static_cast<uint64_t>(lo), hi - lo, z.data());
      for (int64_t j = lo; j < hi; ++j) {
        const T P = std::exp(p.scale * fa::dot(t.q + qoff, t.k + kvoff + j * ks, D) + bias[j] - li);
        db[j] += P * (z[static_cast<size_t>(j - lo)] * fa::dot(t.dout + ooff, t.v + kvoff + j * ks, D) - delta);
      }
    }
}

// Every (b, h) task of the forward: f32 through the sgemm path (tasks in turn, OpenBLAS threads each GEMM), f64
// through the scalar loops (tasks in parallel).
template <class T>
void forward_all(const Params<T>& p, const Tensors<T>& t, const KernelContext& ctx) {
  const FlashAttentionShape& s = p.s;
  if constexpr (std::is_same_v<T, float>) {
    std::vector<float> sc(fa::blas_scratch(s)), z(static_cast<size_t>(s.Sk + 1));
    for (int64_t task = 0; task < s.B * s.H; ++task) fa::forward_head_blas(p, task / s.H, task % s.H, t, sc, z);
  } else {
    parallel_for(ctx, s.B * s.H, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t task = t0; task < t1; ++task) forward_head(p, task / s.H, task % s.H, t);
    });
  }
}

// Every (b, kv head) task of the backward, the same way.
template <class T>
void backward_all(const Params<T>& p, const Tensors<T>& t, const KernelContext& ctx) {
  const FlashAttentionShape& s = p.s;
  if constexpr (std::is_same_v<T, float>) {
    std::vector<float> P(fa::blas_scratch(s)), dP(P.size()), z(static_cast<size_t>(s.Sk + 1));
    for (int64_t task = 0; task < s.B * s.Hk; ++task)
      fa::backward_kv_head_blas(p, task / s.Hk, task % s.Hk, t, P, dP, z);
  } else {
    parallel_for(ctx, s.B * s.Hk, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t task = t0; task < t1; ++task) backward_kv_head(p, task / s.Hk, task % s.Hk, t);
    });
  }
}

struct Inputs {
  const Tensor *bias = nullptr, *cu_q = nullptr, *cu_k = nullptr;
};

// The optional inputs of a forward or backward node, at the positions the op names.
Inputs inputs_of(const FlashAttentionAttrs& a, const std::vector<Tensor>& in, int64_t bias_index, int64_t cu_index) {
  Inputs x;
  if (a.has_bias) x.bias = &in[static_cast<size_t>(bias_index)];
  if (a.varlen) {
    x.cu_q = &in[static_cast<size_t>(cu_index)];
    x.cu_k = &in[static_cast<size_t>(cu_index + 1)];
  }
  return x;
}

// The node's sizes and strides from its tensors' metadata (flash_attention_shape; the bias and offsets at the op's
// indices).
FlashAttentionShape shape_of(const char* op, const FlashAttentionAttrs& a, const std::vector<Tensor>& in,
                             int64_t bias_index, int64_t cu_index) {
  std::vector<TensorMeta> meta;
  for (const Tensor& t : in) meta.push_back(TensorMeta{t.shape(), t.dtype()});
  return flash_attention_shape(op, a, meta, bias_index, cu_index);
}

// q, k, v: the first three inputs, or the three parts of a packed qkv.
template <class T>
void set_qkv(const FlashAttentionAttrs& a, const FlashAttentionShape& s, const std::vector<Tensor>& in, Tensors<T>& t) {
  t.q = in[0].data<T>();
  t.k = a.qkv_packed ? t.q + s.k_offset : in[1].data<T>();
  t.v = a.qkv_packed ? t.q + s.v_offset : in[2].data<T>();
}

void forward_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                    const std::vector<Tensor>& out) {
  const char* name = "flash_attention";
  const auto& op = static_cast<const FlashAttentionOp&>(op_);
  const FlashAttentionAttrs& a = op.a;
  const Inputs x = inputs_of(a, in, a.bias_input(), a.cu_input());
  const FlashAttentionShape s = shape_of(name, a, in, a.bias_input(), a.cu_input());
  XF_DISPATCH_FLOAT(in[0].dtype(), name, T, {
    const Params<T> p = fa::make_params<T>(name, s, a, ctx, x.bias, x.cu_q, x.cu_k);
    Tensors<T> t;
    set_qkv(a, s, in, t);
    t.o = out[0].data<T>();
    // lse is optional (FlashAttentionOp::output_optional): without it, the rows' statistics go to scratch.
    std::vector<T> lse_scratch;
    if (out[1].defined()) {
      t.lse_out = out[1].data<T>();
    } else {
      lse_scratch.resize(static_cast<size_t>(s.lse_rows()));
      t.lse_out = lse_scratch.data();
    }
    forward_all(p, t, ctx);
  });
}

void backward_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                     const std::vector<Tensor>& out) {
  const char* name = "flash_attention_backward";
  const auto& op = static_cast<const FlashAttentionBackwardOp&>(op_);
  const FlashAttentionAttrs& a = op.a;
  const Inputs x = inputs_of(a, in, op.bias_input(), op.cu_input());
  const FlashAttentionShape s = shape_of(name, a, in, op.bias_input(), op.cu_input());
  XF_DISPATCH_FLOAT(in[0].dtype(), name, T, {
    const Params<T> p = fa::make_params<T>(name, s, a, ctx, x.bias, x.cu_q, x.cu_k);
    Tensors<T> t;
    set_qkv(a, s, in, t);
    t.out = in[static_cast<size_t>(op.out_input())].data<T>();
    t.dout = in[static_cast<size_t>(op.dout_input())].data<T>();
    t.lse = in[static_cast<size_t>(op.lse_input())].data<T>();
    t.dlse = op.has_dlse ? in[static_cast<size_t>(op.dlse_input())].data<T>() : nullptr;
    // dq, dk, dv, or the three parts of dqkv at qkv's offsets.
    t.dq = out[0].data<T>();
    t.dk = a.qkv_packed ? t.dq + s.k_offset : out[1].data<T>();
    t.dv = a.qkv_packed ? t.dq + s.v_offset : out[2].data<T>();
    backward_all(p, t, ctx);
    if (op.bias_grad) {
      t.dbias = out[static_cast<size_t>(op.dbias_output())].data<T>();
      const int64_t Bb = x.bias->shape()[0], Hb = x.bias->shape()[1], rows = Bb * Hb * s.Sq;
      parallel_for(ctx, rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          dbias_row(p, Bb, Hb, r / (Hb * s.Sq), (r / s.Sq) % Hb, r % s.Sq, t);
      });
    }
  });
}

}  // namespace

void register_flash_attention(KernelRegistry& r) {
  r.add("flash_attention", Device::Kind::cpu, forward_kernel);
  r.add("flash_attention_backward", Device::Kind::cpu, backward_kernel);
}

}  // namespace xfr::cpu
