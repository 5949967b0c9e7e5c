// GPU benchmarks of whole models, run beside tools/bench_gpu_torch.py in one job (tools/gpu_check.sh):
//   gpt2:    configs/gpt2-124m.yaml training (bf16-mixed, AdamW, the step as a CUDA graph) on random
//            tokens: tokens/s, MFU against the H200's 990 TFLOP/s dense bf16, peak GPU memory. Two recipes:
//            "torch" (gpt2_124M_train, the ratio's figure): the step tools/bench_gpu_torch.py and the anchors
//            (../shared/anchors/torch_baseline.py) time, a plain AdamW step with no gradient clipping and so no
//            gradient norm; "config" (gpt2_124M_train_config): the config's own, clipping at train.grad_clip.
//   encoder: configs/minilm-encoder.yaml inference (bf16, logits of every position, B=256, T=128):
//            sequences/s.
// FLOPs per token for MFU follow the anchors' convention (6N + 12 L C T) so ratios compare like with like.
//   xfrun_bench_gpu [--out FILE.json] [--configs DIR] [--steps N] [--sections gpt2,encoder] [--profile 0|1|graph|both]
// --profile 1: every kernel timed one by one in uncaptured steps; graph: GPT-2's kernels timed inside the captured
// step (event nodes around each), with the time between them as its own row; both: the two, one after the other.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "factory/config.h"
#include "factory/schema.h"
#include "factory/train_step.h"
#include "factory/trainer.h"
#include "runtime/cpu/threadpool.h"
#include "runtime/device_context.h"
#include "runtime/lr_schedule.h"

using namespace xfr;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Tensor random_tokens(int64_t B, int64_t T, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> v(static_cast<size_t>(B * T));
  for (auto& x : v) x = d(rng);
  return Tensor::from_vector(v, {B, T});
}


// Per-op GPU time of `ex`'s last runs (Executor::profile: with a training step's, its optimizer work too), the
// largest first.
void print_profile(const Executor& ex, const char* what, int runs, const char* how = "kernels timed one by one") {
  struct Row {
    double ms;
    std::string name;
    int calls;  // per run
  };
  std::vector<Row> rows;
  double total = 0;
  for (const auto& [name, t] : ex.profile()) {
    rows.push_back({t.ms / runs, name, static_cast<int>(t.calls / runs)});
    total += t.ms / runs;
  }
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.ms > b.ms; });
  std::printf("profile of %s (ms per run, %s; calls per run, us per call): total %.2f\n", what, how, total);
  for (const auto& r : rows)
    std::printf("  %-28s %8.3f  %5.1f%%  %4d x %8.1f us\n", r.name.c_str(), r.ms, 100 * r.ms / total, r.calls,
                1e3 * r.ms / std::max(r.calls, 1));
}

// torch_recipe: the baseline's step (no clipping, no norm); else the config's (train.grad_clip).
// Which profiles to print after a benchmark (--profile).
struct ProfileModes {
  bool eager = false;     // kernels one by one, uncaptured
  bool in_graph = false;  // GPT-2: inside the captured step
};

