// Every CUDA kernel of this build: one explicit list (each file under ops/cuda/ registers its ops).
#include "runtime/kernel_registry.h"

namespace xfr::cuda {
void register_cast(KernelRegistry& r);
void register_linear(KernelRegistry& r);
void register_elementwise(KernelRegistry& r);
void register_bias_add(KernelRegistry& r);
void register_activation(KernelRegistry& r);
void register_dropout(KernelRegistry& r);
void register_norm(KernelRegistry& r);
void register_softmax(KernelRegistry& r);
void register_cross_entropy(KernelRegistry& r);
void register_reduce(KernelRegistry& r);
void register_matmul(KernelRegistry& r);
void register_embedding(KernelRegistry& r);
void register_shape_ops(KernelRegistry& r);
void register_positional(KernelRegistry& r);
void register_rotary(KernelRegistry& r);
void register_kv_cache(KernelRegistry& r);
void register_flash_attention(KernelRegistry& r);
}  // namespace xfr::cuda

namespace xfr {

void register_cuda_kernels(KernelRegistry& r) {
  cuda::register_cast(r);
  cuda::register_linear(r);
  cuda::register_elementwise(r);
  cuda::register_bias_add(r);
  cuda::register_activation(r);
  cuda::register_dropout(r);
  cuda::register_norm(r);
  cuda::register_softmax(r);
  cuda::register_cross_entropy(r);
  cuda::register_reduce(r);
  cuda::register_matmul(r);
  cuda::register_embedding(r);
  cuda::register_shape_ops(r);
  cuda::register_positional(r);
  cuda::register_rotary(r);
  cuda::register_kv_cache(r);
  cuda::register_flash_attention(r);
}

}  // namespace xfr
