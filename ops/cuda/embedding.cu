// CUDA kernels of ops/embedding.h (embedding, embedding_backward): being written (this session); registers nothing yet.
#include "ops/cuda/common.cuh"

namespace xfr::cuda {

void register_embedding(KernelRegistry& r) {}

}  // namespace xfr::cuda
