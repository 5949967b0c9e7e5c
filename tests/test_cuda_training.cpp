// End-to-end training on the GPU (XF_TEST_DEVICE=cuda; skipped without a GPU): fp32 steps on the GPU
// track the CPU's losses, the CUDA-graph step equals the eager step, bf16-mixed and fp16-mixed (dynamic
// loss scaling) training lower the loss, dropout trains the same through a graph, and a GPU
// checkpoint resumes to the uninterrupted run's losses; a profiled step times its optimizer work.
#include <cmath>

#include "factory/config.h"
#include "factory/train_step.h"
#include "factory/trainer.h"
#include "runtime/device_context.h"
#include "tests/cuda_testing.h"
#include "tests/temp_dir.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

// A small causal LM on the copy task with widths that are not powers of two (48 = 3 heads of 16).
const std::string kGpuTiny = R"(model:
  task: causal_lm
  weight_init: vit
  stack_configs:
    - block_type: encoder
      num_layers: 2
      dim_model: 48
      residual_norm_style: pre
      position_encoding_config: {name: vocab, seq_len: 24}
      multi_head_config:
        num_heads: 3
        attention: {name: scaled_dot_product, causal: true, dropout: 0.0}
      feedforward_config: {name: MLP, activation: gelu, hidden_layer_multiplier: 4, dropout: 0.0}
data: {kind: copy, seq_len: 24, num_examples: 64, num_symbols: 13, val_fraction: 0.0}
train:
  steps: 20
  batch_size: 6
  optimizer: {name: adamw, lr: 3.0e-3, weight_decay: 0.01}
  schedule: {name: constant}
  grad_clip: 1.0
  eval_every: 0
  log_every: 100
infer: {max_new_tokens: 0}
runtime: {device: cpu, seed: 11, threads: 2}
)";

std::vector<double> losses_of(const std::vector<std::string>& overrides, const std::string& out_dir,
                              const std::string& resume = "", const std::string& text = kGpuTiny) {
  std::vector<std::string> o = overrides;
  o.push_back("runtime.out_dir=" + out_dir);
  const Config c = parse_config(text, "yaml", "gpu_tiny.yaml", o);
  std::vector<double> losses;
  TrainOptions to;
  to.resume = resume;
  to.on_step = [&](int64_t, double l) { losses.push_back(l); };
  train(c, to);
  return losses;
}

}  // namespace

XF_CUDA_TEST_CASE("gpu training: 20 fp32 steps track the CPU's losses") {
  TempDir dir;
  const auto cpu = losses_of({}, dir.path.string() + "/cpu");
  const auto gpu = losses_of({"runtime.device=cuda", "runtime.cuda_graph=false"}, dir.path.string() + "/gpu");
  REQUIRE(cpu.size() == 20);
  REQUIRE(gpu.size() == 20);
  // fp32 on both sides; only summation orders differ (cuBLASLt vs OpenBLAS, tree vs serial reductions):
  // the gap grows over steps through AdamW's normalised updates but stays within 1e-3 relative here.
  for (size_t i = 0; i < cpu.size(); ++i)
    CHECK_MESSAGE(std::abs(gpu[i] - cpu[i]) <= 1e-3 * std::abs(cpu[i]) + 1e-4,
                  "step " << i + 1 << ": gpu " << gpu[i] << " cpu " << cpu[i]);
  CHECK(gpu.back() < gpu.front());
}

XF_CUDA_TEST_CASE("gpu training: the CUDA-graph step gives the eager step's losses bit for bit") {
  TempDir dir;
  const auto eager = losses_of({"runtime.device=cuda", "runtime.cuda_graph=false"}, dir.path.string() + "/eager");
  const auto graph = losses_of({"runtime.device=cuda", "runtime.cuda_graph=true"}, dir.path.string() + "/graph");
  REQUIRE(eager.size() == graph.size());
  for (size_t i = 0; i < eager.size(); ++i) CHECK_MESSAGE(eager[i] == graph[i], "step " << i + 1);
}

XF_CUDA_TEST_CASE("gpu training: dropout through a replayed graph draws new masks each step, as eager does") {
  TempDir dir;
  const std::vector<std::string> drop = {"runtime.device=cuda",
                                         "model.stack_configs[0].multi_head_config.attention.dropout=0.1",
                                         "model.stack_configs[0].feedforward_config.dropout=0.1"};
  auto eager_o = drop, graph_o = drop;
  eager_o.push_back("runtime.cuda_graph=false");
  graph_o.push_back("runtime.cuda_graph=true");
  const auto eager = losses_of(eager_o, dir.path.string() + "/eager");
  const auto graph = losses_of(graph_o, dir.path.string() + "/graph");
  for (size_t i = 0; i < eager.size(); ++i) CHECK_MESSAGE(eager[i] == graph[i], "step " << i + 1);
}

