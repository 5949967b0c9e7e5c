// CUDA kernels of ops/positional.h (sine_positions): being written (this session); registers nothing yet.
#include "ops/cuda/common.cuh"

namespace xfr::cuda {

void register_positional(KernelRegistry& r) {}

}  // namespace xfr::cuda
