// CUDA kernels of ops/kv_cache.h (kv_cache_write): being written (this session); registers nothing yet.
#include "ops/cuda/common.cuh"

namespace xfr::cuda {

void register_kv_cache(KernelRegistry& r) {}

}  // namespace xfr::cuda
