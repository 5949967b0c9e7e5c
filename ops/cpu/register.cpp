// Every CPU kernel of this build: one explicit list (each file under ops/cpu/ registers its ops).
#include "runtime/kernel_registry.h"

namespace xfr::cpu {
void register_elementwise(KernelRegistry& r);
void register_matmul(KernelRegistry& r);
void register_positional(KernelRegistry& r);
void register_kv_cache(KernelRegistry& r);
void register_norm(KernelRegistry& r);
void register_reduce(KernelRegistry& r);
void register_shape_ops(KernelRegistry& r);
void register_embedding(KernelRegistry& r);
void register_bias_add(KernelRegistry& r);
void register_softmax(KernelRegistry& r);
void register_dropout(KernelRegistry& r);
void register_cross_entropy(KernelRegistry& r);
void register_activation(KernelRegistry& r);
void register_rotary(KernelRegistry& r);
void register_cast(KernelRegistry& r);
void register_linear(KernelRegistry& r);
void register_flash_attention(KernelRegistry& r);
}  // namespace xfr::cpu

namespace xfr {

void register_cpu_kernels(KernelRegistry& r) {
  cpu::register_elementwise(r);
  cpu::register_matmul(r);
  cpu::register_positional(r);
  cpu::register_kv_cache(r);
  cpu::register_norm(r);
  cpu::register_reduce(r);
  cpu::register_shape_ops(r);
  cpu::register_embedding(r);
  cpu::register_bias_add(r);
  cpu::register_softmax(r);
  cpu::register_dropout(r);
  cpu::register_cross_entropy(r);
  cpu::register_activation(r);
  cpu::register_rotary(r);
  cpu::register_cast(r);
  cpu::register_linear(r);
  cpu::register_flash_attention(r);
}

}  // namespace xfr
