// rotary: against a float64 reference written from xFormers' formula (emb = cat(freqs, freqs), rotate_half),
// awkward sizes, offsets, the inverse, finite-difference gradients, norm preservation per pair, the
// relative-position property, and errors.
#include <cmath>

#include "ops/rotary.h"
#include "runtime/cpu/threadpool.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

// y = x * cos(emb) + rotate_half(x) * sin(emb), written as upstream's tensors are: x (rows, S, hd).
std::vector<double> ref_rotary(const std::vector<double>& x, int64_t S, int64_t hd, int64_t offset, bool inverse) {
  const int64_t h = hd / 2;
  std::vector<double> y(x.size());
  const int64_t rows = static_cast<int64_t>(x.size()) / (S * hd);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t s = 0; s < S; ++s) {
      const double* xr = &x[static_cast<size_t>((r * S + s) * hd)];
      double* yr = &y[static_cast<size_t>((r * S + s) * hd)];
      for (int64_t j = 0; j < hd; ++j) {
        const int64_t i = j % h;  // emb = cat(freqs, freqs)
        const double inv_freq = 1.0 / std::pow(10000.0, static_cast<double>(2 * i) / static_cast<double>(hd));
        const double angle = (inverse ? -1.0 : 1.0) * static_cast<double>(s + offset) * inv_freq;
        const double rot = j < h ? -xr[j + h] : xr[j - h];  // rotate_half(x) = cat(-x[h:], x[:h])
        yr[j] = xr[j] * std::cos(angle) + rot * std::sin(angle);
      }
    }
  return y;
}

double dot_row(const std::vector<double>& a, const std::vector<double>& b, int64_t ra, int64_t rb, int64_t hd) {
  double d = 0;
  for (int64_t j = 0; j < hd; ++j) d += a[static_cast<size_t>(ra * hd + j)] * b[static_cast<size_t>(rb * hd + j)];
  return d;
}

}  // namespace

TEST_CASE("rotary: against float64 at awkward sizes, offsets, f32 and f64") {
  ThreadPool& pool = test_pool();
  for (int64_t S : {1, 17, 33})
    for (int64_t hd : {8, 40})
      for (int64_t offset : {0, 5, 1000})
        for (DType dt : {DType::f32, DType::f64})
          for (bool inverse : {false, true}) {
            const Shape shape{2, 3, S, hd};  // (B, H, S, hd)
            const Tensor x = random_tensor(shape, static_cast<uint64_t>(S * hd + offset), -1, 1, dt);
            const Tensor y = run_op(RotaryOp(offset, inverse), {x}, &pool)[0];
            REQUIRE(y.shape() == shape);
            REQUIRE(y.dtype() == dt);
            check_close(y, ref_rotary(x.to_doubles(), S, hd, offset, inverse),
                        str_cat("rotary ", x.desc(), " offset ", offset, inverse ? " inverse" : ""));
          }
  // Rank 2 (S, hd), rank 3, and a size that spans many tasks on the pool.
  for (const Shape& shape : std::vector<Shape>{{33, 8}, {5, 1, 2}, {4, 8, 257, 64}})
    for (DType dt : {DType::f32, DType::f64}) {
      const Tensor x = random_tensor(shape, 7, -2, 2, dt);
      const int64_t S = shape[shape.size() - 2], hd = shape.back();
      check_close(run_op(RotaryOp(3), {x}, &pool)[0], ref_rotary(x.to_doubles(), S, hd, 3, false),
                  "rotary " + x.desc());
    }
}

TEST_CASE("rotary: hd = 2 at position t is the plane rotation by t radians") {
  // inv_freq[0] = 1: (x0, x1) -> (x0 cos t - x1 sin t, x1 cos t + x0 sin t).
  const Tensor x = Tensor::from_vector(std::vector<double>{1, 0, 1, 0, 0, 1}, {3, 2});
  const auto y = run_op(RotaryOp(), {x})[0].to_doubles();
  check_close(y, {1, 0, std::cos(1.0), std::sin(1.0), -std::sin(2.0), std::cos(2.0)}, 1e-15, 0, "rotations");
}

TEST_CASE("rotary: the inverse undoes the rotation, and the graph functions build both") {
  const Tensor x = random_tensor({2, 2, 9, 40}, 11, -1, 1, DType::f64);
  const Tensor back = run_graph([](Graph&, const std::vector<Value>& in) {
    return rotary_inverse(rotary(in[0], 7, "rot"), 7, "unrot");
  }, {x});
  check_close(back, x.to_doubles(), "rotary_inverse(rotary(x))");
}