XF_CUDA_TEST_CASE("gpu training: bf16-mixed and fp16-mixed learn as fp32 does") {
  // Character-level text learns fast (the copy task needs many more steps before attention finds the
  // copy): 60 steps take the loss from ~4.3 to ~3.0 in fp32.
  TempDir dir;
  std::string text = kGpuTiny;
  const std::string copy_data = "data: {kind: copy, seq_len: 24, num_examples: 64, num_symbols: 13, val_fraction: 0.0}";
  REQUIRE(text.find(copy_data) != std::string::npos);
  text.replace(text.find(copy_data), copy_data.size(),
               std::string("data: {kind: text, path: ") + XF_SOURCE_DIR_FOR_TESTS +
                   "/configs/data/shakespeare.txt, tokenizer: char, seq_len: 24, val_fraction: 0.0}");
  auto tail_mean = [](const std::vector<double>& l) { return (l[55] + l[56] + l[57] + l[58] + l[59]) / 5; };
  const auto fp32 = losses_of({"runtime.device=cuda", "train.steps=60"}, dir.path.string() + "/fp32", "", text);
  REQUIRE(fp32.size() == 60);
  for (const char* p : {"bf16-mixed", "fp16-mixed"}) {
    const auto l = losses_of({"runtime.device=cuda", std::string("train.precision=") + p, "train.steps=60"},
                             dir.path.string() + "/" + p, "", text);
    REQUIRE(l.size() == 60);
    for (double x : l) REQUIRE(std::isfinite(x));
    const double first = (l[0] + l[1] + l[2]) / 3;
    CHECK_MESSAGE(tail_mean(l) < 0.85 * first, p << ": loss " << first << " -> " << tail_mean(l));
    // Low precision changes the trajectory, not where it goes: within 5% of fp32's after 60 steps.
    CHECK_MESSAGE(std::abs(tail_mean(l) - tail_mean(fp32)) < 0.05 * tail_mean(fp32),
                  p << ": " << tail_mean(l) << " vs fp32 " << tail_mean(fp32));
  }
}

XF_CUDA_TEST_CASE("gpu training: grad_accum on the GPU matches the CPU") {
  TempDir dir;
  const auto cpu = losses_of({"train.grad_accum=3", "train.steps=8"}, dir.path.string() + "/cpu");
  const auto gpu = losses_of({"runtime.device=cuda", "train.grad_accum=3", "train.steps=8"}, dir.path.string() + "/gpu");
  REQUIRE(cpu.size() == gpu.size());
  for (size_t i = 0; i < cpu.size(); ++i)
    CHECK_MESSAGE(std::abs(gpu[i] - cpu[i]) <= 1e-3 * std::abs(cpu[i]) + 1e-4, "step " << i + 1);
}

XF_CUDA_TEST_CASE("gpu training: a checkpoint resumes to the uninterrupted run's losses") {
  TempDir dir;
  const std::vector<std::string> gpu = {"runtime.device=cuda", "train.checkpoint_every=10", "train.keep_checkpoints=0"};
  const auto full = losses_of(gpu, dir.path.string() + "/full");
  // The same run stopped at step 10 (its checkpoint), then resumed.
  auto first_half = gpu;
  first_half.push_back("train.steps=10");
  losses_of(first_half, dir.path.string() + "/half");
  const auto resumed = losses_of(gpu, dir.path.string() + "/half", "auto");
  REQUIRE(resumed.size() == 10);
  for (size_t i = 0; i < 10; ++i) CHECK_MESSAGE(resumed[i] == full[10 + i], "step " << 11 + i);
}

namespace {

// kGpuTiny's model in bf16-mixed, with TrainStep's options for it, and one fixed batch (the copy task's tokens).
struct Bf16Tiny {
  static constexpr int64_t B = 6, T = 24, V = 13;
  Config c = parse_config(kGpuTiny, "yaml", "gpu_tiny.yaml", {"runtime.device=cuda"});
  Model model = make_model(c, V, B, make_null_logger(), DType::bf16);
  Tensor ids;
  TrainStepOptions options(const std::shared_ptr<DeviceContext>& ctx) const {
    TrainStepOptions o;
    o.device_ctx = ctx;
    o.optimizer = optimizer_config(c);
    o.grad_clip = 1.0;
    o.compute_dtype = DType::bf16;
    return o;
  }
  Bf16Tiny() {
    std::vector<int32_t> tokens(static_cast<size_t>(B * T));
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7) % V);
    ids = Tensor::from_vector(tokens, {B, T});
  }
  std::function<void(Executor&, int64_t)> bind() {
    return [this](Executor& ex, int64_t) {
      ex.bind(model.train_graph.tokens, ids);
      ex.bind(model.train_graph.targets, ids);
    };
  }
};

}  // namespace

