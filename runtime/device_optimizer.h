// The optimizer on a device: AdamW / SGD state in device buffers with the host Optimizer's flat layout
// (runtime/optimizer.h), one fused multi-tensor kernel per update, gradient-norm clipping and fp16 dynamic
// loss scaling on the device. Every value that changes from step to step (learning rate, bias-correction
// step count, gradient multiplier, found-inf flag) is read from device memory, so a whole training step can
// be captured in a CUDA graph once and replayed. Checkpoints stay in the host format: download_state() /
// upload_state() copy the state between the device and a host Optimizer.
//
// No CUDA header here: the runtime core and CPU-only builds see only this interface (runtime/cuda/
// implements it; without the CUDA backend make_device_optimizer() throws).
//
// One training step, everything ordered on the context's stream:
//
//   opt.set_lr(lr);                                  // host input: before launching a captured step, never
//                                                    // inside the capture (it would freeze this lr)
//   -- capturable from here --
//   backward(...)                                    // with a LossScaler: seeded with *scaler.scale_device()
//   opt.clip_grad_norm(grads, max_norm, &scaler);    // or opt.grad_norm(grads, &scaler), or nothing
//   opt.step(params, grads);                         // skipped on the device when found_inf is set
//   scaler.update(opt);                              // after the step: halve and reset, or count and grow
//   -- end of capture --
//   opt.last_grad_norm(), scaler.stats()             // host reads for logging (they synchronize)
//
// The gradient an update uses is grads[i] * (grad_multiplier * inv_loss_scale * clip_factor): the 1/accum
// multiplier set from the host, 1/loss scale and the clip factor folded in by grad_norm()/clip_grad_norm().
// Gradients themselves are never rewritten.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "runtime/device_context.h"
#include "runtime/optimizer.h"

namespace xfr {

// The per-step scalars, as they lie in device memory (a DeviceOptimizer owns one: scalars_device()).
// Other kernels may write the per-step fields through that pointer (a fused inf check sets found_inf = 1,
// never back to 0). 48 bytes, fields naturally aligned; the layout is part of the interface.
struct StepScalars {
  // ---- set from the host, kept across steps ----
  int64_t step_count = 0;       // updates applied so far, as Optimizer::step_count(); the next update's bias
                                // correction uses step_count + 1. step() increments it on the device unless
                                // the step is skipped, so the host need not set it each step.
  float lr = 0.0f;              // learning rate of the next update (set_lr / set_host_scalars)
  float grad_multiplier = 1.0f; // base gradient multiplier, e.g. 1 / gradient-accumulation steps
  // ---- per step: written before step() (grad_norm, clip_grad_norm, other kernels), reset by step() ----
  float inv_loss_scale = 1.0f;  // 1 / the loss scale the gradients carry (grad_norm with a LossScaler)
  float clip_factor = 1.0f;     // max_norm / (norm + 1e-6) when norm > max_norm, else 1
  int32_t found_inf = 0;        // non-zero: the next step() leaves params and state unchanged
  // ---- results, for the host to log ----
  float grad_norm = 0.0f;       // the last L2 norm (of grads * grad_multiplier * inv_loss_scale, before clipping)
  int32_t last_step_skipped = 0;  // 1 when the last step() was skipped (read by LossScaler::update)
  int32_t reserved = 0;         // keeps skipped_steps 8-byte aligned
  int64_t skipped_steps = 0;    // step() calls skipped since creation
};
static_assert(sizeof(StepScalars) == 48, "StepScalars is shared with device code; keep its layout");

class LossScaler;

class DeviceOptimizer {
 public:
  virtual ~DeviceOptimizer() = default;
  DeviceOptimizer(const DeviceOptimizer&) = delete;
  DeviceOptimizer& operator=(const DeviceOptimizer&) = delete;

  // ---- host inputs: stream-ordered writes into scalars_device(); refused while the stream is capturing ----
  // The learning rate of the next update(s); finite and >= 0.
  virtual void set_lr(float lr) = 0;
  // The learning rate and the step count (updates already applied, >= 0, as Optimizer::step_count()).
  virtual void set_host_scalars(float lr, int64_t step_count) = 0;
  // The base gradient multiplier (1 / accumulation steps); finite and > 0. Starts at 1.
  virtual void set_grad_multiplier(float multiplier) = 0;

