#include "runtime/cuda/context.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "runtime/cuda/caching_allocator.h"
#include "runtime/cuda/check.h"
#include "runtime/cuda/runtime_kernels.h"
#include "runtime/cuda/stream.h"
#include "runtime/env.h"

namespace xfr::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* stmt, const char* file, int line) {
  cudaGetLastError();  // clear a non-sticky error so the context stays usable for the caller
  throw Error("cuda", str_cat(stmt, " failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") at ", file,
                              ":", line));
}

[[noreturn]] void throw_cublas_error(cublasStatus_t st, const char* stmt, const char* file, int line) {
  throw Error("cuda", str_cat(stmt, " failed: cuBLAS status ", static_cast<int>(st), " (", cublasLtGetStatusName(st),
                              ": ", cublasLtGetStatusString(st), ") at ", file, ":", line));
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string unavailable_reason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return str_cat("no CUDA device (", cudaGetErrorName(err), ": ", cudaGetErrorString(err), ")");
  }
  return n == 0 ? "no CUDA device" : "";
}

std::shared_ptr<CudaContext> CudaContext::create(int device) {
  const int n = device_count();
  XF_CHECK(device >= 0 && device < n, "cuda", "cuda:", device, " is not available: ",
           n == 0 ? unavailable_reason() : str_cat("this machine has ", n, " device(s)"));
  return std::shared_ptr<CudaContext>(new CudaContext(device));
}

CudaContext::CudaContext(int device) : device_(device) {
  XF_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp p{};
  XF_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  props_.name = p.name;
  props_.major = p.major;
  props_.minor = p.minor;
  props_.sm_count = p.multiProcessorCount;
  props_.total_memory = p.totalGlobalMem;
  props_.l2_bytes = static_cast<size_t>(p.l2CacheSize);
  props_.max_smem_per_block_optin = p.sharedMemPerBlockOptin;
  allocator_ = std::make_shared<CachingAllocator>(device, env_flag_default_on("XF_CUDA_CACHING"));
  XF_CUBLAS_CHECK(cublasLtCreate(&lt_));
  workspace_bytes_ = kCudaWorkspaceBytes;
  // The main stream at the highest priority, side work at the lowest: where both have blocks waiting for an SM, the
  // main stream's go first, and side work fills what is left.
  int least = 0, greatest = 0;
  XF_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  side_priority_ = least;
  make_lane(lanes_[0], greatest);
}

void CudaContext::make_lane(Lane& lane, int priority) {
  // A blocking stream: legacy-stream host copies (cudaMemcpy) are ordered after its work.
  XF_CUDA_CHECK(cudaStreamCreateWithPriority(&lane.stream, cudaStreamDefault, priority));
  XF_CUDA_CHECK(cudaMalloc(&lane.workspace, workspace_bytes_));
  constexpr size_t kCounterBytes = kTileCounterWords * sizeof(unsigned);
  XF_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&lane.counters), kCounterBytes));
  XF_CUDA_CHECK(cudaMemsetAsync(lane.counters, 0, kCounterBytes, lane.stream));  // before any kernel on the lane
}

void CudaContext::destroy_lane(Lane& lane) {
  if (lane.workspace) cudaFree(lane.workspace);
  if (lane.counters) cudaFree(lane.counters);
  if (lane.stream) cudaStreamDestroy(lane.stream);
  lane = Lane{};
}

CudaContext::~CudaContext() {
  cudaSetDevice(device_);
  for (const Lane& lane : lanes_)
    if (lane.stream) cudaStreamSynchronize(lane.stream);
  // Plans may hold library handles bound to the stream (cuDNN's): released while the stream still exists.
  plans_.clear();
  for (CUevent_st* e : side_done_) cudaEventDestroy(e);
  if (fork_event_) cudaEventDestroy(fork_event_);
  if (lt_) cublasLtDestroy(lt_);
  for (Lane& lane : lanes_) destroy_lane(lane);
}

void CudaContext::begin_side_work() {
  XF_CHECK(lane_ == 0, "cuda", "begin_side_work() while side work is being issued");
  if (!lanes_[1].stream) {  // (may run inside a relaxed capture: the side stream is not capturing yet)
    make_lane(lanes_[1], side_priority_);
    XF_CUDA_CHECK(cudaStreamSynchronize(lanes_[1].stream));  // its counters are zero before the fork below
    XF_CUDA_CHECK(cudaEventCreateWithFlags(&fork_event_, cudaEventDisableTiming));
  }
  XF_CUDA_CHECK(cudaEventRecord(fork_event_, lanes_[0].stream));
  XF_CUDA_CHECK(cudaStreamWaitEvent(lanes_[1].stream, fork_event_, 0));
  lane_ = 1;
  allocator_->hold_frees(side_issued_);
}

int64_t CudaContext::end_side_work() {
  if (lane_ == 0) return -1;  // (no side work begun)
  const int64_t ticket = side_issued_;
  if (static_cast<size_t>(ticket) == side_done_.size()) {
    CUevent_st* e = nullptr;
    XF_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    side_done_.push_back(e);
  }
  lane_ = 0;
  allocator_->hold_frees(-1);
  XF_CUDA_CHECK(cudaEventRecord(side_done_[static_cast<size_t>(ticket)], lanes_[1].stream));
  ++side_issued_;
  return ticket;
}

