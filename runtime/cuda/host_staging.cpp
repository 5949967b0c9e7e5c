#include "runtime/cuda/host_staging.h"

#include <cuda_runtime_api.h>

#include <cstring>

#include "runtime/cuda/check.h"
#include "runtime/cuda/stream.h"
#include "runtime/env.h"

namespace xfr::cuda {

HostStaging::~HostStaging() {
  for (int s = 0; s < kSlots; ++s) {
    if (done_[s]) {
      cudaEventSynchronize(done_[s]);  // the DMA out of the slot, before the memory goes
      cudaEventDestroy(done_[s]);
    }
  }
  if (pinned_) cudaFreeHost(pinned_);
}

bool HostStaging::copy(void* dst, const void* src, size_t bytes, CUstream_st* stream) {
  static const bool enabled = env_flag_default_on("XF_CUDA_PINNED_STAGING");
  if (!enabled || bytes == 0 || bytes > kSlotBytes || stream_capturing(stream)) return false;
  std::lock_guard<std::mutex> lock(mu_);
  if (!pinned_) {
    XF_CUDA_CHECK(cudaMallocHost(&pinned_, kSlots * kSlotBytes));
    for (int s = 0; s < kSlots; ++s) XF_CUDA_CHECK(cudaEventCreateWithFlags(&done_[s], cudaEventDisableTiming));
  }
  const int s = next_;
  next_ = (next_ + 1) % kSlots;
  // The slot's previous copy has left it (an event never recorded, the slot's first use, returns at once).
  XF_CUDA_CHECK(cudaEventSynchronize(done_[s]));
  char* slot = static_cast<char*>(pinned_) + static_cast<size_t>(s) * kSlotBytes;
  std::memcpy(slot, src, bytes);
  XF_CUDA_CHECK(cudaMemcpyAsync(dst, slot, bytes, cudaMemcpyHostToDevice, stream));
  XF_CUDA_CHECK(cudaEventRecord(done_[s], stream));
  return true;
}

}  // namespace xfr::cuda