XF_CUDA_TEST_CASE("gpu training: the optimizer keeps the bf16 parameter copy current; sync_from_host refreshes it") {
  // The forward reads a bf16 copy of the parameters that the optimizer's update rewrites (no conversion per step).
  // After parameters are copied in from the host, the next step must read them: its loss equals that of a new
  // TrainStep's first step on the same parameters.
  const auto ctx = make_device_context(Device::cuda(0));
  Bf16Tiny a;
  TrainStep ts(a.model.train_graph, a.model.store, a.options(ctx));
  for (int i = 0; i < 3; ++i) ts.step(a.bind(), 1e-3f);  // eager, capture, replay
  CHECK(ts.captured());
  // The copy is the device parameters rounded to bf16, every element.
  const int64_t n = static_cast<int64_t>(ts.store().flat_size());
  const Tensor params = Tensor::wrap(ts.store().params(), {n}, DType::f32, ctx->device(), nullptr, ctx.get());
  CHECK(ts.executor().param_mirror().to_host().to(DType::f32).to_doubles() ==
        params.to_host().to(DType::bf16).to(DType::f32).to_doubles());
  ts.sync_to_host();
  float* hp = a.model.store->params();
  for (int64_t i = 0; i < n; ++i) hp[i] *= 0.75f;  // parameters changed outside the optimizer
  ts.sync_from_host();
  const double after_sync = ts.step(a.bind(), 1e-3f).loss;
  Bf16Tiny b;
  b.model.store->copy_params_from(*a.model.store);
  TrainStep fresh(b.model.train_graph, b.model.store, b.options(ctx));
  CHECK(after_sync == fresh.step(b.bind(), 1e-3f).loss);
}

XF_CUDA_TEST_CASE("gpu training: a profiled step times its work outside the graph's ops (norm, clip, update)") {
  Bf16Tiny a;
  TrainStepOptions o = a.options(make_device_context(Device::cuda(0)));
  o.profile = true;
  TrainStep ts(a.model.train_graph, a.model.store, o);
  auto bind = a.bind();
  const int steps = 3;
  for (int i = 0; i < steps; ++i) ts.step(bind, 1e-3f);
  const auto& work = ts.executor().profile();  // the graph's ops and the step's optimizer work
  // One micro-batch a step: the gradients are stored, not zeroed and added to (ExecutorOptions::grads_overwrite); the
  // small ones (every slot of this model, at most Executor::kBatchedGradMaxElems) by one launch a step.
  CHECK(work.count("zero gradients") == 0);
  CHECK(work.count("gradient into its f32 slot") == 0);
  for (const char* name : {"small gradients into their f32 slots", "gradient norm + clip", "optimizer update"}) {
    INFO(name);
    REQUIRE(work.count(name) == 1);
    CHECK(work.at(name).calls == steps);
    CHECK(work.at(name).ms > 0.0);
  }
  CHECK(work.count("loss scale update") == 0);  // bf16: no loss scaling
  CHECK(!ts.captured());                          // profiling runs eagerly
  CHECK(ts.executor().profile().count("cross_entropy") == 1);
}

