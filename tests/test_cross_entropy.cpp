// cross_entropy against a float64 transcription of torch.nn.functional.cross_entropy (ignore_index, label
// smoothing, mean reduction); lse; the backward kernel; gradients (loss and lse) by finite differences;
// all rows ignored; target errors.
#include <cmath>
#include <random>

#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/grad.h"
#include "runtime/executor.h"
#include "runtime/param_store.h"
#include "runtime/cpu/threadpool.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

struct CERef {
  double loss;
  std::vector<double> lse, dlogits;  // dlogits for dloss = 1
};

// torch: logp = log_softmax(x); nll = mean over valid rows of -logp[t];
// smooth = sum over valid rows of -sum_v logp[v], divided by the number of valid rows;
// loss = (1 - ls) * nll + ls / V * smooth.
CERef ref_ce(const std::vector<double>& x, int64_t N, int64_t V, const std::vector<int64_t>& tg, int64_t ignore,
             double ls) {
  CERef r;
  double nll = 0, smooth = 0;
  int64_t valid = 0;
  std::vector<std::vector<double>> p(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {
    double mx = -INFINITY, s = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, x[n * V + v]);
    for (int64_t v = 0; v < V; ++v) s += std::exp(x[n * V + v] - mx);
    const double lse = mx + std::log(s);
    r.lse.push_back(lse);
    for (int64_t v = 0; v < V; ++v) p[n].push_back(std::exp(x[n * V + v] - lse));
    if (tg[n] == ignore) continue;
    ++valid;
    nll += -(x[n * V + tg[n]] - lse);
    for (int64_t v = 0; v < V; ++v) smooth += -(x[n * V + v] - lse);
  }
  r.loss = valid ? (1 - ls) * nll / valid + ls / V * smooth / valid : 0.0;
  r.dlogits.assign(x.size(), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    if (tg[n] == ignore) continue;
    for (int64_t v = 0; v < V; ++v)
      r.dlogits[n * V + v] = (p[n][v] - (1 - ls) * (v == tg[n] ? 1.0 : 0.0) - ls / V) / valid;
  }
  return r;
}

Tensor targets_tensor(const std::vector<int64_t>& t, DType dt) {
  if (dt == DType::i64) return Tensor::from_vector(t, {static_cast<int64_t>(t.size())});
  std::vector<int32_t> t32(t.begin(), t.end());
  return Tensor::from_vector(t32, {static_cast<int64_t>(t.size())});
}

std::vector<int64_t> random_targets(int64_t N, int64_t V, uint64_t seed, int64_t ignore, int every) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> t;
  for (int64_t n = 0; n < N; ++n) t.push_back(every > 0 && n % every == 1 ? ignore : static_cast<int64_t>(rng() % V));
  return t;
}

}  // namespace

TEST_CASE("cross_entropy: loss, lse and dlogits against float64 (ignore_index, label smoothing)") {
  for (int64_t V : {1, 31, 33, 257})
    for (int64_t N : {1, 7, 64})
      for (DType dt : {DType::f32, DType::f64})
        for (DType it : {DType::i32, DType::i64})
          for (double ls : {0.0, 0.1, 1.0})
            for (int64_t ignore : {int64_t{-100}, int64_t{0}}) {
              const Tensor x = random_tensor({N, V}, 40 + V, -5, 5, dt);
              const auto tg = random_targets(N, V, 41 + N, ignore, 3);
              const Tensor t = targets_tensor(tg, it);
              const CERef ref = ref_ce(x.to_doubles(), N, V, tg, ignore, ls);
              const std::string what = "cross_entropy " + x.desc() + " ls " + std::to_string(ls) + " ignore " +
                                       std::to_string(ignore) + " " + dtype_name(it);
              for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &test_pool()}) {
                const auto out = run_op(CrossEntropyOp(ignore, ls), {x, t}, pool);
                REQUIRE(out[0].shape() == Shape{1});
                check_close(out[0], {ref.loss}, what + " loss");
                check_close(out[1], ref.lse, what + " lse");
                const Tensor dloss = Tensor::full({1}, 1.0, dt);
                const Tensor dx = run_op(CrossEntropyBackwardOp(ignore, ls, false), {x, out[1], t, dloss}, pool)[0];
                check_close(dx, ref.dlogits, what + " dlogits");
                // The forward's own dlogits (for dloss = 1): the backward's, bit for bit.
                CHECK(out[2].to_doubles() == dx.to_doubles());
              }
            }
}

