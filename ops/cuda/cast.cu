// CUDA kernel of ops/cast.h: the context's device-side converting copy (one pass, round to nearest even).
#include "ops/cast.h"
#include "ops/cuda/common.cuh"

namespace xfr::cuda {

namespace {
// x: (*) -> y: (*) in the op's dtype
void cast_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  context_of(ctx).convert(out[0].raw_data(), out[0].dtype(), in[0].raw_data(), in[0].dtype(),
                          static_cast<size_t>(in[0].numel()));
}
}  // namespace

void register_cast(KernelRegistry& r) { r.add("cast", Device::Kind::cuda, cast_kernel); }

}  // namespace xfr::cuda
