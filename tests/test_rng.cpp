// Philox4x32-10 and the distributions built on it (runtime/rng.h).
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "runtime/error.h"
#include "runtime/rng.h"

using namespace xfr;

namespace {

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

struct Moments {
  double mean, var, skew, kurt;
};

Moments moments(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += x;
  const double mean = s / v.size();
  double m2 = 0, m3 = 0, m4 = 0;
  for (float x : v) {
    const double d = x - mean;
    m2 += d * d;
    m3 += d * d * d;
    m4 += d * d * d * d;
  }
  m2 /= v.size();
  m3 /= v.size();
  m4 /= v.size();
  return {mean, m2, m3 / std::pow(m2, 1.5), m4 / (m2 * m2)};
}

double phi_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }
double phi_pdf(double x) { return std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI); }

}  // namespace

TEST_CASE("philox4x32-10 known-answer vectors (Random123 kat_vectors)") {
  struct Kat {
    uint32_t ctr[4], key[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) {
    const Philox4x32 a = philox4x32_10(k.ctr, k.key[0], k.key[1]);
    const Philox4x32 b = philox4x32_10(k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3], k.key[0], k.key[1]);
    for (int i = 0; i < 4; ++i) {
      CHECK(a.x[i] == k.out[i]);
      CHECK(b.x[i] == k.out[i]);
    }
  }
  // Stream layout: seed 0, elements 0..3 are the first vector (counter 0, key 0).
  for (uint64_t i = 0; i < 4; ++i) CHECK(philox_u32(0, i) == kats[0].out[i]);
}

TEST_CASE("philox stream layout: counter = (lo32, hi32 of c/4, 0, 0), key = (lo32, hi32 of seed)") {
  const uint64_t seeds[] = {0, 1, 42, 0x123456789abcdef0ull, ~0ull};
  const uint64_t indices[] = {0, 1, 2, 3, 4, 7, 1000003, (1ull << 34) + 5, (1ull << 63) + 2, ~0ull};
  for (uint64_t seed : seeds) {
    for (uint64_t c : indices) {
      const uint64_t block = c / 4;
      const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0, 0,
                                         static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
      CHECK(philox_u32(seed, c) == r.x[c % 4]);
    }
  }
  // Both seed halves and both block halves matter.
  CHECK(philox_u32(1, 5) != philox_u32(1ull | (1ull << 32), 5));
  CHECK(philox_u32(1, 5) != philox_u32(1, 5 + (4ull << 32)));
}

TEST_CASE("philox fills equal the single-value functions at offset + i, for unaligned offsets") {
  const uint64_t seed = 0x5eedull;
  const uint64_t offsets[] = {0, 1, 2, 3, 5, 6, 7, 13, (1ull << 32) - 3, (1ull << 34) + 1};
  const size_t lengths[] = {0, 1, 2, 3, 4, 5, 9, 17, 64};
  const TruncNormal tn = make_trunc_normal(0.1f, 0.5f, -0.6f, 0.9f);
  for (uint64_t off : offsets) {
    for (size_t n : lengths) {
      CAPTURE(off);
      CAPTURE(n);
      std::vector<uint32_t> u(n + 1, 0xdeadbeefu);
      std::vector<float> uni(n + 1, -7.f), nor(n + 1, -7.f), tr(n + 1, -7.f);
      philox_fill_u32(seed, off, u.data(), n);
      philox_fill_uniform(seed, off, uni.data(), n, -3.f, 5.f);
      philox_fill_normal(seed, off, nor.data(), n, 0.25f, 2.f);
      philox_fill_trunc_normal(seed, off, tr.data(), n, 0.1f, 0.5f, -0.6f, 0.9f);
      for (size_t i = 0; i < n; ++i) {
        CHECK(u[i] == philox_u32(seed, off + i));
        CHECK(float_bits(uni[i]) == float_bits(philox_uniform(seed, off + i, -3.f, 5.f)));
        CHECK(float_bits(nor[i]) == float_bits(philox_normal(seed, off + i, 0.25f, 2.f)));
        CHECK(float_bits(tr[i]) == float_bits(philox_trunc_normal(seed, off + i, tn)));
      }
      // Nothing written past n.
      CHECK(u[n] == 0xdeadbeefu);
      CHECK(uni[n] == -7.f);
      CHECK(nor[n] == -7.f);
      CHECK(tr[n] == -7.f);
    }
  }
  // A fill split in two pieces at an odd point equals one fill.
  std::vector<float> whole(1001), parts(1001);
  philox_fill_normal(seed, 3, whole.data(), whole.size(), 0.f, 1.f);
  philox_fill_normal(seed, 3, parts.data(), 333, 0.f, 1.f);
  philox_fill_normal(seed, 3 + 333, parts.data() + 333, 1001 - 333, 0.f, 1.f);
  CHECK(std::memcmp(whole.data(), parts.data(), whole.size() * sizeof(float)) == 0);
  // Mean 0, std 1 reproduces the plain standard normal; a normal index uses elements 2k and 2k+1.
  for (uint64_t k : {0ull, 1ull, 2ull, 9ull}) {
    CHECK(float_bits(whole[k]) == float_bits(philox_normal(seed, 3 + k)));
    CHECK(float_bits(philox_normal(seed, k)) ==
          float_bits(static_cast<float>(normal_from_bits(philox_u32(seed, 2 * k), philox_u32(seed, 2 * k + 1)))));
  }
}

