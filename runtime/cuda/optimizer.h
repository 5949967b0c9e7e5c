// The CUDA implementation of runtime/device_optimizer.h (kernels in optimizer.cu). No CUDA header, so
// runtime/device_optimizer.cpp can dispatch here.
#pragma once
#include <memory>

#include "runtime/device_optimizer.h"

namespace xfr::cuda {

// Throws xfr::Error("optimizer", ...) when ctx is not a CUDA context.
std::unique_ptr<DeviceOptimizer> make_cuda_optimizer(DeviceContext& ctx, const Optimizer& host);
// config already validated.
std::unique_ptr<LossScaler> make_cuda_loss_scaler(DeviceContext& ctx, const LossScalerConfig& config);

}  // namespace xfr::cuda
