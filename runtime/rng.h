// Counter-based random numbers: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy
// as 1, 2, 3", SC 2011), the generator of curand and PyTorch. The same (seed, index) gives the same bits on
// the CPU and in a CUDA kernel (DESIGN.md, Principle 6), so initial weights and dropout masks agree exactly.
//
// ---- Stream layout (a CUDA kernel must reproduce this bit for bit) ---------------------------------------
// A random stream is addressed by (seed: uint64, offset: uint64). Its element c (a uint32) is
//
//     block   = c / 4                       lane = c % 4
//     counter = (lo32(block), hi32(block), 0, 0)
//     key     = (lo32(seed),  hi32(seed))
//     u32(seed, c) = philox4x32_10(counter, key).x[lane]
//
// i.e. philox_u32(seed, c). A fill "at offset o" writes element o + i of the stream to out[i]. This is the
// stream of curand's Philox4_32_10 generator: curand_init(seed, /*subsequence=*/0, /*offset=*/o) followed
// by curand() calls yields u32(seed, o), u32(seed, o + 1), ... (counter x, y = block; z, w = subsequence).
//
// Derived values (all documented at their functions below):
//   uniform      u(seed, i)  = (u32(seed, i) >> 8) * 2^-24                         one uint32 per value
//   normal       z(seed, i)  = Box-Muller of u32(seed, 2i) (radius) and u32(seed, 2i+1) (angle)
//                                                                                   two uint32 per value
//   trunc normal t(seed, i)  = inverse CDF of u32(seed, i)                          one uint32 per value
// So a normal fill of n values at (normal) offset o consumes uint32 elements [2o, 2o + 2n); give
// independent tensors disjoint ranges (or different seeds).
//
// ---- Why the float results are identical on CPU and GPU -------------------------------------------------
// Integer Philox and the uniform mapping are exact everywhere. Normal and truncated-normal values are
// computed in double with our own log, cos and normal quantile (below, in detail::) built only from
// IEEE-754 operations that every backend rounds identically (+, -, *, /, sqrt, fma, frexp) and written so
// that no `a * b + c` is left for a compiler to contract into an fma (nvcc does this by default): every
// multiply-add is an explicit fma(). libm's log/cos (glibc) and CUDA's differ in the last bit, which would
// flip a float rounding every ~10^8 values; ours cannot. Double precision also makes the results immune to
// nvcc --use_fast_math, which only changes single-precision math. The result is rounded to float once.
// Exception: make_trunc_normal() uses libm's erfc; build its parameters on the host and pass them by
// value to a kernel (philox_fill_trunc_normal does exactly that). With -ftz (implied by --use_fast_math) a
// float result below 2^-126 in magnitude would flush to zero on the GPU; mean + std z never lands there
// unless mean and std are themselves that small.
// Verified on an H200 (nvcc 13, sm_90, with and without --use_fast_math) against this CPU build (g++ 12):
// det_log, det_cos_2pi_bits and det_normal_quantile give bit-identical doubles for all 2^32 inputs the
// samplers can feed them; 2^24 values of each distribution are bit-identical; philox_u32 equals curand().
#pragma once
#include <math.h>  // the global ::fma, ::sqrt, ::frexp, ::erfc, ::nextafterf, which CUDA provides for devices

#include <cstddef>
#include <cstdint>

#ifndef XF_HOST_DEVICE
#if defined(__CUDACC__)
#define XF_HOST_DEVICE __host__ __device__
#else
#define XF_HOST_DEVICE
#endif
#endif

