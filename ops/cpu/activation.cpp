// CPU kernels of ops/activation.h. One loop per kind (the kind is dispatched outside the loop), each a simple
// map over contiguous elements. f64 uses libm (the reference path). f32 uses branch-free forms the compiler
// vectorises, built on exp_f32 of ops/cpu/simd.h (libm's erff/expf/tanhf are calls per element and cost
// several times more):
//   sigmoid(x)    = 1 / (1 + exp(-x))
//   gelu          = x Phi(x), Phi from erfc by the Chebyshev fit of Numerical Recipes (erfcc: relative error
//                   < 1.2e-7 everywhere, so the negative tail x Phi(x) keeps its relative accuracy too)
//   gelu_tanh     = x/2 (1 + tanh u) = x sigmoid(2u): no cancellation near u = 0, unlike 1 - 2/(exp(2u) + 1)
// The loops are compiled for the baseline ISA and for AVX2+FMA, picked at run time (run_simd, ops/cpu/simd.h).
// Selects are written with integer bit masks (pick): the compiler turns a `c ? 0 : v` (and std::max(x, 0)
// when the result feeds more arithmetic) into control flow, which stops vectorisation.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops/activation.h"
#include "ops/cpu/parallel.h"
#include "ops/cpu/simd.h"
#include "runtime/dispatch.h"

namespace xfr::cpu {

namespace {

// a where c, else b, by integer masks: both are evaluated, and no branch or select-of-a-constant is left
// for the compiler to turn into control flow.
template <class T>
XF_INLINE T pick(bool c, T a, T b) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  U ua, ub;
  std::memcpy(&ua, &a, sizeof(T));
  std::memcpy(&ub, &b, sizeof(T));
  const U m = U(0) - static_cast<U>(c);
  const U r = (ua & m) | (ub & ~m);
  T out;
  std::memcpy(&out, &r, sizeof(T));
  return out;
}

// max(x, 0) that keeps NaN (as torch's relu does).
template <class T>
XF_INLINE T relu_t(T x) {
  return pick(x <= T(0), T(0), x);
}

constexpr double kSqrt1_2 = 0.70710678118654752440;      // 1/sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1/sqrt(2 pi), the normal density at 0
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2/pi), gelu_tanh's scale
constexpr double kGeluTanhCubic = 0.044715;              // gelu_tanh's cubic coefficient (Hendrycks & Gimpel)

// Phi(-|x|) = erfc(|x| / sqrt 2) / 2 in float, by Numerical Recipes' erfcc (W. H. Press et al., 2nd ed.,
// section 6.2): erfc(z) = t exp(-z^2 - 1.26551223 + t P(t)), t = 1 / (1 + z/2), z >= 0.
XF_INLINE float half_erfc_abs_f32(float x) {
  const float z = std::fabs(x) * static_cast<float>(kSqrt1_2);
  const float t = 1.0f / (1.0f + 0.5f * z);
  float p = 0.17087277f;  // the fit's coefficients, highest order first
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  return 0.5f * t * exp_f32(p - z * z);
}

// Phi(x), the standard normal CDF.
XF_INLINE float phi_cdf_f32(float x) {
  const float h = half_erfc_abs_f32(x);
  return pick(x >= 0.0f, 1.0f - h, h);
}
XF_INLINE double phi_cdf_f64(double x) { return 0.5 * std::erfc(-x * kSqrt1_2); }

XF_INLINE float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }
XF_INLINE double sigmoid_f64(double x) { return 1.0 / (1.0 + std::exp(-x)); }

