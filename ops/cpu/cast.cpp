// CPU kernel of ops/cast.h: Tensor::copy_from's converting copy (round to nearest even).
#include "ops/cast.h"
#include "runtime/kernel_registry.h"

namespace xfr::cpu {

namespace {
void cast_kernel(const Op&, const KernelContext&, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  Tensor y = out[0];
  y.copy_from(in[0]);
}
}  // namespace

void register_cast(KernelRegistry& r) { r.add("cast", Device::Kind::cpu, cast_kernel); }

}  // namespace xfr::cpu
