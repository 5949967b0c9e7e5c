// A caching device allocator for one stream. Freed blocks go back to a pool and are handed out again
// without a driver call; because every tensor of a context is used only on that context's stream,
// a block freed on the host can be reused at once (the stream orders the old reader before the new
// writer). Sizes are rounded to size classes so that blocks are reusable across nearby sizes:
//   small (< 1 MiB): multiples of 512 bytes; large: multiples of 2 MiB (the driver's large page).
// A request takes the smallest cached block that fits and wastes at most a quarter of it plus one
// class step; blocks are never split (a graph's activations are one arena, its parameters one flat
// buffer, so the blocks a model asks for are few and large).
// XF_CUDA_CACHING=0 turns caching off: each allocation is one cudaMalloc and each free one cudaFree, so
// compute-sanitizer sees every access against the exact extent of its allocation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "runtime/device_context.h"

namespace xfr::cuda {

class CachingAllocator {
 public:
  CachingAllocator(int device, bool caching);
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(size_t bytes);  // throws xfr::Error("cuda", "out of memory ...")
  void free(void* p);
  MemoryStats stats() const;
  void reset_peak();
  void release_cached();  // gives unused driver allocations back (synchronises the device)
  bool caching() const { return caching_; }

  static size_t round_size(size_t bytes);  // the size class a request is served from

  // While a CUDA graph is captured, freed blocks are set aside instead of cached: the graph writes them
  // at every replay, so nothing else may get them. Later allocations of the same capture may take them again
  // (the context captures one stream: the graph runs its kernels in the order they were enqueued, so a block's
  // next user starts after its last one; GPT-2's step takes one weight-gradient scratch block for its 24 calls,
  // not 24); a later capture never takes an earlier graph's block. end_capture_pool() hands them over; give_back()
  // returns them to the pool when the graph is destroyed (a block still lent to a live tensor goes back with that
  // tensor's free).
  void begin_capture_pool();
  // Side work (CudaContext::begin_side_work): a block freed while side work is issued may still be read by the side
  // stream after the host moved on, so its free waits for that work's join. hold_frees(t) holds the frees that follow
  // under ticket t (-1: none held from now on); release_held(t) frees the blocks held under tickets up to t.
  void hold_frees(int64_t ticket);
  void release_held(int64_t upto);
  std::vector<void*> end_capture_pool();
  void give_back(const std::vector<void*>& blocks);

 private:
  void* driver_alloc(size_t bytes);  // with one retry after releasing the cache
  void release_cached_locked();
  void free_locked(void* p);

  int device_;
  bool caching_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;           // cached blocks by size
  std::unordered_map<void*, size_t> in_use_;    // handed-out block -> its size (rounded)
  bool capturing_ = false;
  std::vector<void*> captured_;                 // freed during the capture in progress
  std::multimap<size_t, void*> capture_free_;   // of those, not lent again yet (by size)
  std::unordered_map<void*, size_t> graph_owned_;  // set aside for live graphs -> size
  int64_t holding_ = -1;                                // the ticket frees are held under, or -1
  std::vector<std::pair<int64_t, void*>> held_;          // (ticket, block) freed under a ticket, not yet released
  MemoryStats stats_;
};

}  // namespace xfr::cuda