nlohmann::json bench_gpt2(const std::string& dir, int steps, ProfileModes profile, ThreadPool& pool,
                          bool torch_recipe) {
  const Config cfg = load_config(dir + "/gpt2-124m.yaml");
  const int64_t B = get_int(cfg.root.at("train"), "batch_size"), T = get_int(cfg.root.at("data"), "seq_len");
  const int64_t V = get_int(cfg.root.at("model"), "vocab_size");
  auto ctx = make_device_context(Device::cuda(0));
  Model model = make_model(cfg, V, B, make_null_logger(), DType::bf16);
  TrainStepOptions o;
  o.device_ctx = ctx;
  o.pool = &pool;
  o.optimizer = optimizer_config(cfg);
  o.grad_clip = torch_recipe ? 0.0 : get_number(cfg.root.at("train"), "grad_clip");
  o.grad_norm = !torch_recipe;
  o.compute_dtype = DType::bf16;
  o.cuda_graph = true;
  o.logger = make_stderr_logger("bench");
  TrainStep ts(model.train_graph, model.store, o);
  // Four fixed batches, rotated (the same token ids every step would be a cache-friendly lie).
  std::vector<Tensor> inputs, targets;
  for (int i = 0; i < 4; ++i) {
    inputs.push_back(random_tokens(B, T, V, 100 + i));
    targets.push_back(random_tokens(B, T, V, 200 + i));
  }
  int64_t k = 0;
  auto bind = [&](Executor& ex, int64_t) {
    ex.bind(model.train_graph.tokens, inputs[static_cast<size_t>(k % 4)]);
    ex.bind(model.train_graph.targets, targets[static_cast<size_t>(k % 4)]);
  };
  double first_loss = 0, last_loss = 0;
  for (int i = 0; i < 3; ++i, ++k) {  // warm-up: the eager step, the capture, one replay
    const StepResult r = ts.step(bind, o.optimizer.lr);
    if (i == 0) first_loss = r.loss;
  }
  ctx->synchronize();
  ctx->reset_peak();
  const double t0 = now_s();
  for (int i = 0; i < steps; ++i, ++k) ts.step(bind, o.optimizer.lr, /*read_results=*/false);
  ctx->synchronize();
  const double dt = (now_s() - t0) / steps;
  last_loss = ts.step(bind, o.optimizer.lr).loss;
  const MemoryStats ms = ctx->memory_stats();  // before the profiled model below allocates
  // After the timed run (plans and caches warm): a separate, profiled model.
  auto profiled_run = [&](bool in_graph) {
    TrainStepOptions po = o;
    po.profile = true;
    po.profile_in_graph = in_graph;
    Model pm = make_model(cfg, V, B, make_null_logger(), DType::bf16);
    TrainStep pts(pm.train_graph, pm.store, po);
    const Tensor ti = random_tokens(B, T, V, 1), tt = random_tokens(B, T, V, 2);
    auto pbind = [&](Executor& ex, int64_t) {
      ex.bind(pm.train_graph.tokens, ti);
      ex.bind(pm.train_graph.targets, tt);
    };
    if (!in_graph) {
      for (int i = 0; i < 3; ++i) pts.step(pbind, o.optimizer.lr);
      print_profile(pts.executor(), "gpt2 train step", 3);
      return;
    }
    for (int i = 0; i < 3; ++i) pts.step(pbind, o.optimizer.lr);  // the eager step, the capture, one replay
    pts.executor().reset_profile();
    constexpr int kReplays = 10;
    const double r0 = now_s();
    for (int i = 0; i < kReplays; ++i) pts.step(pbind, o.optimizer.lr, /*read_results=*/false);
    const double per_step = (now_s() - r0) / kReplays;  // (each replay waits for its events to be read)
    char how[160];
    std::snprintf(how, sizeof how, "inside the captured step, event nodes around each kernel; %s; %.2f ms a step",
                  pts.captured() ? "captured" : "NOT captured", per_step * 1e3);
    print_profile(pts.executor(), "gpt2 train step", kReplays, how);
  };
  if (profile.eager) profiled_run(false);
  if (profile.in_graph) profiled_run(true);
  const double nparam = static_cast<double>(model.store->num_params());
  int64_t L = 0, C = 0;
  const ConfigNode& stacks = model.model_config.at("stack_configs");
  for (size_t i = 0; i < stacks.size(); ++i) {
    L += get_int(stacks.at(i), "num_layers");
    C = get_int(stacks.at(i), "dim_model");
  }
  const double flops_per_tok = 6 * nparam + 12.0 * static_cast<double>(L * C * T);
  const double tps = static_cast<double>(B * T) / dt;
  char recipe[64];
  if (torch_recipe)
    std::snprintf(recipe, sizeof recipe, "torch's step, no clip");
  else
    std::snprintf(recipe, sizeof recipe, "config's step, clip %g", o.grad_clip);
  std::printf(
      "xfrun gpt2-124M train B=%lld T=%lld (%s): %.0f tok/s, %.1f ms/step, MFU(990) %.2f%%, peak %.2f GiB, "
      "graph %s, side steps %d, loss %.3f -> %.3f\n",
      static_cast<long long>(B), static_cast<long long>(T), recipe, tps, dt * 1e3, 100 * tps * flops_per_tok / 990e12,
      ms.peak_bytes / 1073741824.0, ts.captured() ? "yes" : "no", ts.executor().side_steps(), first_loss, last_loss);
  std::fflush(stdout);
  return {{"tok_per_s", tps},
          {"step_ms", dt * 1e3},
          {"mfu_vs_990", tps * flops_per_tok / 990e12},
          {"peak_bytes", ms.peak_bytes},
          {"reserved_bytes", ms.reserved_bytes},
          {"params", nparam},
          {"cuda_graph", ts.captured()},
          {"side_steps", ts.executor().side_steps()},
          {"first_loss", first_loss},
          {"last_loss", last_loss},
          {"grad_clip", o.grad_clip},
          {"grad_norm", o.grad_norm}};
}

