// Helpers shared by the flash_attention test files: layout transposes, a float64 reference of every variant of
// ops/flash_attention.h (masks written from their definitions, not from AttentionBand), and the inputs of a case.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "ops/flash_attention.h"
#include "runtime/rng.h"
#include "runtime/tensor.h"
#include "tests/testing.h"

namespace xfr::testing {

// (B, X, Y, D) -> (B, Y, X, D): bhsd <-> bshd on the host, in the tensor's dtype; rank 3 (X, Y, D) -> (Y, X, D)
// (the varlen layouts).
inline Tensor swap12(const Tensor& t) {
  const auto v = t.to_doubles();
  const Shape& s = t.shape();
  const bool r3 = s.size() == 3;
  const int64_t B = r3 ? 1 : s[0], X = s[r3 ? 0 : 1], Y = s[r3 ? 1 : 2], D = s.back();
  std::vector<double> r(v.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t x = 0; x < X; ++x)
      for (int64_t y = 0; y < Y; ++y)
        for (int64_t d = 0; d < D; ++d)
          r[static_cast<size_t>(((b * Y + y) * X + x) * D + d)] = v[static_cast<size_t>(((b * X + x) * Y + y) * D + d)];
  const Tensor out = Tensor::from_vector(r, r3 ? Shape{Y, X, D} : Shape{B, Y, X, D});
  return t.dtype() == DType::f64 ? out : out.to(t.dtype());
}

// One attention problem: sizes, the op's attributes, an optional bias (Bb, Hb > 0) and optional packed sequences
// (lens_q / lens_k non-empty: B is their count, Sq / Sk their sums).
struct FaProblem {
  int64_t B = 1, H = 1, Hk = 1, Sq = 1, Sk = 1, D = 8;
  FlashAttentionAttrs a;
  int64_t Bb = 0, Hb = 0;
  std::vector<int64_t> lens_q, lens_k;
  bool varlen() const { return !lens_q.empty(); }
  std::string name() const {
    std::string s = str_cat("B=", B, " H=", H, " Hk=", Hk, " Sq=", Sq, " Sk=", Sk, " D=", D, " ", a.str());
    if (Bb) s += str_cat(" bias=(", Bb, ", ", Hb, ")");
    return s;
  }
};

// Builders of problems (each returns a changed copy), shared by the CPU and CUDA mask tests.
inline FaProblem fa_problem(int64_t B, int64_t H, int64_t Hk, int64_t Sq, int64_t Sk, int64_t D) {
  FaProblem p;
  p.B = B;
  p.H = H;
  p.Hk = Hk;
  p.Sq = Sq;
  p.Sk = Sk;
  p.D = D;
  return p;
}
inline FaProblem causal(FaProblem p, CausalAlignment al) {
  p.a.causal = true;
  p.a.alignment = al;
  return p;
}
inline FaProblem window(FaProblem p, int64_t left, int64_t right, CausalAlignment al = CausalAlignment::top_left) {
  p.a.window_left = left;
  p.a.window_right = right;
  p.a.alignment = al;
  return p;
}
inline FaProblem with_bias(FaProblem p, int64_t Bb, int64_t Hb) {
  p.Bb = Bb;
  p.Hb = Hb;
  p.a.has_bias = true;
  return p;
}
inline FaProblem with_scale(FaProblem p) {  // the usual 1 / sqrt(D)
  p.a.scale = 1.0 / std::sqrt(static_cast<double>(p.D));
  return p;
}

// A packed problem from per-sequence lengths.
inline FaProblem packed(std::vector<int64_t> lq, std::vector<int64_t> lk, int64_t H, int64_t Hk, int64_t D) {
  FaProblem p;
  p.B = static_cast<int64_t>(lq.size());
  p.H = H;
  p.Hk = Hk;
  p.D = D;
  p.Sq = p.Sk = 0;
  for (int64_t x : lq) p.Sq += x;
  for (int64_t x : lk) p.Sk += x;
  p.lens_q = std::move(lq);
  p.lens_k = std::move(lk);
  p.a.varlen = true;
  return p;
}

// The inputs of a problem, in the op's layout: q, k, v, [bias], [cu_seqlens_q, cu_seqlens_k]. Drawn in bhsd (or
// varlen (H, T, D)) and transposed for bshd; `dt` for q, k, v, bias; offsets i32 (or i64 with `i64_offsets`).
struct FaInputs {
  std::vector<Tensor> all;  // the forward op's inputs, in order
  Tensor q, k, v, bias;     // q, k, v in bhsd (reference order), f64 values of the dt-rounded inputs
};

inline Tensor offsets_tensor(const std::vector<int64_t>& lens, bool i64) {
  std::vector<int64_t> cu{0};
  for (int64_t x : lens) cu.push_back(cu.back() + x);
  const Shape s{static_cast<int64_t>(cu.size())};
  if (i64) return Tensor::from_vector(cu, s);
  std::vector<int32_t> c32(cu.begin(), cu.end());
  return Tensor::from_vector(c32, s);
}

inline FaInputs make_fa_inputs(const FaProblem& p, uint64_t seed, DType dt, double lim = 1.5,
                               bool i64_offsets = false) {
  const Shape qs = p.varlen() ? Shape{p.H, p.Sq, p.D} : Shape{p.B, p.H, p.Sq, p.D};
  const Shape ks = p.varlen() ? Shape{p.Hk, p.Sk, p.D} : Shape{p.B, p.Hk, p.Sk, p.D};
  FaInputs r;
  const Tensor q = random_tensor(qs, seed, -lim, lim, dt), k = random_tensor(ks, seed + 1, -lim, lim, dt),
               v = random_tensor(ks, seed + 2, -lim, lim, dt);
  const bool bshd = p.a.layout == AttentionLayout::bshd;
  r.all = {bshd ? swap12(q) : q, bshd ? swap12(k) : k, bshd ? swap12(v) : v};
  r.q = q.to(DType::f64);
  r.k = k.to(DType::f64);
  r.v = v.to(DType::f64);
  if (p.Bb > 0) {
    const Tensor b = random_tensor({p.Bb, p.Hb, p.Sq, p.Sk}, seed + 3, -2.0, 2.0, dt);
    r.all.push_back(b);
    r.bias = b.to(DType::f64);
  }
  if (p.varlen()) {
    r.all.push_back(offsets_tensor(p.lens_q, i64_offsets));
    r.all.push_back(offsets_tensor(p.lens_k, i64_offsets));
  }
  return r;
}

// The float64 reference. Values in bhsd (varlen: (H, T, D)); lse (B, H, Sq) or (H, Tq); dbias (Bb, Hb, Sq, Sk).
struct FaRef {
  std::vector<double> out, lse, dq, dk, dv, dbias;
};

struct FaRefDropout {
  double p = 0.0;
  uint64_t seed = 0, offset = 0;
};

// Whether key j is visible to query i of a sequence with Sq queries and Sk keys, from the definitions in
// ops/flash_attention.h.
inline bool fa_visible(const FlashAttentionAttrs& a, int64_t i, int64_t j, int64_t Sq, int64_t Sk) {
  const int64_t diag = a.alignment == CausalAlignment::bottom_right ? i + Sk - Sq : i;
  if (a.causal && j > diag) return false;
  if (a.window_left >= 0 && j < diag - a.window_left) return false;
  if (a.window_right >= 0 && j > diag + a.window_right) return false;
  return true;
}

// Forward (and, with dout non-empty, backward with an optional dlse) in float64.
inline FaRef fa_reference(const FaProblem& p, const FaInputs& in, const std::vector<double>& dout = {},
                          const std::vector<double>& dlse = {}, const FaRefDropout& drop = {}) {
  const auto Q = in.q.to_doubles(), K = in.k.to_doubles(), V = in.v.to_doubles();
  const std::vector<double> Bias = p.Bb > 0 ? in.bias.to_doubles() : std::vector<double>{};
  const int64_t D = p.D, G = p.H / p.Hk;
  FaRef r;
  r.out.assign(Q.size(), 0.0);
  r.lse.assign(static_cast<size_t>(p.H * p.Sq * (p.varlen() ? 1 : p.B)), -std::numeric_limits<double>::infinity());
  const bool bwd = !dout.empty();
  if (bwd) {
    r.dq.assign(Q.size(), 0.0);
    r.dk.assign(K.size(), 0.0);
    r.dv.assign(K.size(), 0.0);
    if (p.Bb > 0) r.dbias.assign(Bias.size(), 0.0);
  }
  int64_t q0 = 0, k0 = 0;
  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t Sq = p.varlen() ? p.lens_q[static_cast<size_t>(b)] : p.Sq;
    const int64_t Sk = p.varlen() ? p.lens_k[static_cast<size_t>(b)] : p.Sk;
    for (int64_t h = 0; h < p.H; ++h) {
      const int64_t hk = h / G;
      // Element offsets of (i, d) / (j, d) and the lse row of query i.
      auto qi = [&](int64_t i) {
        return static_cast<size_t>((p.varlen() ? h * p.Sq + q0 + i : (b * p.H + h) * p.Sq + i) * D);
      };
      auto kj = [&](int64_t j) {
        return static_cast<size_t>((p.varlen() ? hk * p.Sk + k0 + j : (b * p.Hk + hk) * p.Sk + j) * D);
      };
      auto bias_at = [&](int64_t i, int64_t j) -> size_t {
        const int64_t bb = p.Bb == 1 ? 0 : b, hb = p.Hb == 1 ? 0 : h;
        return static_cast<size_t>(((bb * p.Hb + hb) * p.Sq + i) * p.Sk + j);
      };
      for (int64_t i = 0; i < Sq; ++i) {
        const int64_t row = p.varlen() ? h * p.Sq + q0 + i : (b * p.H + h) * p.Sq + i;
        std::vector<double> s(static_cast<size_t>(Sk), -std::numeric_limits<double>::infinity()), z(s.size(), 1.0);
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Sk; ++j) {
          if (!fa_visible(p.a, i, j, Sq, Sk)) continue;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += Q[qi(i) + static_cast<size_t>(d)] * K[kj(j) + static_cast<size_t>(d)];
          s[static_cast<size_t>(j)] = p.a.scale * dot + (p.Bb > 0 ? Bias[bias_at(i, j)] : 0.0);
          mx = std::max(mx, s[static_cast<size_t>(j)]);
          if (drop.p > 0) {
            const uint64_t e = drop.offset + static_cast<uint64_t>(row * p.Sk + (p.varlen() ? k0 : 0) + j);
            z[static_cast<size_t>(j)] = static_cast<double>(philox_uniform(drop.seed, e)) >= drop.p ? 1.0 / (1.0 - drop.p) : 0.0;
          }
        }
        if (mx == -std::numeric_limits<double>::infinity()) continue;  // nothing visible: out 0, lse -inf
        double sum = 0;
        for (int64_t j = 0; j < Sk; ++j) sum += std::exp(s[static_cast<size_t>(j)] - mx);
        r.lse[static_cast<size_t>(row)] = mx + std::log(sum);
        std::vector<double> P(s.size());
        for (int64_t j = 0; j < Sk; ++j) P[static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - mx) / sum;
        // Hidden keys (s = -inf, P = 0) add nothing to any sum below: skipped, which keeps a windowed reference
        // O(S W).
        auto hidden = [&](int64_t j) { return s[static_cast<size_t>(j)] == -std::numeric_limits<double>::infinity(); };
        for (int64_t j = 0; j < Sk; ++j)
          if (!hidden(j))
            for (int64_t d = 0; d < D; ++d)
            r.out[qi(i) + static_cast<size_t>(d)] += P[static_cast<size_t>(j)] * z[static_cast<size_t>(j)] *
                                                     V[kj(j) + static_cast<size_t>(d)];
        if (!bwd) continue;
        // dS = P (dP - sum_k P dP) + dlse P, dP = z dout v^T (the textbook softmax backward).
        std::vector<double> dP(s.size(), 0.0);
        double sum_pdp = 0;
        for (int64_t j = 0; j < Sk; ++j) {
          if (hidden(j)) continue;
          double x = 0;
          for (int64_t d = 0; d < D; ++d) {
            x += dout[qi(i) + static_cast<size_t>(d)] * V[kj(j) + static_cast<size_t>(d)];
            r.dv[kj(j) + static_cast<size_t>(d)] +=
                P[static_cast<size_t>(j)] * z[static_cast<size_t>(j)] * dout[qi(i) + static_cast<size_t>(d)];
          }
          dP[static_cast<size_t>(j)] = z[static_cast<size_t>(j)] * x;
          sum_pdp += P[static_cast<size_t>(j)] * dP[static_cast<size_t>(j)];
        }
        const double dl = dlse.empty() ? 0.0 : dlse[static_cast<size_t>(row)];
        for (int64_t j = 0; j < Sk; ++j) {
          if (hidden(j)) continue;
          const double pj = P[static_cast<size_t>(j)];
          const double ds = pj * (dP[static_cast<size_t>(j)] - sum_pdp) + dl * pj;
          if (p.Bb > 0) r.dbias[bias_at(i, j)] += ds;
          for (int64_t d = 0; d < D; ++d) {
            r.dq[qi(i) + static_cast<size_t>(d)] += p.a.scale * ds * K[kj(j) + static_cast<size_t>(d)];
            r.dk[kj(j) + static_cast<size_t>(d)] += p.a.scale * ds * Q[qi(i) + static_cast<size_t>(d)];
          }
        }
      }
    }
    q0 += Sq;
    k0 += Sk;
  }
  return r;
}