TEST_CASE("cross_entropy: a GPT-2-sized vocabulary (50257) in f32 keeps float64 accuracy") {
  const int64_t N = 5, V = 50257;
  const Tensor x = random_tensor({N, V}, 45, -8, 8, DType::f32);
  const std::vector<int64_t> tg{0, 50256, 12345, -100, 777};
  const Tensor t = targets_tensor(tg, DType::i64);
  const CERef ref = ref_ce(x.to_doubles(), N, V, tg, -100, 0.1);
  const auto out = run_op(CrossEntropyOp(-100, 0.1), {x, t}, &test_pool());
  check_close(out[0], {ref.loss}, "loss V=50257");
  check_close(out[1], ref.lse, "lse V=50257");
  const Tensor dx = run_op(CrossEntropyBackwardOp(-100, 0.1, false), {x, out[1], t, Tensor::full({1}, 1.0)})[0];
  check_close(dx, ref.dlogits, "dlogits V=50257");
}

TEST_CASE("cross_entropy: every row ignored gives loss 0 and a zero gradient (torch would give NaN)") {
  const Tensor x = random_tensor({4, 9}, 50, -2, 2, DType::f64);
  const Tensor t = targets_tensor({-100, -100, -100, -100}, DType::i64);
  const auto out = run_op(CrossEntropyOp(-100, 0.1), {x, t});
  CHECK(out[0].item() == 0.0);
  check_close(out[1], ref_ce(x.to_doubles(), 4, 9, {-100, -100, -100, -100}, -100, 0.1).lse, "lse still computed");
  const Tensor one = Tensor::full({1}, 1.0, DType::f64);
  const Tensor dx = run_op(CrossEntropyBackwardOp(-100, 0.1, false), {x, out[1], t, one})[0];
  for (double v : dx.to_doubles()) CHECK(v == 0.0);
  check_gradients([](Graph&, const std::vector<Value>& v) { return cross_entropy(v[0], v[1], -100, 0.1); },
                  {x, t}, "cross_entropy all ignored");
}

TEST_CASE("cross_entropy: gradients by finite differences (float64), through the loss and through lse") {
  const Tensor x = random_tensor({6, 7}, 60, -2, 2, DType::f64);
  const auto tg = random_targets(6, 7, 61, -100, 4);
  for (DType it : {DType::i32, DType::i64})
    for (double ls : {0.0, 0.2}) {
      const Tensor t = targets_tensor(tg, it);
      check_gradients([ls](Graph&, const std::vector<Value>& v) { return cross_entropy(v[0], v[1], -100, ls); },
                      {x, t}, "cross_entropy loss ls " + std::to_string(ls));
      // lse used downstream (a z-loss-like term) together with the loss.
      check_gradients([ls](Graph& g, const std::vector<Value>& v) {
        const auto outs = g.add(std::make_shared<CrossEntropyOp>(-100, ls), {v[0], v[1]});
        return outs[0] + outs[1] * outs[1];
      }, {x, t}, "cross_entropy loss + lse^2");
      // lse alone (no gradient reaches the loss output).
      check_gradients([ls](Graph& g, const std::vector<Value>& v) {
        return g.add(std::make_shared<CrossEntropyOp>(-100, ls), {v[0], v[1]})[1];
      }, {x, t}, "cross_entropy lse only");
    }
}