template <class T>
XF_INLINE T sigmoid_t(T x) {
  if constexpr (std::is_same_v<T, float>) return sigmoid_f32(x);
  else return sigmoid_f64(x);
}
template <class T>
XF_INLINE T phi_cdf_t(T x) {
  if constexpr (std::is_same_v<T, float>) return phi_cdf_f32(x);
  else return phi_cdf_f64(x);
}
// Each kind: f(x) and f'(x), with the op's parameters where it has any.
struct Relu {
  template <class T> XF_INLINE T f(T x) const { return relu_t(x); }
  template <class T> XF_INLINE T df(T x) const { return pick(x <= T(0), T(0), T(1)); }  // torch: 0 at x = 0
};
struct Gelu {
  template <class T> XF_INLINE T f(T x) const { return x * phi_cdf_t(x); }
  template <class T> XF_INLINE T df(T x) const {
    return phi_cdf_t(x) + x * static_cast<T>(kInvSqrt2Pi) * exp_t(T(-0.5) * x * x);
  }
};
struct GeluTanh {
  template <class T>
  XF_INLINE static T u(T x) {
    return static_cast<T>(kSqrt2OverPi) * (x + static_cast<T>(kGeluTanhCubic) * x * x * x);
  }
  template <class T> XF_INLINE T f(T x) const {
    if constexpr (std::is_same_v<T, float>) return x * sigmoid_f32(2.0f * u(x));
    else return 0.5 * x * (1.0 + std::tanh(u(x)));
  }
  template <class T> XF_INLINE T df(T x) const {
    const T du = static_cast<T>(kSqrt2OverPi) * (T(1) + T(3) * static_cast<T>(kGeluTanhCubic) * x * x);
    if constexpr (std::is_same_v<T, float>) {
      const float s = sigmoid_f32(2.0f * u(x));  // = (1 + tanh u) / 2;  1 - tanh^2 u = 4 s (1 - s)
      return s + 2.0f * x * s * (1.0f - s) * du;
    } else {
      const double t = std::tanh(u(x));
      return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
    }
  }
};
struct LeakyRelu {
  double slope;
  template <class T> XF_INLINE T f(T x) const { return pick(x > T(0), x, static_cast<T>(slope) * x); }
  // torch: the slope at x = 0
  template <class T> XF_INLINE T df(T x) const { return pick(x > T(0), T(1), static_cast<T>(slope)); }
};
struct SquaredRelu {
  template <class T> XF_INLINE T f(T x) const {
    const T r = relu_t(x);
    return r * r;
  }
  template <class T> XF_INLINE T df(T x) const { return T(2) * relu_t(x); }
};
struct Smelu {
  double beta;
  // c = max(x + beta, 0): 0 below -beta, so c^2 / (4 beta) covers both the zero and the quadratic piece.
  template <class T> XF_INLINE T f(T x) const {
    const T b = static_cast<T>(beta), c = relu_t(x + b);
    return pick(x >= b, x, c * c / (T(4) * b));
  }
  template <class T> XF_INLINE T df(T x) const {
    const T b = static_cast<T>(beta), c = relu_t(x + b);
    return pick(x >= b, T(1), c / (T(2) * b));
  }
};
struct Silu {
  template <class T> XF_INLINE T f(T x) const { return x * sigmoid_t(x); }
  template <class T> XF_INLINE T df(T x) const {
    const T s = sigmoid_t(x);
    return s * (T(1) + x * (T(1) - s));
  }
};
struct Sigmoid {
  template <class T> XF_INLINE T f(T x) const { return sigmoid_t(x); }
  template <class T> XF_INLINE T df(T x) const {
    const T s = sigmoid_t(x);
    return s * (T(1) - s);
  }
};

// Elements per task: each costs up to ~40 flops (gelu), so a quarter of the elementwise grain.
constexpr int64_t kActivationGrain = kElementwiseGrain / 4;

// x, y: (n)
template <class T, class F>
void forward_loop(const KernelContext& ctx, const F& fn, const T* x, T* y, int64_t n) {
  const auto body = [&](int64_t s, int64_t e) XF_INLINE_LAMBDA {
    for (int64_t i = s; i < e; ++i) y[i] = fn.template f<T>(x[i]);
  };
  parallel_for(ctx, n, kActivationGrain, [&](int64_t s, int64_t e) { run_simd(body, s, e); });
}

// x, dy, dx: (n)
template <class T, class F>
void backward_loop(const KernelContext& ctx, const F& fn, const T* x, const T* dy, T* dx, int64_t n) {
  const auto body = [&](int64_t s, int64_t e) XF_INLINE_LAMBDA {
    for (int64_t i = s; i < e; ++i) dx[i] = dy[i] * fn.template df<T>(x[i]);
  };
  parallel_for(ctx, n, kActivationGrain, [&](int64_t s, int64_t e) { run_simd(body, s, e); });
}

// Calls body(functor) with the functor of `kind`.
template <class Body>
void with_kind(ActivationKind kind, const ActivationParams& p, Body&& body) {
  switch (kind) {
    case ActivationKind::relu: body(Relu{}); return;
    case ActivationKind::gelu: body(Gelu{}); return;
    case ActivationKind::gelu_tanh: body(GeluTanh{}); return;
    case ActivationKind::leaky_relu: body(LeakyRelu{p.negative_slope}); return;
    case ActivationKind::squared_relu: body(SquaredRelu{}); return;
    case ActivationKind::smelu: body(Smelu{p.beta}); return;
    case ActivationKind::silu: body(Silu{}); return;
    case ActivationKind::sigmoid: body(Sigmoid{}); return;
    case ActivationKind::star_relu: break;
  }
  throw Error("activation", "star_relu is not an ActivationOp kind");
}

