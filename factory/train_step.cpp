#include "factory/train_step.h"

#include <cmath>
#include <limits>

#include "ops/grad.h"
#include "runtime/cpu/threadpool.h"
#include "runtime/error.h"

namespace xfr {

TrainStep::TrainStep(BuiltModel& train, std::shared_ptr<ParamStore> host_store, const TrainStepOptions& options)
    : train_(train), opt_(options), host_store_(std::move(host_store)) {
  XF_CHECK(opt_.grad_accum >= 1, "train", "grad_accum must be >= 1");
  const bool device = opt_.device_ctx != nullptr;
  XF_CHECK(device || opt_.compute_dtype == DType::f32, "config",
           "mixed precision needs a CUDA device; the CPU computes in fp32", "train.precision");
  host_opt_ = make_optimizer(opt_.optimizer, host_store_->slots(), host_store_->flat_size());
  Graph& g = *train_.graph;
  if (device && opt_.compute_dtype == DType::f16) {
    // fp16: the backward starts from d(loss) = scale, so small gradients survive fp16's range.
    seed_ = g.input("loss_scale", train_.loss.meta());
  }
  const Gradients grads = gradients(train_.loss, seed_);
  ExecutorOptions eo;
  eo.pool = opt_.pool;
  eo.seed = opt_.seed;
  eo.logger = opt_.logger;
  eo.profile = opt_.profile;
  // One micro-batch a step: each run stores the step's gradients, so no step zeroes them first.
  eo.grads_overwrite = opt_.grad_accum == 1;
  if (opt_.profile && !opt_.profile_in_graph) opt_.cuda_graph = false;
  if (device) {
    store_ = std::make_shared<ParamStore>(*host_store_, opt_.device_ctx.get());
    eo.device_ctx = opt_.device_ctx;
    // The optimizer's update rewrites the executor's 16-bit parameter copy (mixed precision), so no run converts
    // every parameter again; step_device() converts it when the parameters changed otherwise (mirror_stale_).
    eo.param_mirror_by_caller = true;
    dev_opt_ = make_device_optimizer(*opt_.device_ctx, *host_opt_);
    dev_opt_->set_grad_multiplier(1.0f / static_cast<float>(opt_.grad_accum));
    if (seed_.defined()) {
      scaler_ = make_loss_scaler(*opt_.device_ctx);
      scale_view_ = Tensor::wrap(const_cast<float*>(scaler_->scale_device()), {1}, DType::f32,
                                 opt_.device_ctx->device(), nullptr, opt_.device_ctx.get());
    }
  } else {
    store_ = host_store_;
  }
  executor_ = std::make_unique<Executor>(g, std::vector<Value>{train_.loss}, grads, store_, eo);
}

TrainStep::~TrainStep() = default;

StepResult TrainStep::step(const std::function<void(Executor&, int64_t)>& bind, float lr, bool read_results) {
  return opt_.device_ctx ? step_device(bind, lr, read_results) : step_host(bind, lr);
}

StepResult TrainStep::step_host(const std::function<void(Executor&, int64_t)>& bind, float lr) {
  StepResult r;
  if (opt_.grad_accum > 1) store_->zero_grads();  // (one micro-batch: the run stores them, grads_overwrite)
  for (int64_t micro = 0; micro < opt_.grad_accum; ++micro) {
    bind(*executor_, micro);
    executor_->run();
    r.loss += executor_->get(train_.loss).item() / static_cast<double>(opt_.grad_accum);
  }
  if (opt_.grad_accum > 1) {  // each micro-batch's loss is a mean: the step's gradient is their mean
    float* gr = store_->grads();
    const float s = 1.0f / static_cast<float>(opt_.grad_accum);
    auto body = [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) gr[i] *= s;
    };
    const int64_t n = static_cast<int64_t>(store_->flat_size());
    if (opt_.pool) opt_.pool->parallel_for(n, 1 << 16, body);  // 64k floats a task: far above dispatch cost
    else body(0, n);
  }
  if (!norm_wanted())
    r.grad_norm = std::numeric_limits<float>::quiet_NaN();
  else if (opt_.grad_clip > 0)
    r.grad_norm = clip_grad_norm(store_->grads(), store_->slots(), static_cast<float>(opt_.grad_clip), opt_.pool);
  else
    r.grad_norm = global_grad_norm(store_->grads(), store_->slots(), opt_.pool);
  host_opt_->step(store_->params(), store_->grads(), lr, opt_.pool);
  return r;
}

