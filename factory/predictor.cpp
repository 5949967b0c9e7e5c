#include "factory/predictor.h"

#include <cmath>

#include "factory/schema.h"
#include "ops/softmax.h"
#include "runtime/error.h"

namespace xfr {

Predictor::Predictor(const Model& model, ThreadPool* pool, std::shared_ptr<DeviceContext> device_ctx)
    : model_(model), pool_(pool), device_ctx_(model.run_context(device_ctx)),
      task_(get_string(model.model_config, "task")), max_len_(model.train_graph.tokens.dim(1)) {}

Predictor::Compiled& Predictor::compiled(int64_t length) {
  auto it = by_length_.find(length);
  if (it != by_length_.end()) return it->second;
  Compiled c;
  // Positional tables keep the trained length; the graph covers `length` tokens.
  ConfigNode cfg = model_.model_config;
  c.graph = build_model(cfg, 1, length, /*training=*/false);
  if (task_ == "classification") {
    c.output = softmax(c.graph.logits, Value{}, 1.0, false, "probs");  // (1, K)
  } else if (task_ == "embedding") {
    c.output = c.graph.embedding;  // (1, C)
  } else {
    c.output = c.graph.logits;  // (1, L, V)
  }
  ExecutorOptions opt;
  opt.pool = pool_;
  opt.device_ctx = device_ctx_;
  opt.constant_params = true;  // the model's parameters are only read
  std::vector<Value> outputs{c.output, c.graph.hidden};
  if (c.graph.logits.id != c.output.id) outputs.push_back(c.graph.logits);
  if (task_ == "classification") outputs.push_back(c.graph.pooled);
  c.executor = std::make_unique<Executor>(*c.graph.graph, outputs, Gradients{}, model_.run_store(), opt);
  c.input = Tensor::zeros({1, length}, DType::i32);
  c.executor->bind(c.graph.tokens, c.input);
  return by_length_.emplace(length, std::move(c)).first->second;
}

void Predictor::prepare(int64_t length) {
  XF_CHECK(length >= 1 && length <= max_len_, "infer", "a sequence of ", length, " tokens; this model takes 1 to ", max_len_);
  compiled(length);
}

Predictor::Outputs Predictor::forward(const int32_t* tokens, int64_t L) {
  XF_CHECK(L >= 1 && L <= max_len_, "infer", "a sequence of ", L, " tokens; this model takes 1 to ", max_len_);
  const int64_t V = model_.train_graph.vocab_size;
  for (int64_t i = 0; i < L; ++i)
    XF_CHECK(tokens[i] >= 0 && tokens[i] < V, "infer", "token ", tokens[i], " at position ", i, " is outside the vocabulary of ", V);
  Compiled& c = compiled(L);
  std::copy(tokens, tokens + L, c.input.data<int32_t>());
  const bool device = device_ctx_ != nullptr;
  if (device) c.executor->bind(c.graph.tokens, c.input);  // a device executor copies its inputs when bound
  c.executor->run();
  // Device outputs come back to the host (one copy each; the host path returns views).
  auto out = [&](Value v) { return device ? c.executor->get(v).to_host() : c.executor->get(v); };
  Outputs o;
  o.result = out(c.output);
  o.hidden = out(c.graph.hidden);
  o.logits = c.graph.logits.id == c.output.id ? o.result : out(c.graph.logits);
  if (task_ == "classification") o.pooled = out(c.graph.pooled);
  else if (task_ == "embedding") o.pooled = o.result;
  return o;
}

std::vector<float> Predictor::run(const std::vector<int32_t>& tokens) {
  const auto L = static_cast<int64_t>(tokens.size());
  const Tensor out = forward(tokens.data(), L).result;
  const int64_t V = model_.train_graph.vocab_size;
  const float* p = out.data<float>();
  if (task_ == "causal_lm") return std::vector<float>(p + (L - 1) * V, p + L * V);
  return std::vector<float>(p, p + out.numel());
}

nlohmann::json Predictor::run_record(const nlohmann::json& record, const Tokenizer* tokenizer) {
  XF_CHECK(record.is_object(), "infer", "each input line must be a JSON object with \"tokens\" or \"text\"");
  std::vector<int32_t> tokens;
  if (record.contains("tokens")) {
    XF_CHECK(record["tokens"].is_array(), "infer", "\"tokens\" must be an array of integers");
    for (const auto& t : record["tokens"]) {
      XF_CHECK(t.is_number_integer(), "infer", "\"tokens\" must be an array of integers");
      tokens.push_back(t.get<int32_t>());
    }
  } else if (record.contains("text")) {
    XF_CHECK(record["text"].is_string(), "infer", "\"text\" must be a string");
    XF_CHECK(tokenizer != nullptr, "infer", "\"text\" needs a text model (a tokenizer); give \"tokens\"");
    tokens = tokenizer->encode(record["text"].get<std::string>());
  } else {
    throw Error("infer", "each input line needs \"tokens\" or \"text\"");
  }
  const std::vector<float> r = run(tokens);
  nlohmann::json out;
  if (record.contains("id")) out["id"] = record["id"];
  if (task_ == "classification") {
    out["label"] = static_cast<int64_t>(std::max_element(r.begin(), r.end()) - r.begin());
    out["probs"] = r;
  } else if (task_ == "embedding") {
    out["embedding"] = r;
  } else {
    out["next_token"] = static_cast<int64_t>(std::max_element(r.begin(), r.end()) - r.begin());
    out["logits"] = r;
  }
  return out;
}

}  // namespace xfr
