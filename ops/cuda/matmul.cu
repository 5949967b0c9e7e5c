// CUDA kernels of ops/matmul.h (matmul (cuBLASLt)): being written (this session); registers nothing yet.
#include "ops/cuda/common.cuh"

namespace xfr::cuda {

void register_matmul(KernelRegistry& r) {}

}  // namespace xfr::cuda