// The problem's masks (causal, window, bias, packed sequences) as one dense additive mask for the composite
// attention, (B, H, Sq, Sk) with B = 1 for packed sequences (block-diagonal over the concatenated positions):
// -inf where a key is hidden, the bias (or 0) where it is visible.
inline std::vector<double> fa_dense_mask(const FaProblem& p, const FaInputs& in) {
  const int64_t B = p.varlen() ? 1 : p.B;
  std::vector<double> mask(static_cast<size_t>(B * p.H * p.Sq * p.Sk), -std::numeric_limits<double>::infinity());
  const auto bias = p.Bb > 0 ? in.bias.to_doubles() : std::vector<double>{};
  int64_t q0 = 0, k0 = 0;
  for (int64_t s = 0; s < (p.varlen() ? p.B : 1); ++s) {
    const int64_t Sq = p.varlen() ? p.lens_q[static_cast<size_t>(s)] : p.Sq;
    const int64_t Sk = p.varlen() ? p.lens_k[static_cast<size_t>(s)] : p.Sk;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t i = 0; i < Sq; ++i)
          for (int64_t j = 0; j < Sk; ++j) {
            if (!fa_visible(p.a, i, j, Sq, Sk)) continue;
            const size_t bi =
                p.Bb > 0 ? static_cast<size_t>((((p.Bb == 1 ? 0 : b) * p.Hb + (p.Hb == 1 ? 0 : h)) * p.Sq + i) * p.Sk + j)
                         : 0;
            mask[static_cast<size_t>(((b * p.H + h) * p.Sq + q0 + i) * p.Sk + k0 + j)] = p.Bb > 0 ? bias[bi] : 0.0;
          }
    q0 += Sq;
    k0 += Sk;
  }
  return mask;
}