TEST_CASE("cross_entropy: under autodiff's seed of 1 the gradient is the forward's dlogits, with no backward node") {
  // The loss differentiated directly (seed 1): the forward's optional dlogits output is the gradient. A seed of
  // another value (fp16's loss scale, here a graph input) or a gradient reaching lse runs cross_entropy_backward.
  const int64_t N = 9, V = 33;
  const Tensor x = random_tensor({N, V}, 5, -3, 3, DType::f64);
  const Tensor t = targets_tensor(random_targets(N, V, 6, -100, 4), DType::i64);
  const auto count = [](const Graph& g, const char* op) {
    int c = 0;
    for (int i = 0; i < g.num_nodes(); ++i) c += g.node(i).op->name() == op;
    return c;
  };
  std::vector<double> dx[2];
  for (int scaled = 0; scaled < 2; ++scaled) {
    Graph g;
    const Value vx = g.input("x", TensorMeta{{N, V}, DType::f64}, true), vt = g.input("t", TensorMeta{{N}, DType::i64});
    const Value loss = cross_entropy(vx, vt, -100, 0.1);
    const Value seed = scaled ? g.input("seed", loss.meta()) : Value{};
    const Gradients grads = gradients(loss, seed);
    const Value gx = grads.get(vx);
    CHECK(count(g, "cross_entropy_backward") == scaled);
    if (!scaled) CHECK(g.node(g.value(gx.id).producer).op->name() == "cross_entropy");
    Executor ex(g, {loss, gx}, grads, std::make_shared<ParamStore>(g), ExecutorOptions{});
    ex.bind(vx, x);
    ex.bind(vt, t);
    if (scaled) ex.bind(seed, Tensor::full({1}, 1.0, DType::f64));
    ex.run();
    dx[scaled] = ex.get(gx).to_doubles();
  }
  CHECK(dx[0] == dx[1]);
  // An inference graph (nothing reads dlogits) plans no buffer for it.
  Graph g;
  const Value loss = cross_entropy(g.input("x", TensorMeta{{N, V}, DType::f32}), g.input("t", TensorMeta{{N}, DType::i64}));
  Executor ex(g, {loss}, Gradients{}, std::make_shared<ParamStore>(g), ExecutorOptions{});
  CHECK(static_cast<int64_t>(ex.memory_plan().arena_bytes) < N * V * 4);
}

TEST_CASE("cross_entropy: bad shapes, dtypes, smoothing and out-of-range targets throw xfr::Error") {
  const Tensor x = Tensor::zeros({3, 5});
  try {
    run_op(CrossEntropyOp(-100, 0.0), {x, targets_tensor({0, 7, 1}, DType::i64)});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "cross_entropy");
    CHECK(std::string(e.what()).find("row 1") != std::string::npos);
    CHECK(std::string(e.what()).find("7") != std::string::npos);
  }
  CHECK_THROWS_AS(run_op(CrossEntropyOp(-100, 0.0), {x, targets_tensor({0, -1, 1}, DType::i32)}), Error);
  // ignore_index itself is fine wherever it is.
  CHECK_NOTHROW(run_op(CrossEntropyOp(-1, 0.0), {x, targets_tensor({0, -1, 1}, DType::i32)}));
  try {
    run_op(CrossEntropyOp(-100, 0.0), {x, targets_tensor({0, 1}, DType::i64)});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "cross_entropy");
    CHECK(std::string(e.what()).find("(2,)") != std::string::npos);
    CHECK(std::string(e.what()).find("(3, 5)") != std::string::npos);
  }
  CHECK_THROWS_AS(run_op(CrossEntropyOp(-100, 0.0), {Tensor::zeros({15}), targets_tensor({0}, DType::i64)}), Error);
  CHECK_THROWS_AS(run_op(CrossEntropyOp(-100, 0.0), {x, Tensor::zeros({3})}), Error);  // float targets
  CHECK_THROWS_AS(run_op(CrossEntropyOp(-100, 1.5), {x, targets_tensor({0, 1, 2}, DType::i64)}), Error);
  CHECK_THROWS_AS(run_op(CrossEntropyOp(-100, -0.1), {x, targets_tensor({0, 1, 2}, DType::i64)}), Error);
  // Through a graph and an executor, the error also names the node.
  try {
    run_graph([](Graph&, const std::vector<Value>& v) { return cross_entropy(v[0], v[1], -100, 0.0, "ce"); },
              {x, targets_tensor({0, 1, 5}, DType::i64)});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "cross_entropy");
    CHECK(std::string(e.what()).find("row 2") != std::string::npos);
    CHECK(std::string(e.what()).find("'ce'") != std::string::npos);
  }
}
