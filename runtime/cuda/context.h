// CudaContext: one device's stream, caching allocator, cuBLASLt handle and workspace (RAII: all are
// released when the last tensor or executor holding the context goes). Kernels reach it through
// KernelContext::device (see ops/cuda/common.cuh).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/cuda/host_staging.h"
#include "runtime/device_context.h"

struct CUstream_st;
struct CUevent_st;
struct cublasLtContext;

namespace xfr::cuda {

class CachingAllocator;

// n u32 of device memory that are zero between launches on a stream (a launch that uses them leaves them zero),
// e.g. CudaContext::launch_counters(); {}: none (a column sum then adds its partial rows in a second launch).
struct LaunchCounters {
  unsigned* words = nullptr;
  int64_t n = 0;
};

int device_count();              // 0 when there is no driver or no device (never throws)
std::string unavailable_reason();  // empty when a device is there

struct DeviceProps {
  std::string name;
  int major = 0, minor = 0;
  int sm_count = 0;
  size_t total_memory = 0;
  size_t l2_bytes = 0;
  size_t max_smem_per_block_optin = 0;
};

class CudaContext final : public DeviceContext {
 public:
  static std::shared_ptr<CudaContext> create(int device);
  ~CudaContext() override;

  Device device() const override { return Device::cuda(device_); }
  std::shared_ptr<void> allocate(size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes, CopyKind kind) override;
  void memset_zero(void* dst, size_t bytes) override;
  void accumulate_f32(float* dst, const void* src, DType src_dtype, size_t n, bool overwrite) override;
  void accumulate_f32_batch(const F32Accumulation* table, size_t count, size_t max_n, bool overwrite) override;
  void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t n) override;
  void synchronize() override;
  MemoryStats memory_stats() const override;
  void reset_peak() override;
  std::string describe() const override;
  std::shared_ptr<void> record_event() override;
  bool capturing() const override;
  double elapsed_ms(const std::shared_ptr<void>& from, const std::shared_ptr<void>& to) override;
  void begin_capture() override;
  std::shared_ptr<void> end_capture() override;
  void replay(const std::shared_ptr<void>& graph) override;
  // Side work (DeviceContext): a second stream, of the lowest priority (the main stream has the highest), with a
  // workspace and launch counters of its own, made at the first begin_side_work(). Graphs are instantiated with the
  // kernels' priorities, which capture copies from their streams.
  bool has_side_stream() const override { return true; }
  void begin_side_work() override;
  int64_t end_side_work() override;
  void join_side_work(int64_t ticket) override;

  // The stream, workspace and launch counters of the lane that work is issued on now (the side lane between
  // begin_side_work() and end_side_work(), else the main one).
  CUstream_st* stream() const { return lanes_[lane_].stream; }
  cublasLtContext* lt() const { return lt_; }
  void* workspace() const { return lanes_[lane_].workspace; }
  size_t workspace_bytes() const { return workspace_bytes_; }
  const DeviceProps& props() const { return props_; }
  // kTileCounterWords u32 of device memory, zero between the kernels that use them on this context's stream: a
  // persistent kernel's tile counter, which the kernel draws from and resets at its end, the attention forward's
  // split-tail counters, each reset by the CTA that counts last (FlashAttentionArgs::tile_counter), and the column
  // reduction's, one per column range, reset by the block that adds the partial rows (ops/cuda/rowwise.cuh).
  LaunchCounters launch_counters() const { return {lanes_[lane_].counters, kTileCounterWords}; }
  // 2 for the draw, and one per tail tile and consumer warpgroup of the forward's split tail: at most one tail tile a
  // CTA, so 1024 cover three warpgroups on up to 341 SMs (an H200 has 132). 4 KB.
  static constexpr int kTileCounterWords = 2 + 1024;
  CachingAllocator& allocator() { return *allocator_; }

  // Expensive per-shape plans (cuBLASLt layouts and heuristics, cuDNN graphs) cached under a key that
  // names the op and every shape, dtype and flag the plan depends on ("matmul/bf16/...").
  template <class Plan>
  std::shared_ptr<Plan> plan(const std::string& key, const std::function<std::shared_ptr<Plan>()>& make) {
    std::lock_guard<std::mutex> lock(plans_mu_);
    auto it = plans_.find(key);
    if (it != plans_.end()) return std::static_pointer_cast<Plan>(it->second);
    std::shared_ptr<Plan> p = make();
    plans_[key] = p;
    return p;
  }

 private:
  explicit CudaContext(int device);
  int device_;
  DeviceProps props_;
  // A stream with its own GEMM workspace and launch counters: kernels running at once on two streams must not
  // share either.
  struct Lane {
    CUstream_st* stream = nullptr;
    void* workspace = nullptr;
    unsigned* counters = nullptr;
  };
  void make_lane(Lane& lane, int priority);
  static void destroy_lane(Lane& lane);
  Lane lanes_[2];  // main, side
  int lane_ = 0;   // the lane work is issued on
  int side_priority_ = 0;
  CUevent_st* fork_event_ = nullptr;
  std::vector<CUevent_st*> side_done_;  // per ticket of the side work not yet all joined: its end on the side stream
  int64_t side_issued_ = 0, side_joined_ = 0;  // tickets handed out and joined since both were last equal
  cublasLtContext* lt_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::shared_ptr<CachingAllocator> allocator_;
  std::mutex plans_mu_;
  std::map<std::string, std::shared_ptr<void>> plans_;
  HostStaging staging_;  // small host-to-device copies (copy()); destroyed after the streams are synchronised
};

}  // namespace xfr::cuda