void CudaContext::join_side_work(int64_t ticket) {
  if (ticket < side_joined_) return;  // no side stream (-1), or joined already
  XF_CHECK(ticket < side_issued_ && lane_ == 0, "cuda", "join_side_work(", ticket, "): not a ticket of side work ended");
  XF_CUDA_CHECK(cudaStreamWaitEvent(lanes_[0].stream, side_done_[static_cast<size_t>(ticket)], 0));
  allocator_->release_held(ticket);
  side_joined_ = ticket + 1;
  if (side_joined_ == side_issued_) side_joined_ = side_issued_ = 0;  // every wait is issued: the events may be reused
}

std::shared_ptr<void> CudaContext::allocate(size_t bytes) {
  void* p = allocator_->allocate(bytes);
  // The deleter holds the whole context: a tensor may outlive every executor, and its stream, pool and
  // handles stay until its last block is back.
  std::shared_ptr<DeviceContext> self = shared_from_this();
  CachingAllocator* alloc = allocator_.get();
  return std::shared_ptr<void>(p, [self, alloc](void* q) { alloc->free(q); });
}

void CudaContext::copy(void* dst, const void* src, size_t bytes, CopyKind kind) {
  if (bytes == 0) return;
  // Small host-to-device copies through pinned slots: no wait for the stream (runtime/cuda/host_staging.h).
  if (kind == CopyKind::host_to_device && staging_.copy(dst, src, bytes, stream())) return;
  const cudaMemcpyKind k = kind == CopyKind::host_to_device   ? cudaMemcpyHostToDevice
                           : kind == CopyKind::device_to_host ? cudaMemcpyDeviceToHost
                                                              : cudaMemcpyDeviceToDevice;
  XF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, k, stream()));
}

void CudaContext::memset_zero(void* dst, size_t bytes) {
  if (bytes) XF_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream()));
}

void CudaContext::accumulate_f32(float* dst, const void* src, DType src_dtype, size_t n, bool overwrite) {
  launch_accumulate_f32(dst, src, src_dtype, n, overwrite, stream());
}

void CudaContext::accumulate_f32_batch(const F32Accumulation* table, size_t count, size_t max_n, bool overwrite) {
  launch_accumulate_f32_batch(table, count, max_n, overwrite, stream());
}

void CudaContext::convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t n) {
  launch_convert(dst, dst_dtype, src, src_dtype, n, stream());
}

void CudaContext::synchronize() {
  for (const Lane& lane : lanes_)
    if (lane.stream) XF_CUDA_CHECK(cudaStreamSynchronize(lane.stream));
  XF_CUDA_CHECK(cudaGetLastError());
}

namespace {
// An instantiated CUDA graph and the memory its kernels write (RAII: destroyed together).
struct CapturedGraph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  std::vector<void*> blocks;
  std::shared_ptr<CachingAllocator> allocator;
  ~CapturedGraph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    if (allocator) allocator->give_back(blocks);
  }
};
}  // namespace

std::shared_ptr<void> CudaContext::record_event() {
  cudaEvent_t e = nullptr;
  XF_CUDA_CHECK(cudaEventCreate(&e));
  std::shared_ptr<void> owned(e, [](void* p) { cudaEventDestroy(static_cast<cudaEvent_t>(p)); });
  // In a capture a plain record only marks a point for other streams to wait on; "external" makes it a graph node
  // that records the event when a replay reaches it (the in-graph profile, TrainStepOptions::profile_in_graph).
  XF_CUDA_CHECK(cudaEventRecordWithFlags(e, stream(), capturing() ? cudaEventRecordExternal : cudaEventRecordDefault));
  return owned;
}

bool CudaContext::capturing() const { return stream_capturing(lanes_[0].stream); }

double CudaContext::elapsed_ms(const std::shared_ptr<void>& from, const std::shared_ptr<void>& to) {
  XF_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(to.get())));
  float ms = 0;
  XF_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(from.get()), static_cast<cudaEvent_t>(to.get())));
  return ms;
}

void CudaContext::begin_capture() {
  allocator_->begin_capture_pool();
  // Relaxed: kernels may still allocate from the pool (a cudaMalloc for a new block) while capturing.
  const cudaError_t err = cudaStreamBeginCapture(lanes_[0].stream, cudaStreamCaptureModeRelaxed);
  if (err != cudaSuccess) {
    allocator_->end_capture_pool();
    XF_CUDA_CHECK(err);
  }
}

std::shared_ptr<void> CudaContext::end_capture() {
  auto g = std::make_shared<CapturedGraph>();
  g->allocator = allocator_;
  const cudaError_t err = cudaStreamEndCapture(lanes_[0].stream, &g->graph);
  g->blocks = allocator_->end_capture_pool();
  XF_CUDA_CHECK(err);
  // With the kernels' own priorities (capture copies them from their streams: side work below the main stream's).
  XF_CUDA_CHECK(cudaGraphInstantiate(&g->exec, g->graph, cudaGraphInstantiateFlagUseNodePriority));
  return g;
}

void CudaContext::replay(const std::shared_ptr<void>& graph) {
  XF_CHECK(graph != nullptr, "cuda", "replay of an empty graph");
  XF_CUDA_CHECK(cudaGraphLaunch(static_cast<CapturedGraph*>(graph.get())->exec, lanes_[0].stream));
}

MemoryStats CudaContext::memory_stats() const { return allocator_->stats(); }
void CudaContext::reset_peak() { allocator_->reset_peak(); }

std::string CudaContext::describe() const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %d SMs, %.1f GiB)", props_.name.c_str(), props_.major, props_.minor,
                props_.sm_count, static_cast<double>(props_.total_memory) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

}  // namespace xfr::cuda
