// CPU kernels of ops/norm.h: one task per band of rows; each row is read from L1 after its first pass.
// Row reductions use eight independent accumulators, which the compiler keeps in SIMD registers (a single
// running sum is a serial dependency chain it may not reorder) and which also shortens the rounding chains.
// The parameter gradients (dgamma, dbeta) sum over rows: each fixed band of kBandRows rows accumulates its
// own partial vector, and the bands are added in order in double, so the result does not depend on the
// number of threads.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/parallel.h"
#include "ops/norm.h"
#include "runtime/dispatch.h"

namespace xfr::cpu {

namespace {

// Rows per task are chosen so that a task touches at least this many elements (64 KB of f32), enough to
// amortise handing the task to a worker.
constexpr int64_t kRowGrainElems = 1 << 14;
// Rows per partial dgamma/dbeta vector: short enough that f32 partial sums lose little (32 terms), long
// enough that the partial buffers stay small next to x (1/32 of its size).
constexpr int64_t kBandRows = 32;

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kRowGrainElems / std::max<int64_t>(cols, 1)); }

// sum over i in [0, n) of f(i), with eight interleaved accumulators.
template <class T, class F>
inline T sum8(int64_t n, F f) {
  T a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) a[k] += f(i + k);
  T s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  for (; i < n; ++i) s += f(i);
  return s;
}

// Adds the band partial sums (nbands x C, row-major) into out (C), in double, in band order.
template <class T>
void reduce_bands(const std::vector<T>& partial, int64_t nbands, int64_t C, T* out) {
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t b = 0; b < nbands; ++b) s += static_cast<double>(partial[static_cast<size_t>(b * C + c)]);
    out[c] = static_cast<T>(s);
  }
}

// ---- layernorm --------------------------------------------------------------------------------------------

// in: x (rows, C), [residual (rows, C), or (R, C) broadcast: row r adds row r % R], [gamma (C)], [beta (C)];
// out: y (rows, C), mean (rows), rstd (rows), [sum (rows, C)]
template <class T>
void layernorm_forward(const LayerNormOp& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                       const std::vector<Tensor>& out) {
  const int64_t C = in[0].shape().back(), rows = in[0].numel() / C;
  const T* x = in[0].data<T>();
  const T* residual = op.has_residual ? in[1].data<T>() : nullptr;
  const int64_t residual_rows = op.has_residual ? in[1].numel() / C : rows;
  const T* gamma = op.has_gamma ? in[static_cast<size_t>(op.gamma_index())].data<T>() : nullptr;
  const T* beta = op.has_beta ? in[static_cast<size_t>(op.beta_index())].data<T>() : nullptr;
  T* y = out[0].data<T>();
  T* mean = out[1].data<T>();
  T* rstd = out[2].data<T>();
  T* sum = op.write_sum ? out[3].data<T>() : nullptr;
  const T eps = static_cast<T>(op.eps), inv_c = T(1) / static_cast<T>(C);
  parallel_for(ctx, rows, row_grain(C), [&](int64_t r0, int64_t r1) {
    std::vector<T> srow(residual && !sum ? static_cast<size_t>(C) : 0);  // x + residual when not written out
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * C;
      if (residual) {  // the norm's input s = x + residual, in the sum output or a row buffer
        T* s = sum ? sum + r * C : srow.data();
        const T* rr = residual + (r % residual_rows) * C;
        for (int64_t i = 0; i < C; ++i) s[i] = xr[i] + rr[i];
        xr = s;
      }
      T* yr = y + r * C;
      const T m = sum8<T>(C, [xr](int64_t i) { return xr[i]; }) * inv_c;
      // Two-pass variance: no cancellation, unlike E[x^2] - E[x]^2.
      const T var = sum8<T>(C, [xr, m](int64_t i) { const T d = xr[i] - m; return d * d; }) * inv_c;
      const T rs = T(1) / std::sqrt(var + eps);
      mean[r] = m;
      rstd[r] = rs;
      if (gamma && beta) {
        for (int64_t i = 0; i < C; ++i) yr[i] = (xr[i] - m) * rs * gamma[i] + beta[i];
      } else if (gamma) {
        for (int64_t i = 0; i < C; ++i) yr[i] = (xr[i] - m) * rs * gamma[i];
      } else if (beta) {
        for (int64_t i = 0; i < C; ++i) yr[i] = (xr[i] - m) * rs + beta[i];
      } else {
        for (int64_t i = 0; i < C; ++i) yr[i] = (xr[i] - m) * rs;
      }
    }
  });
}