// A tensor of the op (in p's layout) as float64 values in the reference's order (bhsd / (H, T, D)).
inline std::vector<double> fa_ref_order(const FaProblem& p, const Tensor& t) {
  return (p.a.layout == AttentionLayout::bshd ? swap12(t) : t).to_doubles();
}

// -inf (an lse with nothing visible) compared as a finite sentinel, so that equal infinities pass.
inline std::vector<double> finite_lse(std::vector<double> v) {
  for (double& x : v)
    if (x == -std::numeric_limits<double>::infinity()) x = -1e300;
  return v;
}

// |got - ref| <= atol_rel * max(max|ref|, floor) + rtol * |ref|: for sums with cancellation (gradients), an
// element's error is a fraction of the tensor's scale, not of the (possibly tiny) element.
// The scale floor: inputs are O(1), so every term of a gradient sum is O(1) even where the sum cancels to 0
// (Sk = 1: softmax over one key has dq = dk = 0 exactly, and a GPU's dS = P (dP - D) leaves ~1e-7 of
// rounding, seen on the H200 2026-11-29). `floor` is that natural scale; the CPU-vs-f64 checks pass a tiny one.
inline void check_scaled(const std::vector<double>& got, const std::vector<double>& ref, double atol_rel, double rtol,
                         const std::string& what, double floor = 1e-6) {
  double mx = 0;
  for (double x : ref) mx = std::max(mx, std::abs(x));
  check_close(got, ref, atol_rel * std::max(mx, floor), rtol, what);
}

