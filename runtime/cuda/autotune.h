// Timing candidates on the GPU, for the plan caches that pick among several ways to run one call (cuBLASLt's
// algorithms in ops/cuda/matmul.cu, cuDNN's attention plans in ops/cuda/cudnn_attention.cpp): each new plan times
// its candidates on its own operands once and keeps the fastest, as cuDNN's benchmark mode and torch.compile's
// max-autotune do. The choice is then kept per process and device (AutotuneChoices), so every context of a
// process computes a shape the same way and results agree bit for bit within a process.
//
// Tuning is skipped while the stream is being captured into a CUDA graph (runtime/cuda/stream.h's stream_capturing:
// nothing can be timed then; executors run their first step eagerly, so the plans exist before capture).
#pragma once
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "runtime/env.h"  // env_flag, env_flag_default_on: the tuning switches

struct CUstream_st;

namespace xfr::cuda {

// The fastest of `runs` timed launches of `launch` on `stream` after one warm-up launch, in ms (CUDA events);
// a negative value when `launch` returned false (the candidate failed). With batch > 1 each timed run is `batch`
// launches back to back, and the time is theirs divided by batch: a single launch's event timing carries a few
// microseconds of launch and event latency, noise that picks the wrong one of candidates a few percent apart.
float min_time_ms(CUstream_st* stream, int runs, const std::function<bool()>& launch, int batch = 1);

// Per process: "<device>/<plan key>" -> the winning candidate (a cuBLASLt algorithm, a cuDNN plan's index).
template <class Choice>
class AutotuneChoices {
 public:
  // The stored choice of `key`, if any.
  bool find(const std::string& key, Choice& out) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = choice_.find(key);
    if (it == choice_.end()) return false;
    out = it->second;
    return true;
  }
  // Stores `c` for `key` unless another thread stored one first; returns the stored choice.
  Choice store(const std::string& key, const Choice& c) {
    std::lock_guard<std::mutex> lock(mu_);
    return choice_.emplace(key, c).first->second;
  }

 private:
  std::mutex mu_;
  std::map<std::string, Choice> choice_;
};

}  // namespace xfr::cuda
