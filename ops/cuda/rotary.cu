// CUDA kernels of ops/rotary.h (rotary): being written (this session); registers nothing yet.
#include "ops/cuda/common.cuh"

namespace xfr::cuda {

void register_rotary(KernelRegistry& r) {}

}  // namespace xfr::cuda
