// Graph, autodiff, memory plan and executor: plan correctness, buffer reuse, gradient accumulation.
#include <cmath>
#include <cstring>

#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/shape_ops.h"
#include "runtime/memory_plan.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

TEST_CASE("memory_plan: overlapping lifetimes never share bytes; disjoint ones do") {
  std::vector<BufferRequest> req;
  for (int i = 0; i < 40; ++i)
    req.push_back(BufferRequest{static_cast<size_t>(100 + 37 * (i % 7)), i, i + 1 + (i % 3)});
  const MemoryPlan plan = plan_memory(req, 64);
  for (size_t i = 0; i < req.size(); ++i) {
    CHECK(plan.offsets[i] % 64 == 0);
    for (size_t j = i + 1; j < req.size(); ++j) {
      const bool live_together = req[i].first_step <= req[j].last_step && req[j].first_step <= req[i].last_step;
      const bool bytes_overlap = plan.offsets[i] < plan.offsets[j] + req[j].bytes &&
                                 plan.offsets[j] < plan.offsets[i] + req[i].bytes;
      CHECK_FALSE((live_together && bytes_overlap));
    }
  }
  CHECK(plan.arena_bytes < plan.unplanned_bytes / 4);  // a chain of short lifetimes reuses heavily
}

namespace {

// A 12-layer residual stack: h <- h + 0.1 * (h W_l) * sigmoid-free gate (h W_l), with parameters.
Value residual_stack(Graph& g, Value x, int layers, int64_t c) {
  Value h = x;
  for (int l = 0; l < layers; ++l) {
    auto s = g.scope("layer." + std::to_string(l));
    const Value w1 = g.param("w1", {c, c});
    const Value w2 = g.param("w2", {c, c});
    const Value a = matmul(h, w1, false, false, "a");
    const Value b = matmul(h, w2, false, true, "b");
    h = add(h, scale(mul(a, b, "gate"), 0.1, "scaled"), "residual");
  }
  return h;
}

void init_params(ParamStore& store, uint64_t seed) {
  auto v = random_doubles(store.flat_size(), seed, -0.1, 0.1);
  for (size_t i = 0; i < v.size(); ++i) store.params()[i] = static_cast<float>(v[i]);
}

}  // namespace

TEST_CASE("memory_plan: a 12-layer stack peaks well below the sum of its activations, results identical") {
  const int64_t B = 4, T = 33, C = 31;
  auto build_and_run = [&](bool plan, std::vector<std::vector<float>>& results, size_t& arena, size_t& total) {
    Graph g;
    const Value x = g.input("x", TensorMeta{{B, T, C}, DType::f32});
    const Value w = g.input("w", TensorMeta{{B, T, C}, DType::f32});
    const Value y = residual_stack(g, x, 12, C);
    const Value loss_vec = mul(y, w, "weighted");  // L = sum(y * w): seeded below with ones
    Gradients grads = gradients(loss_vec, fill(g, loss_vec.meta(), 1.0, "ones"));
    auto store = std::make_shared<ParamStore>(g);
    init_params(*store, 7);
    ExecutorOptions opt;
    opt.plan_memory = plan;
    Executor ex(g, {y}, grads, store, opt);
    ex.bind(x, random_tensor({B, T, C}, 1));
    ex.bind(w, random_tensor({B, T, C}, 2));
    ex.run();
    const Tensor out = ex.get(y);
    results.emplace_back(out.data<float>(), out.data<float>() + out.numel());
    results.emplace_back(store->grads(), store->grads() + store->flat_size());
    arena = ex.memory_plan().arena_bytes;
    total = ex.memory_plan().unplanned_bytes;
  };
  std::vector<std::vector<float>> planned, unplanned;
  size_t arena = 0, total = 0, arena_u = 0, total_u = 0;
  build_and_run(true, planned, arena, total);
  build_and_run(false, unplanned, arena_u, total_u);
  MESSAGE("12-layer stack: planned arena " << arena << " bytes vs " << total << " bytes of activations");
  CHECK(arena * 3 < total);  // "well below": at most a third
  CHECK(arena_u >= total_u);
  REQUIRE(planned.size() == unplanned.size());
  for (size_t i = 0; i < planned.size(); ++i)
    CHECK(std::memcmp(planned[i].data(), unplanned[i].data(), planned[i].size() * sizeof(float)) == 0);
}