namespace xfr {

struct Philox4x32 {
  uint32_t x[4];
};

namespace detail {

// High and low halves of the 32x32 -> 64-bit product, the one non-linear step of a Philox round.
XF_HOST_DEVICE inline void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

}  // namespace detail

// Philox4x32 with 10 rounds: the variant whose statistical quality (BigCrush-clean with margin) curand,
// PyTorch and Random123 standardize on. Known-answer vectors: tests/test_rng.cpp.
XF_HOST_DEVICE inline Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                               uint32_t k1) {
  // Round multipliers chosen by Salmon et al. for good avalanche in the 32x32 multiply (Random123 names them
  // PHILOX_M4x32_0 and PHILOX_M4x32_1).
  const uint32_t kMul0 = 0xD2511F53u;
  const uint32_t kMul1 = 0xCD9E8D57u;
  // Weyl-sequence key increments: the fractional parts of the golden ratio and of sqrt(3) - 1, in 32 bits
  // (PHILOX_W32_0 and PHILOX_W32_1).
  const uint32_t kWeyl0 = 0x9E3779B9u;
  const uint32_t kWeyl1 = 0xBB67AE85u;
  // 10 rounds: the Random123 default; 7 already pass BigCrush, 10 leave a safety margin.
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {  // the key is bumped between rounds, not before the first
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    detail::mulhilo32(kMul0, c0, &hi0, &lo0);
    detail::mulhilo32(kMul1, c2, &hi1, &lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  Philox4x32 r;
  r.x[0] = c0;
  r.x[1] = c1;
  r.x[2] = c2;
  r.x[3] = c3;
  return r;
}

XF_HOST_DEVICE inline Philox4x32 philox4x32_10(const uint32_t ctr[4], uint32_t k0, uint32_t k1) {
  return philox4x32_10(ctr[0], ctr[1], ctr[2], ctr[3], k0, k1);
}

// The four uint32 of stream elements 4*block .. 4*block+3 (see the layout at the top).
XF_HOST_DEVICE inline Philox4x32 philox_block(uint64_t seed, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Element `index` of the stream of `seed`.
XF_HOST_DEVICE inline uint32_t philox_u32(uint64_t seed, uint64_t index) {
  return philox_block(seed, index >> 2).x[index & 3u];
}

// ---- Deterministic double-precision math (see the header comment for why not libm) -----------------------
namespace detail {

// Natural log for finite x > 0 (subnormals included), accurate to about 1 ulp.
// x = m * 2^e with m in [sqrt(1/2), sqrt(2)); log(m) = 2 atanh(s), s = (m-1)/(m+1), |s| <= 0.1716.
XF_HOST_DEVICE inline double det_log(double x) {
  int e = 0;
  double m = ::frexp(x, &e);            // exact: m in [0.5, 1)
  if (m < 0.70710678118654752440) {     // sqrt(1/2): centre m on 1 so that |s| stays small
    m = m * 2.0;                        // exact
    e -= 1;
  }
  const double f = m - 1.0;             // exact (Sterbenz lemma: m within a factor 2 of 1)
  const double s = f / (2.0 + f);
  const double z = s * s;               // z <= 0.02944
  // atanh series 2s + 2s^3/3 + 2s^5/5 + ...: the first omitted term, 2s^23/23, is below 1e-19 of 2s.
  double p = 2.0 / 21;
  p = ::fma(p, z, 2.0 / 19);
  p = ::fma(p, z, 2.0 / 17);
  p = ::fma(p, z, 2.0 / 15);
  p = ::fma(p, z, 2.0 / 13);
  p = ::fma(p, z, 2.0 / 11);
  p = ::fma(p, z, 2.0 / 9);
  p = ::fma(p, z, 2.0 / 7);
  p = ::fma(p, z, 2.0 / 5);
  p = ::fma(p, z, 2.0 / 3);
  const double log_m = ::fma(s * z, p, 2.0 * s);
  // ln 2 rounded to double; the fma forms e * ln2 + log_m with a single rounding.
  return ::fma(static_cast<double>(e), 0.69314718055994530942, log_m);
}

// cos(2 pi * bits / 2^32). The quadrant and the reduced argument come from integer arithmetic, so the
// reduction is exact; the rest is a Taylor polynomial in r = reduced angle / (pi/2), |r| <= 1/2.
XF_HOST_DEVICE inline double det_cos_2pi_bits(uint32_t bits) {
  // Angle = (pi/2) * bits / 2^30. Nearest quadrant q (0..4; 4 wraps to 0) and remainder in [-2^29, 2^29).
  const int64_t q = static_cast<int64_t>((static_cast<uint64_t>(bits) + (1u << 29)) >> 30);
  const int64_t rem = static_cast<int64_t>(bits) - (q << 30);
  const double r = static_cast<double>(rem) * 0x1p-30;  // exact, in [-0.5, 0.5)
  const double z = r * r;
  // Taylor coefficients of cos(pi/2 r) = sum (-1)^k (pi/2)^(2k) / (2k)! r^(2k), and of sin(pi/2 r)
  // = r sum (-1)^k (pi/2)^(2k+1) / (2k+1)! r^(2k). Degree 16 / 17: the first omitted terms, at
  // |pi/2 r| <= pi/4, are 2e-18 and 8e-20, far below double rounding.
  double c = 6.565963114979473e-11;
  c = ::fma(c, z, -6.386603083791852e-09);
  c = ::fma(c, z, 4.710874778818172e-07);
  c = ::fma(c, z, -2.5202042373060607e-05);
  c = ::fma(c, z, 0.0009192602748394266);
  c = ::fma(c, z, -0.02086348076335296);
  c = ::fma(c, z, 0.25366950790104803);
  c = ::fma(c, z, -1.2337005501361697);
  c = ::fma(c, z, 1.0);
  double s = 6.0669357311061955e-12;
  s = ::fma(s, z, -6.688035109811468e-10);
  s = ::fma(s, z, 5.692172921967927e-08);
  s = ::fma(s, z, -3.598843235212085e-06);
  s = ::fma(s, z, 0.00016044118478735983);
  s = ::fma(s, z, -0.004681754135318688);
  s = ::fma(s, z, 0.07969262624616705);
  s = ::fma(s, z, -0.6459640975062463);
  s = ::fma(s, z, 1.5707963267948966);
  s = s * r;
  switch (q & 3) {  // cos(q pi/2 + x) for q = 0, 1, 2, 3
    case 0: return c;
    case 1: return -s;
    case 2: return -c;
    default: return s;
  }
}

// Standard normal quantile Phi^-1(p): Wichura's algorithm AS 241 (PPND16, Applied Statistics 37, 1988),
// relative accuracy about 1e-16. Returns -inf for p <= 0 and +inf for p >= 1.
XF_HOST_DEVICE inline double det_normal_quantile(double p) {
  if (!(p > 0.0)) return -static_cast<double>(INFINITY);
  if (!(p < 1.0)) return static_cast<double>(INFINITY);
  const double q = p - 0.5;
  if (q >= -0.425 && q <= 0.425) {  // central region 0.075 <= p <= 0.925
    const double r = ::fma(-q, q, 0.180625);  // 0.425^2 - q^2
    double num = 2.5090809287301226727e+3;
    num = ::fma(num, r, 3.3430575583588128105e+4);
    num = ::fma(num, r, 6.7265770927008700853e+4);
    num = ::fma(num, r, 4.5921953931549871457e+4);
    num = ::fma(num, r, 1.3731693765509461125e+4);
    num = ::fma(num, r, 1.9715909503065514427e+3);
    num = ::fma(num, r, 1.3314166789178437745e+2);
    num = ::fma(num, r, 3.3871328727963666080e+0);
    double den = 5.2264952788528545610e+3;
    den = ::fma(den, r, 2.8729085735721942674e+4);
    den = ::fma(den, r, 3.9307895800092710610e+4);
    den = ::fma(den, r, 2.1213794301586595867e+4);
    den = ::fma(den, r, 5.3941960214247511077e+3);
    den = ::fma(den, r, 6.8718700749205790830e+2);
    den = ::fma(den, r, 4.2313330701600911252e+1);
    den = ::fma(den, r, 1.0);
    return q * num / den;
  }
  // Tails: r = sqrt(-log(min(p, 1-p))).
  double r = ::sqrt(-det_log(q < 0.0 ? p : 1.0 - p));
  double num, den;
  if (r <= 5.0) {  // 1e-11 < min(p, 1-p) < 0.075
    r = r - 1.6;
    num = 7.74545014278341407640e-4;
    num = ::fma(num, r, 2.27238449892691845833e-2);
    num = ::fma(num, r, 2.41780725177450611770e-1);
    num = ::fma(num, r, 1.27045825245236838258e+0);
    num = ::fma(num, r, 3.64784832476320460504e+0);
    num = ::fma(num, r, 5.76949722146069140550e+0);
    num = ::fma(num, r, 4.63033784615654529590e+0);
    num = ::fma(num, r, 1.42343711074968357734e+0);
    den = 1.05075007164441684324e-9;
    den = ::fma(den, r, 5.47593808499534494600e-4);
    den = ::fma(den, r, 1.51986665636164571966e-2);
    den = ::fma(den, r, 1.48103976427480074590e-1);
    den = ::fma(den, r, 6.89767334985100004550e-1);
    den = ::fma(den, r, 1.67638483018380384940e+0);
    den = ::fma(den, r, 2.05319162663775882187e+0);
    den = ::fma(den, r, 1.0);
  } else {  // extreme tails, min(p, 1-p) <= 1e-11
    r = r - 5.0;
    num = 2.01033439929228813265e-7;
    num = ::fma(num, r, 2.71155556874348757815e-5);
    num = ::fma(num, r, 1.24266094738807843860e-3);
    num = ::fma(num, r, 2.65321895265761230930e-2);
    num = ::fma(num, r, 2.96560571828504891230e-1);
    num = ::fma(num, r, 1.78482653991729133580e+0);
    num = ::fma(num, r, 5.46378491116411436990e+0);
    num = ::fma(num, r, 6.65790464350110377720e+0);
    den = 2.04426310338993978564e-15;
    den = ::fma(den, r, 1.42151175831644588870e-7);
    den = ::fma(den, r, 1.84631831751005468180e-5);
    den = ::fma(den, r, 7.86869131145613259100e-4);
    den = ::fma(den, r, 1.48753612908506148525e-2);
    den = ::fma(den, r, 1.36929880922735805310e-1);
    den = ::fma(den, r, 5.99832206555887937690e-1);
    den = ::fma(den, r, 1.0);
  }
  const double v = num / den;
  return q < 0.0 ? -v : v;
}

}  // namespace detail

// ---- From uint32 to distributions (for kernels that draw a whole Philox block at a time) -----------------

// Uniform in [0, 1) from the top 24 bits: 24 is the float significand width, so every value is an exact
// float and all 2^24 values are equally spaced (2^-24 apart) and equally likely.
XF_HOST_DEVICE inline float uniform_from_bits(uint32_t bits) {
  return static_cast<float>(bits >> 8) * 0x1p-24f;  // exact: a 24-bit integer times a power of two
}

// Uniform in [lo, hi): lo + (hi - lo) u, formed in double by an fma (one rounding, nothing to contract) and
// rounded to float once. When float rounding would give hi itself (ulp(hi) > (hi - lo) 2^-24), the largest
// float below hi is returned instead, keeping the interval half-open. Requires lo <= hi.
XF_HOST_DEVICE inline float uniform_from_bits(uint32_t bits, float lo, float hi) {
  const double u = static_cast<double>(bits >> 8) * 0x1p-24;
  float v = static_cast<float>(::fma(static_cast<double>(hi) - static_cast<double>(lo), u, static_cast<double>(lo)));
  if (v >= hi && lo < hi) v = ::nextafterf(hi, lo);
  return v;
}

// Standard normal by Box-Muller (cosine branch only, so each value depends on exactly two uint32):
//   u1 = (radius_bits + 1) * 2^-32   in (0, 1]: never 0, so the log is finite; 32 bits reach 6.66 sigma
//   u2 = angle_bits * 2^-32          in [0, 1)
//   z  = sqrt(-2 ln u1) * cos(2 pi u2)
// Returned in double; callers round to float once, after scaling.
XF_HOST_DEVICE inline double normal_from_bits(uint32_t radius_bits, uint32_t angle_bits) {
  const double u1 = (static_cast<double>(radius_bits) + 1.0) * 0x1p-32;  // exact
  const double radius = ::sqrt(-2.0 * detail::det_log(u1));
  return radius * detail::det_cos_2pi_bits(angle_bits);
}

// Parameters of a truncated normal N(mean, std^2) restricted to [a, b] (absolute bounds, as in
// torch.nn.init.trunc_normal_). Sampled by the inverse CDF, as PyTorch does:
//   p = Phi(a') + (Phi(b') - Phi(a')) * u,  x = mean + std * Phi^-1(p),  clamped to [a, b]
// with a' = (a - mean) / std, b' = (b - mean) / std. PyTorch writes Phi^-1(p) as sqrt(2) erfinv(2p - 1); it is
// the same function, evaluated here by AS 241, which keeps its relative accuracy in the tails.
// When the interval lies mostly above the mean (a' + b' > 0) it is mirrored (sign = -1), so that p stays in
// the lower half where Phi is computed without cancellation.
struct TruncNormal {
  double mean;     // of the parent normal
  double std;      // of the parent normal; 0 gives the constant clamp(mean, a, b)
  double p_lo;     // Phi(lower standardized bound) after the optional mirroring
  double p_width;  // Phi(upper) - Phi(lower)
  double sign;     // +1, or -1 when mirrored
  float a, b;      // the absolute bounds, for the final clamp
};

// Uses libm's erfc: build on the host and pass by value to kernels (see the header comment).
// Requires std >= 0 and a <= b; a and b may be infinite.
XF_HOST_DEVICE inline TruncNormal make_trunc_normal(float mean, float std, float a, float b) {
  TruncNormal t;
  t.mean = mean;
  t.a = a;
  t.b = b;
  t.sign = 1.0;
  if (!(std > 0.0f)) {  // degenerate parent: p = 1/2 gives Phi^-1(p) = 0, so x = mean
    t.std = 0.0;
    t.p_lo = 0.5;
    t.p_width = 0.0;
    return t;
  }
  t.std = std;
  double lo = (static_cast<double>(a) - t.mean) / t.std;
  double hi = (static_cast<double>(b) - t.mean) / t.std;
  if (lo + hi > 0.0) {  // false for (-inf, +inf), whose sum is NaN: nothing to mirror
    const double tmp = lo;
    lo = -hi;
    hi = -tmp;
    t.sign = -1.0;
  }
  // Phi(x) = erfc(-x / sqrt 2) / 2, accurate in the lower tail where erf-based forms cancel.
  const double kInvSqrt2 = 0.70710678118654752440;
  const double p_lo = 0.5 * ::erfc(-lo * kInvSqrt2);
  const double p_hi = 0.5 * ::erfc(-hi * kInvSqrt2);
  t.p_lo = p_lo;
  t.p_width = p_hi - p_lo;
  return t;
}

// One truncated-normal value from one uint32. u = (bits + 1/2) 2^-32 lies strictly inside (0, 1), so p never
// reaches a bound whose quantile is infinite.
XF_HOST_DEVICE inline float trunc_normal_from_bits(uint32_t bits, const TruncNormal& t) {
  const double u = (static_cast<double>(bits) + 0.5) * 0x1p-32;  // exact
  const double p = ::fma(t.p_width, u, t.p_lo);
  const double z = t.sign * detail::det_normal_quantile(p);
  float x = static_cast<float>(::fma(t.std, z, t.mean));
  if (x < t.a) x = t.a;  // rounding (and a degenerate interval) can step just outside [a, b]
  if (x > t.b) x = t.b;
  return x;
}

// ---- One value per stream index ---------------------------------------------------------------------------

// Uniform in [0, 1): (u32(seed, index) >> 8) * 2^-24.
XF_HOST_DEVICE inline float philox_uniform(uint64_t seed, uint64_t index) {
  return uniform_from_bits(philox_u32(seed, index));
}

// Uniform in [lo, hi); equals element i of philox_fill_uniform(seed, index - i, ...).
XF_HOST_DEVICE inline float philox_uniform(uint64_t seed, uint64_t index, float lo, float hi) {
  return uniform_from_bits(philox_u32(seed, index), lo, hi);
}

// Standard normal number `index`: Box-Muller of stream elements 2*index (radius) and 2*index + 1 (angle),
// which share one Philox block (lanes 0,1 or 2,3). Valid for index < 2^63.
XF_HOST_DEVICE inline float philox_normal(uint64_t seed, uint64_t index) {
  const Philox4x32 r = philox_block(seed, index >> 1);
  const unsigned lane = static_cast<unsigned>(index & 1u) * 2u;
  return static_cast<float>(normal_from_bits(r.x[lane], r.x[lane + 1]));
}

// mean + std * z, formed in double by an fma and rounded once; equals element i of
// philox_fill_normal(seed, index - i, ..., mean, std). (mean 0, std 1 gives philox_normal(seed, index).)
XF_HOST_DEVICE inline float philox_normal(uint64_t seed, uint64_t index, float mean, float std) {
  const Philox4x32 r = philox_block(seed, index >> 1);
  const unsigned lane = static_cast<unsigned>(index & 1u) * 2u;
  const double z = normal_from_bits(r.x[lane], r.x[lane + 1]);
  return static_cast<float>(::fma(static_cast<double>(std), z, static_cast<double>(mean)));
}

// Truncated normal number `index`, from stream element `index`.
XF_HOST_DEVICE inline float philox_trunc_normal(uint64_t seed, uint64_t index, const TruncNormal& t) {
  return trunc_normal_from_bits(philox_u32(seed, index), t);
}

// ---- Bulk CPU fills (rng.cpp): one Philox block per 4 uint32, out[i] is stream value offset + i ---------
// All throw xfr::Error("[rng] ...") on invalid parameters; n = 0 writes nothing.

// out[i] = philox_u32(seed, offset + i).
void philox_fill_u32(uint64_t seed, uint64_t offset, uint32_t* out, size_t n);
// out[i] = philox_uniform(seed, offset + i, lo, hi); requires finite lo <= hi.
void philox_fill_uniform(uint64_t seed, uint64_t offset, float* out, size_t n, float lo, float hi);
// out[i] = philox_normal(seed, offset + i, mean, std): consumes uint32 elements [2 offset, 2 (offset + n)).
// Requires std >= 0.
void philox_fill_normal(uint64_t seed, uint64_t offset, float* out, size_t n, float mean, float std);
// out[i] = philox_trunc_normal(seed, offset + i, make_trunc_normal(mean, std, a, b)).
// Requires std >= 0 and a <= b (bounds may be infinite).
void philox_fill_trunc_normal(uint64_t seed, uint64_t offset, float* out, size_t n, float mean, float std,
                              float a, float b);

}  // namespace xfr