// in: x (...);  out: y (x's shape)
void activation_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                       const std::vector<Tensor>& out) {
  const auto& op = static_cast<const ActivationOp&>(op_);
  XF_DISPATCH_FLOAT(in[0].dtype(), "activation", T, {
    const T* x = in[0].data<T>();
    T* y = out[0].data<T>();
    const int64_t n = in[0].numel();
    with_kind(op.kind, op.params, [&](const auto& fn) { forward_loop<T>(ctx, fn, x, y, n); });
  });
}

// in: x (...), dy (...);  out: dx (...)
void activation_backward_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                                const std::vector<Tensor>& out) {
  const auto& op = static_cast<const ActivationBackwardOp&>(op_);
  XF_DISPATCH_FLOAT(in[0].dtype(), "activation_backward", T, {
    const T* x = in[0].data<T>();
    const T* dy = in[1].data<T>();
    T* dx = out[0].data<T>();
    const int64_t n = in[0].numel();
    with_kind(op.kind, op.params, [&](const auto& fn) { backward_loop<T>(ctx, fn, x, dy, dx, n); });
  });
}

// in: x (...), scale (1), bias (1);  out: y (x's shape)
void star_relu_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                      const std::vector<Tensor>& out) {
  XF_DISPATCH_FLOAT(in[0].dtype(), "star_relu", T, {
    const T* x = in[0].data<T>();
    const T s = in[1].data<T>()[0], b = in[2].data<T>()[0];
    T* y = out[0].data<T>();
    parallel_for(ctx, in[0].numel(), kElementwiseGrain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const T r = relu_t(x[i]);
        y[i] = s * r * r + b;
      }
    });
  });
}

// Elements per partial sum of dscale and dbias: the partials are added in block order, so the sums do not
// depend on the number of threads; 16k elements per block keep the partial vector small.
constexpr int64_t kSumBlock = 1 << 14;

// in: x (...), scale (1), dy (...);  out: dx (...), dscale (1), dbias (1)
void star_relu_backward_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                               const std::vector<Tensor>& out) {
  XF_DISPATCH_FLOAT(in[0].dtype(), "star_relu_backward", T, {
    const T* x = in[0].data<T>();
    const T s = in[1].data<T>()[0];
    const T* dy = in[2].data<T>();
    T* dx = out[0].data<T>();
    const int64_t n = in[0].numel(), blocks = (n + kSumBlock - 1) / kSumBlock;
    std::vector<double> ps(static_cast<size_t>(blocks), 0.0), pb(static_cast<size_t>(blocks), 0.0);
    parallel_for(ctx, blocks, std::max<int64_t>(1, kElementwiseGrain / kSumBlock), [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        T as[8] = {0, 0, 0, 0, 0, 0, 0, 0}, ab[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const int64_t i0 = blk * kSumBlock, i1 = std::min(n, i0 + kSumBlock);
        int64_t i = i0;
        for (; i + 8 <= i1; i += 8)
          for (int k = 0; k < 8; ++k) {
            const T r = relu_t(x[i + k]);
            dx[i + k] = dy[i + k] * (T(2) * s * r);
            as[k] += dy[i + k] * r * r;
            ab[k] += dy[i + k];
          }
        double ss = 0, sb = 0;
        for (int k = 0; k < 8; ++k) {
          ss += static_cast<double>(as[k]);
          sb += static_cast<double>(ab[k]);
        }
        for (; i < i1; ++i) {
          const T r = relu_t(x[i]);
          dx[i] = dy[i] * (T(2) * s * r);
          ss += static_cast<double>(dy[i] * r * r);
          sb += static_cast<double>(dy[i]);
        }
        ps[static_cast<size_t>(blk)] = ss;
        pb[static_cast<size_t>(blk)] = sb;
      }
    });
    double ss = 0, sb = 0;
    for (int64_t blk = 0; blk < blocks; ++blk) {
      ss += ps[static_cast<size_t>(blk)];
      sb += pb[static_cast<size_t>(blk)];
    }
    out[1].data<T>()[0] = static_cast<T>(ss);
    out[2].data<T>()[0] = static_cast<T>(sb);
  });
}

}  // namespace

void register_activation(KernelRegistry& r) {
  r.add("activation", Device::Kind::cpu, activation_kernel);
  r.add("activation_backward", Device::Kind::cpu, activation_backward_kernel);
  r.add("star_relu", Device::Kind::cpu, star_relu_kernel);
  r.add("star_relu_backward", Device::Kind::cpu, star_relu_backward_kernel);
}

}  // namespace xfr::cpu