// in: x (rows, C), mean (rows), rstd (rows), [gamma (C)], dy (rows, C), [dadd (rows, C)];
// out: dx (rows, C), [dgamma (C)], [dbeta (C)], [dx_sum (C)]
template <class T>
void layernorm_backward(const LayerNormBackwardOp& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                        const std::vector<Tensor>& out) {
  const int64_t C = in[0].shape().back(), rows = in[0].numel() / C;
  const T* x = in[0].data<T>();
  const T* mean = in[1].data<T>();
  const T* rstd = in[2].data<T>();
  const T* gamma = op.has_gamma ? in[3].data<T>() : nullptr;
  const T* dy = in[static_cast<size_t>(op.dy_index())].data<T>();
  const T* dadd = op.has_dadd ? in.back().data<T>() : nullptr;
  T* dx = out[0].data<T>();
  const int64_t nbands = (rows + kBandRows - 1) / kBandRows;
  std::vector<T> pg(op.want_dgamma ? static_cast<size_t>(nbands * C) : 0, T(0));
  std::vector<T> pb(op.want_dbeta ? static_cast<size_t>(nbands * C) : 0, T(0));
  std::vector<T> ps(op.want_dx_sum ? static_cast<size_t>(nbands * C) : 0, T(0));
  const T inv_c = T(1) / static_cast<T>(C);
  parallel_for(ctx, nbands, std::max<int64_t>(1, row_grain(C) / kBandRows), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* ag = op.want_dgamma ? pg.data() + b * C : nullptr;
      T* ab = op.want_dbeta ? pb.data() + b * C : nullptr;
      T* as = op.want_dx_sum ? ps.data() + b * C : nullptr;
      for (int64_t r = b * kBandRows, r_end = std::min(rows, r + kBandRows); r < r_end; ++r) {
        const T* xr = x + r * C;
        const T* dyr = dy + r * C;
        T* dxr = dx + r * C;
        const T m = mean[r], rs = rstd[r];
        T sg, sgx;  // sum(g), sum(g * (x - mean)) with g = dy * gamma
        if (gamma) {
          sg = sum8<T>(C, [dyr, gamma](int64_t i) { return dyr[i] * gamma[i]; });
          sgx = sum8<T>(C, [dyr, gamma, xr, m](int64_t i) { return dyr[i] * gamma[i] * (xr[i] - m); });
        } else {
          sg = sum8<T>(C, [dyr](int64_t i) { return dyr[i]; });
          sgx = sum8<T>(C, [dyr, xr, m](int64_t i) { return dyr[i] * (xr[i] - m); });
        }
        const T a = sg * inv_c, bq = sgx * rs * inv_c;  // mean(g), mean(g * xhat)
        if (gamma) {
          for (int64_t i = 0; i < C; ++i) {
            const T xh = (xr[i] - m) * rs;
            dxr[i] = rs * (dyr[i] * gamma[i] - a - xh * bq);
          }
        } else {
          for (int64_t i = 0; i < C; ++i) {
            const T xh = (xr[i] - m) * rs;
            dxr[i] = rs * (dyr[i] - a - xh * bq);
          }
        }
        if (dadd)  // after the norm's own dx, as the add op would (the same values as the composite)
          for (int64_t i = 0; i < C; ++i) dxr[i] += dadd[r * C + i];
        if (ag)
          for (int64_t i = 0; i < C; ++i) ag[i] += dyr[i] * ((xr[i] - m) * rs);
        if (ab)
          for (int64_t i = 0; i < C; ++i) ab[i] += dyr[i];
        if (as)
          for (int64_t i = 0; i < C; ++i) as[i] += dxr[i];
      }
    }
  });
  if (op.want_dgamma) reduce_bands(pg, nbands, C, out[static_cast<size_t>(op.dgamma_output())].data<T>());
  if (op.want_dbeta) reduce_bands(pb, nbands, C, out[static_cast<size_t>(op.dbeta_output())].data<T>());
  if (op.want_dx_sum) reduce_bands(ps, nbands, C, out[static_cast<size_t>(op.dx_sum_output())].data<T>());
}

// ---- rmsnorm ------------------------------------------------------------------------------------------------

