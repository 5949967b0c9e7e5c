// CPU kernels of ops/cross_entropy.h, parallel over rows. Forward: per row one pass for the max, one for
// sum(exp(x - max)) (and sum(x) with label smoothing); the row losses are kept in double and averaged in row
// order, so the loss does not depend on the number of threads. Backward: one pass per row writes
// dlogits = (a + b) p - a ls / V, then fixes the target entry (the forward too, for its optional dlogits output). f32 uses exp_f32 (ops/cpu/simd.h), a
// branch-free exp the compiler vectorises; libm's expf is a call per element. The row loops are compiled for
// the baseline ISA and for AVX2+FMA, picked at run time (run_simd, ops/cpu/simd.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ops/cpu/parallel.h"
#include "ops/cpu/simd.h"
#include "ops/cross_entropy.h"
#include "runtime/dispatch.h"

namespace xfr::cpu {

namespace {

// Rows per task: a task should cover at least this many logits (about 20 flops each).
constexpr int64_t kRowGrainElems = 1 << 13;

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kRowGrainElems / std::max<int64_t>(cols, 1)); }

template <class T>
XF_INLINE T row_max(const T* x, int64_t n) {
  T mx[8];
  for (T& m : mx) m = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; ++k) mx[k] = x[j + k] > mx[k] ? x[j + k] : mx[k];
  T m = mx[0];
  for (int k = 1; k < 8; ++k) m = mx[k] > m ? mx[k] : m;
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// Vocabulary rows are long (50k for GPT-2): sums run in chunks of kSumChunk elements over eight f32
// accumulators each, and the chunk sums are added in double, so no accumulator takes more than 64 terms.
constexpr int64_t kSumChunk = 512;

// sum over j of f(x[j]) for a row of n values, chunked as described above.
template <class T, class F>
XF_INLINE double chunked_sum(const T* x, int64_t n, F f) {
  double total = 0;
  for (int64_t c0 = 0; c0 < n; c0 += kSumChunk) {
    const int64_t c1 = std::min(n, c0 + kSumChunk);
    T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = c0;
    for (; j + 8 <= c1; j += 8)
      for (int k = 0; k < 8; ++k) acc[k] += f(x[j + k]);
    T s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; j < c1; ++j) s += f(x[j]);
    total += static_cast<double>(s);
  }
  return total;
}

template <class T>
XF_INLINE double row_sum_exp(const T* x, int64_t n, T shift) {
  return chunked_sum(x, n, [shift](T v) XF_INLINE_LAMBDA { return exp_t<T>(v - shift); });
}

template <class T>
XF_INLINE double row_sum(const T* x, int64_t n) {
  return chunked_sum(x, n, [](T v) XF_INLINE_LAMBDA { return v; });
}

// Throws naming the first row whose target is neither in [0, V) nor ignore_index; returns the number of
// rows that count (targets != ignore_index).
template <class I>
int64_t check_targets(const char* op, const I* tg, int64_t N, int64_t V, int64_t ignore_index) {
  int64_t valid = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t = static_cast<int64_t>(tg[n]);
    if (t == ignore_index) continue;
    XF_CHECK(t >= 0 && t < V, op, "target ", t, " of row ", n, " is outside [0, ", V, ") and is not ignore_index (",
             ignore_index, ")");
    ++valid;
  }
  return valid;
}

// dlogits of rows [0, N): coef = d loss / d row loss (dloss / n_valid), dlse (N) or null. The backward's formula,
// which the forward also runs for its dlogits output (coef = 1 / n_valid).
template <class T, class I>
void write_dlogits(const KernelContext& ctx, const T* x, const T* lse, const I* tg, double coef, const T* dlse,
                   T* dx, int64_t N, int64_t V, int64_t ignore_index, double ls) {
  const auto body = [&](int64_t n0, int64_t n1) XF_INLINE_LAMBDA {
    for (int64_t n = n0; n < n1; ++n) {
      const T* xr = x + n * V;
      T* dr = dx + n * V;
      const int64_t t = static_cast<int64_t>(tg[n]);
      const bool counted = t != ignore_index;
      const T a = counted ? static_cast<T>(coef) : T(0);  // weight of this row's loss
      const T ab = a + (dlse ? dlse[n] : T(0));           // weight of p = softmax(row)
      const T smooth = static_cast<T>(static_cast<double>(a) * ls / static_cast<double>(V));
      const T l = lse[n];
      for (int64_t v = 0; v < V; ++v) dr[v] = ab * exp_t<T>(xr[v] - l) - smooth;
      if (counted) dr[t] -= static_cast<T>(static_cast<double>(a) * (1.0 - ls));
    }
  };
  parallel_for(ctx, N, row_grain(V), [&](int64_t n0, int64_t n1) { run_simd(body, n0, n1); });
}

