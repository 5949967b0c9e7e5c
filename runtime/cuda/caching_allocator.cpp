#include "runtime/cuda/caching_allocator.h"

#include <algorithm>

#include "runtime/cuda/check.h"

namespace xfr::cuda {

namespace {
constexpr size_t kSmallLimit = size_t(1) << 20;  // below this, 512-byte classes
constexpr size_t kSmallStep = 512;               // cudaMalloc aligns to 256; 512 keeps classes few
constexpr size_t kLargeStep = size_t(2) << 20;   // 2 MiB: the driver's large page
}  // namespace

size_t CachingAllocator::round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t step = bytes < kSmallLimit ? kSmallStep : kLargeStep;
  return (bytes + step - 1) / step * step;
}

CachingAllocator::CachingAllocator(int device, bool caching) : device_(device), caching_(caching) {}

CachingAllocator::~CachingAllocator() {
  // Blocks still in use belong to tensors that outlive the allocator only through a bug elsewhere;
  // every tensor holds the context (and so this allocator) alive. Free what is cached.
  std::lock_guard<std::mutex> lock(mu_);
  cudaSetDevice(device_);
  cudaDeviceSynchronize();
  for (auto& [size, p] : free_) cudaFree(p);
  free_.clear();
}

void* CachingAllocator::driver_alloc(size_t bytes) {
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation && !free_.empty()) {
    cudaGetLastError();  // clear the sticky-free error state of the failed call
    release_cached_locked();
    err = cudaMalloc(&p, bytes);
  }
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    const double gib = 1024.0 * 1024.0 * 1024.0;
    throw Error("cuda", str_cat("out of memory on cuda:", device_, ": asked for ", bytes, " bytes (",
                                static_cast<double>(bytes) / gib, " GiB) with ", static_cast<double>(free_b) / gib,
                                " GiB free of ", static_cast<double>(total_b) / gib, " GiB (this context holds ",
                                static_cast<double>(stats_.reserved_bytes) / gib,
                                " GiB). Memory grows with train.batch_size, data.seq_len, dim_model, num_layers "
                                "and vocab_size; lower one, or raise train.grad_accum with a smaller batch"));
  }
  XF_CUDA_CHECK(err);
  ++stats_.driver_allocs;
  stats_.reserved_bytes += bytes;
  return p;
}

void* CachingAllocator::allocate(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  XF_CUDA_CHECK(cudaSetDevice(device_));
  const size_t size = caching_ ? round_size(bytes) : (bytes == 0 ? 1 : bytes);
  void* p = nullptr;
  if (capturing_ && caching_) {  // a block freed earlier in this capture: its graph's later kernels may use it again
    auto it = capture_free_.lower_bound(size);
    const size_t step = size < kSmallLimit ? kSmallStep : kLargeStep;
    if (it != capture_free_.end() && it->first <= size + size / 4 + step) {
      p = it->second;
      in_use_[p] = it->first;  // lent, still the graph's (graph_owned_) and still counted in current_bytes
      capture_free_.erase(it);
      ++stats_.allocs;
      return p;
    }
  }
  if (caching_) {
    auto it = free_.lower_bound(size);
    // Take a cached block if it wastes at most a quarter of itself plus one class step.
    const size_t step = size < kSmallLimit ? kSmallStep : kLargeStep;
    if (it != free_.end() && it->first <= size + size / 4 + step) {
      p = it->second;
      const size_t got = it->first;
      free_.erase(it);
      in_use_[p] = got;
      stats_.current_bytes += got;
    }
  }
  if (!p) {
    p = driver_alloc(size);
    in_use_[p] = size;
    stats_.current_bytes += size;
  }
  ++stats_.allocs;
  if (stats_.current_bytes > stats_.peak_bytes) stats_.peak_bytes = stats_.current_bytes;
  return p;
}

void CachingAllocator::free(void* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (holding_ >= 0 && in_use_.count(p)) {
    held_.emplace_back(holding_, p);
    return;
  }
  free_locked(p);
}

void CachingAllocator::hold_frees(int64_t ticket) {
  std::lock_guard<std::mutex> lock(mu_);
  holding_ = ticket;
}

void CachingAllocator::release_held(int64_t upto) {
  std::lock_guard<std::mutex> lock(mu_);
  auto keep = std::stable_partition(held_.begin(), held_.end(), [&](const auto& h) { return h.first > upto; });
  for (auto it = keep; it != held_.end(); ++it) free_locked(it->second);
  held_.erase(keep, held_.end());
}

void CachingAllocator::free_locked(void* p) {
  auto it = in_use_.find(p);
  if (it == in_use_.end()) return;  // not ours: nothing to do (never happens for tensors of this context)
  const size_t size = it->second;
  in_use_.erase(it);
  if (graph_owned_.count(p)) {
    // Lent again in the capture that first freed it: free for that capture's later allocations. Otherwise the block
    // stays its graph's (one freed by an earlier capture is never lent to another: two graphs would own it).
    if (capturing_ && caching_ && std::find(captured_.begin(), captured_.end(), p) != captured_.end())
      capture_free_.emplace(size, p);
    return;
  }
  if (capturing_) {  // still counted as in use: a live graph may write it
    captured_.push_back(p);
    graph_owned_[p] = size;
    if (caching_) capture_free_.emplace(size, p);
    return;
  }
  stats_.current_bytes -= size;
  if (caching_) {
    free_.emplace(size, p);
  } else {
    cudaSetDevice(device_);
    cudaFree(p);  // synchronises the device: work still reading p finishes first
    stats_.reserved_bytes -= size;
  }
}

void CachingAllocator::begin_capture_pool() {
  std::lock_guard<std::mutex> lock(mu_);
  capturing_ = true;
  captured_.clear();
}

std::vector<void*> CachingAllocator::end_capture_pool() {
  std::lock_guard<std::mutex> lock(mu_);
  capturing_ = false;
  capture_free_.clear();  // the blocks stay the graph's
  std::vector<void*> r;
  r.swap(captured_);
  return r;
}

void CachingAllocator::give_back(const std::vector<void*>& blocks) {
  std::vector<void*> unused;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (void* p : blocks) {
      auto it = graph_owned_.find(p);
      if (it == graph_owned_.end()) continue;
      const size_t size = it->second;
      graph_owned_.erase(it);
      if (in_use_.count(p)) continue;  // lent to a live tensor: its free caches it
      in_use_[p] = size;  // back in the books as an ordinary block, then freed
      unused.push_back(p);
    }
  }
  for (void* p : unused) free(p);
}

void CachingAllocator::release_cached_locked() {
  cudaSetDevice(device_);
  cudaDeviceSynchronize();
  for (auto& [size, p] : free_) {
    cudaFree(p);
    stats_.reserved_bytes -= size;
  }
  free_.clear();
}

void CachingAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached_locked();
}

MemoryStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_bytes = stats_.current_bytes;
}

}  // namespace xfr::cuda
