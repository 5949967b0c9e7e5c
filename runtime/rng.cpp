// Bulk CPU fills over the Philox stream. Each computes one Philox block per four uint32 of the stream and
// maps them with the same per-value functions a CUDA kernel uses (rng.h), so out[i] is bit-identical to the
// single-value functions at index offset + i.
#include "runtime/rng.h"

#include <cmath>

#include "runtime/error.h"

// On x86-64 the fill loops are compiled twice, for the baseline ISA and for CPUs with FMA3, and the loader
// picks one (GCC/Clang function multiversioning). Baseline x86-64 has no fma instruction, so there every
// ::fma in rng.h is a libm call; with FMA3 it is one instruction. `flatten` inlines the whole per-value
// chain (rng.h's functions included) into each version, which is what lets the FMA3 one use the
// instruction. fma is correctly rounded either way: both versions give identical bits, only speed differs.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define XF_RNG_HOT_LOOP __attribute__((target_clones("fma", "default"), flatten))
#elif defined(__GNUC__) || defined(__clang__)
#define XF_RNG_HOT_LOOP __attribute__((flatten))
#else
#define XF_RNG_HOT_LOOP
#endif

namespace xfr {
namespace {

// Calls f(i, u32(seed, first + i)) for i in [0, n), one Philox evaluation per block of four elements;
// `first` need not be a multiple of 4 (the first and last blocks are partial).
template <class F>
void for_each_u32(uint64_t seed, uint64_t first, size_t n, F&& f) {
  size_t i = 0;
  uint64_t c = first;
  while (i < n) {
    const Philox4x32 r = philox_block(seed, c >> 2);
    for (unsigned lane = static_cast<unsigned>(c & 3u); lane < 4u && i < n; ++lane, ++i, ++c) f(i, r.x[lane]);
  }
}

// Calls f(i, radius_bits, angle_bits) for normal values offset + i, i in [0, n): normal k takes stream
// elements 2k and 2k + 1, so one Philox block serves two normals.
template <class F>
void for_each_normal_pair(uint64_t seed, uint64_t offset, size_t n, F&& f) {
  size_t i = 0;
  uint64_t k = offset;
  while (i < n) {
    const Philox4x32 r = philox_block(seed, k >> 1);
    for (unsigned half = static_cast<unsigned>(k & 1u); half < 2u && i < n; ++half, ++i, ++k)
      f(i, r.x[2 * half], r.x[2 * half + 1]);
  }
}

XF_RNG_HOT_LOOP void fill_u32_loop(uint64_t seed, uint64_t offset, uint32_t* out, size_t n) {
  for_each_u32(seed, offset, n, [out](size_t i, uint32_t bits) { out[i] = bits; });
}

XF_RNG_HOT_LOOP void fill_uniform_loop(uint64_t seed, uint64_t offset, float* out, size_t n, float lo, float hi) {
  for_each_u32(seed, offset, n, [=](size_t i, uint32_t bits) { out[i] = uniform_from_bits(bits, lo, hi); });
}

XF_RNG_HOT_LOOP void fill_normal_loop(uint64_t seed, uint64_t offset, float* out, size_t n, double mean,
                                      double std) {
  for_each_normal_pair(seed, offset, n, [=](size_t i, uint32_t radius_bits, uint32_t angle_bits) {
    out[i] = static_cast<float>(::fma(std, normal_from_bits(radius_bits, angle_bits), mean));
  });
}

XF_RNG_HOT_LOOP void fill_trunc_normal_loop(uint64_t seed, uint64_t offset, float* out, size_t n,
                                            const TruncNormal& t) {
  for_each_u32(seed, offset, n, [&t, out](size_t i, uint32_t bits) { out[i] = trunc_normal_from_bits(bits, t); });
}

void check_out(const void* out, size_t n, const char* what) {
  if (n > 0 && out == nullptr) throw Error("rng", str_cat(what, ": null output pointer for ", n, " values"));
}

void check_mean_std(float mean, float std, const char* what) {
  if (!std::isfinite(mean) || !std::isfinite(std) || !(std >= 0.0f))
    throw Error("rng", str_cat(what, ": need a finite mean and a finite std >= 0, got mean ", mean, ", std ", std));
}

}  // namespace

void philox_fill_u32(uint64_t seed, uint64_t offset, uint32_t* out, size_t n) {
  check_out(out, n, "philox_fill_u32");
  fill_u32_loop(seed, offset, out, n);
}

void philox_fill_uniform(uint64_t seed, uint64_t offset, float* out, size_t n, float lo, float hi) {
  check_out(out, n, "philox_fill_uniform");
  if (!std::isfinite(lo) || !std::isfinite(hi) || !(lo <= hi))
    throw Error("rng", str_cat("philox_fill_uniform: need finite lo <= hi, got [", lo, ", ", hi, ")"));
  fill_uniform_loop(seed, offset, out, n, lo, hi);
}

void philox_fill_normal(uint64_t seed, uint64_t offset, float* out, size_t n, float mean, float std) {
  check_out(out, n, "philox_fill_normal");
  check_mean_std(mean, std, "philox_fill_normal");
  fill_normal_loop(seed, offset, out, n, mean, std);
}

void philox_fill_trunc_normal(uint64_t seed, uint64_t offset, float* out, size_t n, float mean, float std,
                              float a, float b) {
  check_out(out, n, "philox_fill_trunc_normal");
  check_mean_std(mean, std, "philox_fill_trunc_normal");
  if (std::isnan(a) || std::isnan(b) || !(a <= b))
    throw Error("rng", str_cat("philox_fill_trunc_normal: need bounds a <= b, got [", a, ", ", b, "]"));
  fill_trunc_normal_loop(seed, offset, out, n, make_trunc_normal(mean, std, a, b));
}

}  // namespace xfr