TEST_CASE("rng uniform: [0,1) values on the 2^-24 grid, mean and variance over 1e6 draws") {
  const size_t n = 1000000;
  std::vector<float> v(n);
  philox_fill_uniform(7, 11, v.data(), n, 0.f, 1.f);
  bool in_range = true, on_grid = true;
  for (size_t i = 0; i < n; ++i) {
    in_range &= v[i] >= 0.f && v[i] < 1.f;
    on_grid &= std::ldexp(v[i], 24) == std::floor(std::ldexp(v[i], 24));
    if (i < 1000) CHECK(float_bits(v[i]) == float_bits(philox_uniform(7, 11 + i)));
  }
  CHECK(in_range);
  CHECK(on_grid);
  const Moments m = moments(v);
  // Standard errors: mean 0.29/1000, variance 7.5e-5; the bounds are about 5 of them.
  CHECK(std::abs(m.mean - 0.5) < 1.5e-3);
  CHECK(std::abs(m.var - 1.0 / 12) < 4e-4);
  // Scaled range.
  philox_fill_uniform(7, 0, v.data(), n, -2.f, 6.f);
  const Moments s = moments(v);
  CHECK(std::abs(s.mean - 2.0) < 1.5e-2);
  CHECK(std::abs(s.var - 64.0 / 12) < 3e-2);
  for (float x : {v[0], v[1], v[n - 1]}) CHECK((x >= -2.f && x < 6.f));
}

TEST_CASE("rng uniform: the interval stays half-open when float rounding would reach hi") {
  // (2^24 - 1) 2^-24 = 1 - 2^-24; 1 + that rounds to 2.0f (ties to even), which must not be returned.
  const float v = uniform_from_bits(0xffffffffu, 1.f, 2.f);
  CHECK(v < 2.f);
  CHECK(v == std::nextafter(2.f, 1.f));
  CHECK(uniform_from_bits(0u, 1.f, 2.f) == 1.f);
  CHECK(uniform_from_bits(0xffffffffu, 3.f, 3.f) == 3.f);  // empty interval: lo
  CHECK(uniform_from_bits(0xffffffffu) == 1.f - std::ldexp(1.f, -24));
}

