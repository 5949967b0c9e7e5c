#include "runtime/cuda/autotune.h"

#include <cuda_runtime_api.h>

#include "runtime/cuda/check.h"

namespace xfr::cuda {

float min_time_ms(CUstream_st* stream, int runs, const std::function<bool()>& launch, int batch) {
  cudaEvent_t start = nullptr, stop = nullptr;
  XF_CUDA_CHECK(cudaEventCreate(&start));
  struct Events {  // destroys whichever events exist, on every path out
    cudaEvent_t* a;
    cudaEvent_t* b;
    ~Events() {
      if (*a) cudaEventDestroy(*a);
      if (*b) cudaEventDestroy(*b);
    }
  } events{&start, &stop};
  XF_CUDA_CHECK(cudaEventCreate(&stop));
  float best = -1.0f;
  for (int r = 0; r <= runs; ++r) {  // run 0 is the warm-up
    XF_CUDA_CHECK(cudaEventRecord(start, stream));
    bool ok = true;
    for (int i = 0; i < (r > 0 ? batch : 1) && ok; ++i) ok = launch();
    XF_CUDA_CHECK(cudaEventRecord(stop, stream));
    XF_CUDA_CHECK(cudaEventSynchronize(stop));
    if (!ok) return -1.0f;
    float t = 0.0f;
    XF_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
    t /= static_cast<float>(r > 0 ? batch : 1);
    if (r > 0 && (best < 0.0f || t < best)) best = t;
  }
  return best;
}

}  // namespace xfr::cuda
