// CPU kernel of ops/rotary.h. Two passes: the (S, hd/2) cos/sin table, computed in double and rounded once
// to the compute type (in parallel over positions), then one pass over x in parallel over rows, each row a
// simple loop over its hd/2 pairs that the compiler vectorises. The table is rebuilt per call: S * hd/2
// sincos is small next to the attention that follows (S * S * hd per head).
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/parallel.h"
#include "ops/rotary.h"
#include "runtime/dispatch.h"

namespace xfr::cpu {

namespace {

template <class T>
void rotary_rows(const T* __restrict x, T* __restrict y, const T* __restrict cos_t, const T* __restrict sin_t,
                 int64_t r0, int64_t r1, int64_t S, int64_t inner, int64_t h) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = (r / inner) % S;  // row r of the flattened (Z, S, inner) sits at sequence position s
    const T* c = cos_t + s * h;
    const T* sn = sin_t + s * h;
    const T* a = x + r * 2 * h;  // x[:h]
    const T* b = a + h;          // x[h:]
    T* ya = y + r * 2 * h;
    T* yb = ya + h;
    for (int64_t i = 0; i < h; ++i) {
      const T ai = a[i], bi = b[i];
      ya[i] = ai * c[i] - bi * sn[i];
      yb[i] = bi * c[i] + ai * sn[i];
    }
  }
}

void rotary_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                   const std::vector<Tensor>& out) {
  const auto& op = static_cast<const RotaryOp&>(op_);
  const Tensor& xt = in[0];  // x: (..., S, hd) or (..., S, H, hd)
  const RotaryDims dims = rotary_dims(xt.shape(), op.seq_axis);
  const int64_t hd = dims.hd, h = hd / 2, S = dims.S, inner = dims.inner;
  const int64_t rows = xt.numel() / hd;  // (Z, S, inner) flattened
  XF_DISPATCH_FLOAT(xt.dtype(), "rotary", T, {
    std::vector<T> cos_t(static_cast<size_t>(S * h)), sin_t(static_cast<size_t>(S * h));  // (S, h) each
    std::vector<double> inv_freq(static_cast<size_t>(h));
    for (int64_t i = 0; i < h; ++i)
      inv_freq[static_cast<size_t>(i)] = std::pow(kRotaryBase, -static_cast<double>(2 * i) / static_cast<double>(hd));
    const double sign = op.inverse ? -1.0 : 1.0;
    // ~4096 sincos per task (a few tens of microseconds) amortise its dispatch.
    parallel_for(ctx, S, std::max<int64_t>(1, 4096 / h), [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) {
        const double t = static_cast<double>(s + op.offset);
        for (int64_t i = 0; i < h; ++i) {
          const double a = t * inv_freq[static_cast<size_t>(i)];
          cos_t[static_cast<size_t>(s * h + i)] = static_cast<T>(std::cos(a));
          sin_t[static_cast<size_t>(s * h + i)] = static_cast<T>(sign * std::sin(a));
        }
      }
    });
    const T* x = xt.data<T>();
    T* y = out[0].data<T>();  // (..., S, hd)
    parallel_for(ctx, rows, std::max<int64_t>(1, kElementwiseGrain / hd), [&](int64_t r0, int64_t r1) {
      rotary_rows<T>(x, y, cos_t.data(), sin_t.data(), r0, r1, S, inner, h);
    });
  });
}

}  // namespace

void register_rotary(KernelRegistry& r) { r.add("rotary", Device::Kind::cpu, rotary_kernel); }

}  // namespace xfr::cpu
