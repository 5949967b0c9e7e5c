// Batch-1 inference on sequences of any length up to the model's seq_len: class probabilities
// (classification), pooled L2-normalised embeddings (embedding), next-token logits (causal_lm). Graphs
// are compiled once per length (on first use, then cached; prepare() compiles ahead) and the parameters
// come from the model's store, which is only read: several Predictors (one per thread) may share a Model.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "factory/trainer.h"
#include "runtime/executor.h"

namespace xfr {

class Predictor {
 public:
  // device_ctx: where a GPU model's graphs run (its stream, pool and scratch); null: the model's own
  // context. Threads sharing a GPU model each pass their own: kernels that use a context's scratch space
  // in several launches must not interleave with another thread's.
  Predictor(const Model& model, ThreadPool* pool, std::shared_ptr<DeviceContext> device_ctx = nullptr);

  // Every output of one pass, as views into the executor's memory, valid until the next call:
  //   logits (1, L, V) for causal_lm and embedding, (1, K) for classification; hidden (1, L, C);
  //   pooled (1, C): classification's pooled features, embedding's unit-norm embedding, undefined for
  //   causal_lm; result: what run() returns, before slicing.
  struct Outputs {
    Tensor logits, hidden, pooled, result;
  };
  // tokens: `length` ids, checked as run() checks them. No allocation once `length` is compiled.
  Outputs forward(const int32_t* tokens, int64_t length);
  // Compiles the graph for sequences of `length` tokens now (1 <= length <= max_length()).
  void prepare(int64_t length);
  int64_t max_length() const { return max_len_; }
  const std::string& task() const { return task_; }

  // tokens: one sequence, 1 <= size <= seq_len. Returns (classification) softmax probabilities over the
  // classes, (embedding) the unit-norm embedding, (causal_lm) the last position's logits.
  std::vector<float> run(const std::vector<int32_t>& tokens);

  // A JSONL record {"tokens": [...]} or {"text": "..."} (text needs a tokenizer) -> the result record
  // {"label": k, "probs": [...]} / {"embedding": [...]} / {"logits": [...]}. Errors name the field.
  nlohmann::json run_record(const nlohmann::json& record, const Tokenizer* tokenizer);

 private:
  struct Compiled {
    BuiltModel graph;
    std::unique_ptr<Executor> executor;
    Value output;
    Tensor input;  // (1, L) i32, bound once
  };
  Compiled& compiled(int64_t length);
  const Model& model_;
  ThreadPool* pool_;
  std::shared_ptr<DeviceContext> device_ctx_;  // null on the host
  std::string task_;
  int64_t max_len_;
  std::map<int64_t, Compiled> by_length_;
};

}  // namespace xfr
