// CUDA kernels of ops/dropout.h (dropout): being written (this session); registers nothing yet.
#include "ops/cuda/common.cuh"

namespace xfr::cuda {

void register_dropout(KernelRegistry& r) {}

}  // namespace xfr::cuda
