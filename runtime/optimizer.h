// Optimizers over the flat float32 parameter / gradient / state buffers (see DESIGN.md, principle 3).
//
// Parameters, gradients and every optimizer state buffer share one layout, given by a list of ParamSlot:
// slot i occupies elements [offset, offset + numel) of each flat buffer. Memory between slots is padding;
// the optimizers and the gradient-norm helpers never read or write it (state buffers keep it at zero).
//
// AdamW and SGD reproduce torch.optim.AdamW / torch.optim.SGD (single-tensor path, no amsgrad, no
// maximize, dampening 0), except that weight decay is applied only to the slots where decays() is true.
// The learning rate is passed to every step() so that a schedule (runtime/lr_schedule.h) drives it;
// OptimizerConfig::lr is the base rate that the schedule scales.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/cpu/threadpool.h"
#include "runtime/param.h"

namespace xfr {

struct OptimizerConfig {
  std::string name = "adamw";  // "adamw" or "sgd"
  float lr = 1e-3f;            // base learning rate (the schedule scales it); >= 0
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;  // AdamW only: 0 <= beta < 1, eps > 0
  float weight_decay = 0.0f;   // >= 0; decoupled for AdamW, coupled into the gradient for SGD
  float momentum = 0.9f;       // SGD only: >= 0 (0 = plain SGD, no momentum buffer)
  bool nesterov = false;       // SGD only: Nesterov momentum (needs momentum > 0)
  // Which parameter kinds weight decay touches besides plain weights (ParamKind::other never decays).
  bool decay_biases = false, decay_norms = false, decay_embeddings = false;
};

// Whether weight decay applies to a parameter of this kind: weights always; biases, norm gains and
// embeddings only when the config says so; `other` (scalar gains and the like) never.
bool decays(const OptimizerConfig& config, ParamKind kind);

// Throws xfr::Error("optimizer", ...) naming the offending field when a value is out of range or the name
// is unknown. make_optimizer() calls it; a config loader may call it earlier to fail before any work.
void validate_optimizer_config(const OptimizerConfig& config);

class Optimizer {
 public:
  // Throws xfr::Error("optimizer", ...) for an invalid config, or for slots that leave the flat buffers
  // or overlap each other (an overlapping element would be updated twice).
  Optimizer(OptimizerConfig config, std::vector<ParamSlot> slots, size_t flat_size);
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of `params` (flat_size() floats) from `grads` (same layout) at learning rate `lr` (>= 0,
  // finite). Increments step_count() first, so the first step is step 1 (as torch counts it).
  // pool == nullptr runs serially; the result is bit-identical either way.
  virtual void step(float* params, const float* grads, float lr, ThreadPool* pool) = 0;

  // The named flat state buffers (each flat_size() floats, same layout as the parameters), for
  // checkpoints: "exp_avg", "exp_avg_sq" (AdamW), "momentum_buffer" (SGD with momentum > 0; none for
  // plain SGD). A loader may overwrite their contents but must keep their size.
  virtual std::vector<std::pair<std::string, std::vector<float>*>> state() = 0;

  int64_t step_count() const { return step_count_; }
  void set_step_count(int64_t steps);  // for checkpoint restore; >= 0

  const OptimizerConfig& config() const { return config_; }
  const std::vector<ParamSlot>& slots() const { return slots_; }
  size_t flat_size() const { return flat_size_; }

 protected:
  // A contiguous piece of one slot: the unit of parallel work, sized so that every stream an update
  // touches stays cache-resident while it is processed.
  struct Chunk {
    size_t slot;   // index into slots_
    size_t begin;  // flat element range [begin, end), inside the slot
    size_t end;
  };
  OptimizerConfig config_;
  std::vector<ParamSlot> slots_;
  size_t flat_size_ = 0;
  std::vector<Chunk> chunks_;
  std::vector<char> slot_decays_;  // decays(config_, slots_[i].kind), looked up once
  int64_t step_count_ = 0;
};

// Throws xfr::Error("optimizer", "unknown optimizer 'x' (known: adamw, sgd)") for an unknown name, and
// the errors of validate_optimizer_config() / the Optimizer constructor.
std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& config, std::vector<ParamSlot> slots,
                                          size_t flat_size);

// L2 norm of the gradients over all slots (padding excluded), accumulated in double. Deterministic: the
// same value whatever the pool or its thread count.
float global_grad_norm(const float* grads, const std::vector<ParamSlot>& slots, ThreadPool* pool);

// torch.nn.utils.clip_grad_norm_: returns the pre-clip norm; when it exceeds max_norm (> 0), scales every
// gradient by max_norm / (norm + 1e-6). A non-finite norm (inf/NaN gradients) is returned and nothing is
// scaled, so the caller can skip the step. Throws xfr::Error("clip_grad_norm", ...) if max_norm <= 0 or NaN.
float clip_grad_norm(float* grads, const std::vector<ParamSlot>& slots, float max_norm, ThreadPool* pool);

}  // namespace xfr
