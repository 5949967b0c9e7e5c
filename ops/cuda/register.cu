// Every CUDA kernel of this build: one explicit list (each file under ops/cuda/ registers its ops).
#include "runtime/kernel_registry.h"

namespace xfr::cuda {
void register_cast(KernelRegistry& r);
}  // namespace xfr::cuda

namespace xfr {

void register_cuda_kernels(KernelRegistry& r) {
  cuda::register_cast(r);
}

}  // namespace xfr
