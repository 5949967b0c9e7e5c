// Token generation for causal_lm models, compiled once and reused: a Generator owns its graph, executor
// and (with a KV cache) per-block key/value caches, so each request after the first allocates no tensors.
// One Generator is used by one thread at a time; several Generators may share one Model (its parameters
// are only read).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "factory/model_builder.h"
#include "factory/trainer.h"
#include "runtime/executor.h"

namespace xfr {

class ThreadPool;

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // 0: all
  double top_p = 1.0;
  uint64_t seed = 0;         // Philox key; token n uses counter n
};

// Samples an index from logits (V) with temperature, top-k and top-p; u in [0, 1). `idx` and `p` are
// scratch buffers (resized as needed, so reusing them avoids allocations).
int32_t sample_token(const float* logits, int64_t V, double temperature, int64_t top_k, double top_p, double u,
                     std::vector<int32_t>& idx, std::vector<double>& p);

class Generator {
 public:
  // With kv_cache (and a model that supports it, see supports_kv_cache) each new token costs a one-token
  // pass; otherwise the last seq_len tokens are recomputed per token. Compiles the graph now.
  // device_ctx: as Predictor's (a GPU model's graphs run on it; null: the model's own context).
  Generator(const Model& model, ThreadPool* pool, bool kv_cache = true, std::shared_ptr<DeviceContext> device_ctx = nullptr);
  ~Generator();

  bool uses_kv_cache() const { return kv_; }

  // Continues `prompt` (empty: a single token 0) by up to `max_new_tokens` tokens. `on_token(token)` is
  // called for each one as soon as it is sampled; returning false stops after that token. Appends the
  // generated tokens to `out` (cleared first) and returns their count. Same tokens as generate().
  int64_t run(const std::vector<int32_t>& prompt, int64_t max_new_tokens, const SamplingOptions& sampling,
              const std::function<bool(int32_t)>& on_token, std::vector<int32_t>& out);

 private:
  const float* feed(int32_t id);
  const float* refill(const std::vector<int32_t>& ids, int64_t keep);

  const Model& model_;
  bool kv_ = false;
  int64_t T_ = 0, V_ = 0;
  BuiltModel g_;
  DecodeGraph dg_;
  std::unique_ptr<Executor> ex_;
  std::vector<Tensor> kc_, vc_;
  Tensor token_, pos_, cache_pos_, mask_, window_;
  Tensor logits_host_;  // a device model's last logits, copied to the host
  std::shared_ptr<DeviceContext> device_ctx_;  // null on the host
  const float* logits_of(const Tensor& logits);
  int64_t p_ = 0;  // next cache position
  std::vector<int32_t> ids_, idx_scratch_;
  std::vector<double> p_scratch_;
};

}  // namespace xfr