// in: x (rows, C), [gamma (C)];  out: y (rows, C), rstd (rows)
template <class T>
void rmsnorm_forward(const RMSNormOp& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                     const std::vector<Tensor>& out) {
  const int64_t C = in[0].shape().back(), rows = in[0].numel() / C;
  const T* x = in[0].data<T>();
  const T* gamma = op.has_gamma ? in[1].data<T>() : nullptr;
  T* y = out[0].data<T>();
  T* rstd = out[1].data<T>();
  const T eps = static_cast<T>(op.eps), inv_c = T(1) / static_cast<T>(C);
  parallel_for(ctx, rows, row_grain(C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * C;
      T* yr = y + r * C;
      const T ms = sum8<T>(C, [xr](int64_t i) { return xr[i] * xr[i]; }) * inv_c;
      const T rs = T(1) / std::sqrt(ms + eps);
      rstd[r] = rs;
      if (gamma) {
        for (int64_t i = 0; i < C; ++i) yr[i] = xr[i] * rs * gamma[i];
      } else {
        for (int64_t i = 0; i < C; ++i) yr[i] = xr[i] * rs;
      }
    }
  });
}

// in: x (rows, C), rstd (rows), [gamma (C)], dy (rows, C);  out: dx (rows, C), [dgamma (C)]
template <class T>
void rmsnorm_backward(const RMSNormBackwardOp& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                      const std::vector<Tensor>& out) {
  const int64_t C = in[0].shape().back(), rows = in[0].numel() / C;
  const T* x = in[0].data<T>();
  const T* rstd = in[1].data<T>();
  const T* gamma = op.has_gamma ? in[2].data<T>() : nullptr;
  const T* dy = in.back().data<T>();
  T* dx = out[0].data<T>();
  const int64_t nbands = (rows + kBandRows - 1) / kBandRows;
  std::vector<T> pg(op.want_dgamma ? static_cast<size_t>(nbands * C) : 0, T(0));
  const T inv_c = T(1) / static_cast<T>(C);
  parallel_for(ctx, nbands, std::max<int64_t>(1, row_grain(C) / kBandRows), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* ag = op.want_dgamma ? pg.data() + b * C : nullptr;
      for (int64_t r = b * kBandRows, r_end = std::min(rows, r + kBandRows); r < r_end; ++r) {
        const T* xr = x + r * C;
        const T* dyr = dy + r * C;
        T* dxr = dx + r * C;
        const T rs = rstd[r];
        const T sgx = gamma ? sum8<T>(C, [dyr, gamma, xr](int64_t i) { return dyr[i] * gamma[i] * xr[i]; })
                            : sum8<T>(C, [dyr, xr](int64_t i) { return dyr[i] * xr[i]; });
        const T bq = sgx * rs * inv_c;  // mean(g * xhat)
        if (gamma) {
          for (int64_t i = 0; i < C; ++i) dxr[i] = rs * (dyr[i] * gamma[i] - xr[i] * rs * bq);
        } else {
          for (int64_t i = 0; i < C; ++i) dxr[i] = rs * (dyr[i] - xr[i] * rs * bq);
        }
        if (ag)
          for (int64_t i = 0; i < C; ++i) ag[i] += dyr[i] * (xr[i] * rs);
      }
    }
  });
  if (op.want_dgamma) reduce_bands(pg, nbands, C, out[1].data<T>());
}

void layernorm_kernel(const Op& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                      const std::vector<Tensor>& out) {
  XF_DISPATCH_FLOAT(in[0].dtype(), "layernorm", T,
                    layernorm_forward<T>(static_cast<const LayerNormOp&>(op), ctx, in, out));
}
void layernorm_backward_kernel(const Op& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                               const std::vector<Tensor>& out) {
  XF_DISPATCH_FLOAT(in[0].dtype(), "layernorm_backward", T,
                    layernorm_backward<T>(static_cast<const LayerNormBackwardOp&>(op), ctx, in, out));
}
void rmsnorm_kernel(const Op& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                    const std::vector<Tensor>& out) {
  XF_DISPATCH_FLOAT(in[0].dtype(), "rmsnorm", T, rmsnorm_forward<T>(static_cast<const RMSNormOp&>(op), ctx, in, out));
}
void rmsnorm_backward_kernel(const Op& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                             const std::vector<Tensor>& out) {
  XF_DISPATCH_FLOAT(in[0].dtype(), "rmsnorm_backward", T,
                    rmsnorm_backward<T>(static_cast<const RMSNormBackwardOp&>(op), ctx, in, out));
}

}  // namespace

void register_norm(KernelRegistry& r) {
  r.add("layernorm", Device::Kind::cpu, layernorm_kernel);
  r.add("layernorm_backward", Device::Kind::cpu, layernorm_backward_kernel);
  r.add("rmsnorm", Device::Kind::cpu, rmsnorm_kernel);
  r.add("rmsnorm_backward", Device::Kind::cpu, rmsnorm_backward_kernel);
}

}  // namespace xfr::cpu
