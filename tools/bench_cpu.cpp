// CPU benchmark (not a test): sgemm through our matmul op vs OpenBLAS called directly, and the
// forward+backward time of a 4-layer, 256-wide, 8-head transformer stack at batch 16 x seq 128.
// Prints one JSON object per line; tools/bench_cpu.sh runs it beside tools/bench_cpu_torch.py (the same
// shapes in PyTorch) and prints the ratios. XF_BENCH_THREADS and XF_BENCH_ITERS as in the Python side.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>
#include <vector>

#include "factory/config.h"
#include "factory/model_builder.h"
#include "ops/grad.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "runtime/cpu/threadpool.h"
#include "runtime/executor.h"
#include "runtime/rng.h"

extern "C" void openblas_set_num_threads(int);

using namespace xfr;

namespace {

double median_ms(const std::function<void()>& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

Tensor uniform(const Shape& s, uint64_t seed, float lo, float hi) {
  Tensor t = Tensor::empty(s, DType::f32);
  philox_fill_uniform(seed, 0, t.data<float>(), static_cast<size_t>(t.numel()), lo, hi);
  return t;
}

void bench_sgemm(int64_t m, int64_t n, int64_t k, int iters, ThreadPool& pool) {
  const Tensor a = uniform({m, k}, 1, -1, 1), b = uniform({k, n}, 2, -1, 1);
  Tensor c = Tensor::empty({m, n}, DType::f32);
  Graph g;
  const Value va = g.input("a", TensorMeta{{m, k}, DType::f32}), vb = g.input("b", TensorMeta{{k, n}, DType::f32});
  const Value vc = matmul(va, vb);
  ExecutorOptions opt;
  opt.pool = &pool;
  Executor ex(g, {vc}, Gradients{}, std::make_shared<ParamStore>(g), opt);
  ex.bind(va, a);
  ex.bind(vb, b);
  // The two are timed alternately, so drift of a shared machine's speed hits both alike.
  std::vector<double> t_direct, t_ours;
  auto time_ms = [](const std::function<void()>& fn) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  auto direct_call = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, a.data<float>(), static_cast<int>(k), b.data<float>(), static_cast<int>(n),
                0.0f, c.data<float>(), static_cast<int>(n));
  };
  for (int i = 0; i < 2; ++i) {
    direct_call();
    ex.run();
  }
  for (int i = 0; i < iters; ++i) {
    t_direct.push_back(time_ms(direct_call));
    t_ours.push_back(time_ms([&] { ex.run(); }));
  }
  std::sort(t_direct.begin(), t_direct.end());
  std::sort(t_ours.begin(), t_ours.end());
  const double direct = t_direct[t_direct.size() / 2], ours = t_ours[t_ours.size() / 2];
  const double flop = 2.0 * static_cast<double>(m) * n * k;
  std::printf("{\"bench\": \"sgemm\", \"impl\": \"openblas\", \"m\": %ld, \"n\": %ld, \"k\": %ld, \"ms\": %.4f, "
              "\"gflops\": %.2f}\n", static_cast<long>(m), static_cast<long>(n), static_cast<long>(k), direct,
              flop / (direct * 1e-3) / 1e9);
  std::printf("{\"bench\": \"sgemm\", \"impl\": \"xfrun\", \"m\": %ld, \"n\": %ld, \"k\": %ld, \"ms\": %.4f, "
              "\"gflops\": %.2f}\n", static_cast<long>(m), static_cast<long>(n), static_cast<long>(k), ours,
              flop / (ours * 1e-3) / 1e9);
  std::fflush(stdout);
}

// The stack is built by the config factory (xFormers' vocabulary), as a user would write it.
std::string stack_config(int layers, int64_t C, int heads, int64_t T) {
  return str_cat(R"(
model:
  task: causal_lm
  vocab_size: 256
  stack_configs:
    - block_type: encoder
      num_layers: )", layers, R"(
      dim_model: )", C, R"(
      residual_norm_style: pre
      position_encoding_config: {name: vocab, seq_len: )", T, R"(}
      multi_head_config:
        num_heads: )", heads, R"(
        attention: {name: scaled_dot_product, causal: true}
      feedforward_config: {name: MLP, activation: gelu, hidden_layer_multiplier: 4}
data: {kind: copy, seq_len: )", T, R"(}
)");
}

void bench_stack(int layers, int64_t C, int heads, int64_t B, int64_t T, int iters, ThreadPool& pool) {
  const Config cfg = parse_config(stack_config(layers, C, heads, T), "yaml", "<bench stack>");
  BuiltModel m = build_model(cfg.root.at("model"), B, T, /*training=*/true);
  Graph& g = *m.graph;
  const Value x = m.tokens;
  const Value h = m.hidden;  // (B, T, C), after the final LayerNorm
  const Value w = g.input("w", h.meta());
  const Gradients grads = gradients(h, w);  // d/dparams of sum(h * w)
  auto store = std::make_shared<ParamStore>(g);
  philox_fill_normal(3, 0, store->params(), store->flat_size(), 0.0f, 0.02f);
  ExecutorOptions opt;
  opt.pool = &pool;
  Executor ex(g, {h}, grads, store, opt);
  Tensor tokens = Tensor::empty({B, T}, DType::i32);
  for (int64_t i = 0; i < B * T; ++i) tokens.data<int32_t>()[i] = static_cast<int32_t>(philox_u32(6, i) % 256);
  ex.bind(x, tokens);
  ex.bind(w, uniform({B, T, C}, 5, -1, 1));
  const double ms = median_ms([&] {
    store->zero_grads();
    ex.run();
  }, 2, iters);
  std::printf("{\"bench\": \"stack_fwd_bwd\", \"impl\": \"xfrun\", \"layers\": %d, \"dim\": %ld, \"heads\": %d, "
              "\"batch\": %ld, \"seq\": %ld, \"ms\": %.3f, \"tokens_per_s\": %.1f, \"arena_mb\": %.2f, "
              "\"unplanned_mb\": %.2f}\n", layers, static_cast<long>(C), heads, static_cast<long>(B),
              static_cast<long>(T), ms, static_cast<double>(B * T) / (ms * 1e-3),
              ex.memory_plan().arena_bytes / 1048576.0, ex.memory_plan().unplanned_bytes / 1048576.0);
  std::fflush(stdout);
  if (std::getenv("XF_BENCH_PROFILE")) {
    ExecutorOptions popt = opt;
    popt.profile = true;
    Executor pex(g, {h}, grads, store, popt);
    pex.bind(x, tokens);
    pex.bind(w, uniform({B, T, C}, 5, -1, 1));
    for (int i = 0; i < iters; ++i) pex.run();
    for (const auto& [op, t] : pex.profile())
      std::fprintf(stderr, "  %-24s %9.2f ms/step  %5ld calls/step\n", op.c_str(), t.ms / iters,
                   static_cast<long>(t.calls / iters));
  }
}

}  // namespace

int main() {
  const char* t = std::getenv("XF_BENCH_THREADS");
  const int threads = t ? std::atoi(t) : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const char* it = std::getenv("XF_BENCH_ITERS");
  const int iters = it ? std::atoi(it) : 10;
  openblas_set_num_threads(threads);
  ThreadPool pool(threads);
  std::printf("{\"bench\": \"info\", \"impl\": \"xfrun\", \"threads\": %d}\n", threads);
  try {
    for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{{1024, 1024, 1024}, {2048, 2048, 2048},
                                                               {2048, 768, 256}, {2048, 256, 1024}})
      bench_sgemm(m, n, k, iters, pool);
    bench_stack(4, 256, 8, 16, 128, iters, pool);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