// in: logits (N, V), targets (N);  out: loss (1,), lse (N), [dlogits (N, V): for dloss = 1, when defined]
template <class T, class I>
void ce_forward(const CrossEntropyOp& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                const std::vector<Tensor>& out) {
  const int64_t N = in[0].shape()[0], V = in[0].shape()[1];
  const T* x = in[0].data<T>();
  const I* tg = in[1].data<I>();
  T* lse = out[1].data<T>();
  const int64_t valid = check_targets("cross_entropy", tg, N, V, op.ignore_index);
  const double ls = op.label_smoothing;
  std::vector<double> row_loss(static_cast<size_t>(N), 0.0);
  const auto body = [&](int64_t n0, int64_t n1) XF_INLINE_LAMBDA {
    for (int64_t n = n0; n < n1; ++n) {
      const T* xr = x + n * V;
      const T m = row_max(xr, V);
      const double l = static_cast<double>(m) + std::log(row_sum_exp(xr, V, m));
      lse[n] = static_cast<T>(l);
      const int64_t t = static_cast<int64_t>(tg[n]);
      if (t == op.ignore_index) continue;
      double loss = -(1.0 - ls) * (static_cast<double>(xr[t]) - l);
      if (ls > 0.0) {
        const double sum_logp = row_sum(xr, V) - static_cast<double>(V) * l;
        loss -= ls / static_cast<double>(V) * sum_logp;
      }
      row_loss[static_cast<size_t>(n)] = loss;
    }
  };
  parallel_for(ctx, N, row_grain(V), [&](int64_t n0, int64_t n1) { run_simd(body, n0, n1); });
  double total = 0;
  for (double v : row_loss) total += v;  // ignored rows hold 0
  out[0].data<T>()[0] = static_cast<T>(valid > 0 ? total / static_cast<double>(valid) : 0.0);
  if (out.size() > 2 && out[2].defined())
    write_dlogits<T, I>(ctx, x, lse, tg, valid > 0 ? 1.0 / static_cast<double>(valid) : 0.0, nullptr, out[2].data<T>(),
                        N, V, op.ignore_index, ls);
}

// in: logits (N, V), lse (N), targets (N), dloss (1,), [dlse (N)];  out: dlogits (N, V)
template <class T, class I>
void ce_backward(const CrossEntropyBackwardOp& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                 const std::vector<Tensor>& out) {
  const int64_t N = in[0].shape()[0], V = in[0].shape()[1];
  const T* x = in[0].data<T>();
  const T* lse = in[1].data<T>();
  const I* tg = in[2].data<I>();
  const double dloss = static_cast<double>(in[3].data<T>()[0]);
  const T* dlse = op.has_dlse ? in[4].data<T>() : nullptr;
  T* dx = out[0].data<T>();
  const int64_t valid = check_targets("cross_entropy_backward", tg, N, V, op.ignore_index);
  const double coef = valid > 0 ? dloss / static_cast<double>(valid) : 0.0;  // d loss / d row loss
  write_dlogits<T, I>(ctx, x, lse, tg, coef, dlse, dx, N, V, op.ignore_index, op.label_smoothing);
}

void ce_kernel(const Op& op, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  XF_DISPATCH_FLOAT(in[0].dtype(), "cross_entropy", T, {
    XF_DISPATCH_INDEX(in[1].dtype(), "cross_entropy", I,
                      ce_forward<T, I>(static_cast<const CrossEntropyOp&>(op), ctx, in, out));
  });
}
void ce_backward_kernel(const Op& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                        const std::vector<Tensor>& out) {
  XF_DISPATCH_FLOAT(in[0].dtype(), "cross_entropy_backward", T, {
    XF_DISPATCH_INDEX(in[2].dtype(), "cross_entropy_backward", I,
                      ce_backward<T, I>(static_cast<const CrossEntropyBackwardOp&>(op), ctx, in, out));
  });
}

}  // namespace

void register_cross_entropy(KernelRegistry& r) {
  r.add("cross_entropy", Device::Kind::cpu, ce_kernel);
  r.add("cross_entropy_backward", Device::Kind::cpu, ce_backward_kernel);
}

}  // namespace xfr::cpu
