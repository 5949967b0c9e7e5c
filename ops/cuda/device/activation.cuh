// Device functors of the activations of ops/activation.h, in float: f(x) and f'(x), following the CPU
// kernels (ops/cpu/activation.cpp) form for form, with CUDA's accurate expf/erfcf (no fast math):
//   gelu       x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2 (erfc keeps the negative tail's relative accuracy)
//   gelu_tanh  x/2 (1 + tanh u) written as x sigmoid(2u) (no cancellation near u = 0 or in the tail)
// NaN propagates as on the CPU (relu(NaN) = NaN). Includes nothing outside CUDA.
#pragma once
#include <math.h>

namespace xfr::cuda::dev {

constexpr float kActSqrt1_2 = 0.70710678118654752440f;      // 1/sqrt(2)
constexpr float kActInvSqrt2Pi = 0.39894228040143267794f;   // 1/sqrt(2 pi), the normal density at 0
constexpr float kActSqrt2OverPi = 0.79788456080286535588f;  // sqrt(2/pi), gelu_tanh's scale
constexpr float kActGeluTanhCubic = 0.044715f;              // gelu_tanh's cubic coefficient (Hendrycks & Gimpel)

__device__ __forceinline__ float act_relu(float x) { return x <= 0.0f ? 0.0f : x; }  // keeps NaN
__device__ __forceinline__ float act_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float act_phi(float x) { return 0.5f * erfcf(-x * kActSqrt1_2); }

struct ActRelu {
  __device__ __forceinline__ float f(float x) const { return act_relu(x); }
  __device__ __forceinline__ float df(float x) const { return x <= 0.0f ? 0.0f : 1.0f; }  // torch: 0 at x = 0
};
struct ActGelu {
  __device__ __forceinline__ float f(float x) const { return x * act_phi(x); }
  __device__ __forceinline__ float df(float x) const {
    return act_phi(x) + x * kActInvSqrt2Pi * expf(-0.5f * x * x);
  }
};
struct ActGeluTanh {
  __device__ __forceinline__ static float u(float x) { return kActSqrt2OverPi * (x + kActGeluTanhCubic * x * x * x); }
  __device__ __forceinline__ float f(float x) const { return x * act_sigmoid(2.0f * u(x)); }
  __device__ __forceinline__ float df(float x) const {
    const float du = kActSqrt2OverPi * (1.0f + 3.0f * kActGeluTanhCubic * x * x);
    const float s = act_sigmoid(2.0f * u(x));  // = (1 + tanh u) / 2;  1 - tanh^2 u = 4 s (1 - s)
    return s + 2.0f * x * s * (1.0f - s) * du;
  }
};
struct ActLeakyRelu {
  float slope;
  __device__ __forceinline__ float f(float x) const { return x > 0.0f ? x : slope * x; }
  __device__ __forceinline__ float df(float x) const { return x > 0.0f ? 1.0f : slope; }  // torch: the slope at 0
};
struct ActSquaredRelu {
  __device__ __forceinline__ float f(float x) const {
    const float r = act_relu(x);
    return r * r;
  }
  __device__ __forceinline__ float df(float x) const { return 2.0f * act_relu(x); }
};
struct ActSmelu {
  float beta;
  // c = max(x + beta, 0): 0 below -beta, so c^2 / (4 beta) covers both the zero and the quadratic piece.
  __device__ __forceinline__ float f(float x) const {
    const float c = act_relu(x + beta);
    return x >= beta ? x : c * c / (4.0f * beta);
  }
  __device__ __forceinline__ float df(float x) const {
    const float c = act_relu(x + beta);
    return x >= beta ? 1.0f : c / (2.0f * beta);
  }
};
struct ActSilu {
  __device__ __forceinline__ float f(float x) const { return x * act_sigmoid(x); }
  __device__ __forceinline__ float df(float x) const {
    const float s = act_sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
  }
};
struct ActSigmoid {
  __device__ __forceinline__ float f(float x) const { return act_sigmoid(x); }
  __device__ __forceinline__ float df(float x) const {
    const float s = act_sigmoid(x);
    return s * (1.0f - s);
  }
};

// Adaptors for the elementwise map kernels: y = f(x) and dx = dy * f'(x).
template <class A>
struct ActForward {
  A act;
  __device__ __forceinline__ float operator()(float x) const { return act.f(x); }
};
template <class A>
struct ActBackward {
  A act;
  __device__ __forceinline__ float operator()(float x, float dy) const { return dy * act.df(x); }
};

}  // namespace xfr::cuda::dev
