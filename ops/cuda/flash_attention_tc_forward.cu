// The forward tensor-core kernels (flash_attention_tc.cuh) for bf16 and f16, and the backward's dtype dispatch.
#include "ops/cuda/flash_attention_tc.cuh"

namespace xfr::cuda::fa {

void launch_tc_forward(const Params& p, DType dtype, cudaStream_t stream) {
  if (dtype == DType::bf16) {
    with_instantiation(p, ForwardLaunch<__nv_bfloat16>{p, stream});
  } else {
    with_instantiation(p, ForwardLaunch<__half>{p, stream});
  }
}

void launch_tc_backward(const Params& p, DType dtype, cudaStream_t stream) {
  if (dtype == DType::bf16) {
    launch_tc_backward_typed<__nv_bfloat16>(p, stream);
  } else {
    launch_tc_backward_typed<__half>(p, stream);
  }
}

}  // namespace xfr::cuda::fa
