// CPU kernel of ops/bias_add.h (its backward is reduce_sum's and needs no kernel of its own).
#include <algorithm>
#include <vector>

#include "ops/bias_add.h"
#include "ops/cpu/parallel.h"
#include "runtime/dispatch.h"

namespace xfr::cpu {

namespace {

// x: (rows, C), b: (C) -> y: (rows, C)
void bias_add_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const int64_t C = in[1].numel();
  const int64_t rows = C == 0 ? 0 : in[0].numel() / C;
  XF_DISPATCH_FLOAT(out[0].dtype(), "bias_add", T, {
    const T* x = in[0].data<T>();
    const T* b = in[1].data<T>();
    T* y = out[0].data<T>();
    parallel_for(ctx, rows, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(C, 1)), [&](int64_t s, int64_t e) {
      for (int64_t r = s; r < e; ++r) {
        const T* xr = x + r * C;
        T* yr = y + r * C;
        for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] + b[c];
      }
    });
  });
}

}  // namespace

void register_bias_add(KernelRegistry& r) { r.add("bias_add", Device::Kind::cpu, bias_add_kernel); }

}  // namespace xfr::cpu
