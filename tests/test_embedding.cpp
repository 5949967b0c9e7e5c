// embedding: the gather against a float64 reference (i32 and i64 ids, any ids shape), out-of-range ids,
// the scatter-add backward against a reference with repeated ids, its determinism across thread counts,
// gradients w.r.t. the table, and shape errors.
#include <random>

#include "ops/embedding.h"
#include "runtime/cpu/threadpool.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

// Random ids in [0, vocab) of the given dtype.
Tensor random_ids(const Shape& shape, int64_t vocab, uint64_t seed, DType dt) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> v(static_cast<size_t>(numel_of(shape)));
  for (auto& id : v) id = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab));
  const Tensor t = Tensor::from_vector(v, shape);
  return dt == DType::i64 ? t : t.to(dt);
}

// dtable[v, c] = sum of dy[t, c] over tokens t with id v.
std::vector<double> ref_scatter(const std::vector<double>& dy, const std::vector<double>& ids, int64_t vocab, int64_t C) {
  std::vector<double> dt(static_cast<size_t>(vocab * C), 0.0);
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t c = 0; c < C; ++c)
      dt[static_cast<size_t>(static_cast<int64_t>(ids[t]) * C + c)] += dy[t * static_cast<size_t>(C) + static_cast<size_t>(c)];
  return dt;
}

}  // namespace

TEST_CASE("embedding: gather against float64, i32 and i64 ids of any shape") {
  ThreadPool pool(3);
  const std::vector<std::pair<int64_t, int64_t>> tables = {{1, 1}, {257, 33}, {31, 257}, {1000, 64}};
  const std::vector<Shape> id_shapes = {{1}, {31}, {3, 31}, {2, 3, 33}, {}, {64, 257}};
  for (auto [V, C] : tables)
    for (const Shape& is : id_shapes)
      for (DType it : {DType::i32, DType::i64})
        for (DType dt : {DType::f32, DType::f64}) {
          const Tensor table = random_tensor({V, C}, 1, -1, 1, dt);
          const Tensor ids = random_ids(is, V, 2, it);
          const Tensor y = run_op(EmbeddingOp(), {table, ids}, &pool)[0];
          Shape ys = is;
          ys.push_back(C);
          REQUIRE(y.shape() == ys);
          const auto tv = table.to_doubles(), iv = ids.to_doubles();
          std::vector<double> ref;
          for (double id : iv)
            for (int64_t c = 0; c < C; ++c) ref.push_back(tv[static_cast<size_t>(static_cast<int64_t>(id) * C + c)]);
          check_close(y.to_doubles(), ref, 0, 0, "embedding " + table.desc() + " ids " + ids.desc());
        }
}

TEST_CASE("embedding: ids out of range are refused before anything is read") {
  std::vector<int32_t> v(40, 3);
  v[17] = 300;
  v[30] = 400;
  const Tensor table = random_tensor({256, 8}, 1);
  try {
    run_op(EmbeddingOp(), {table, Tensor::from_vector(v, {2, 20})});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "embedding");
    CHECK(e.message() == "token id 300 out of range for vocabulary 256 (position 17)");
  }
  std::vector<int64_t> neg(5, 0);
  neg[4] = -1;
  try {
    run_op(EmbeddingOp(), {table, Tensor::from_vector(neg, {5})});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.message() == "token id -1 out of range for vocabulary 256 (position 4)");
  }
  CHECK_THROWS_AS(run_op(EmbeddingBackwardOp(256), {Tensor::zeros({5, 8}), Tensor::from_vector(neg, {5})}), Error);
}

TEST_CASE("embedding: backward scatter-adds against float64 and is the same for every thread count") {
  ThreadPool p1(1), p2(2), p3(3);
  // Vocabulary 33 with 2*257 tokens: every id repeats; C = 257 gives several column blocks on a pool.
  for (auto [V, C] : std::vector<std::pair<int64_t, int64_t>>{{33, 257}, {1, 31}, {300, 1}, {1000, 64}})
    for (DType dt : {DType::f32, DType::f64})
      for (DType it : {DType::i32, DType::i64}) {
        const Tensor ids = random_ids({2, 257}, std::min<int64_t>(V, 40), 5, it);  // ids >= 40 stay unused
        const Tensor dy = random_tensor({2, 257, C}, 6, -1, 1, dt);
        const auto ref = ref_scatter(dy.to_doubles(), ids.to_doubles(), V, C);
        std::vector<std::vector<double>> results;
        for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &p1, &p2, &p3}) {
          const Tensor g = run_op(EmbeddingBackwardOp(V), {dy, ids}, pool)[0];
          REQUIRE(g.shape() == Shape{V, C});
          check_close(g, ref, "embedding_backward " + dy.desc());
          results.push_back(g.to_doubles());
        }
        for (size_t k = 1; k < results.size(); ++k) CHECK(results[k] == results[0]);  // bitwise
      }
}

TEST_CASE("embedding: gradient with respect to the table by finite differences (float64)") {
  const Tensor table = random_tensor({7, 5}, 3, -1, 1, DType::f64);
  for (DType it : {DType::i32, DType::i64}) {
    const Tensor ids = Tensor::from_vector<int64_t>({0, 3, 3, 6, 1, 3, 0, 2}, {2, 4}).to(it);  // 4 and 5 unused
    check_gradients([](Graph&, const std::vector<Value>& in) { return embedding(in[0], in[1]); }, {table, ids},
                    "embedding");
  }
}

TEST_CASE("embedding: bad shapes and dtypes throw an xfr::Error naming the op and the shapes") {
  const Tensor ids = Tensor::from_vector<int64_t>({1, 2}, {2});
  try {
    run_op(EmbeddingOp(), {Tensor::zeros({4, 3, 2}), ids});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "embedding");
    CHECK(std::string(e.what()).find("(4, 3, 2)") != std::string::npos);
  }
  try {
    run_op(EmbeddingOp(), {Tensor::zeros({4, 3}), Tensor::zeros({2})});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "embedding");
    CHECK(std::string(e.what()).find("(2,)") != std::string::npos);
  }
  CHECK_THROWS_AS(run_op(EmbeddingOp(), {Tensor::zeros({4, 3}, DType::i32), ids}), Error);
  try {
    run_op(EmbeddingBackwardOp(4), {Tensor::zeros({3, 5}), ids});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "embedding_backward");
    CHECK(std::string(e.what()).find("(3, 5)") != std::string::npos);
  }
}