TEST_CASE("executor: gradients accumulate over micro-batches until zero_grads") {
  const int64_t B = 3, T = 5, C = 7;
  Graph g;
  const Value x = g.input("x", TensorMeta{{B, T, C}, DType::f32});
  const Value y = residual_stack(g, x, 2, C);
  Gradients grads = gradients(y, fill(g, y.meta(), 1.0, "ones"));
  auto store = std::make_shared<ParamStore>(g);
  init_params(*store, 3);
  Executor ex(g, {y}, grads, store);
  auto grads_for = [&](uint64_t seed) {
    store->zero_grads();
    ex.bind(x, random_tensor({B, T, C}, seed));
    ex.run();
    return std::vector<float>(store->grads(), store->grads() + store->flat_size());
  };
  const auto g1 = grads_for(11), g2 = grads_for(12);
  store->zero_grads();
  ex.bind(x, random_tensor({B, T, C}, 11));
  ex.run();
  ex.bind(x, random_tensor({B, T, C}, 12));
  ex.run();
  std::vector<double> expect(g1.size()), got(g1.size());
  for (size_t i = 0; i < g1.size(); ++i) {
    expect[i] = static_cast<double>(g1[i]) + g2[i];
    got[i] = store->grads()[i];
  }
  check_close(got, expect, 1e-6, 1e-6, "accumulated gradients");
}

TEST_CASE("executor: grads_overwrite stores each run's gradients, zeroes a slot no node writes") {
  const int64_t B = 3, T = 5, C = 7;
  Graph g;
  const Value x = g.input("x", TensorMeta{{B, T, C}, DType::f32});
  Value y = residual_stack(g, x, 2, C);
  const Value tied = g.param("tied", {C, C});  // read twice: autodiff sums its two paths into one gradient
  y = add(matmul(y, tied, false, false, "t1"), matmul(y, tied, false, true, "t2"), "tied_sum");
  g.param("unused", {C, 3});  // no gradient reaches it
  Gradients grads = gradients(y, fill(g, y.meta(), 1.0, "ones"));
  auto store = std::make_shared<ParamStore>(g);
  init_params(*store, 5);
  Executor acc(g, {y}, grads, store);
  auto reference = [&](uint64_t seed) {  // zeroed, then accumulated once
    store->zero_grads();
    acc.bind(x, random_tensor({B, T, C}, seed));
    acc.run();
    return std::vector<float>(store->grads(), store->grads() + store->flat_size());
  };
  const auto g1 = reference(21), g2 = reference(22);
  ExecutorOptions opt;
  opt.grads_overwrite = true;
  Executor ex(g, {y}, grads, store, opt);
  const ParamSlot& unused = store->slot("unused");
  for (auto [seed, want] : {std::pair{uint64_t(21), &g1}, std::pair{uint64_t(22), &g2}, std::pair{uint64_t(21), &g1}}) {
    for (const ParamSlot& sl : store->slots())  // poison: nothing of it may survive the run
      std::fill(store->grads() + sl.offset, store->grads() + sl.offset + sl.numel, std::nanf(""));
    ex.bind(x, random_tensor({B, T, C}, seed));
    ex.run();
    for (const ParamSlot& sl : store->slots())
      for (size_t i = sl.offset; i < sl.offset + sl.numel; ++i) {
        INFO("seed " << seed << ", element " << i);
        REQUIRE(store->grads()[i] == (*want)[i]);  // a copy of the accumulated-from-zero value, bit for bit
      }
  }
  for (size_t i = unused.offset; i < unused.offset + unused.numel; ++i) CHECK(store->grads()[i] == 0.0f);
}

TEST_CASE("executor: profile times each op by name, and work a caller hands to profiled() beside them") {
  const int64_t B = 3, T = 5, C = 7;
  Graph g;
  const Value x = g.input("x", TensorMeta{{B, T, C}, DType::f32});
  const Value y = residual_stack(g, x, 2, C);
  auto store = std::make_shared<ParamStore>(g);
  init_params(*store, 3);
  ExecutorOptions opt;
  opt.profile = true;
  Executor ex(g, {y}, Gradients{}, store, opt);
  bool ran = false;
  for (int run = 0; run < 2; ++run) {
    ex.bind(x, random_tensor({B, T, C}, 11));
    ex.run();
    ex.profiled("caller work", [&] { ran = true; });
  }
  CHECK(ran);
  const auto& p = ex.profile();
  REQUIRE(p.count("caller work") == 1);
  CHECK(p.at("caller work").calls == 2);
  REQUIRE(p.count("matmul") == 1);
  CHECK(p.at("matmul").calls % 2 == 0);  // the same ops each run
  // Without options.profile the work runs and nothing is recorded.
  Executor quiet(g, {y}, Gradients{}, store);
  ran = false;
  quiet.profiled("caller work", [&] { ran = true; });
  CHECK(ran);
  CHECK(quiet.profile().empty());
}

