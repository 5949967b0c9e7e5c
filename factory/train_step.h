// One optimizer step of a model, on the CPU or a GPU: the training executor (forward + backward) over
// grad_accum micro-batches, gradient clipping, the optimizer, and with fp16-mixed dynamic loss scaling.
// The trainer and the GPU benchmark both drive training through this one piece.
//
// CPU: the host Optimizer over the store's flat buffers (bit-identical to what it always was).
// GPU: parameters, gradients and optimizer state on the device (a copy of the host store), the fused
// device optimizer, and (with cuda_graph, one micro-batch per step) the whole step - zeroing, forward,
// backward, clipping, update, loss-scale update - captured once as a CUDA graph and replayed; if capture
// fails it runs eagerly and says why in the log.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>

#include "factory/model_builder.h"
#include "runtime/device_context.h"
#include "runtime/device_optimizer.h"
#include "runtime/executor.h"
#include "runtime/logging.h"
#include "runtime/optimizer.h"
#include "runtime/param_store.h"

namespace xfr {

class ThreadPool;

struct TrainStepOptions {
  std::shared_ptr<DeviceContext> device_ctx;  // null: the CPU
  ThreadPool* pool = nullptr;                 // CPU kernels and the host optimizer
  uint64_t seed = 0;                          // dropout's Philox key
  OptimizerConfig optimizer;
  int64_t grad_accum = 1;
  double grad_clip = 0;  // 0: no clipping (the norm is still computed when grad_norm)
  // Compute the global gradient norm each step (StepResult::grad_norm, the training log's). Clipping and fp16 loss
  // scaling need it whatever this says; a step with neither and grad_norm false skips the pass over the gradients
  // (torch's plain optimizer step: the GPU benchmark's like-for-like recipe, tools/bench_gpu.cpp).
  bool grad_norm = true;
  DType compute_dtype = DType::f32;           // f16: dynamic loss scaling
  bool cuda_graph = true;                     // GPU, grad_accum == 1: capture the whole step
  bool profile = false;                       // time every kernel and the optimizer's work (Executor::profile; no
                                              // graph capture unless profile_in_graph)
  // With profile and cuda_graph: time the kernels inside the captured step, each between two event nodes, read after
  // every replay (Executor::collect_graph_profile); the eager profile times them one by one outside any graph.
  bool profile_in_graph = false;
  Logger logger;
};

struct StepResult {
  double loss = 0;         // mean over the micro-batches (NaN when not read)
  float grad_norm = 0;     // before clipping (0 when not read; NaN when not computed: TrainStepOptions::grad_norm)
  bool skipped = false;    // fp16: the step overflowed and was skipped
  float loss_scale = 1;    // fp16: the scale after this step
};

class TrainStep {
 public:
  // train: the model's training graph (its loss and inputs); host_store: the master parameters (f32,
  // initialised or loaded); on a GPU they are copied to the device now.
  TrainStep(BuiltModel& train, std::shared_ptr<ParamStore> host_store, const TrainStepOptions& options);
  ~TrainStep();

  // bind(executor, micro) binds micro-batch `micro`'s inputs (tokens, targets) from the host. With
  // read_results false a GPU step does not wait for the device (the loss and norm are not read).
  StepResult step(const std::function<void(Executor&, int64_t micro)>& bind, float lr, bool read_results = true);

  Executor& executor() { return *executor_; }
  ParamStore& store() { return *store_; }          // where training happens (the device copy on a GPU)
  const std::shared_ptr<ParamStore>& store_ptr() const { return store_; }
  Optimizer& host_optimizer() { return *host_opt_; }
  // Device -> host: parameters into the host store and optimizer state into host_optimizer()
  // (checkpoints, generation). Host -> device after the host store/optimizer were loaded (resume). On a GPU,
  // change the parameters of store() only through these (or the steps): a mixed-precision step reads a 16-bit
  // copy that the optimizer keeps current and sync_from_host() refreshes.
  void sync_to_host();
  void sync_from_host();
  bool captured() const { return graph_ != nullptr; }

 private:
  StepResult step_host(const std::function<void(Executor&, int64_t)>& bind, float lr);
  StepResult step_device(const std::function<void(Executor&, int64_t)>& bind, float lr, bool read_results);
  void enqueue_device_step();
  void enqueue_device_update();
  // Whether a step computes the gradient norm: clipping, fp16 loss scaling (GPU: the norm finds overflows) or
  // TrainStepOptions::grad_norm. The host and device steps both ask this.
  bool norm_wanted() const { return opt_.grad_clip > 0 || opt_.grad_norm || scaler_ != nullptr; }

  BuiltModel& train_;
  TrainStepOptions opt_;
  std::shared_ptr<ParamStore> host_store_, store_;
  std::unique_ptr<Optimizer> host_opt_;
  std::unique_ptr<DeviceOptimizer> dev_opt_;
  std::unique_ptr<LossScaler> scaler_;
  Value seed_;              // fp16: the backward's seed input (the loss scale)
  Tensor scale_view_;       // fp16: the scaler's device scale as a (1,) tensor
  std::unique_ptr<Executor> executor_;
  std::shared_ptr<void> graph_;
  bool graph_broken_ = false;
  int64_t device_steps_ = 0;
  // The executor's 16-bit parameter copy no longer matches the device parameters (they were copied in, not
  // updated by the optimizer): the next step converts it first.
  bool mirror_stale_ = true;
};

}  // namespace xfr
