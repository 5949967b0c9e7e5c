// Pinned host memory that small host-to-device copies pass through (CudaContext::copy).
//
// A copy from pageable memory (a training step's token ids, bound from the host each step) may make the driver
// synchronise with the stream to stage the bytes itself (CUDA's API synchronization behavior: "If pageable memory must
// first be staged to pinned memory, the driver may synchronize with the stream"): the host then waits for the previous
// step to end before it can issue the next, and the GPU idles while it does. Through a slot of pinned memory the copy
// is a memcpy on the host and an asynchronous DMA: the host waits only when it is a whole ring of copies ahead (the
// slot's previous copy not yet done). The source may be changed or freed as soon as copy() returns, as before.
#pragma once
#include <cstddef>
#include <mutex>

struct CUstream_st;
struct CUevent_st;

namespace xfr::cuda {

class HostStaging {
 public:
  // 1 MiB a slot: a batch's token ids (GPT-2's 16 x 1024 int32, 64 KB) many times over; larger copies go direct.
  static constexpr size_t kSlotBytes = size_t(1) << 20;
  // Slots in the ring: the inputs of a step (ids, targets) twice over, so a step's copies never wait for the last's.
  static constexpr int kSlots = 4;

  HostStaging() = default;
  ~HostStaging();
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;

  // Copies `bytes` from host `src` to device `dst` on `stream` through the next slot; false (nothing done) when the
  // bytes do not fit a slot, when the stream is capturing a graph (a captured copy would re-read the slot at every
  // replay), or when XF_CUDA_PINNED_STAGING=0 (the direct copy, for an A/B).
  bool copy(void* dst, const void* src, size_t bytes, CUstream_st* stream);

 private:
  std::mutex mu_;
  void* pinned_ = nullptr;         // kSlots x kSlotBytes, allocated at the first copy
  CUevent_st* done_[kSlots] = {};  // each slot's last copy, recorded on its stream (never recorded: a free slot)
  int next_ = 0;
};

}  // namespace xfr::cuda
