// Kernel launches with programmatic dependent launch (PDL, sm_90 and later).
//
// Between two kernels of one stream the GPU normally lets the second start only when the first has finished and its
// writes are flushed: GPT-2's captured step (about 300 kernels) ran 0.58 ms longer than the sum of its kernels' times
// (2026-12-01, session 27, run 1), about 2 us a boundary. With PDL the second kernel is launched while the first is
// still running and its blocks wait, already resident, at griddepcontrol.wait until the first has completed and its
// memory is visible; the launch latency and the block scheduling overlap the first kernel's tail.
//
// The contract, for every kernel launched by launch_kernel():
//   - its first statement is dev::pdl_begin(): griddepcontrol.wait (no global memory is read or written before the
//     preceding kernel has completed: reads of its outputs and writes to what it reads alike), then
//     griddepcontrol.launch_dependents (the next PDL kernel may be launched once every block of this one has started;
//     its own wait keeps it from touching memory before this one completes, so the early trigger is always safe);
//   - nothing else: a kernel launched the usual way (<<<>>>, cuBLAS, cuDNN) keeps the full dependency, and
//     griddepcontrol.wait is a no-op in a kernel launched without PDL.
// A CUDA graph captured from such launches keeps them as programmatic edges. XF_PDL=0 turns the attribute off (every
// launch_kernel launch is then an ordinary one); devices before sm_90 never get it.
#pragma once
#include <cuda_runtime.h>

#include <utility>

#include "runtime/cuda/check.h"

namespace xfr::cuda {

// Whether launch_kernel asks for PDL on the current device: XF_PDL is not "0" and its compute capability is 9.0 or
// later (kept per device after the first query).
bool pdl_enabled();

// kernel<<<grid, block, smem, stream>>>(args...), with the programmatic-serialization attribute when pdl_enabled().
// `kernel` must start with dev::pdl_begin() (above). Throws on a launch error.
template <class... Params, class... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  XF_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

namespace dev {

// The first statement of a kernel launched by launch_kernel (see the contract above).
__device__ __forceinline__ void pdl_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace dev
}  // namespace xfr::cuda