TEST_CASE("rng normal: moments over 1e6 draws") {
  const size_t n = 1000000;
  std::vector<float> v(n);
  philox_fill_normal(2024, 5, v.data(), n, 0.f, 1.f);
  const Moments m = moments(v);
  // Standard errors over 1e6: mean 1e-3, variance 1.4e-3, skewness 2.4e-3, kurtosis 4.9e-3.
  CHECK(std::abs(m.mean) < 5e-3);
  CHECK(std::abs(m.var - 1.0) < 7e-3);
  CHECK(std::abs(m.skew) < 1.2e-2);
  CHECK(std::abs(m.kurt - 3.0) < 2.5e-2);
  size_t within1 = 0, beyond3 = 0;
  float max_abs = 0;
  for (float x : v) {
    within1 += std::abs(x) < 1.f;
    beyond3 += std::abs(x) > 3.f;
    max_abs = std::max(max_abs, std::abs(x));
  }
  CHECK(std::abs(within1 / double(n) - 0.682689) < 2.5e-3);
  CHECK(std::abs(beyond3 / double(n) - 0.0026998) < 3e-4);
  CHECK(max_abs < 6.7f);  // Box-Muller with 32-bit radius: at most sqrt(-2 ln 2^-32) = 6.66
  CHECK(std::isfinite(max_abs));

  philox_fill_normal(2024, 5, v.data(), n, -3.f, 0.5f);
  const Moments s = moments(v);
  CHECK(std::abs(s.mean + 3.0) < 2.5e-3);
  CHECK(std::abs(std::sqrt(s.var) - 0.5) < 2.5e-3);
  // std = 0 gives the mean exactly.
  philox_fill_normal(1, 0, v.data(), 100, 1.5f, 0.f);
  for (size_t i = 0; i < 100; ++i) CHECK(v[i] == 1.5f);
}

TEST_CASE("rng trunc normal: bounds, moments, tails and degenerate cases") {
  const size_t n = 400000;
  std::vector<float> v(n);
  struct Case {
    float mean, std, a, b;
  };
  const Case cases[] = {
      {0.f, 1.f, -2.f, 2.f},       // torch.nn.init.trunc_normal_ defaults
      {0.f, 0.02f, -0.04f, 0.04f},  // the usual transformer weight init
      {1.f, 2.f, 0.f, 10.f},        // asymmetric
      {0.f, 1.f, 3.f, 5.f},         // upper tail only: mirrored internally
      {0.f, 1.f, -7.f, -6.f},       // far lower tail
      {0.5f, 1.f, -std::numeric_limits<float>::infinity(), 0.f},  // one-sided
  };
  for (const Case& c : cases) {
    CAPTURE(c.mean);
    CAPTURE(c.std);
    CAPTURE(c.a);
    CAPTURE(c.b);
    philox_fill_trunc_normal(99, 1, v.data(), n, c.mean, c.std, c.a, c.b);
    bool in_bounds = true, finite = true;
    for (float x : v) {
      in_bounds &= x >= c.a && x <= c.b;
      finite &= std::isfinite(x);
    }
    CHECK(in_bounds);
    CHECK(finite);
    // Exact moments of the truncated normal: alpha, beta standardized bounds, Z = Phi(beta) - Phi(alpha).
    const double al = (double(c.a) - c.mean) / c.std, be = (double(c.b) - c.mean) / c.std;
    const double pa = std::isinf(al) ? 0.0 : phi_pdf(al), pb = phi_pdf(be);
    const double z = phi_cdf(be) - phi_cdf(al);
    const double aa = std::isinf(al) ? 0.0 : al * pa;
    const double mean = c.mean + c.std * (pa - pb) / z;
    const double var = c.std * c.std * (1 + (aa - be * pb) / z - ((pa - pb) / z) * ((pa - pb) / z));
    const Moments m = moments(v);
    const double se = std::sqrt(var / n);
    CHECK(std::abs(m.mean - mean) < 6 * se);
    CHECK(std::abs(m.var / var - 1) < 0.02);
  }
  // Degenerate cases: std 0 gives clamp(mean); a == b gives a.
  philox_fill_trunc_normal(1, 0, v.data(), 50, 3.f, 0.f, -1.f, 1.f);
  for (size_t i = 0; i < 50; ++i) CHECK(v[i] == 1.f);
  philox_fill_trunc_normal(1, 0, v.data(), 50, 0.f, 1.f, 0.25f, 0.25f);
  for (size_t i = 0; i < 50; ++i) CHECK(v[i] == 0.25f);
  // Bound-hugging draws: the smallest and largest u land inside [a, b].
  const TruncNormal t = make_trunc_normal(0.f, 1.f, -2.f, 2.f);
  CHECK(trunc_normal_from_bits(0u, t) >= -2.f);
  CHECK(trunc_normal_from_bits(0xffffffffu, t) <= 2.f);
  CHECK(trunc_normal_from_bits(0u, t) < -1.99f);
  CHECK(trunc_normal_from_bits(0xffffffffu, t) > 1.99f);
}

