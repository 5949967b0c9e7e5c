// SIMD helpers of the CPU kernels whose hot loops are bound by exp (ops/cpu/softmax.cpp, cross_entropy.cpp,
// activation.cpp): run-time choice of the instruction set a loop runs with (run_simd), and exp_f32, a
// branch-free float exp the compiler vectorises (libm's expf is a call per element and costs several times
// more).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace xfr::cpu {

// ---- SIMD dispatch ---------------------------------------------------------------------------------------
// The build targets the baseline ISA (x86-64: SSE2, 4 floats per instruction). The hot loops are compiled a
// second time for AVX2 + FMA (8 floats, fused multiply-adds) and chosen at run time when the CPU has both:
// 2-4x faster for the exp/erf-bound loops (measured on a Xeon, 2.8 GHz). f32 results of the two paths may
// differ in the last bits (an FMA rounds once); the f64 reference path is bound by libm either way.
// XF_CPU_ISA=baseline in the environment (read once) forces the baseline path, e.g. to test it.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define XF_AVX2_TARGET __attribute__((target("avx2,fma")))
inline bool use_avx2() {
  static const bool yes = [] {
    const char* isa = std::getenv("XF_CPU_ISA");
    if (isa != nullptr && std::strcmp(isa, "baseline") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
}
#else
#define XF_AVX2_TARGET
inline bool use_avx2() { return false; }
#endif
// Forces inlining, so that what the AVX2 clone calls is compiled for AVX2 as well.
#define XF_INLINE __attribute__((always_inline)) inline
#define XF_INLINE_LAMBDA __attribute__((always_inline))

template <class Body>
void run_baseline(const Body& body, int64_t begin, int64_t end) {
  body(begin, end);
}
template <class Body>
XF_AVX2_TARGET void run_avx2(const Body& body, int64_t begin, int64_t end) {
  body(begin, end);
}
// Runs body(begin, end), an XF_INLINE_LAMBDA, compiled for the best instruction set the CPU has.
template <class Body>
void run_simd(const Body& body, int64_t begin, int64_t end) {
  if (use_avx2()) {
    run_avx2(body, begin, end);
  } else {
    run_baseline(body, begin, end);
  }
}

// ---- fast exp ----------------------------------------------------------------------------------------------
XF_INLINE uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
XF_INLINE float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// exp(x) in float, about 1.5 ulp (max relative error 8.2e-8 over [-86, 88], measured against double exp).
// Cephes' expf: n = round(x / ln 2) by the 1.5 * 2^23 trick, r = x - n ln 2 in two parts (Cody-Waite),
// a degree-6 polynomial for exp(r) on |r| <= ln(2)/2, then 2^n added to the exponent bits. Out-of-range
// inputs are handled with bit masks rather than branches, so a loop calling it vectorises:
//   x < -86 -> 0 (exp(-86) = 4e-38 is at the bottom of the normal floats; -inf included),
//   x > 88 -> exp(88) = 1.65e38 (finite; keeps 2^n normal), NaN -> NaN.
XF_INLINE float exp_f32(float x) {
  const float kLo = -86.0f, kHi = 88.0f;
  const uint32_t xb = f32_bits(x);
  const uint32_t under = 0u - static_cast<uint32_t>(x < kLo);
  const uint32_t over = 0u - static_cast<uint32_t>(x > kHi);
  const uint32_t nan = 0u - static_cast<uint32_t>(x != x);
  const float xc = bits_f32((xb & ~(under | over | nan)) | (f32_bits(kLo) & under) | (f32_bits(kHi) & over));
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer, kept in the low mantissa bits
  const float t = xc * 1.44269504088896341f + kRound;  // log2(e)
  const float n = t - kRound;
  float r = xc - n * 0.693359375f;  // ln 2 split: 0.693359375 (exact in 10 bits) ...
  r = r - n * -2.12194440e-4f;      // ... + (ln 2 - 0.693359375)
  // Cephes expf minimax coefficients for exp(r) - 1 - r on |r| <= ln(2)/2.
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t e = (f32_bits(t) - f32_bits(kRound)) << 23;  // n, moved into the exponent field
  const uint32_t rb = f32_bits(p) + e;
  return bits_f32((rb & ~(under | nan)) | (xb & nan));
}

// exp_f32 for float, libm's exp for double (the reference path).
template <class T>
XF_INLINE T exp_t(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return exp_f32(x);
  } else {
    return std::exp(x);
  }
}

}  // namespace xfr::cpu
