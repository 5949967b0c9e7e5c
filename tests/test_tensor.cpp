// Tensor: views share storage, copies convert, 16-bit floats round to nearest even, errors name the op.
#include <cmath>
#include <cstring>
#include <limits>

#include <spdlog/sinks/ostream_sink.h>

#include "runtime/allocator.h"
#include "runtime/logging.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

TEST_CASE("tensor: views share storage; transpose, permute and slice index correctly") {
  std::vector<float> v(24);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  const Tensor t = Tensor::from_vector(v, {2, 3, 4});
  CHECK(t.is_contiguous());
  CHECK(reinterpret_cast<uintptr_t>(t.raw_data()) % kCpuAlignment == 0);
  const Tensor tt = t.transpose(0, 2);  // (4, 3, 2)
  CHECK_FALSE(tt.is_contiguous());
  const auto d = tt.to_doubles();
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 2; ++k) CHECK(d[(i * 3 + j) * 2 + k] == v[(k * 3 + j) * 4 + i]);
  const Tensor p = t.permute({1, 0, 2});
  CHECK(p.shape() == Shape{3, 2, 4});
  CHECK(p.contiguous().to_doubles()[4] == 12.0);  // p[0][1][0] = t[1][0][0]
  const Tensor s = t.slice(2, 1, 3);             // (2, 3, 2)
  CHECK(s.to_doubles() == std::vector<double>{1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22});
  Tensor view = t.view({6, -1});
  view.data<float>()[0] = 100.0f;  // shared storage
  CHECK(t.to_doubles()[0] == 100.0);
  CHECK(t.clone().storage() != t.storage());
  CHECK_THROWS_AS(tt.view({24}), Error);
  CHECK_THROWS_AS(t.view({5, -1}), Error);
  CHECK_THROWS_AS(t.slice(1, 2, 4), Error);
  CHECK_THROWS_AS(t.data<double>(), Error);
}

TEST_CASE("tensor: row_stride is the distance between evenly spaced packed rows, else -1") {
  const Tensor t = Tensor::zeros({2, 3, 12}, DType::f32);
  CHECK(t.row_stride() == 12);
  CHECK(t.slice(2, 0, 4).row_stride() == 12);   // the first 4 columns of rows 12 apart (the ones column's view)
  CHECK(t.slice(2, 5, 9).row_stride() == 12);   // any columns: each row still packed
  CHECK(t.slice(1, 0, 2).row_stride() == -1);   // rows 0, 1, then 3: not evenly spaced
  CHECK(t.transpose(1, 2).row_stride() == -1);  // rows not packed
  CHECK(t.slice(0, 1, 2).row_stride() == 12);   // one outer step: nothing to space
  CHECK(Tensor::zeros({5}, DType::f32).row_stride() == 5);
  CHECK(Tensor::zeros({}, DType::f32).row_stride() == 1);
  CHECK(Tensor::zeros({4, 1}, DType::f32).row_stride() == 1);
}

TEST_CASE("tensor: copies between strided views and dtypes") {
  const Tensor a = random_tensor({5, 7}, 1, -3, 3);
  Tensor dst = Tensor::zeros({7, 5}, DType::f64);
  dst.copy_from(a.transpose(0, 1));
  const auto av = a.to_doubles(), dv = dst.to_doubles();
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 7; ++j) CHECK(dv[j * 5 + i] == av[i * 7 + j]);
  Tensor big = Tensor::zeros({4, 6});
  Tensor window = big.slice(1, 2, 5);  // strided destination
  window.copy_from(Tensor::full({4, 3}, 2.5));
  const auto bv = big.to_doubles();
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 6; ++c) CHECK(bv[r * 6 + c] == ((c >= 2 && c < 5) ? 2.5 : 0.0));
  const Tensor ints = Tensor::from_vector(std::vector<int64_t>{-3, 0, 7}, {3});
  CHECK(ints.to(DType::f32).to_doubles() == std::vector<double>{-3, 0, 7});
  CHECK(Tensor::full({2}, 1.0, DType::boolean).to(DType::i32).to_doubles() == std::vector<double>{1, 1});
}

TEST_CASE("tensor: bf16 and f16 round to nearest even, keep inf/nan, and handle subnormals") {
  // bf16: 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1).
  CHECK(static_cast<float>(bf16(1.0f + std::ldexp(1.0f, -8))) == 1.0f);
  CHECK(static_cast<float>(bf16(1.0f + 3 * std::ldexp(1.0f, -8))) == 1.0f + std::ldexp(1.0f, -6));
  CHECK(std::isinf(static_cast<float>(bf16(std::numeric_limits<float>::infinity()))));
  CHECK(std::isnan(static_cast<float>(bf16(std::numeric_limits<float>::quiet_NaN()))));
  // f16: 2049 is halfway between 2048 and 2050: ties to even (2048); 65520 overflows to inf.
  CHECK(static_cast<float>(f16(2049.0f)) == 2048.0f);
  CHECK(static_cast<float>(f16(2051.0f)) == 2052.0f);
  CHECK(std::isinf(static_cast<float>(f16(65520.0f))));
  CHECK(static_cast<float>(f16(65504.0f)) == 65504.0f);
  const float sub = std::ldexp(1.0f, -24);  // smallest f16 subnormal
  CHECK(static_cast<float>(f16(sub)) == sub);
  CHECK(static_cast<float>(f16(3 * sub)) == 3 * sub);
  CHECK(static_cast<float>(f16(sub * 0.49f)) == 0.0f);
  // Every f16 bit pattern survives a round trip through float.
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const float f = f16::to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    CHECK(f16::from_float(f) == b);
  }
  const Tensor x = random_tensor({33}, 3, -100, 100);
  const auto back = x.to(DType::bf16).to(DType::f32).to_doubles(), orig = x.to_doubles();
  for (size_t i = 0; i < orig.size(); ++i) CHECK(std::abs(back[i] - orig[i]) <= std::abs(orig[i]) * std::ldexp(1.0, -8));
}

TEST_CASE("logging: the library logs through a logger the user supplies, or not at all") {
  std::ostringstream captured;
  auto logger = std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::ostream_sink_mt>(captured));
  logger->set_level(spdlog::level::debug);
  logger->info("hello {}", 42);
  logger->flush();
  CHECK(captured.str().find("hello 42") != std::string::npos);
  auto silent = make_null_logger();
  silent->error("dropped");  // no output, no crash
  CHECK(make_stderr_logger("x")->name() == "x");
}

TEST_CASE("error: messages name the op and the config path") {
  const Error e("softmax", "mask (4, 9) does not broadcast", "stack_configs[0].multi_head_config");
  CHECK(std::string(e.what()) == "[softmax] mask (4, 9) does not broadcast (at stack_configs[0].multi_head_config)");
  CHECK(e.with_config_path("model").config_path() == "model");
}