TEST_CASE("rotary: gradients by finite differences (float64)") {
  for (const Shape& s : std::vector<Shape>{{1, 2, 5, 8}, {3, 4}, {2, 1, 1, 40}, {17, 8}})
    for (int64_t offset : {0, 12}) {
      check_gradients([offset](Graph&, const std::vector<Value>& in) { return rotary(in[0], offset); },
                      {random_tensor(s, 5, -1, 1, DType::f64)}, str_cat("rotary ", shape_str(s), " offset ", offset));
      check_gradients([offset](Graph&, const std::vector<Value>& in) { return rotary_inverse(in[0], offset); },
                      {random_tensor(s, 6, -1, 1, DType::f64)},
                      str_cat("rotary_inverse ", shape_str(s), " offset ", offset));
    }
}

TEST_CASE("rotary: each pair (x[i], x[i + hd/2]) keeps its norm") {
  const int64_t S = 33, hd = 40, h = hd / 2;
  const Tensor x = random_tensor({2, S, hd}, 13, -3, 3, DType::f64);
  const auto xv = x.to_doubles();
  const auto yv = run_op(RotaryOp(100), {x}, &test_pool())[0].to_doubles();
  std::vector<double> nx, ny;
  for (int64_t r = 0; r < 2 * S; ++r)
    for (int64_t i = 0; i < h; ++i) {
      const auto a = static_cast<size_t>(r * hd + i), b = a + static_cast<size_t>(h);
      nx.push_back(xv[a] * xv[a] + xv[b] * xv[b]);
      ny.push_back(yv[a] * yv[a] + yv[b] * yv[b]);
    }
  check_close(ny, nx, 1e-12, 1e-12, "pair norms");
}

TEST_CASE("rotary: q_t . k_s depends only on t - s (and not on the offset)") {
  // The same q vector at every position, the same k vector at every position: after rotation,
  // <q_t, k_s> = <q, R(s - t) k> is a function of s - t only.
  const int64_t S = 17, hd = 8;
  const auto qv = random_doubles(hd, 21), kv = random_doubles(hd, 22);
  std::vector<double> q, k;
  for (int64_t s = 0; s < S; ++s) {
    q.insert(q.end(), qv.begin(), qv.end());
    k.insert(k.end(), kv.begin(), kv.end());
  }
  const Tensor qt = Tensor::from_vector(q, {S, hd}), kt = Tensor::from_vector(k, {S, hd});
  const auto rq = run_op(RotaryOp(), {qt})[0].to_doubles(), rk = run_op(RotaryOp(), {kt})[0].to_doubles();
  const auto rq9 = run_op(RotaryOp(9), {qt})[0].to_doubles(), rk9 = run_op(RotaryOp(9), {kt})[0].to_doubles();
  for (int64_t t = 0; t < S; ++t)
    for (int64_t s = 0; s < S; ++s) {
      const int64_t d = t - s;
      // The reference pair for this distance: (d, 0) or (0, -d).
      const double expected = d >= 0 ? dot_row(rq, rk, d, 0, hd) : dot_row(rq, rk, 0, -d, hd);
      CHECK(dot_row(rq, rk, t, s, hd) == doctest::Approx(expected).epsilon(1e-12));
      CHECK(dot_row(rq9, rk9, t, s, hd) == doctest::Approx(expected).epsilon(1e-12));
    }
  // And it really depends on the distance (the rotation is not the identity).
  CHECK(std::abs(dot_row(rq, rk, 3, 0, hd) - dot_row(rq, rk, 0, 0, hd)) > 1e-3);
}

TEST_CASE("rotary: bad shapes and parameters throw an xfr::Error naming the op and the shapes") {
  try {
    run_op(RotaryOp(), {Tensor::zeros({2, 3, 5, 7})});
    FAIL("odd hd accepted");
  } catch (const Error& e) {
    CHECK(e.op() == "rotary");
    CHECK(std::string(e.what()).find("(2, 3, 5, 7)") != std::string::npos);
    CHECK(std::string(e.what()).find("even") != std::string::npos);
  }
  try {
    run_op(RotaryOp(), {Tensor::zeros({8})});
    FAIL("rank 1 accepted");
  } catch (const Error& e) {
    CHECK(e.op() == "rotary");
    CHECK(std::string(e.what()).find("(8,)") != std::string::npos);
    CHECK(std::string(e.what()).find("rank >= 2") != std::string::npos);
  }
  CHECK_THROWS_AS(run_op(RotaryOp(), {Tensor::zeros({})}), Error);
  CHECK_THROWS_AS(run_op(RotaryOp(-1), {Tensor::zeros({4, 8})}), Error);
  CHECK_THROWS_AS(run_op(RotaryOp(), {Tensor::zeros({4, 8}, DType::i32)}), Error);
  CHECK_THROWS_AS(run_op(RotaryOp(), {Tensor::zeros({4, 0})}), Error);
}
