// CPU kernel of ops/positional.h, computed in double and rounded once.
#include <cmath>

#include "ops/positional.h"
#include "runtime/dispatch.h"
#include "runtime/kernel_registry.h"

namespace xfr::cpu {

namespace {

void sine_positions_kernel(const Op& op_, const KernelContext&, const std::vector<Tensor>&,
                           const std::vector<Tensor>& out) {
  const auto& op = static_cast<const SinePositionsOp&>(op_);
  XF_DISPATCH_FLOAT(out[0].dtype(), "sine_positions", T, {
    T* y = out[0].data<T>();  // (T, C)
    const double log_base = std::log(10000.0);  // the base of the original Transformer's frequencies
    for (int64_t c = 0; c < op.dim; ++c) {
      const double w = std::exp(-log_base * static_cast<double>(2 * (c / 2)) / static_cast<double>(op.dim));
      for (int64_t t = 0; t < op.seq_len; ++t) {
        const double a = static_cast<double>(t) * w;
        y[t * op.dim + c] = static_cast<T>(c % 2 == 0 ? std::sin(a) : std::cos(a));
      }
    }
  });
}

}  // namespace

void register_positional(KernelRegistry& r) { r.add("sine_positions", Device::Kind::cpu, sine_positions_kernel); }

}  // namespace xfr::cpu
