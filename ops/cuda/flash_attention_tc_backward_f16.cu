// The backward tensor-core kernels (flash_attention_tc.cuh: dQ, dK/dV, dbias) for f16.
#include "ops/cuda/flash_attention_tc.cuh"

namespace xfr::cuda::fa {

template <>
void launch_tc_backward_typed<__half>(const Params& p, cudaStream_t stream) {
  with_instantiation(p, BackwardLaunch<__half>{p, stream});
}

}  // namespace xfr::cuda::fa