TEST_CASE("rng deterministic math: log, cos and normal quantile against libm") {
  double worst_log = 0;
  for (double x : {1.0, 0.5, 2.0, 0.7071067811865476, 1.4142135623730951, 1e-300, 4.9e-324, 2.3e-310, 1e300,
                   0.999999999, 1.000000001, 3.0, 1e-10}) {
    const double ref = std::log(x);
    const double err = ref == 0 ? std::abs(detail::det_log(x)) : std::abs(detail::det_log(x) / ref - 1);
    CAPTURE(x);
    CHECK(err < 4e-16);
  }
  for (uint64_t k = 0; k < (1ull << 32); k += 102953u) {  // the Box-Muller radius inputs (k + 1) 2^-32
    const double x = (double(k) + 1) * 0x1p-32;
    worst_log = std::max(worst_log, std::abs(detail::det_log(x) - std::log(x)) / std::abs(std::log(x) + 1e-300));
  }
  CHECK(worst_log < 4e-16);

  double worst_cos = 0;
  for (uint64_t k = 0; k < (1ull << 32); k += 104729u) {
    const double ref = std::cos(2 * M_PI * double(k) * 0x1p-32);
    worst_cos = std::max(worst_cos, std::abs(detail::det_cos_2pi_bits(static_cast<uint32_t>(k)) - ref));
  }
  for (uint32_t k : {0u, 1u << 29, 1u << 30, 3u << 29, 1u << 31, 3u << 30, 0xffffffffu, (1u << 29) - 1}) {
    const double ref = std::cos(2 * M_PI * double(k) * 0x1p-32);
    worst_cos = std::max(worst_cos, std::abs(detail::det_cos_2pi_bits(k) - ref));
  }
  CHECK(worst_cos < 1e-15);
  CHECK(detail::det_cos_2pi_bits(0) == 1.0);
  CHECK(detail::det_cos_2pi_bits(1u << 31) == -1.0);

  // Quantile: Phi(Phi^-1(p)) == p to near double precision (relative to min(p, 1-p)), all three regions.
  for (double p : {1e-300, 1e-100, 1e-20, 1e-11, 1e-5, 0.01, 0.07, 0.075, 0.1, 0.3, 0.5, 0.6, 0.9, 0.925, 0.99,
                   1 - 1e-9}) {
    const double x = detail::det_normal_quantile(p);
    const double tail = p < 0.5 ? phi_cdf(x) : 0.5 * std::erfc(x / std::sqrt(2.0));
    const double want = p < 0.5 ? p : 1 - p;
    CAPTURE(p);
    // Phi amplifies a relative error e in x into about x^2 e in Phi(x); 1 - p carries the rounding of p.
    CHECK(std::abs(tail / want - 1) < (p < 0.5 ? 2e-15 * (1 + x * x) : 1e-6));
  }
  CHECK(detail::det_normal_quantile(0.5) == 0.0);
  CHECK(detail::det_normal_quantile(0.0) == -std::numeric_limits<double>::infinity());
  CHECK(detail::det_normal_quantile(1.0) == std::numeric_limits<double>::infinity());
}

