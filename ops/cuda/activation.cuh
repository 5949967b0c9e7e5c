// Host-side dispatch from an ActivationKind (ops/activation.h) to its device functor
// (ops/cuda/device/activation.cuh), shared by the activation kernels and the fused
// bias + activation + dropout kernel.
#pragma once
#include "ops/activation.h"
#include "ops/cuda/device/activation.cuh"
#include "runtime/error.h"

namespace xfr::cuda {

// Calls body(functor) with the device functor of `kind`. star_relu has learnable parameters and its own
// kernels, so it is refused here (`op` names the caller in the error).
template <class Body>
void with_activation(ActivationKind kind, const ActivationParams& p, const char* op, Body&& body) {
  switch (kind) {
    case ActivationKind::relu: body(dev::ActRelu{}); return;
    case ActivationKind::gelu: body(dev::ActGelu{}); return;
    case ActivationKind::gelu_tanh: body(dev::ActGeluTanh{}); return;
    case ActivationKind::leaky_relu: body(dev::ActLeakyRelu{static_cast<float>(p.negative_slope)}); return;
    case ActivationKind::squared_relu: body(dev::ActSquaredRelu{}); return;
    case ActivationKind::smelu: body(dev::ActSmelu{static_cast<float>(p.beta)}); return;
    case ActivationKind::silu: body(dev::ActSilu{}); return;
    case ActivationKind::sigmoid: body(dev::ActSigmoid{}); return;
    case ActivationKind::star_relu: break;
  }
  throw Error(op, "star_relu is not an elementwise activation kind (it has its own op, star_relu)");
}

}  // namespace xfr::cuda
