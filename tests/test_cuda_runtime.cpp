// The CUDA runtime pieces: device discovery, the caching allocator and its statistics, copies between
// host and device, the cast op. Without XF_TEST_DEVICE=cuda and a GPU these report as skipped.
#include "ops/cast.h"
#include "tests/cuda_testing.h"

using namespace xfr;
using namespace xfr::testing;

TEST_CASE("cuda: device discovery never throws, and resolve_device names what is missing") {
  const int n = cuda_device_count();
  CHECK(n >= 0);
  CHECK(resolve_device("cpu").is_cpu());
  CHECK((resolve_device("auto").is_cuda() == (n > 0)));
  if (n == 0) {
    CHECK_FALSE(cuda_unavailable_reason().empty());
    try {
      resolve_device("cuda");
      FAIL("resolve_device(cuda) without a device must throw");
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("not available") != std::string::npos);
    }
  }
  CHECK_THROWS_AS(resolve_device("gpu"), Error);
  CHECK_THROWS_AS(resolve_device("cuda:x"), Error);
}

XF_CUDA_TEST_CASE("cuda: round trips host -> device -> host for every dtype, contiguous and strided") {
  DeviceContext* ctx = cuda_test_ctx();
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64, DType::u8}) {
    Tensor h = random_tensor({33, 31}, 7, -100, 100).to(dt);
    Tensor d = h.to_device(ctx);
    CHECK(d.device().is_cuda());
    CHECK(d.to_doubles() == h.to_doubles());
    // a strided device view made contiguous
    Tensor dt_view = d.transpose(0, 1);
    CHECK(dt_view.contiguous().to_doubles() == h.transpose(0, 1).contiguous().to_doubles());
  }
}

XF_CUDA_TEST_CASE("cuda: device conversions round like the host's (bf16, f16 round to nearest even)") {
  DeviceContext* ctx = cuda_test_ctx();
  Tensor h = random_tensor({257, 3}, 11, -1000, 1000);
  for (DType dt : {DType::bf16, DType::f16}) {
    Tensor d = h.to_device(ctx).to(dt);
    CHECK(d.to_doubles() == h.to(dt).to_doubles());
    CHECK(d.to(DType::f32).to_doubles() == h.to(dt).to(DType::f32).to_doubles());
  }
}

XF_CUDA_TEST_CASE("cuda: the caching allocator reuses freed blocks and keeps statistics") {
  auto ctx = make_device_context(Device::cuda(0));
  const MemoryStats s0 = ctx->memory_stats();
  CHECK(s0.current_bytes == 0);
  { Tensor a = Tensor::empty({1 << 20}, DType::f32, ctx.get()); }  // 4 MiB, freed at once
  const MemoryStats s1 = ctx->memory_stats();
  CHECK(s1.current_bytes == 0);
  CHECK(s1.peak_bytes >= (size_t(4) << 20));
  CHECK(s1.driver_allocs == 1);
  { Tensor b = Tensor::empty({1 << 20}, DType::f32, ctx.get()); }  // served from the cache
  const MemoryStats s2 = ctx->memory_stats();
  if (std::getenv("XF_CUDA_CACHING") == nullptr) CHECK(s2.driver_allocs == 1);
  CHECK(s2.reserved_bytes >= (size_t(4) << 20));
  // tensors keep their context alive
  Tensor keep = Tensor::zeros({5}, DType::f32, ctx.get());
  ctx.reset();
  CHECK(keep.to_doubles() == std::vector<double>(5, 0.0));
}

XF_CUDA_TEST_CASE("cuda: out of memory is a clear error naming the bytes") {
  auto ctx = make_device_context(Device::cuda(0));
  try {
    Tensor huge = Tensor::empty({int64_t(1) << 50}, DType::f32, ctx.get());  // 4 PiB
    FAIL("allocating 4 PiB must fail");
  } catch (const Error& e) {
    const std::string m = e.what();
    CHECK(m.find("out of memory") != std::string::npos);
    CHECK(m.find("4503599627370496 bytes") != std::string::npos);
  }
  Tensor ok = Tensor::zeros({8}, DType::f32, ctx.get());  // the context still works
  CHECK(ok.to_doubles() == std::vector<double>(8, 0.0));
}

XF_CUDA_TEST_CASE("cuda: cast kernel matches the host conversion") {
  for (DType from : cuda_float_dtypes())
    for (DType to : cuda_float_dtypes()) {
      if (from == to) continue;
      CastOp op(to);
      Tensor x = random_tensor({31, 33}, 5, -3, 3).to(from);
      const auto got = run_op_cuda(op, {x});
      CHECK(got[0].to_doubles() == x.to(to).to_doubles());
    }
}