// ---- tolerances ------------------------------------------------------------------------------------------
// Per dtype, each with its reason. `out` is an average of values in [-1.5, 1.5], so its errors are absolute;
// lse is compared absolutely (it is ~log Sk + the row max); gradients relative to their largest element.
struct FaTol {
  double out_atol, out_rtol;      // out
  double lse_atol;                // lse (always f32 or f64)
  double grad_rel, grad_rtol;     // dq, dk, dv: atol = grad_rel * max|ref|
  const char* why;
};

inline FaTol fa_tolerance(DType t) {
  switch (t) {
    case DType::f64:
      return {1e-12, 1e-10, 1e-12, 1e-10, 1e-9, "the same sums in double in another order"};
    case DType::f32:
      return {2e-5, 1e-4, 2e-5, 1e-4, 1e-4,
              "f32 sums of up to ~1000 terms in another order (tiles, warps), expf/exp2f vs libm: ~1e-6 relative, "
              "x10 margin; gradient sums cancel, so their error is relative to the tensor's scale"};
    case DType::bf16:
      return {2e-2, 2e-2, 2e-4, 2e-2, 2e-2,
              "P (and dS) rounded to bf16 before the second matmul (2^-9 relative per term) and the result rounded "
              "to bf16 (2^-9): ~4e-3 of the value scale, x5 margin; lse is fp32 from exact 16-bit products"};
    case DType::f16:
      return {3e-3, 3e-3, 2e-4, 4e-3, 4e-3,
              "as bf16 with f16's 2^-11 rounding: ~1e-3 of the value scale, x3 margin"};
    default:
      return {0, 0, 0, 0, 0, "integers are exact"};
  }
}

}  // namespace xfr::testing
