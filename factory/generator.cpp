#include "factory/generator.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "factory/schema.h"
#include "runtime/error.h"
#include "runtime/rng.h"

namespace xfr {

int32_t sample_token(const float* logits, int64_t V, double temperature, int64_t top_k, double top_p, double u,
                     std::vector<int32_t>& idx, std::vector<double>& p) {
  if (temperature <= 0.0) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  idx.resize(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  const int64_t k = top_k > 0 ? std::min(top_k, V) : V;
  p.resize(static_cast<size_t>(k));
  const double mx = logits[idx[0]];
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) sum += (p[i] = std::exp((logits[idx[i]] - mx) / temperature));
  // nucleus: the smallest prefix whose mass reaches top_p
  int64_t keep = k;
  double acc = 0;
  for (int64_t i = 0; i < k; ++i) {
    acc += p[i] / sum;
    if (acc >= top_p) {
      keep = i + 1;
      break;
    }
  }
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += p[i];
  double r = u * total;
  for (int64_t i = 0; i < keep; ++i) {
    r -= p[i];
    if (r < 0) return idx[i];
  }
  return idx[keep - 1];
}

Generator::Generator(const Model& model, ThreadPool* pool, bool kv_cache, std::shared_ptr<DeviceContext> device_ctx)
    : model_(model), device_ctx_(model.run_context(device_ctx)) {
  XF_CHECK(get_string(model.model_config, "task") == "causal_lm", "generate", "only causal_lm models generate");
  T_ = model.train_graph.tokens.dim(1);
  V_ = model.train_graph.vocab_size;
  kv_ = kv_cache && supports_kv_cache(model.model_config);
  ExecutorOptions opt;
  opt.pool = pool;
  opt.device_ctx = device_ctx_;
  opt.constant_params = true;  // the model's parameters are only read
  DeviceContext* dctx = device_ctx_.get();
  if (!kv_) {
    // Full-window recompute: the last T tokens, left-aligned; causal attention makes the padding after
    // them irrelevant.
    g_ = build_model(model.model_config, 1, T_, /*training=*/false);
    ex_ = std::make_unique<Executor>(*g_.graph, std::vector<Value>{g_.logits}, Gradients{}, model.run_store(), opt);
    window_ = Tensor::zeros({1, T_}, DType::i32);
    ex_->bind(g_.tokens, window_);
    return;
  }
  // KV cache: one token per run; each block's keys and values stay in caches of T positions.
  g_ = build_model(model.model_config, 1, T_, /*training=*/false, &dg_);
  std::vector<Value> outputs{g_.logits};
  outputs.insert(outputs.end(), dg_.k_out.begin(), dg_.k_out.end());
  outputs.insert(outputs.end(), dg_.v_out.begin(), dg_.v_out.end());
  ex_ = std::make_unique<Executor>(*g_.graph, outputs, Gradients{}, model.run_store(), opt);
  for (size_t l = 0; l < dg_.k_in.size(); ++l) {  // our caches (on the executor's device): outputs live in the
                                                  // arena, so they are copied back
    kc_.push_back(Tensor::zeros(dg_.k_in[l].shape(), dg_.k_in[l].dtype(), dctx));
    vc_.push_back(Tensor::zeros(dg_.v_in[l].shape(), dg_.v_in[l].dtype(), dctx));
    ex_->bind(dg_.k_in[l], kc_.back());
    ex_->bind(dg_.v_in[l], vc_.back());
  }
  token_ = Tensor::zeros({1, 1}, DType::i32);
  pos_ = Tensor::zeros({1, 1}, DType::i32);
  cache_pos_ = Tensor::zeros({1}, DType::i32);
  mask_ = Tensor::full({1, T_}, -INFINITY, DType::f32);
  ex_->bind(g_.tokens, token_);
  ex_->bind(dg_.position, pos_);
  ex_->bind(dg_.cache_position, cache_pos_);
  ex_->bind(dg_.mask, mask_);
}

Generator::~Generator() = default;

// The logits on the host: a view of the executor's memory there, a copy from a device.
const float* Generator::logits_of(const Tensor& logits) {
  if (!device_ctx_) return logits.data<float>();
  logits_host_ = logits.to_host();
  return logits_host_.data<float>();
}

const float* Generator::feed(int32_t id) {
  token_.data<int32_t>()[0] = id;
  pos_.data<int32_t>()[0] = static_cast<int32_t>(p_);
  cache_pos_.data<int32_t>()[0] = static_cast<int32_t>(p_);
  mask_.data<float>()[p_] = 0.0f;
  if (device_ctx_) {  // a device executor copies inputs when they are bound
    ex_->bind(g_.tokens, token_);
    ex_->bind(dg_.position, pos_);
    ex_->bind(dg_.cache_position, cache_pos_);
    ex_->bind(dg_.mask, mask_);
    for (size_t l = 0; l < kc_.size(); ++l) {
      ex_->bind(dg_.k_in[l], kc_[l]);
      ex_->bind(dg_.v_in[l], vc_[l]);
    }
  }
  ex_->run();
  for (size_t l = 0; l < kc_.size(); ++l) {
    kc_[l].copy_from(ex_->get(dg_.k_out[l]));
    vc_[l].copy_from(ex_->get(dg_.v_out[l]));
  }
  ++p_;
  return logits_of(ex_->get(g_.logits));
}

const float* Generator::refill(const std::vector<int32_t>& ids, int64_t keep) {  // restart from the last `keep`
  p_ = 0;
  std::fill(mask_.data<float>(), mask_.data<float>() + T_, -INFINITY);
  const float* logits = nullptr;
  for (size_t i = ids.size() - static_cast<size_t>(keep); i < ids.size(); ++i) logits = feed(ids[i]);
  return logits;
}

int64_t Generator::run(const std::vector<int32_t>& prompt, int64_t max_new_tokens, const SamplingOptions& s,
                       const std::function<bool(int32_t)>& on_token, std::vector<int32_t>& out) {
  out.clear();
  for (size_t i = 0; i < prompt.size(); ++i)
    XF_CHECK(prompt[i] >= 0 && prompt[i] < V_, "generate", "prompt token ", prompt[i], " at position ", i,
             " is outside the vocabulary of ", V_);
  if (max_new_tokens <= 0) return 0;
  std::vector<int32_t>& ids = ids_;
  ids.assign(prompt.begin(), prompt.end());
  if (ids.empty()) ids.push_back(0);
  auto sample = [&](const float* logits, int64_t n) {
    return sample_token(logits, V_, s.temperature, s.top_k, s.top_p, philox_uniform(s.seed, static_cast<uint64_t>(n)),
                        idx_scratch_, p_scratch_);
  };
  auto emit = [&](int32_t next) {
    ids.push_back(next);
    out.push_back(next);
    return on_token ? on_token(next) : true;
  };
  if (!kv_) {
    for (int64_t n = 0; n < max_new_tokens; ++n) {
      const int64_t len = std::min<int64_t>(static_cast<int64_t>(ids.size()), T_);
      std::fill(window_.data<int32_t>(), window_.data<int32_t>() + T_, 0);
      std::copy(ids.end() - len, ids.end(), window_.data<int32_t>());
      if (device_ctx_) ex_->bind(g_.tokens, window_);
      ex_->run();
      if (!emit(sample(logits_of(ex_->get(g_.logits)) + (len - 1) * V_, n))) break;
    }
    return static_cast<int64_t>(out.size());
  }
  const float* logits = refill(ids, std::min<int64_t>(static_cast<int64_t>(ids.size()), T_));
  for (int64_t n = 0; n < max_new_tokens; ++n) {
    const int32_t next = sample(logits, n);
    if (!emit(next) || n + 1 == max_new_tokens) break;
    // A full cache has no room for learned positions beyond T: restart from the last half window.
    logits = p_ < T_ ? feed(next) : refill(ids, T_ / 2);
  }
  return static_cast<int64_t>(out.size());
}

std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt_ids, int64_t max_new_tokens,
                              double temperature, int64_t top_k, double top_p, uint64_t seed, ThreadPool* pool,
                              bool kv_cache) {
  Generator g(model, pool, kv_cache);
  SamplingOptions s;
  s.temperature = temperature;
  s.top_k = top_k;
  s.top_p = top_p;
  s.seed = seed;
  std::vector<int32_t> out;
  g.run(prompt_ids, max_new_tokens, s, {}, out);
  return out;
}

}  // namespace xfr
