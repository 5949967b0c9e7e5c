// CPU kernels of ops/softmax.h, parallel over rows. A row is written as z = scale * x + mask into y, then
// exponentiated in place and normalised, so it is read from memory once and revisited from L1. Causal rows
// only touch their first i + 1 entries. f32 uses exp_f32 (ops/cpu/simd.h), a branch-free exp the compiler
// vectorises; libm's expf is a call per element and costs several times more in attention-sized rows. The row
// loops are compiled for the baseline ISA and for AVX2+FMA, picked at run time (run_simd, ops/cpu/simd.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "ops/cpu/broadcast.h"
#include "ops/cpu/parallel.h"
#include "ops/cpu/simd.h"
#include "ops/softmax.h"
#include "runtime/dispatch.h"

namespace xfr::cpu {

namespace {

// v where y != 0, else +0. A bit mask rather than a branch keeps the loops that use it vectorisable (the
// compiler turns a select of a constant into control flow), and unlike y * v it never forms 0 * inf.
template <class T>
XF_INLINE T unless_zero(T y, T v) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  U b;
  std::memcpy(&b, &v, sizeof(T));
  b &= U(0) - static_cast<U>(y != T(0));
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// Rows per task: a task should cover at least this many elements (about 20 flops each).
constexpr int64_t kRowGrainElems = 1 << 13;

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kRowGrainElems / std::max<int64_t>(cols, 1)); }

// Normalises y[0, n) in place: y = exp(y - max) / sum; n >= 1. A row whose max is -inf (every entry masked)
// becomes zeros.
template <class T>
XF_INLINE void softmax_row_inplace(T* y, int64_t n) {
  T mx[8];
  for (T& m : mx) m = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; ++k) mx[k] = y[j + k] > mx[k] ? y[j + k] : mx[k];
  T m = mx[0];
  for (int k = 1; k < 8; ++k) m = mx[k] > m ? mx[k] : m;
  for (; j < n; ++j) m = y[j] > m ? y[j] : m;
  if (m == -std::numeric_limits<T>::infinity()) {
    std::fill(y, y + n, T(0));
    return;
  }
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; ++k) {
      const T e = exp_t<T>(y[j + k] - m);
      y[j + k] = e;
      acc[k] += e;
    }
  T s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; j < n; ++j) {
    const T e = exp_t<T>(y[j] - m);
    y[j] = e;
    s += e;
  }
  const T inv = T(1) / s;  // s >= 1: the max entry contributes exp(0)
  for (j = 0; j < n; ++j) y[j] *= inv;
}

// in: x (rows, Sk) with rows = (..., Sq), [mask broadcastable to x];  out: y (rows, Sk)
template <class T>
void softmax_forward(const SoftmaxOp& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                     const std::vector<Tensor>& out) {
  const Shape& xs = in[0].shape();
  const int64_t Sk = xs.back(), n = in[0].numel();
  if (n == 0) return;
  const int64_t rows = n / Sk;
  const int64_t Sq = xs.size() >= 2 ? xs[xs.size() - 2] : 1;
  const T* x = in[0].data<T>();
  T* y = out[0].data<T>();
  const T scale = static_cast<T>(op.scale);
  const T* mask = op.has_mask ? in[1].data<T>() : nullptr;
  const Shape mstr = op.has_mask ? broadcast_strides(in[1].shape(), xs) : Shape{};
  const int64_t mcol = op.has_mask ? mstr.back() : 0;
  const auto body = [&](int64_t r0, int64_t r1) XF_INLINE_LAMBDA {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * Sk;
      T* yr = y + r * Sk;
      const int64_t limit = op.causal ? std::min(Sk, r % Sq + 1) : Sk;  // keys j < limit are visible
      if (mask) {
        const T* mr = mask + row_offset(r, xs, mstr);
        if (mcol == 1) {
          for (int64_t j = 0; j < limit; ++j) yr[j] = scale * xr[j] + mr[j];
        } else {
          for (int64_t j = 0; j < limit; ++j) yr[j] = scale * xr[j] + mr[j * mcol];
        }
      } else {
        for (int64_t j = 0; j < limit; ++j) yr[j] = scale * xr[j];
      }
      softmax_row_inplace(yr, limit);
      std::fill(yr + limit, yr + Sk, T(0));
    }
  };
  parallel_for(ctx, rows, row_grain(Sk), [&](int64_t r0, int64_t r1) { run_simd(body, r0, r1); });
}

// in: y (rows, Sk), dy (rows, Sk);  out: dx (rows, Sk), [dz (rows, Sk)]
template <class T>
void softmax_backward(const SoftmaxBackwardOp& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                      const std::vector<Tensor>& out) {
  const int64_t Sk = in[0].shape().back(), n = in[0].numel();
  if (n == 0) return;
  const int64_t rows = n / Sk;
  const T* y = in[0].data<T>();
  const T* dy = in[1].data<T>();
  T* dx = out[0].data<T>();
  T* dz = op.emit_dz ? out[1].data<T>() : nullptr;
  const T scale = static_cast<T>(op.scale);
  const auto body = [&](int64_t r0, int64_t r1) XF_INLINE_LAMBDA {
    for (int64_t r = r0; r < r1; ++r) {
      const T* yr = y + r * Sk;
      const T* dyr = dy + r * Sk;
      T* dxr = dx + r * Sk;
      T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t j = 0;
      // y == 0 terms are skipped, so an infinite dy at a masked position cannot make 0 * inf = NaN.
      for (; j + 8 <= Sk; j += 8)
        for (int k = 0; k < 8; ++k) acc[k] += unless_zero(yr[j + k], yr[j + k] * dyr[j + k]);
      T s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      for (; j < Sk; ++j) s += unless_zero(yr[j], yr[j] * dyr[j]);
      if (dz) {
        T* dzr = dz + r * Sk;
        for (j = 0; j < Sk; ++j) {
          const T d = unless_zero(yr[j], yr[j] * (dyr[j] - s));
          dzr[j] = d;
          dxr[j] = scale * d;
        }
      } else {
        for (j = 0; j < Sk; ++j) dxr[j] = unless_zero(yr[j], scale * (yr[j] * (dyr[j] - s)));
      }
    }
  };
  parallel_for(ctx, rows, row_grain(Sk), [&](int64_t r0, int64_t r1) { run_simd(body, r0, r1); });
}

void softmax_kernel(const Op& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                    const std::vector<Tensor>& out) {
  XF_DISPATCH_FLOAT(in[0].dtype(), "softmax", T, softmax_forward<T>(static_cast<const SoftmaxOp&>(op), ctx, in, out));
}
void softmax_backward_kernel(const Op& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                             const std::vector<Tensor>& out) {
  XF_DISPATCH_FLOAT(in[0].dtype(), "softmax_backward", T,
                    softmax_backward<T>(static_cast<const SoftmaxBackwardOp&>(op), ctx, in, out));
}

}  // namespace

void register_softmax(KernelRegistry& r) {
  r.add("softmax", Device::Kind::cpu, softmax_kernel);
  r.add("softmax_backward", Device::Kind::cpu, softmax_backward_kernel);
}

}  // namespace xfr::cpu
