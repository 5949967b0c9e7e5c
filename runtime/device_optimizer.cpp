// The device-independent side of runtime/device_optimizer.h: config checks and the dispatch into the
// backend that has a device optimizer (only CUDA so far), as runtime/device_context.cpp does.
#include "runtime/device_optimizer.h"

#include <cmath>

#include "runtime/error.h"
#ifdef XF_WITH_CUDA
#include "runtime/cuda/optimizer.h"
#endif

namespace xfr {

void validate_loss_scaler_config(const LossScalerConfig& c) {
  // Every comparison with NaN is false, so a NaN fails each check below.
  XF_CHECK(std::isfinite(c.init_scale) && c.init_scale > 0.0f, "loss_scaler",
           "init_scale must be finite and > 0, got ", c.init_scale);
  XF_CHECK(std::isfinite(c.growth_factor) && c.growth_factor > 1.0f, "loss_scaler",
           "growth_factor must be finite and > 1, got ", c.growth_factor);
  XF_CHECK(c.backoff_factor > 0.0f && c.backoff_factor < 1.0f, "loss_scaler", "backoff_factor must be in (0, 1), got ",
           c.backoff_factor);
  XF_CHECK(c.growth_interval >= 1, "loss_scaler", "growth_interval must be >= 1, got ", c.growth_interval);
}

std::unique_ptr<DeviceOptimizer> make_device_optimizer(DeviceContext& ctx, const Optimizer& host) {
#ifdef XF_WITH_CUDA
  return cuda::make_cuda_optimizer(ctx, host);
#else
  (void)host;
  throw Error("optimizer", str_cat("no device optimizer for ", ctx.device().str(),
                                   ": this build has no CUDA backend (configured with XF_CUDA=OFF or without nvcc); "
                                   "use the host Optimizer"));
#endif
}

std::unique_ptr<LossScaler> make_loss_scaler(DeviceContext& ctx, const LossScalerConfig& config) {
  validate_loss_scaler_config(config);
#ifdef XF_WITH_CUDA
  return cuda::make_cuda_loss_scaler(ctx, config);
#else
  throw Error("loss_scaler", str_cat("no device loss scaler for ", ctx.device().str(),
                                     ": this build has no CUDA backend (configured with XF_CUDA=OFF or without nvcc)"));
#endif
}

}  // namespace xfr
