// Batch-1 inference on sequences of any length up to the model's seq_len: class probabilities
// (classification), pooled L2-normalised embeddings (embedding), next-token logits (causal_lm). Graphs
// are compiled once per length and shared parameters come from the model's store.
#pragma once
#include <map>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "factory/trainer.h"
#include "runtime/executor.h"

namespace xfr {

class Predictor {
 public:
  Predictor(Model& model, ThreadPool* pool);

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
  };
  Compiled& compiled(int64_t length);
  Model& model_;
  ThreadPool* pool_;
  std::string task_;
  int64_t max_len_;
  std::map<int64_t, Compiled> by_length_;
};

}  // namespace xfr
