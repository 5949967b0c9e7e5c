// DeviceContext: what a non-CPU backend gives the device-independent runtime. A context owns one
// device's allocator, one stream (all work it issues is ordered on that stream) and the library handles
// its kernels need. There is no process-wide default: whoever runs work on a GPU (a trainer, a test
// fixture, a public-API session) creates a context and passes it down, and every tensor allocated from
// it keeps it alive. Several contexts may share one device (each with its own stream and pool).
//
// The runtime core calls only this interface, so a CPU-only build needs no CUDA header; runtime/cuda/
// implements it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "runtime/device.h"
#include "runtime/dtype.h"

namespace xfr {

// The GEMM library's workspace a CUDA context reserves: 32 MiB, what cuBLASLt's heuristics ask for at most on
// Hopper for transformer GEMM shapes (its docs recommend 32 MiB on sm_90). Memory estimates count it too.
constexpr size_t kCudaWorkspaceBytes = size_t(32) << 20;

struct MemoryStats {
  size_t current_bytes = 0;    // handed out to tensors now
  size_t peak_bytes = 0;       // the most handed out at once since the context was made (or reset)
  size_t reserved_bytes = 0;   // taken from the driver, cached blocks included
  int64_t driver_allocs = 0;   // calls to the driver's allocator (cudaMalloc)
  int64_t allocs = 0;          // allocations served (cached or not)
};

enum class CopyKind { host_to_device, device_to_host, device_to_device };

// One entry of DeviceContext::accumulate_f32_batch: dst[i] (+)= float(src[i]) for i < n, src in src_dtype (a DType).
struct F32Accumulation {
  const void* src;
  float* dst;
  uint64_t n;
  uint32_t src_dtype;  // static_cast<uint32_t>(DType): f32, f16 or bf16
  uint32_t unused;
};

class DeviceContext : public std::enable_shared_from_this<DeviceContext> {
 public:
  virtual ~DeviceContext() = default;
  virtual Device device() const = 0;
  // `bytes` of device memory, 256-byte aligned; freed (returned to the pool, stream-ordered) when the
  // last owner of the returned pointer goes. Throws xfr::Error("cuda", "out of memory ...") naming the
  // bytes asked for and free.
  virtual std::shared_ptr<void> allocate(size_t bytes) = 0;
  // Ordered on the context's stream. Host memory taking part must stay valid until synchronize().
  virtual void copy(void* dst, const void* src, size_t bytes, CopyKind kind) = 0;
  virtual void memset_zero(void* dst, size_t bytes) = 0;
  // dst[i] += float(src[i]) for n elements of src_dtype (f32, f16 or bf16): gradient accumulation, also
  // straight from a 16-bit gradient (mixed precision: the cast to f32 and the add in one pass). overwrite:
  // dst[i] = float(src[i]), dst not read (a run's only gradient of a slot, Executor's grads_overwrite).
  virtual void accumulate_f32(float* dst, const void* src, DType src_dtype, size_t n, bool overwrite) = 0;
  // accumulate_f32 for `count` entries of a table in device memory, in one launch; max_n bounds their n.
  virtual void accumulate_f32_batch(const F32Accumulation* table, size_t count, size_t max_n, bool overwrite) = 0;
  // Converting copy of n contiguous elements between floating dtypes (f32/f16/bf16) on the device.
  virtual void convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t n) = 0;
  // Waits for everything issued on the stream; rethrows an asynchronous kernel error with its name.
  virtual void synchronize() = 0;
  virtual MemoryStats memory_stats() const = 0;
  // CUDA graphs: work issued on the stream between begin_capture() and end_capture() is recorded, not
  // run; end_capture() returns the instantiated graph, which replay() launches on the stream. Memory
  // freed while capturing stays reserved for the graph (it may be written at every replay) and goes back
  // to the pool when the returned handle is destroyed. Throws xfr::Error naming the call that broke the
  // capture.
  // Profiling: an event recorded on the stream now (no synchronisation), and the milliseconds between two
  // recorded events (synchronises with the later one). While the stream captures a graph the event is a node of the
  // graph instead, recorded again at every replay (capturing() says which).
  virtual std::shared_ptr<void> record_event() = 0;
  virtual bool capturing() const = 0;
  virtual double elapsed_ms(const std::shared_ptr<void>& from, const std::shared_ptr<void>& to) = 0;
  virtual void begin_capture() = 0;
  virtual std::shared_ptr<void> end_capture() = 0;
  virtual void replay(const std::shared_ptr<void>& graph) = 0;
  // Side work: a second stream, of lower priority, for work that nothing issued later in a run reads (an executor's
  // weight gradients), so that its kernels fill the main stream's gaps and kernel tails.
  //   begin_side_work(): work issued from now on goes to the side stream, after all the work issued so far;
  //   end_side_work(): back to the main stream; returns a ticket for the side work since begin_side_work();
  //   join_side_work(ticket): work issued on the main stream from now on waits for the side work up to that ticket,
  //     and the memory freed while issuing it becomes reusable only now (the side stream may still be reading it
  //     before: a caching allocator holds such frees until their join).
  // Every begun side work must be joined before a capture ends or the caller waits for the stream. A context without
  // a side stream (the default) issues side work in order on its one stream: tickets are -1, joins do nothing.
  virtual bool has_side_stream() const { return false; }
  virtual void begin_side_work() {}
  virtual int64_t end_side_work() { return -1; }
  virtual void join_side_work(int64_t ticket) { (void)ticket; }
  virtual void reset_peak() = 0;
  virtual std::string describe() const = 0;  // "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB)"
};

// Records `work` (device work only) as a CUDA graph and returns it instantiated. If `work` throws, the
// capture is ended (the stream leaves capture mode) and the exception passes on.
std::shared_ptr<void> capture_graph(DeviceContext& ctx, const std::function<void()>& work);

// ---- device discovery (never throws: a machine without a driver or a GPU simply has none) ----------
int cuda_device_count();
// Why no CUDA device can be used ("this build has no CUDA backend", "no CUDA driver: ..."), or empty.
std::string cuda_unavailable_reason();
// "cpu", "cuda", "cuda:N" or "auto" (the first GPU when there is one, else the CPU). Throws
// xfr::Error(what, ...) for an unknown name or a GPU that is not there.
Device resolve_device(const std::string& name, const std::string& what = "runtime.device");
// A new context (stream, pool, handles) on `device`; null for the CPU. Throws when the device is absent.
std::shared_ptr<DeviceContext> make_device_context(Device device);

}  // namespace xfr
