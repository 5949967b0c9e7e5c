// Host helpers shared by the CUDA kernel labs (tools/lab/*.cu): LAB_CHECK and RAII owners of device memory and
// events. A lab defines LAB_NAME ("lab layernorm") before including this header: every line a lab prints starts
// with it, so tools/gpu_check.sh's summary grep keeps them.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#ifndef LAB_NAME
#error "define LAB_NAME (the prefix of the lab's output lines) before including lab_cuda.h"
#endif

// Every CUDA call outside a case's kernels: on failure it names the statement and exits 3 (setup failing means
// the GPU or the context is unusable).
#define LAB_CHECK(stmt)                                                                                          \
  do {                                                                                                           \
    const cudaError_t lab_err_ = (stmt);                                                                         \
    if (lab_err_ != cudaSuccess) {                                                                               \
      std::printf("%s: FATAL: `%s` failed: %s (%s) at %s:%d\n", LAB_NAME, #stmt, cudaGetErrorName(lab_err_),     \
                  cudaGetErrorString(lab_err_), __FILE__, __LINE__);                                             \
      std::fflush(stdout);                                                                                       \
      std::exit(3);                                                                                              \
    }                                                                                                            \
  } while (0)

namespace lab {

template <class T>
class DeviceBuffer {  // owns n elements of device memory (at least one element is allocated)
 public:
  explicit DeviceBuffer(size_t n) : n_(n) { LAB_CHECK(cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T))); }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  T* p_ = nullptr;
  size_t n_;
};

class Event {  // owns a CUDA event
 public:
  Event() { LAB_CHECK(cudaEventCreate(&e_)); }
  ~Event() { cudaEventDestroy(e_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_{};
};

// Median microseconds of one call of f on stream s: reps samples of (batch back-to-back calls) / batch, after 3
// untimed calls, as launches run in a CUDA graph, L2 warm. One event pair a batch: a single short launch's event
// timing carries several microseconds of launch and event latency (H200, 2026-11-30: a 24 KB reduction read 7-8 us).
// XF_LAB_ONCE=1: one call, untimed (returns 0), so that a profiler (ncu) sees each case's kernel twice (its check and
// this) rather than hundreds of times.
inline double time_us(cudaStream_t s, const std::function<void()>& f, int batch = 10, int reps = 15) {
  if (const char* once = std::getenv("XF_LAB_ONCE"); once && once[0] == '1') {
    f();
    LAB_CHECK(cudaStreamSynchronize(s));
    return 0.0;
  }
  for (int i = 0; i < 3; ++i) f();
  LAB_CHECK(cudaStreamSynchronize(s));
  const Event a, b;
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    LAB_CHECK(cudaEventRecord(a.get(), s));
    for (int i = 0; i < batch; ++i) f();
    LAB_CHECK(cudaEventRecord(b.get(), s));
    LAB_CHECK(cudaEventSynchronize(b.get()));
    float ms = 0;
    LAB_CHECK(cudaEventElapsedTime(&ms, a.get(), b.get()));
    t.push_back(1e3 * ms / batch);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace lab