TEST_CASE("graph: names follow scopes; parameters are unique; unbound inputs and missing outputs are refused") {
  Graph g;
  const Value x = g.input("x", TensorMeta{{2, 3}, DType::f32});
  {
    auto s1 = g.scope("encoder");
    auto s2 = g.scope("3");
    const Value w = g.param("weight", {3, 3});
    CHECK(w.name() == "encoder.3.weight");
    CHECK_THROWS_AS(g.param("weight", {3, 3}), Error);
    const Value y = matmul(x, w, false, false, "q_proj");
    CHECK(y.name() == "encoder.3.q_proj");
  }
  const Value z = g.param("free", {3});
  CHECK(z.name() == "free");
  auto store = std::make_shared<ParamStore>(g);
  CHECK(store->slots().size() == 2);
  CHECK(store->slot("encoder.3.weight").offset % 16 == 0);
  CHECK(store->slot("free").offset % 16 == 0);
  const Value y = g.find("encoder.3.q_proj");
  Executor ex(g, {y}, Gradients{}, store);
  CHECK_THROWS_AS(ex.run(), Error);  // x unbound
  CHECK_THROWS_AS(ex.bind(x, Tensor::zeros({3, 2})), Error);
  CHECK_THROWS_AS(ex.get(x), Error);
}

#include "components/linear.h"
#include "ops/activation.h"

TEST_CASE("autodiff: the graph's gradients of a two-layer MLP equal the hand-derived backward") {
  const int64_t N = 33, I = 31, H = 17, O = 5;
  Graph g;
  const Value x = g.input("x", TensorMeta{{N, I}, DType::f32}, /*requires_grad=*/true);
  const Value w = g.input("w", TensorMeta{{N, O}, DType::f32});
  const Value y = linear(relu(linear(x, I, H, true, "fc1"), "relu"), H, O, true, "fc2");
  const Gradients grads = gradients(y, w);  // L = sum(y * w)
  auto store = std::make_shared<ParamStore>(g);
  init_params(*store, 5);
  Executor ex(g, {y, grads.get(x)}, grads, store);
  const Tensor xt = random_tensor({N, I}, 1), wt = random_tensor({N, O}, 2);
  ex.bind(x, xt);
  ex.bind(w, wt);
  ex.run();

  // By hand, in double: z1 = x W1^T + b1, a1 = relu(z1), y = a1 W2^T + b2.
  const auto X = xt.to_doubles(), Wt = wt.to_doubles();
  const auto W1 = store->param("fc1.weight").to_doubles(), B1 = store->param("fc1.bias").to_doubles();
  const auto W2 = store->param("fc2.weight").to_doubles();
  std::vector<double> z1(N * H), a1(N * H);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      double s = B1[h];
      for (int64_t i = 0; i < I; ++i) s += X[n * I + i] * W1[h * I + i];
      z1[n * H + h] = s;
      a1[n * H + h] = s > 0 ? s : 0;
    }
  std::vector<double> dW2(O * H, 0), db2(O, 0), dz1(N * H, 0), dW1(H * I, 0), db1(H, 0), dx(N * I, 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) {
      const double dy = Wt[n * O + o];
      db2[o] += dy;
      for (int64_t h = 0; h < H; ++h) {
        dW2[o * H + h] += dy * a1[n * H + h];
        dz1[n * H + h] += dy * W2[o * H + h] * (z1[n * H + h] > 0 ? 1.0 : 0.0);
      }
    }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      db1[h] += dz1[n * H + h];
      for (int64_t i = 0; i < I; ++i) {
        dW1[h * I + i] += dz1[n * H + h] * X[n * I + i];
        dx[n * I + i] += dz1[n * H + h] * W1[h * I + i];
      }
    }
  check_close(store->grad("fc2.weight"), dW2, "dW2");
  check_close(store->grad("fc2.bias"), db2, "db2");
  check_close(store->grad("fc1.weight"), dW1, "dW1");
  check_close(store->grad("fc1.bias"), db1, "db1");
  check_close(ex.get(grads.get(x)), dx, "dx");
}

