// CPU kernel of ops/dropout.h. Element i uses Philox stream element rng_offset + i (runtime/rng.h); one
// Philox block gives four consecutive elements, so the loop walks the stream block by block. Tasks split the
// elements at multiples of 4 so that no block is computed twice.
#include <algorithm>

#include "ops/cpu/parallel.h"
#include "ops/dropout.h"
#include "runtime/dispatch.h"
#include "runtime/rng.h"

namespace xfr::cpu {

namespace {

// in: x (...);  out: y (x's shape)
template <class T>
void dropout_impl(const DropoutOp& op, const KernelContext& ctx, const Tensor& X, const Tensor& Y) {
  const int64_t n = X.numel();
  const T* x = X.data<T>();
  T* y = Y.data<T>();
  if (op.p == 0.0) {
    std::copy(x, x + n, y);
    return;
  }
  const uint32_t threshold = dropout_keep_threshold(op.p);
  const T keep_scale = static_cast<T>(1.0 / (1.0 - op.p));
  const uint64_t seed = ctx.rng_seed, offset = ctx.rng_offset;
  const int64_t o3 = static_cast<int64_t>(offset & 3u);  // lane of element 0 in its Philox block
  // Work items are the Philox blocks that elements 0 .. n-1 fall in; element i is in block (o3 + i) / 4
  // (counted from offset's block), so block k holds elements [4k - o3, 4k + 4 - o3).
  const int64_t blocks = (o3 + n + 3) / 4;
  parallel_for(ctx, blocks, kElementwiseGrain / 4, [&](int64_t b0, int64_t b1) {
    const int64_t s = std::max<int64_t>(0, b0 * 4 - o3), e = std::min<int64_t>(n, b1 * 4 - o3);
    int64_t i = s;
    while (i < e) {
      const uint64_t c = offset + static_cast<uint64_t>(i);
      const Philox4x32 r = philox_block(seed, c >> 2);
      for (unsigned lane = static_cast<unsigned>(c & 3u); lane < 4u && i < e; ++lane, ++i)
        y[i] = (r.x[lane] >> 8) >= threshold ? x[i] * keep_scale : T(0);
    }
  });
}

void dropout_kernel(const Op& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                    const std::vector<Tensor>& out) {
  XF_DISPATCH_FLOAT(in[0].dtype(), "dropout", T,
                    dropout_impl<T>(static_cast<const DropoutOp&>(op), ctx, in[0], out[0]));
}

}  // namespace

void register_dropout(KernelRegistry& r) { r.add("dropout", Device::Kind::cpu, dropout_kernel); }

}  // namespace xfr::cpu
