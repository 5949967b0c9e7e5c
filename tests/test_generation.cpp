// Generation: the KV-cache path gives the same tokens as recomputing the window; seeded sampling is
// deterministic; the cache restarts cleanly when full.
#include "tests/fixtures.h"
#include "factory/config.h"
#include "factory/trainer.h"
#include "ops/kv_cache.h"
#include "runtime/cpu/threadpool.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

const char* const kTinyLm = xfr::testing::kTinyLmConfig;

Model tiny_model(const std::vector<std::string>& sets = {}) {
  const Config cfg = parse_config(kTinyLm, "yaml", "<tiny lm>", sets);
  Model m = make_model(cfg, 18, 2, make_null_logger());
  // Larger random weights than the init, so that the logits are far from ties.
  auto v = random_doubles(m.store->flat_size(), 99, -0.3, 0.3);
  for (size_t i = 0; i < v.size(); ++i) m.store->params()[i] = static_cast<float>(v[i]);
  return m;
}

}  // namespace

TEST_CASE("generation: KV-cache decoding gives the tokens of full-window recomputation") {
  for (const char* pos : {"vocab", "sine", "learnable"}) {
    Model m = tiny_model({std::string("model.stack_configs.0.position_encoding_config={name: ") + pos + "}"});
    ThreadPool pool(2);
    const std::vector<int32_t> prompt = {16, 3, 7, 1, 9};
    // 40 new tokens with a 24-position cache: also crosses the cache restart.
    const auto cached = generate(m, prompt, 40, 0.0, 0, 1.0, 7, &pool, true);
    const auto full = generate(m, prompt, 19, 0.0, 0, 1.0, 7, &pool, false);
    REQUIRE(cached.size() == 40);
    for (size_t i = 0; i < full.size(); ++i) CHECK_MESSAGE(cached[i] == full[i], pos << " token " << i);
  }
}

TEST_CASE("generation: seeded sampling is deterministic and the seed matters") {
  Model m = tiny_model();
  ThreadPool pool(2);
  const auto a = generate(m, {1, 2, 3}, 30, 1.0, 5, 0.9, 11, &pool);
  const auto b = generate(m, {1, 2, 3}, 30, 1.0, 5, 0.9, 11, &pool);
  const auto c = generate(m, {1, 2, 3}, 30, 1.0, 5, 0.9, 12, &pool);
  CHECK(a == b);
  CHECK(a != c);
  for (int32_t id : a) CHECK((id >= 0 && id < 18));
}

TEST_CASE("kv_cache_write: writes one row, checks shapes and the position") {
  const Tensor cache = random_tensor({1, 2, 5, 3}, 1), update = random_tensor({1, 2, 1, 3}, 2);
  const Tensor out = run_op(KvCacheWriteOp(), {cache, update, Tensor::from_vector(std::vector<int32_t>{3}, {1})})[0];
  const auto c = cache.to_doubles(), u = update.to_doubles(), o = out.to_doubles();
  for (int h = 0; h < 2; ++h)
    for (int s = 0; s < 5; ++s)
      for (int d = 0; d < 3; ++d)
        CHECK(o[(h * 5 + s) * 3 + d] == (s == 3 ? u[h * 3 + d] : c[(h * 5 + s) * 3 + d]));
  CHECK_THROWS_AS(run_op(KvCacheWriteOp(), {cache, update, Tensor::from_vector(std::vector<int32_t>{5}, {1})}), Error);
  CHECK_THROWS_AS(run_op(KvCacheWriteOp(), {cache, random_tensor({1, 2, 2, 3}, 3), Tensor::from_vector(std::vector<int32_t>{0}, {1})}),
                  Error);
}