nlohmann::json bench_encoder(const std::string& dir, ProfileModes profile, ThreadPool& pool) {
  const Config cfg = load_config(dir + "/minilm-encoder.yaml");
  const int64_t B = get_int(cfg.root.at("train"), "batch_size"), T = get_int(cfg.root.at("data"), "seq_len");
  const int64_t V = get_int(cfg.root.at("model"), "vocab_size");
  auto ctx = make_device_context(Device::cuda(0));
  Model model = make_model(cfg, V, B, make_null_logger(), DType::bf16);
  auto store = std::make_shared<ParamStore>(*model.store, ctx.get());
  ExecutorOptions eo;
  eo.device_ctx = ctx;
  eo.pool = &pool;
  eo.cuda_graph = true;
  eo.constant_params = true;  // the bf16 weights are cast once (PyTorch's model is converted to bf16 once)
  Executor ex(*model.eval_graph.graph, {model.eval_graph.logits}, Gradients{}, store, eo);
  ex.bind(model.eval_graph.tokens, random_tokens(B, T, V, 7));
  for (int i = 0; i < 5; ++i) ex.run();
  ctx->synchronize();
  // Median over 7 repeats of 20 forwards each (one synchronisation per repeat).
  std::vector<double> ms;
  for (int r = 0; r < 7; ++r) {
    const double t0 = now_s();
    for (int i = 0; i < 20; ++i) ex.run();
    ctx->synchronize();
    ms.push_back((now_s() - t0) / 20 * 1e3);
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  if (profile.eager) {
    ExecutorOptions po = eo;
    po.profile = true;
    po.cuda_graph = false;
    Executor pex(*model.eval_graph.graph, {model.eval_graph.logits}, Gradients{}, store, po);
    pex.bind(model.eval_graph.tokens, random_tokens(B, T, V, 7));
    for (int i = 0; i < 3; ++i) pex.run();
    print_profile(pex, "encoder forward", 3);
  }
  std::printf("xfrun minilm-shaped encoder fwd B=%lld T=%lld: %.0f seq/s (%.2f ms)\n", static_cast<long long>(B),
              static_cast<long long>(T), B / med * 1e3, med);
  std::fflush(stdout);
  return {{"seq_per_s", B / med * 1e3}, {"ms", med}};
}

}  // namespace

int main(int argc, char** argv) {
  std::string out, dir = "configs", sections = "gpt2,encoder";
  int steps = 20;
  ProfileModes profile;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--out") out = v;
    else if (a == "--configs") dir = v;
    else if (a == "--steps") steps = std::stoi(v);
    else if (a == "--sections") sections = v;
    else if (a == "--profile") {
      if (v != "0" && v != "1" && v != "graph" && v != "both") {
        std::fprintf(stderr, "--profile takes 0, 1, graph or both, not %s\n", v.c_str());
        return 2;
      }
      profile.eager = v == "1" || v == "both";
      profile.in_graph = v == "graph" || v == "both";
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "xfrun_bench_gpu: %s\n", cuda_unavailable_reason().c_str());
    return 1;
  }
  ThreadPool pool(0);
  nlohmann::json res;
  try {
    if (sections.find("gpt2") != std::string::npos) {
      res["gpt2_124M_train"] = bench_gpt2(dir, steps, profile, pool, /*torch_recipe=*/true);
      res["gpt2_124M_train_config"] = bench_gpt2(dir, steps, ProfileModes{}, pool, /*torch_recipe=*/false);
    }
    if (sections.find("encoder") != std::string::npos) res["encoder_infer"] = bench_encoder(dir, profile, pool);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xfrun_bench_gpu: %s\n", e.what());
    if (!out.empty()) std::ofstream(out) << res.dump(1);
    return 1;
  }
  if (!out.empty()) std::ofstream(out) << res.dump(1);
  return 0;
}