XF_CUDA_TEST_CASE("gpu training: the in-graph profile times, inside the captured step, what the eager one times") {
  // profile_in_graph: the step is captured with event nodes around each kernel and its optimizer work. After the
  // replays, every row of the eager profile is there with as many calls a step, plus the time between the pairs;
  // and the profiled graph's updates are the plain graph's, bit for bit (event nodes change no kernel).
  const auto ctx = make_device_context(Device::cuda(0));
  Bf16Tiny eager_m, graph_m, plain_m;
  TrainStepOptions eo = eager_m.options(ctx), go = graph_m.options(ctx), plain = plain_m.options(ctx);
  eo.profile = go.profile = true;
  go.profile_in_graph = true;
  TrainStep eager(eager_m.model.train_graph, eager_m.model.store, eo);
  TrainStep graph(graph_m.model.train_graph, graph_m.model.store, go);
  TrainStep reference(plain_m.model.train_graph, plain_m.model.store, plain);
  for (int i = 0; i < 3; ++i) {  // eager, capture, replay
    eager.step(eager_m.bind(), 1e-3f);
    const double l = graph.step(graph_m.bind(), 1e-3f).loss;
    CHECK_MESSAGE(l == reference.step(plain_m.bind(), 1e-3f).loss, "step " << i + 1);
  }
  REQUIRE(graph.captured());
  CHECK(!eager.captured());
  graph.executor().reset_profile();
  CHECK(graph.executor().profile().empty());
  const int replays = 4;
  for (int i = 0; i < replays; ++i) graph.step(graph_m.bind(), 1e-3f, /*read_results=*/false);
  const auto& in_graph = graph.executor().profile();
  const auto& one_by_one = eager.executor().profile();  // 3 steps
  const std::string between = "(between kernels, in the graph)";
  // The parameter mirror's conversion runs in the first, eager step only (the optimizer keeps it current after).
  const std::string first_step_only = "cast (parameter mirror)";
  REQUIRE(one_by_one.count(first_step_only) == 1);
  CHECK(in_graph.count(first_step_only) == 0);
  for (const auto& [name, t] : one_by_one) {
    if (name == first_step_only) continue;
    INFO(name);
    REQUIRE(in_graph.count(name) == 1);
    CHECK(in_graph.at(name).calls * 3 == t.calls * replays);
    CHECK(in_graph.at(name).ms > 0.0);
  }
  REQUIRE(in_graph.count(between) == 1);
  CHECK(in_graph.size() == one_by_one.size());  // less the mirror's cast, plus the gaps
  int64_t pairs = 0;
  for (const auto& [name, t] : in_graph) pairs += name == between ? 0 : t.calls;
  CHECK(in_graph.at(between).calls == pairs - replays);  // one gap fewer than pairs, each replay
  CHECK(in_graph.at(between).ms >= 0.0);
  const int64_t n = static_cast<int64_t>(graph.store().flat_size());
  const auto params = [&](TrainStep& t) {
    return Tensor::wrap(t.store().params(), {n}, DType::f32, ctx->device(), nullptr, ctx.get()).to_host().to_doubles();
  };
  for (int i = 0; i < replays; ++i) reference.step(plain_m.bind(), 1e-3f, /*read_results=*/false);
  CHECK(params(graph) == params(reference));
}

XF_CUDA_TEST_CASE("gpu training: without clipping, grad_norm=false skips the norm and changes nothing else") {
  // The benchmark's like-for-like recipe (torch's plain optimizer step): no clipping and no norm. The updates must be
  // those of a step that computes the norm and does not clip: the same losses and parameters, bit for bit.
  const auto ctx = make_device_context(Device::cuda(0));
  Bf16Tiny with_norm, without_norm;
  TrainStepOptions on = with_norm.options(ctx), off = without_norm.options(ctx);
  on.grad_clip = off.grad_clip = 0.0;
  off.grad_norm = false;
  TrainStep a(with_norm.model.train_graph, with_norm.model.store, on);
  TrainStep b(without_norm.model.train_graph, without_norm.model.store, off);
  for (int i = 0; i < 4; ++i) {  // eager, capture, two replays
    const StepResult ra = a.step(with_norm.bind(), 1e-3f), rb = b.step(without_norm.bind(), 1e-3f);
    CHECK_MESSAGE(ra.loss == rb.loss, "step " << i + 1);
    CHECK(std::isfinite(ra.grad_norm));
    CHECK(ra.grad_norm > 0.0f);
    CHECK(std::isnan(rb.grad_norm));  // not computed, so not reported as 0
  }
  CHECK(b.captured());
  const int64_t n = static_cast<int64_t>(a.store().flat_size());
  const auto params = [&](TrainStep& t) {
    return Tensor::wrap(t.store().params(), {n}, DType::f32, ctx->device(), nullptr, ctx.get()).to_host().to_doubles();
  };
  CHECK(params(a) == params(b));
  // A profiled step without the norm has no norm work.
  Bf16Tiny p;
  TrainStepOptions po = p.options(ctx);
  po.grad_clip = 0.0;
  po.grad_norm = false;
  po.profile = true;
  TrainStep pt(p.model.train_graph, p.model.store, po);
  pt.step(p.bind(), 1e-3f);
  CHECK(pt.executor().profile().count("gradient norm") == 0);
  CHECK(pt.executor().profile().count("gradient norm + clip") == 0);
  CHECK(pt.executor().profile().count("optimizer update") == 1);
}