  // ---- capturable: kernels only, no allocation, no host synchronisation ----
  // The L2 norm over the slots (padding excluded) of grads * grad_multiplier [* 1/scale] into
  // StepScalars::grad_norm, by a deterministic two-stage reduction in double (the same bits every run).
  // A non-finite norm (an inf or NaN gradient) sets found_inf. With a scaler, 1/its scale is folded into
  // the multiplier (the gradients came from loss * scale). Resets clip_factor to 1.
  virtual void grad_norm(const float* grads_dev, const LossScaler* scaler = nullptr) = 0;
  // grad_norm(), then torch.nn.utils.clip_grad_norm_: when the norm exceeds max_norm (> 0), the clip factor
  // max_norm / (norm + 1e-6) is folded into the multiplier. A non-finite norm sets found_inf instead.
  virtual void clip_grad_norm(const float* grads_dev, float max_norm, const LossScaler* scaler = nullptr) = 0;
  // A 16-bit copy of the flat parameters (bf16 or f16, flat_size() elements at the parameters' offsets: a
  // mixed-precision executor's parameter mirror, Executor::param_mirror()). step() rewrites each updated element,
  // rounded to nearest even, so the copy stays current without a conversion pass over every parameter. Padding
  // between slots is left as it is. data null: no copy.
  struct ParamMirror {
    void* data = nullptr;
    DType dtype = DType::bf16;
  };
  // One update of params_dev from grads_dev (device pointers, flat_size() floats each, the layout of
  // slots()), with the host Optimizer::step's arithmetic (torch semantics, identical rounding), writing `mirror`
  // too when it has data. Skipped entirely when found_inf is set (the mirror is then unchanged too). Afterwards:
  // step_count += 1 (unless skipped), last_step_skipped set, the per-step fields (found_inf, clip_factor,
  // inv_loss_scale) reset.
  virtual void step(float* params_dev, const float* grads_dev, const ParamMirror& mirror) = 0;
  void step(float* params_dev, const float* grads_dev) { step(params_dev, grads_dev, ParamMirror{}); }

  // ---- host reads: each synchronizes the stream ----
  virtual StepScalars read_scalars() = 0;
  float last_grad_norm() { return read_scalars().grad_norm; }
  int64_t step_count() { return read_scalars().step_count; }

  // The scalars in device memory, for kernels of other parts (LossScaler::update, a fused inf check).
  virtual StepScalars* scalars_device() = 0;
  virtual const StepScalars* scalars_device() const = 0;

  // ---- checkpoints (host format; synchronous) ----
  // Copies the device state buffers into host.state() and sets host.set_step_count(step_count()).
  // host must have this optimizer's name, slots and flat size; throws xfr::Error("optimizer", ...) if not.
  virtual void download_state(Optimizer& host) = 0;
  // The reverse: the device state and step count from host (same checks).
  virtual void upload_state(const Optimizer& host) = 0;

  const OptimizerConfig& config() const { return config_; }
  const std::vector<ParamSlot>& slots() const { return slots_; }
  size_t flat_size() const { return flat_size_; }

 protected:
  DeviceOptimizer(OptimizerConfig config, std::vector<ParamSlot> slots, size_t flat_size)
      : config_(std::move(config)), slots_(std::move(slots)), flat_size_(flat_size) {}
  OptimizerConfig config_;
  std::vector<ParamSlot> slots_;
  size_t flat_size_ = 0;
};

// A device optimizer with host's config, slots and flat size, its state and step count uploaded from host
// (zeros for a fresh one). Throws xfr::Error("optimizer", ...) when ctx is not a device this build has a
// device optimizer for (always, in a build without the CUDA backend).
std::unique_ptr<DeviceOptimizer> make_device_optimizer(DeviceContext& ctx, const Optimizer& host);

// ---- fp16 dynamic loss scaling (torch.cuda.amp.GradScaler's schedule) ------------------------------

struct LossScalerConfig {
  float init_scale = 65536.0f;    // 2^16, GradScaler's default: fp16 gradients of typical losses stay finite
  float growth_factor = 2.0f;     // > 1: after growth_interval clean steps, scale *= growth_factor
  float backoff_factor = 0.5f;    // in (0, 1): on an overflowing (skipped) step, scale *= backoff_factor
  int64_t growth_interval = 2000; // >= 1; GradScaler's default
};

// Throws xfr::Error("loss_scaler", ...) naming the offending field.
void validate_loss_scaler_config(const LossScalerConfig& config);

struct LossScalerStats {
  float scale = 0.0f;
  int64_t growth_tracker = 0;  // clean steps since the scale last changed (or since the last overflow)
  int64_t overflow_steps = 0;  // steps skipped (scale backed off) since creation
};

class LossScaler {
 public:
  virtual ~LossScaler() = default;
  LossScaler(const LossScaler&) = delete;
  LossScaler& operator=(const LossScaler&) = delete;

  // The current scale in device memory (the backward seeds d loss with it; grad_norm reads it).
  virtual const float* scale_device() const = 0;
  // Capturable; after opt.step(): when that step was skipped, scale *= backoff and the tracker resets; else
  // the tracker counts, and on reaching growth_interval the scale grows (if still finite) and it resets.
  virtual void update(const DeviceOptimizer& opt) = 0;
  // Host read for logging and checkpoints (synchronizes).
  virtual LossScalerStats stats() = 0;
  // Restores a scale (finite, > 0) and growth tracker (>= 0) from a checkpoint; stream-ordered, refused
  // while the stream is capturing.
  virtual void set_state(float scale, int64_t growth_tracker) = 0;

  const LossScalerConfig& config() const { return config_; }

 protected:
  explicit LossScaler(LossScalerConfig config) : config_(config) {}
  LossScalerConfig config_;
};

// Throws as make_device_optimizer() does, and for an invalid config.
std::unique_ptr<LossScaler> make_loss_scaler(DeviceContext& ctx, const LossScalerConfig& config = {});

}  // namespace xfr