// Everything of one step after the inputs are bound, as device work only (capturable).
void TrainStep::enqueue_device_step() {
  // grad_accum is 1 here: the executor stores the gradients (grads_overwrite), nothing to zero first.
  executor_->enqueue();
  enqueue_device_update();
}

// The gradients are complete: norm (and clip), the update, the loss-scale update (capturable).
void TrainStep::enqueue_device_update() {
  if (norm_wanted())
    executor_->profiled(opt_.grad_clip > 0 ? "gradient norm + clip" : "gradient norm", [&] {
      if (opt_.grad_clip > 0)
        dev_opt_->clip_grad_norm(store_->grads(), static_cast<float>(opt_.grad_clip), scaler_.get());
      else
        dev_opt_->grad_norm(store_->grads(), scaler_.get());
    });
  DeviceOptimizer::ParamMirror mirror;
  if (const Tensor& m = executor_->param_mirror(); m.defined()) mirror = {m.raw_data(), m.dtype()};
  executor_->profiled("optimizer update", [&] { dev_opt_->step(store_->params(), store_->grads(), mirror); });
  if (scaler_) executor_->profiled("loss scale update", [&] { scaler_->update(*dev_opt_); });
}

StepResult TrainStep::step_device(const std::function<void(Executor&, int64_t)>& bind, float lr, bool read_results) {
  DeviceContext& ctx = *opt_.device_ctx;
  dev_opt_->set_lr(lr);  // a host input: written before the (captured) step runs
  if (mirror_stale_) {   // also a host decision, outside any capture: the captured step never converts
    executor_->refresh_param_mirror();  // (profiled as the executor's "cast (parameter mirror)")
    mirror_stale_ = false;
  }
  StepResult r;
  const bool graphs = opt_.cuda_graph && opt_.grad_accum == 1 && !graph_broken_;
  if (opt_.grad_accum == 1) {
    bind(*executor_, 0);
    if (seed_.defined()) executor_->bind(seed_, scale_view_);  // device copy of the current scale
    executor_->begin_run();
    if (graphs && !graph_ && device_steps_ >= 1) {  // the first step ran eagerly: plans and caches exist
      try {
        executor_->begin_graph_profile();
        graph_ = capture_graph(ctx, [&] { enqueue_device_step(); });
        if (opt_.logger) opt_.logger->debug("train step captured as a CUDA graph");
      } catch (const Error& e) {
        graph_broken_ = true;
        if (opt_.logger) opt_.logger->warn("CUDA graph capture of the training step failed, running eagerly: {}", e.what());
      }
    }
    if (graph_) {
      ctx.replay(graph_);
      if (opt_.profile) executor_->collect_graph_profile();
    } else {
      enqueue_device_step();
    }
    executor_->end_run();
    if (read_results) r.loss = executor_->get(train_.loss).item();
  } else {
    store_->zero_grads();
    for (int64_t micro = 0; micro < opt_.grad_accum; ++micro) {
      bind(*executor_, micro);
      if (seed_.defined()) executor_->bind(seed_, scale_view_);
      executor_->run();
      if (read_results) r.loss += executor_->get(train_.loss).item() / static_cast<double>(opt_.grad_accum);
    }
    enqueue_device_update();
  }
  ++device_steps_;
  if (!read_results) {
    r.loss = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  const StepScalars sc = dev_opt_->read_scalars();
  r.grad_norm = norm_wanted() ? sc.grad_norm : std::numeric_limits<float>::quiet_NaN();
  r.skipped = sc.last_step_skipped != 0;
  if (scaler_) {
    r.loss_scale = scaler_->stats().scale;
    if (r.skipped && opt_.logger)
      opt_.logger->info("fp16: gradient overflow, step skipped; loss scale now {}", r.loss_scale);
  }
  return r;
}

void TrainStep::sync_to_host() {
  if (!opt_.device_ctx) return;
  host_store_->copy_params_from(*store_);
  dev_opt_->download_state(*host_opt_);
}

void TrainStep::sync_from_host() {
  if (!opt_.device_ctx) return;
  store_->copy_params_from(*host_store_);
  dev_opt_->upload_state(*host_opt_);
  mirror_stale_ = true;
}

}  // namespace xfr
