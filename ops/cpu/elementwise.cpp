// CPU kernels of ops/elementwise.h.
#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/cpu/broadcast.h"
#include "ops/cpu/parallel.h"
#include "ops/elementwise.h"
#include "runtime/dispatch.h"

namespace xfr::cpu {

namespace {

template <class T, class F>
void binary_loop(const KernelContext& ctx, const Tensor& a, const Tensor& b, const Tensor& y, F f) {
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  T* py = y.data<T>();
  const int64_t n = y.numel();
  if (n == 0) return;
  if (a.shape() == y.shape() && b.shape() == y.shape()) {
    parallel_for(ctx, n, kElementwiseGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) py[i] = f(pa[i], pb[i]);
    });
    return;
  }
  const Shape& out = y.shape();
  const int64_t cols = out.empty() ? 1 : out.back();
  const int64_t rows = cols == 0 ? 0 : n / cols;
  const Shape sa = broadcast_strides(a.shape(), out), sb = broadcast_strides(b.shape(), out);
  const int64_t ia = out.empty() ? 0 : sa.back(), ib = out.empty() ? 0 : sb.back();
  parallel_for(ctx, rows, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(cols, 1)),
               [&](int64_t s, int64_t e) {
                 for (int64_t r = s; r < e; ++r) {
                   const T* ra = pa + (out.empty() ? 0 : row_offset(r, out, sa));
                   const T* rb = pb + (out.empty() ? 0 : row_offset(r, out, sb));
                   T* ry = py + r * cols;
                   for (int64_t c = 0; c < cols; ++c) ry[c] = f(ra[c * ia], rb[c * ib]);
                 }
               });
}

void binary_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                   const std::vector<Tensor>& out) {
  const auto& op = static_cast<const BinaryOp&>(op_);
  XF_DISPATCH_FLOAT(out[0].dtype(), "binary", T, {
    switch (op.kind) {
      case BinaryKind::add: binary_loop<T>(ctx, in[0], in[1], out[0], [](T x, T z) { return x + z; }); break;
      case BinaryKind::sub: binary_loop<T>(ctx, in[0], in[1], out[0], [](T x, T z) { return x - z; }); break;
      case BinaryKind::mul: binary_loop<T>(ctx, in[0], in[1], out[0], [](T x, T z) { return x * z; }); break;
      case BinaryKind::div: binary_loop<T>(ctx, in[0], in[1], out[0], [](T x, T z) { return x / z; }); break;
    }
  });
}

void scale_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                  const std::vector<Tensor>& out) {
  const auto& op = static_cast<const ScaleOp&>(op_);
  XF_DISPATCH_FLOAT(out[0].dtype(), "scale", T, {
    const T* x = in[0].data<T>();
    T* y = out[0].data<T>();
    const T alpha = static_cast<T>(op.alpha);
    parallel_for(ctx, out[0].numel(), kElementwiseGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) y[i] = alpha * x[i];
    });
  });
}

// Sums x (shape X) into y (shape Y, which broadcasts to X). Accumulates in double: a bias gradient
// sums thousands of rows, and f32 accumulation would lose digits the oracle is supposed to keep.
void sum_to_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                   const std::vector<Tensor>& out) {
  XF_DISPATCH_FLOAT(out[0].dtype(), "sum_to", T, {
    const Tensor& x = in[0];
    const Shape& xs = x.shape();
    const T* px = x.data<T>();
    T* py = out[0].data<T>();
    const int64_t ny = out[0].numel(), nx = x.numel();
    const Shape sy = broadcast_strides(out[0].shape(), xs);
    const int64_t cols = xs.empty() ? 1 : xs.back();
    const int64_t rows = cols == 0 ? 0 : nx / cols;
    const int64_t iy = xs.empty() ? 0 : sy.back();
    // Each task accumulates its rows into a private buffer; buffers are then added in task order, so
    // the result does not depend on timing.
    const int64_t tasks = ctx.pool ? std::min<int64_t>(ctx.pool->size(), std::max<int64_t>(1, rows / 64)) : 1;
    std::vector<std::vector<double>> acc(static_cast<size_t>(tasks), std::vector<double>(static_cast<size_t>(ny), 0.0));
    auto body = [&](int64_t ts, int64_t te) {
      for (int64_t t = ts; t < te; ++t) {
        auto& a = acc[static_cast<size_t>(t)];
        const int64_t r0 = rows * t / tasks, r1 = rows * (t + 1) / tasks;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t base = xs.empty() ? 0 : row_offset(r, xs, sy);
          const T* rx = px + r * cols;
          for (int64_t c = 0; c < cols; ++c) a[static_cast<size_t>(base + c * iy)] += static_cast<double>(rx[c]);
        }
      }
    };
    if (ctx.pool && tasks > 1) {
      ctx.pool->parallel_for(tasks, 1, body);
    } else {
      body(0, tasks);
    }
    for (int64_t j = 0; j < ny; ++j) {
      double s = 0;
      for (int64_t t = 0; t < tasks; ++t) s += acc[static_cast<size_t>(t)][static_cast<size_t>(j)];
      py[j] = static_cast<T>(s);
    }
  });
}

void broadcast_to_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                         const std::vector<Tensor>& out) {
  XF_DISPATCH_ALL(out[0].dtype(), "broadcast_to", T, {
    const Shape& ys = out[0].shape();
    const T* px = in[0].data<T>();
    T* py = out[0].data<T>();
    const Shape sx = broadcast_strides(in[0].shape(), ys);
    const int64_t cols = ys.empty() ? 1 : ys.back();
    const int64_t rows = cols == 0 ? 0 : out[0].numel() / cols;
    const int64_t ix = ys.empty() ? 0 : sx.back();
    parallel_for(ctx, rows, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(cols, 1)),
                 [&](int64_t s, int64_t e) {
                   for (int64_t r = s; r < e; ++r) {
                     const T* rx = px + (ys.empty() ? 0 : row_offset(r, ys, sx));
                     T* ry = py + r * cols;
                     for (int64_t c = 0; c < cols; ++c) ry[c] = rx[c * ix];
                   }
                 });
  });
}

void fill_kernel(const Op& op_, const KernelContext&, const std::vector<Tensor>&, const std::vector<Tensor>& out) {
  Tensor y = out[0];
  y.fill(static_cast<const FillOp&>(op_).value);
}

}  // namespace

void register_elementwise(KernelRegistry& r) {
  r.add("binary", Device::Kind::cpu, binary_kernel);
  r.add("scale", Device::Kind::cpu, scale_kernel);
  r.add("sum_to", Device::Kind::cpu, sum_to_kernel);
  r.add("broadcast_to", Device::Kind::cpu, broadcast_to_kernel);
  r.add("fill", Device::Kind::cpu, fill_kernel);
}

}  // namespace xfr::cpu