TEST_CASE("rng golden values: the float bits a CUDA kernel must reproduce") {
  // Regression guard for the documented layout and formulas; any change here changes every model's init.
  // Cross-checked against an independent Python model (integer Philox, math.log/cos Box-Muller,
  // statistics.NormalDist.inv_cdf), rounded to float: seed 42, uniform, normal, trunc normal in [-2, 2].
  struct Golden {
    uint64_t index;
    uint32_t uniform_bits, normal_bits, trunc_bits;
  };
  const Golden golden[] = {
      {0ull, 0x3f1ceaf0u, 0xbf785e5cu, 0x3e8c1ad3u},            // 0.612959862 -0.97018981 0.273642153
      {1ull, 0x3eefea92u, 0xbf9e28d2u, 0xbd9a1236u},            // 0.468586504 -1.23562074 -0.0752300471
      {2ull, 0x3d95fa80u, 0xbd95e030u, 0xbfa98ce9u},            // 0.0732316971 -0.07318151 -1.32461274
      {3ull, 0x3eae8566u, 0xbf8da733u, 0xbec7e8e4u},            // 0.340861499 -1.10666502 -0.390448689
      {4ull, 0x3f7cdb21u, 0xbeac8644u, 0x3fe8cdb5u},            // 0.987718642 -0.336961865 1.81877768
      {5ull, 0x3ea774d8u, 0x3e1821f1u, 0xbeda4886u},            // 0.327063322 0.148566976 -0.42633456
      {1000ull, 0x3edb571cu, 0x3f9f2424u, 0xbe304a08u},         // 0.428398967 1.24329042 -0.172157407
      {123456789ull, 0x3f7f510cu, 0xbd47fb68u, 0x3ffa39bbu},    // 0.997330427 -0.0488237441 1.95488679
      {1099511627779ull, 0x3df569b8u, 0xbf86697au, 0xbf8bf1a7u},  // 0.119830549 -1.05009389 -1.09331214
  };
  const TruncNormal t = make_trunc_normal(0.f, 1.f, -2.f, 2.f);
  for (const Golden& g : golden) {
    CAPTURE(g.index);
    CHECK(float_bits(philox_uniform(42, g.index)) == g.uniform_bits);
    CHECK(float_bits(philox_normal(42, g.index)) == g.normal_bits);
    CHECK(float_bits(philox_trunc_normal(42, g.index, t)) == g.trunc_bits);
  }
}

TEST_CASE("rng fills reject invalid parameters") {
  float x[4];
  CHECK_THROWS_AS(philox_fill_uniform(0, 0, x, 4, 1.f, 0.f), Error);
  CHECK_THROWS_AS(philox_fill_uniform(0, 0, x, 4, 0.f, std::numeric_limits<float>::infinity()), Error);
  CHECK_THROWS_AS(philox_fill_normal(0, 0, x, 4, 0.f, -1.f), Error);
  CHECK_THROWS_AS(philox_fill_normal(0, 0, x, 4, 0.f, std::nanf("")), Error);
  CHECK_THROWS_AS(philox_fill_trunc_normal(0, 0, x, 4, 0.f, 1.f, 1.f, -1.f), Error);
  CHECK_THROWS_AS(philox_fill_trunc_normal(0, 0, x, 4, 0.f, -1.f, -1.f, 1.f), Error);
  CHECK_THROWS_AS(philox_fill_normal(0, 0, nullptr, 4, 0.f, 1.f), Error);
  CHECK_NOTHROW(philox_fill_normal(0, 0, nullptr, 0, 0.f, 1.f));
}

TEST_CASE("rng fill throughput (informational)") {
  const size_t n = 1 << 20;
  std::vector<float> v(n);
  auto time_ms = [](auto&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  const double tu = time_ms([&] { philox_fill_uniform(1, 0, v.data(), n, 0.f, 1.f); });
  const double tn = time_ms([&] { philox_fill_normal(1, 0, v.data(), n, 0.f, 1.f); });
  const double tt = time_ms([&] { philox_fill_trunc_normal(1, 0, v.data(), n, 0.f, 1.f, -2.f, 2.f); });
  MESSAGE("2^20 values: uniform " << tu << " ms, normal " << tn << " ms, trunc_normal " << tt << " ms");
}
