// Training and inference from a config: data, model graphs (train and eval share one parameter
// store), weight init and its check, optimizer and schedule, metrics, checkpoints and resume, samples.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "factory/config.h"
#include "factory/model_builder.h"
#include "factory/weight_init.h"
#include "runtime/data.h"
#include "runtime/device_context.h"
#include "runtime/labelled_data.h"
#include "runtime/logging.h"
#include "runtime/optimizer.h"
#include "runtime/param_store.h"

namespace xfr {

class ThreadPool;

struct TrainOptions {
  Logger logger;               // progress and summaries (null: silent)
  std::string resume;          // "" (fresh), "auto" (newest complete checkpoint, if any), or a step folder
  bool progress_line = false;  // redraw one status line (a TTY) instead of a line every log_every steps
  // Called after each optimizer step with (step, loss); for tests and embedding applications.
  std::function<void(int64_t, double)> on_step;
};

struct TrainResult {
  int64_t steps = 0;          // optimizer steps done in total (including resumed ones)
  double first_loss = 0;      // training loss of the first step run by this call
  double final_loss = 0;      // training loss of the last step
  double initial_val_loss = -1, final_val_loss = -1;  // -1: no validation split
  std::vector<double> losses; // per step run by this call
  std::string sample;         // causal_lm on text: a generated sample after training
  std::string out_dir;
};

TrainResult train(const Config& config, const TrainOptions& options);

// The data a config names: tokenizer (text), token source, split.
struct LoadedData {
  std::shared_ptr<Tokenizer> tokenizer;  // text data only
  TokenSourcePtr source;                 // token streams (text, tokens, copy, reverse)
  TrainValSplit split;
  std::optional<MajorityTask> labelled;  // labelled sequences (majority), for classification
  int64_t vocab_size = 0;
};
LoadedData load_data(const Config& config);

// A model ready to run: graphs for training (batch, seq_len) and for evaluation share the store.
struct Model {
  BuiltModel train_graph, eval_graph;
  std::shared_ptr<ParamStore> store;  // the master parameters, on the host
  InitReport init;
  ConfigNode model_config;  // the `model` section with vocab_size resolved
  // Inference on a GPU (Predictor, Generator): a device context and a device copy of `store` (see
  // place_on_device); null: the host.
  std::shared_ptr<DeviceContext> device_ctx;
  std::shared_ptr<ParamStore> device_store;
  const std::shared_ptr<ParamStore>& run_store() const { return device_store ? device_store : store; }
  // Where graphs over run_store() run: null on the host; on a device `preferred` (a caller's own
  // context, e.g. one per thread), else the model's.
  std::shared_ptr<DeviceContext> run_context(const std::shared_ptr<DeviceContext>& preferred) const {
    return device_ctx ? (preferred ? preferred : device_ctx) : nullptr;
  }
};
// Copies the model's parameters to `device` for inference (a no-op for the CPU); after a change to
// model.store, call it again to refresh the copy.
void place_on_device(Model& model, Device device);
// train.optimizer of a validated config.
OptimizerConfig optimizer_config(const Config& config);

// Builds (and initialises) the model of `config` for data with `vocab_size` tokens; its graphs compute in
// `compute_dtype` (mixed precision on a GPU; the store's master weights are f32 either way).
Model make_model(const Config& config, int64_t vocab_size, int64_t batch, const Logger& logger,
                 DType compute_dtype = DType::f32);

// Text generation for causal_lm: continues `prompt_ids` by `max_new_tokens` tokens sampled with
// temperature (0: greedy) / top-k / top-p (seeded Philox). With a KV cache (when the model supports it,
// see supports_kv_cache) each new token costs one single-token pass; otherwise (or kv_cache false) the
// last seq_len tokens are recomputed per token. Once the cache is full, it restarts from the last half
// window (learned positions end at seq_len).
std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt_ids, int64_t max_new_tokens,
                              double temperature, int64_t top_k, double top_p, uint64_t seed, ThreadPool* pool,
                              bool kv_cache = true);

}  // namespace xfr