TEST_CASE("executor: constant_params runs parameter-only nodes once and keeps their outputs") {
  // y = x * (2 w): the scale of the parameter is a constant; after the first run, changing the stored
  // parameter no longer changes y (the documented contract: parameters must not change), while a new x does.
  Graph g;
  Value x = g.input("x", TensorMeta{{3}, DType::f32});
  Value w = g.param("w", {3});
  Value w2 = scale(w, 2.0, "w2");
  Value y = mul(x, w2, "y");
  auto store = std::make_shared<ParamStore>(g);
  for (int i = 0; i < 3; ++i) store->params()[i] = static_cast<float>(i + 1);
  ExecutorOptions o;
  o.constant_params = true;
  Executor ex(g, {y}, Gradients{}, store, o);
  ex.bind(x, Tensor::from_vector(std::vector<float>{1, 1, 1}, {3}));
  ex.run();
  CHECK(ex.get(y).to_doubles() == std::vector<double>{2, 4, 6});
  store->params()[0] = 100;  // not seen: the constant was computed in the first run
  ex.bind(x, Tensor::from_vector(std::vector<float>{1, 2, 3}, {3}));
  ex.run();
  CHECK(ex.get(y).to_doubles() == std::vector<double>{2, 8, 18});
}

TEST_CASE("executor: constant_params keeps a constant computed after other buffers from sharing their bytes") {
  // a = x * 3 and b = a * 5 are done before the constant w2 = 2 w is computed, so a plan that starts w2's lifetime at
  // its own step could put it over a's or b's bytes; the second run writes a and b again before it reads w2 (which it
  // does not recompute) and would see them. y = b + w2.
  Graph g;
  Value x = g.input("x", TensorMeta{{64}, DType::f32});
  Value a = scale(x, 3.0, "a");
  Value b = scale(a, 5.0, "b");
  Value w = g.param("w", {64});
  Value w2 = scale(w, 2.0, "w2");
  Value y = add(b, w2, "y");
  auto store = std::make_shared<ParamStore>(g);
  for (int i = 0; i < 64; ++i) store->params()[i] = static_cast<float>(i);
  ExecutorOptions o;
  o.constant_params = true;
  Executor ex(g, {y}, Gradients{}, store, o);
  std::vector<double> want(64);
  for (int run = 0; run < 3; ++run) {
    std::vector<float> xs(64);
    for (int i = 0; i < 64; ++i) {
      xs[static_cast<size_t>(i)] = static_cast<float>(run + 1);
      want[static_cast<size_t>(i)] = 15.0 * (run + 1) + 2.0 * i;
    }
    ex.bind(x, Tensor::from_vector(xs, {64}));
    ex.run();
    CAPTURE(run);
    CHECK(ex.get(y).to_doubles() == want);
  }
}

TEST_CASE("executor: a split along the outermost axis is views of its input when its parts are 64-byte aligned") {
  // y = 2 x (32, 15) f32 split into 16 + 16 rows: the second part 960 bytes in, a multiple of 64, so both parts are
  // views of y's bytes (no kernel). Split into 3 + 29 rows (180 bytes in) it copies. Values equal either way.
  for (const bool aligned : {true, false}) {
    CAPTURE(aligned);
    Graph g;
    Value x = g.input("x", TensorMeta{{32, 15}, DType::f32});
    Value y = scale(x, 2.0, "y");
    const int64_t first = aligned ? 16 : 3;
    const auto parts = split(y, 0, {first, 32 - first}, "parts");
    Value z = scale(parts[1], 3.0, "z");  // a node reads the second part
    Executor ex(g, {y, parts[0], parts[1], z}, Gradients{}, std::make_shared<ParamStore>(g), ExecutorOptions{});
    const Tensor xs = random_tensor({32, 15}, 3);
    ex.bind(x, xs);
    ex.run();
    const auto xv = xs.to_doubles(), a = ex.get(parts[0]).to_doubles(), b = ex.get(parts[1]).to_doubles(),
               c = ex.get(z).to_doubles();
    for (size_t i = 0; i < xv.size(); ++i) {
      const double want = 2 * static_cast<double>(static_cast<float>(xv[i]));
      const size_t split_at = static_cast<size_t>(first * 15);
      CHECK((i < split_at ? a[i] : b[i - split_at]) == want);
      if (i >= split_at) CHECK(c[i - split_at] == static_cast<double>(3.0f * static_cast<float>(want)));
    }
    const char* y_bytes = static_cast<const char*>(ex.get(y).raw_data());
    CHECK((ex.get(parts[0]).raw_data() == y_bytes) == aligned);
    CHECK((ex.get(parts[1]).raw_data() == y_bytes + first * 15 * 4) == aligned);
  }
  // Gradients through the views (split's backward is a concat) by finite differences.
  check_gradients([](Graph&, const std::vector<Value>& in) {
    const auto p = split(scale(in[0], 1.5), 0, {8, 8});
    return mul(p[0], p[1]);
  }, {random_tensor({16, 8}, 4, -1, 1, DType::f64)}, "split views");
}
