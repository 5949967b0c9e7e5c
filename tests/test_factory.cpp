// The config factory (factory/*): config errors (one per class, with message, config path and
// file:line:col), every registered component building and training, the xFormers parameter layout and
// weight-init statistics (docs/xformers_reference.md 1.3-1.5), the uninitialised-weight check, causal
// leakage of whole models, and training end to end (the embedded default learns, exact resume,
// checkpoint round trip, seeded generation, metrics.jsonl).
#include <doctest/doctest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "factory/config.h"
#include "factory/model_builder.h"
#include "factory/registry.h"
#include "factory/schema.h"
#include "factory/train_step.h"
#include "factory/trainer.h"
#include "factory/weight_init.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/norm.h"
#include "runtime/checkpoint.h"
#include "runtime/cpu/threadpool.h"
#include "runtime/error.h"
#include "runtime/executor.h"
#include "runtime/optimizer.h"
#include "runtime/param_store.h"
#include "temp_dir.h"
#include "testing.h"

using namespace xfr;
using xfr::testing::contains;
namespace fs = std::filesystem;

namespace {

using xfr::testing::ScopedEnv;
using xfr::testing::TempDir;


template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A tiny causal LM on the synthetic copy task. Line numbers matter to the location tests:
//   6: num_layers (col 7)   11: num_heads (col 9)   12: attention   14: data
const std::string kTiny = R"(model:
  task: causal_lm
  weight_init: vit
  stack_configs:
    - block_type: encoder
      num_layers: 2
      dim_model: 16
      residual_norm_style: pre
      position_encoding_config: {name: vocab, seq_len: 16}
      multi_head_config:
        num_heads: 2
        attention: {name: scaled_dot_product, causal: true}
      feedforward_config: {name: MLP, activation: gelu, hidden_layer_multiplier: 2}
data: {kind: copy, seq_len: 16, num_examples: 8, val_fraction: 0.0}
train:
  steps: 12
  batch_size: 8
  optimizer: {name: adamw, lr: 1.0e-2, weight_decay: 0.0}
  schedule: {name: constant}
  eval_every: 0
  eval_steps: 2
  log_every: 100
infer: {max_new_tokens: 0}
runtime: {device: cpu, seed: 7, threads: 1}
)";

// `text` with `from` replaced by `to` (which must be present).
std::string with(const std::string& text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  REQUIRE_MESSAGE(at != std::string::npos, "'" << from << "' is not in the config");
  std::string s = text;
  s.replace(at, from.size(), to);
  return s;
}

Config tiny(const std::vector<std::string>& overrides = {}, const std::string& text = kTiny) {
  return parse_config(text, "yaml", "tiny.yaml", overrides);
}

// The config error message (what xfr::Error says) of loading `text` with `overrides`.
std::string config_error(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    tiny(overrides, text);
  } catch (const Error& e) {
    CHECK(e.op() == "config");
    return e.what();
  }
  return "";
}

struct Stats {
  double mean = 0, std = 0, absmax = 0;
  size_t n = 0;
};
Stats stats_of(const Tensor& t) {
  const auto v = t.to_doubles();
  Stats s;
  s.n = v.size();
  for (double x : v) s.mean += x;
  s.mean /= static_cast<double>(v.size());
  for (double x : v) {
    s.std += (x - s.mean) * (x - s.mean);
    s.absmax = std::max(s.absmax, std::abs(x));
  }
  s.std = std::sqrt(s.std / static_cast<double>(v.size()));
  return s;
}

// Runs a training of `config` with no logging; returns the per-step losses.
TrainResult run_training(const Config& config, const std::string& resume = "",
                         std::vector<double>* step_losses = nullptr) {
  TrainOptions o;
  o.resume = resume;
  if (step_losses)
    o.on_step = [step_losses](int64_t, double loss) { step_losses->push_back(loss); };
  return train(config, o);
}

double mean_of(const std::vector<double>& v, size_t from, size_t to) {
  double s = 0;
  for (size_t i = from; i < to; ++i) s += v[i];
  return s / static_cast<double>(to - from);
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

// A fixed (B, T) batch of token ids 1, 6, 11, ... mod V, for two train steps compared on the same data.
Tensor cycling_tokens(int64_t B, int64_t T, int64_t V) {
  std::vector<int32_t> ids(static_cast<size_t>(B * T));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 5 + 1) % V);
  return Tensor::from_vector(ids, {B, T});
}

// Binds `tokens` as m's training inputs and targets (the copy task), for TrainStep::step.
std::function<void(Executor&, int64_t)> bind_copy_task(Model& m, const Tensor& tokens) {
  return [&m, tokens](Executor& ex, int64_t) {
    ex.bind(m.train_graph.tokens, tokens);
    ex.bind(m.train_graph.targets, tokens);
  };
}

}  // namespace

// ======================================================================================================
// 1. Config errors
// ======================================================================================================

TEST_CASE("factory config: the tiny fixture and the embedded default validate") {
  const Config c = tiny();
  CHECK(get_int(c.root.at("model").at("stack_configs").at(0), "num_layers") == 2);
  // Defaults are filled in, nested ones too.
  CHECK(get_string(c.root.at("model"), "check_init") == "error");
  CHECK(get_number(c.root.at("model").at("stack_configs").at(0).at("multi_head_config").at("attention"), "dropout") == 0.0);
  CHECK(get_bool(c.root.at("model").at("stack_configs").at(0).at("feedforward_config"), "bias"));
  CHECK_NOTHROW(load_default_config());
  CHECK_NOTHROW(load_default_config({"train.steps=60"}));
}

TEST_CASE("factory config: unknown key, with did-you-mean, config path and file:line:col") {
  TempDir dir;
  const std::string path = dir.write("bad.yaml", with(kTiny, "      num_layers: 2\n", "      num_layer: 2\n"));
  const std::string msg = error_of([&] { load_config(path); });
  INFO(msg);
  CHECK(contains(msg, path + ":6:7: model.stack_configs[0].num_layer: unknown key 'num_layer'"));
  CHECK(contains(msg, "did you mean 'num_layers'?"));
  // Also at the top level and inside components.
  const std::string m2 = config_error(with(kTiny, "train:\n", "trian: {}\ntrain:\n"));
  INFO(m2);
  CHECK(contains(m2, "tiny.yaml:15:1: trian: unknown key 'trian'; did you mean 'train'?"));
  const std::string m3 = config_error(kTiny, {"model.stack_configs.0.multi_head_config.attention.casual=true"});
  CHECK(contains(m3, "model.stack_configs[0].multi_head_config.attention.casual: unknown key 'casual'; did you mean 'causal'?"));
  CHECK(contains(m3, "--set"));
  // Swapped letters are one edit: short keys get a suggestion too.
  CHECK(contains(config_error(kTiny, {"train.setps=3"}), "train.setps: unknown key 'setps'; did you mean 'steps'?"));
}

TEST_CASE("factory config: wrong type") {
  TempDir dir;
  const std::string path = dir.write("bad.yaml", with(kTiny, "      num_layers: 2\n", "      num_layers: two\n"));
  const std::string msg = error_of([&] { load_config(path); });
  INFO(msg);
  CHECK(contains(msg, path + ":6:19: model.stack_configs[0].num_layers: expected an integer, got 'two'"));
  CHECK(contains(config_error(kTiny, {"model.stack_configs.0.multi_head_config.bias=maybe"}),
                 "model.stack_configs[0].multi_head_config.bias: expected true or false, got 'maybe'"));
  CHECK(contains(config_error(kTiny, {"train.optimizer={lr: 1}", "train.optimizer.lr=[1]"}),
                 "train.optimizer.lr: expected a number, got list"));
  CHECK(contains(config_error(kTiny, {"model.stack_configs.0.multi_head_config=3"}),
                 "model.stack_configs[0].multi_head_config: expected a map, got '3'"));
  // A quoted number is a string, not an integer.
  CHECK(contains(config_error(kTiny, {"train.steps=\"12\""}), "train.steps: expected an integer, got '12'"));
}

TEST_CASE("factory config: out of range") {
  TempDir dir;
  const std::string path = dir.write(
      "bad.yaml", with(kTiny, "{name: scaled_dot_product, causal: true}", "{name: scaled_dot_product, dropout: 1.5}"));
  const std::string msg = error_of([&] { load_config(path); });
  INFO(msg);
  CHECK(contains(msg, path + ":12:"));
  CHECK(contains(msg, "model.stack_configs[0].multi_head_config.attention.dropout: 1.5 is outside [0, 1)"));
  CHECK(contains(config_error(kTiny, {"model.stack_configs.0.num_layers=0"}),
                 "model.stack_configs[0].num_layers: 0 is outside [1, inf)"));
  CHECK(contains(config_error(kTiny, {"infer.top_p=0"}), "infer.top_p: 0 is outside (0, 1]"));
  // choices
  const std::string m = config_error(kTiny, {"model.stack_configs.0.residual_norm_style=pree"});
  CHECK(contains(m, "model.stack_configs[0].residual_norm_style: 'pree' is not one of: pre, post, deepnorm; did you mean 'pre'?"));
}

TEST_CASE("factory config: unknown component name lists the known ones") {
  TempDir dir;
  const std::string path = dir.write("bad.yaml", with(kTiny, "{name: scaled_dot_product, causal: true}",
                                                      "{name: scaled_dot_prodcut, causal: true}"));
  const std::string msg = error_of([&] { load_config(path); });
  INFO(msg);
  std::string known;
  for (const auto& n : Registry::builtin().names("attention")) known += (known.empty() ? "" : ", ") + n;
  CHECK(contains(msg, path + ":12:27: model.stack_configs[0].multi_head_config.attention.name: unknown attention "
                             "'scaled_dot_prodcut' (known: " + known + "); did you mean 'scaled_dot_product'?"));
  const std::string m2 = config_error(kTiny, {"model.stack_configs.0.feedforward_config.name=MPL"});
  CHECK(contains(m2, "model.stack_configs[0].feedforward_config.name: unknown feedforward 'MPL' (known: MLP"));
  const std::string m3 = config_error(kTiny, {"model.stack_configs.0.position_encoding_config.name=sinus"});
  CHECK(contains(m3, "unknown position_encoding 'sinus' (known: vocab, sine, learnable)"));
  const std::string m4 = config_error(kTiny, {"model.weight_init=jax"});
  CHECK(contains(m4, "model.weight_init: 'jax' is not one of: vit, timm, moco, small"));
  const std::string m5 = config_error(kTiny, {"model.stack_configs.0.multi_head_config.attention={causal: true}"});
  CHECK(contains(m5, "model.stack_configs[0].multi_head_config.attention: a attention needs a 'name'"));
}

TEST_CASE("factory config: missing required key") {
  TempDir dir;
  const std::string path = dir.write("bad.yaml", with(kTiny, "      dim_model: 16\n", ""));
  const std::string msg = error_of([&] { load_config(path); });
  INFO(msg);
  CHECK(contains(msg, path + ":5:7: model.stack_configs[0].dim_model: required"));
  CHECK(contains(config_error(with(kTiny, "        num_heads: 2\n", "")),
                 "model.stack_configs[0].multi_head_config.num_heads: required"));
  CHECK(contains(config_error(with(kTiny, "        attention: {name: scaled_dot_product, causal: true}\n", "")),
                 "model.stack_configs[0].multi_head_config.attention: required"));
  CHECK(contains(config_error(with(kTiny, "      feedforward_config: {name: MLP, activation: gelu, hidden_layer_multiplier: 2}\n", "")),
                 "model.stack_configs[0].feedforward_config: required"));
  CHECK(contains(config_error(kTiny, {"model.stack_configs.0.feedforward_config={activation: relu}"}),
                 "model.stack_configs[0].feedforward_config: a feedforward needs a 'name'"));
}

TEST_CASE("factory config: layer_norm_style is an alias of residual_norm_style") {
  const Config c = tiny({}, with(kTiny, "      residual_norm_style: pre\n", "      layer_norm_style: post\n"));
  const ConfigNode& st = c.root.at("model").at("stack_configs").at(0);
  CHECK(get_string(st, "residual_norm_style") == "post");
  CHECK(st.find("layer_norm_style") == nullptr);
  // Both set: refused, naming the alias.
  TempDir dir;
  const std::string path =
      dir.write("bad.yaml", with(kTiny, "      residual_norm_style: pre\n", "      residual_norm_style: pre\n      layer_norm_style: post\n"));
  const std::string msg = error_of([&] { load_config(path); });
  INFO(msg);
  CHECK(contains(msg, path + ":9:7: model.stack_configs[0].layer_norm_style: 'layer_norm_style' is an alias of "
                             "'residual_norm_style', which is also set"));
  // The alias's value is validated like the field's.
  CHECK(contains(config_error(with(kTiny, "residual_norm_style: pre", "layer_norm_style: side")),
                 "tiny.yaml:8:25: model.stack_configs[0].residual_norm_style: 'side' is not one of"));
}

TEST_CASE("factory config: refused features name the feature") {
  struct Case {
    std::string set, path, feature;
  };
  const std::vector<Case> cases = {
      {"model.stack_configs.0.reversible=true", "model.stack_configs[0].reversible", "reversible layers"},
      {"model.stack_configs.0.block_type=decoder", "model.stack_configs[0].block_type", "decoder blocks"},
      {"model.stack_configs.0.simplicial_embeddings={L: 4, temperature: 0.5}", "model.stack_configs[0].simplicial_embeddings",
       "simplicial embeddings"},
      {"model.stack_configs.0.position_encoding_config={name: learnable, add_class_token: true}",
       "model.stack_configs[0].position_encoding_config.add_class_token", "class tokens"},
      {"model.stack_configs.0.patch_embedding_config={in_channels: 3, out_channels: 16, kernel_size: 4, stride: 4}",
       "model.stack_configs[0].patch_embedding_config", "patch embeddings"},
  };
  for (const auto& c : cases) {
    const std::string msg = config_error(kTiny, {c.set});
    INFO(c.set << "\n" << msg);
    CHECK(contains(msg, c.path + ": '"));
    CHECK(contains(msg, "is not supported in this build"));
    CHECK(contains(msg, c.feature));
  }
  // Their defaults, written explicitly (as xFormers configs do), are accepted.
  CHECK_NOTHROW(tiny({"model.stack_configs.0.reversible=false", "model.stack_configs.0.block_type=encoder",
                      "model.stack_configs.0.simplicial_embeddings=null", "model.stack_configs.0.patch_embedding_config=",
                      "model.stack_configs.0.position_encoding_config={name: learnable, add_class_token: false}"}));
  // With file:line:col in a file.
  TempDir dir;
  const std::string path = dir.write("bad.yaml", with(kTiny, "    - block_type: encoder\n", "    - block_type: encoder\n      reversible: true\n"));
  const std::string msg = error_of([&] { load_config(path); });
  CHECK(contains(msg, path + ":6:19: model.stack_configs[0].reversible: 'reversible: true' is not supported"));
}

TEST_CASE("factory config: cross-field checks") {
  // num_heads must divide dim_model.
  {
    TempDir dir;
    const std::string path = dir.write("bad.yaml", with(kTiny, "        num_heads: 2\n", "        num_heads: 3\n"));
    const std::string msg = error_of([&] { load_config(path); });
    INFO(msg);
    CHECK(contains(msg, path + ":11:20: model.stack_configs[0].multi_head_config.num_heads:"));
    CHECK(contains(msg, "must be divisible by num_heads 3"));
  }
  // The positional embedding's seq_len must cover data.seq_len.
  {
    const std::string msg = config_error(kTiny, {"data.seq_len=32"});
    CHECK(contains(msg, "model.stack_configs[0].position_encoding_config.seq_len: seq_len 16 is shorter than data.seq_len 32"));
    const std::string m2 = config_error(kTiny, {"model.stack_configs.0.multi_head_config.attention.seq_len=8"});
    CHECK(contains(m2, "model.stack_configs[0].multi_head_config.attention.seq_len: seq_len 8 is shorter than data.seq_len 16"));
  }
  // Vocab sizes: the model's and the vocab embedding's must agree; the model's must cover the data's.
  {
    const std::string msg = config_error(kTiny, {"model.vocab_size=20", "model.stack_configs.0.position_encoding_config.vocab_size=30"});
    CHECK(contains(msg, "model.vocab_size: 20 differs from the vocab embedding's vocab_size 30"));
    const Config c = tiny({"model.vocab_size=10"});  // the copy task has 18 ids: known only once the data loads
    const std::string m2 = error_of([&] { load_data(c); });
    CHECK(contains(m2, "[config] model.vocab_size 10 does not cover the data's 18 token ids"));
  }
  // A cosine (or linear) schedule needs warmup_steps < steps.
  {
    const std::string msg = config_error(kTiny, {"train.schedule={name: cosine, warmup_steps: 12}"});
    CHECK(contains(msg, "train.schedule.warmup_steps: warmup_steps 12 must be below train.steps 12 for a cosine schedule"));
    CHECK_NOTHROW(tiny({"train.schedule={name: cosine, warmup_steps: 11}"}));
  }
  // Other cross checks.
  CHECK(contains(config_error(kTiny, {"model.stack_configs.0.feedforward_config.dim_model=32"}),
                 "model.stack_configs[0].feedforward_config.dim_model: 32 differs from the block's dim_model 16"));
  CHECK(contains(config_error(kTiny, {"model.task=classification"}), "model.num_classes: classification needs num_classes"));
  CHECK(contains(config_error(kTiny, {"train.optimizer.betas=[0.9, 1.0]"}), "train.optimizer.betas: expected [beta1, beta2]"));
  CHECK(contains(config_error(kTiny, {"runtime.device=tpu"}), "runtime.device: 'tpu' is not auto, cpu, cuda or cuda:N"));
  CHECK(contains(config_error(kTiny, {"data.kind=text"}), "data.path: data.kind text needs a path"));
}

TEST_CASE("factory config: every error of a file is reported at once") {
  TempDir dir;
  std::string text = with(kTiny, "      num_layers: 2\n", "      num_layer: 2\n");
  text = with(text, "  steps: 12\n", "  steps: -1\n");
  text = with(text, "{name: scaled_dot_product, causal: true}", "{name: nope, causal: true}");
  text = with(text, "runtime: {device: cpu", "runtime: {devise: cpu");
  const std::string path = dir.write("bad.yaml", text);
  const std::string msg = error_of([&] { load_config(path); });
  INFO(msg);
  CHECK(contains(msg, "4 errors:"));
  CHECK(contains(msg, path + ":6:7: model.stack_configs[0].num_layer: unknown key"));
  CHECK(contains(msg, "model.stack_configs[0].multi_head_config.attention.name: unknown attention 'nope'"));
  CHECK(contains(msg, "train.steps: -1 is outside [1, inf)"));
  CHECK(contains(msg, "runtime.devise: unknown key 'devise'; did you mean 'device'?"));
  // One line per error.
  CHECK(std::count(msg.begin(), msg.end(), '\n') == 4);
}

TEST_CASE("factory config: hostile files are refused cleanly") {
  TempDir dir;
  // Nesting deeper than 64 levels.
  std::string deep = "model: ";
  for (int i = 0; i < 100; ++i) deep += "[";
  for (int i = 0; i < 100; ++i) deep += "]";
  const std::string m1 = error_of([&] { load_config(dir.write("deep.yaml", deep + "\n")); });
  CHECK(contains(m1, "nesting deeper than 64 levels"));
  std::string deep_json = "{\"model\": ";
  for (int i = 0; i < 100; ++i) deep_json += "{\"a\": ";
  deep_json += "1";
  for (int i = 0; i < 101; ++i) deep_json += "}";
  CHECK(contains(error_of([&] { load_config(dir.write("deep.json", deep_json)); }), "nesting deeper than 64 levels"));
  // A billion-laughs alias bomb: 10^9 nodes if expanded; stops at the node budget.
  std::string bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
  const char* names = "abcdefghij";
  for (int i = 1; i < 10; ++i) {
    bomb += std::string(1, names[i]) + ": &" + names[i] + " [";
    for (int j = 0; j < 10; ++j) bomb += std::string(j ? ", *" : "*") + names[i - 1];
    bomb += "]\n";
  }
  const std::string m2 = error_of([&] { load_config(dir.write("bomb.yaml", bomb)); });
  INFO(m2);
  CHECK(contains(m2, "nodes (aliases count each time they are used)"));
  // Over the size cap.
  const std::string big = "# " + std::string(std::size_t(2) << 20, 'x') + "\n";
  CHECK(contains(error_of([&] { load_config(dir.write("big.yaml", big)); }), "the limit is"));
  // Not a config.
  CHECK(contains(error_of([&] { load_config(dir.write("c.toml", "a = 1")); }), "extension"));
  CHECK(contains(error_of([&] { load_config(dir.write("s.yaml", "model: {a: [1, 2\n")); }), "s.yaml:"));
}

// ======================================================================================================
// 3. Factory: registry names, layout, init
// ======================================================================================================

TEST_CASE("factory registry: every registered name builds a tiny model whose loss falls") {
  const Registry& reg = Registry::builtin();
  const std::vector<std::string> families = {"attention", "feedforward", "position_encoding", "residual_norm_style",
                                             "normalization", "activation", "weight_init"};
  // No family is left untested.
  for (const auto& f : reg.families())
    CHECK_MESSAGE(std::find(families.begin(), families.end(), f) != families.end(), "family " << f << " is not covered");
  // Two copy-task examples (32 tokens): a model that trains memorises them within a few steps (the loss
  // falls by about 1 nat in 15 steps for every name), one that does not stays near ln(18) = 2.89.
  TempDir dir;
  int runs = 0;
  for (const auto& family : families) {
    const auto names = reg.names(family);
    CHECK_MESSAGE(!names.empty(), family);
    for (const auto& name : names) {
      std::string set;
      if (family == "attention") set = "model.stack_configs.0.multi_head_config.attention.name=" + name;
      if (family == "feedforward") set = "model.stack_configs.0.feedforward_config.name=" + name;
      if (family == "position_encoding") set = "model.stack_configs.0.position_encoding_config={name: " + name + ", seq_len: 16}";
      if (family == "residual_norm_style") set = "model.stack_configs.0.residual_norm_style=" + name;
      if (family == "normalization") set = "model.stack_configs.0.normalization=" + name;
      if (family == "activation") set = "model.stack_configs.0.feedforward_config.activation=" + name;
      if (family == "weight_init") set = "model.weight_init=" + name;
      INFO(family << " " << name);
      std::vector<double> losses;
      const Config c = tiny({set, "runtime.out_dir=" + dir.sub(family + "_" + name), "train.steps=15", "data.num_examples=2"});
      REQUIRE_NOTHROW(run_training(c, "", &losses));
      REQUIRE(losses.size() == 15);
      for (double l : losses) CHECK(std::isfinite(l));
      const double first = mean_of(losses, 0, 3), last = mean_of(losses, 12, 15);
      CHECK_MESSAGE(last < first - 0.3, family << " " << name << ": loss " << first << " -> " << last);
      ++runs;
    }
  }
  CHECK(runs >= 3 + 3 + 3 + 9 + 4);
  // Rotary embeddings (a flag, not a registry name) train too.
  std::vector<double> losses;
  run_training(tiny({"model.stack_configs.0.multi_head_config.use_rotary_embeddings=true", "train.steps=15",
                     "data.num_examples=2", "runtime.out_dir=" + dir.sub("rotary")}),
               "", &losses);
  REQUIRE(losses.size() == 15);
  CHECK(mean_of(losses, 12, 15) < mean_of(losses, 0, 3) - 0.3);
}

TEST_CASE("factory layout: pre-norm 2-layer model with a vocab embedding has xFormers' parameters") {
  const int64_t D = 16, F = 32, V = 18, S = 16;
  const Config c = tiny();
  const Model m = make_model(c, V, 2, make_null_logger());
  const Graph& g = *m.train_graph.graph;
  // The module path + attribute of each parameter (what the init rules see) is xFormers' name.
  std::map<std::string, Shape> xf;  // xFormers name (minus "encoders.") -> shape
  std::vector<std::string> outside;
  for (int v = 0; v < g.num_values(); ++v) {
    const ValueInfo& info = g.value(v);
    if (info.kind != ValueKind::param) continue;
    const std::string full = info.init.module + "." + info.init.attr;
    if (std::isdigit(static_cast<unsigned char>(full[0]))) xf[full] = info.meta.shape;
    else outside.push_back(full);
  }
  std::map<std::string, Shape> expected;
  expected["0.pose_encoding.position_embeddings.weight"] = {S, D};
  expected["0.pose_encoding.word_embeddings.weight"] = {V, D};
  auto attention = [&](const std::string& p) {
    for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
      expected[p + ".in_proj_container." + proj + ".weight"] = {D, D};
      expected[p + ".in_proj_container." + proj + ".bias"] = {D};
    }
    expected[p + ".proj.weight"] = {D, D};
    expected[p + ".proj.bias"] = {D};
  };
  auto norm = [&](const std::string& p) {
    expected[p + ".weight"] = {D};
    expected[p + ".bias"] = {D};
  };
  auto mlp = [&](const std::string& p) {
    expected[p + ".mlp.0.weight"] = {F, D};
    expected[p + ".mlp.0.bias"] = {F};
    expected[p + ".mlp.3.weight"] = {D, F};
    expected[p + ".mlp.3.bias"] = {D};
  };
  // Block 0: Residual(PreNorm(...)) wrappers.
  norm("0.wrap_att.layer.norm");
  attention("0.wrap_att.layer.sublayer");
  norm("0.wrap_ff.layer.norm");
  mlp("0.wrap_ff.layer.sublayer");
  // Block 1, the last: its wrap_ff is a PostNorm around the Residual (the final LayerNorm, which the fixed
  // quirk always adds to a pre-norm model; xFormers' names for a block that has it).
  norm("1.wrap_att.layer.norm");
  attention("1.wrap_att.layer.sublayer");
  norm("1.wrap_ff.norm");
  norm("1.wrap_ff.sublayer.layer.norm");
  mlp("1.wrap_ff.sublayer.layer.sublayer");
  CHECK(xf.size() == expected.size());
  for (const auto& [name, shape] : expected) {
    INFO(name);
    REQUIRE(xf.count(name) == 1);
    CHECK(xf.at(name) == shape);
  }
  CHECK(outside == std::vector<std::string>{"lm_head.weight"});
  // Counts: per block 4 D^2 + 4 D (attention) + 2 D F + F + D (MLP) + 4 D (two LayerNorms).
  const size_t per_block = 4 * D * D + 4 * D + 2 * D * F + F + D + 4 * D;
  const size_t total = S * D + V * D + 2 * per_block + 2 * D /*final norm*/ + V * D /*lm_head*/;
  CHECK(m.store->num_params() == total);
  // Tied embeddings drop the head.
  const Model tied = make_model(tiny({"model.tie_embedding_weights=true"}), V, 2, make_null_logger());
  CHECK(tied.store->num_params() == total - V * D);
  CHECK_FALSE(tied.store->has("lm_head.weight"));
  // normalization: skip has no norm parameters (and so no final norm).
  const Model skip = make_model(tiny({"model.stack_configs.0.normalization=skip"}), V, 2, make_null_logger());
  CHECK(skip.store->num_params() == total - 2 * 4 * D - 2 * D);
  // Every parameter got a rule, and the report names it.
  CHECK(m.init.uninitialised.empty());
  for (const auto& r : m.init.rules) CHECK(!r.empty());
}

TEST_CASE("factory layout: post-norm and sine/learnable positions use xFormers' module paths") {
  const Model m = make_model(tiny({"model.stack_configs.0.residual_norm_style=post",
                                   "model.stack_configs.0.position_encoding_config={name: learnable, seq_len: 16}"}),
                             18, 2, make_null_logger());
  const Graph& g = *m.train_graph.graph;
  std::set<std::string> names;
  for (int v = 0; v < g.num_values(); ++v)
    if (g.value(v).kind == ValueKind::param) names.insert(g.value(v).init.module + "." + g.value(v).init.attr);
  for (const char* n : {"0.wrap_att.norm.weight", "0.wrap_att.sublayer.layer.in_proj_container.q_proj.weight",
                        "0.wrap_att.sublayer.layer.proj.bias", "0.wrap_ff.norm.bias", "0.wrap_ff.sublayer.layer.mlp.0.weight",
                        "1.wrap_ff.sublayer.layer.mlp.3.bias", "0.pose_encoding.pos_emb", "token_embedding.weight",
                        "lm_head.weight"})
    CHECK_MESSAGE(names.count(n) == 1, n);
  // Post-norm has no extra final norm: 2 norms per block.
  size_t norms = 0;
  for (const auto& n : names) norms += contains(n, "norm.weight");
  CHECK(norms == 4);
}

namespace {

// Parameters of a D = 64 model (F = 256, V = 512, S = 64) under `scheme`, by xFormers name.
struct InitFixture {
  Model model;
  std::map<std::string, Tensor> by_name;
  const Tensor& operator[](const std::string& n) const {
    const auto it = by_name.find(n);
    REQUIRE_MESSAGE(it != by_name.end(), n);
    return it->second;
  }
};
InitFixture init_fixture(const std::string& scheme, const std::string& style = "pre") {
  const Config c = tiny({"model.weight_init=" + scheme, "model.stack_configs.0.dim_model=64",
                         "model.stack_configs.0.multi_head_config.num_heads=4",
                         "model.stack_configs.0.feedforward_config.hidden_layer_multiplier=4",
                         "model.stack_configs.0.residual_norm_style=" + style,
                         "model.stack_configs.0.position_encoding_config={name: vocab, seq_len: 64}", "data.seq_len=64"});
  InitFixture f{make_model(c, 512, 1, make_null_logger()), {}};
  const Graph& g = *f.model.train_graph.graph;
  for (int v = 0; v < g.num_values(); ++v) {
    const ValueInfo& info = g.value(v);
    if (info.kind == ValueKind::param) f.by_name[info.init.module + "." + info.init.attr] = f.model.store->param(info.name);
  }
  return f;
}

void check_uniform(const Tensor& t, double bound, const std::string& what) {
  const Stats s = stats_of(t);
  INFO(what << ": mean " << s.mean << " std " << s.std << " absmax " << s.absmax << " bound " << bound);
  CHECK(s.absmax <= bound);
  CHECK(s.absmax > 0.97 * bound);
  CHECK(std::abs(s.std - bound / std::sqrt(3.0)) < 0.05 * bound / std::sqrt(3.0));
  CHECK(std::abs(s.mean) < 4 * bound / std::sqrt(3.0 * static_cast<double>(s.n)));
}
void check_normal(const Tensor& t, double std, const std::string& what, double rel = 0.06) {
  const Stats s = stats_of(t);
  INFO(what << ": mean " << s.mean << " std " << s.std << " expected " << std);
  CHECK(std::abs(s.std - std) < rel * std);
  CHECK(std::abs(s.mean) < 5 * std / std::sqrt(static_cast<double>(s.n)));
  // A normal, not a uniform of the same std (whose max is 1.73 std); for large samples only.
  if (s.n >= 1000) CHECK(s.absmax > 2.5 * std);
}
void check_constant(const Tensor& t, double v, const std::string& what) {
  const auto d = t.to_doubles();
  const bool all = std::all_of(d.begin(), d.end(), [&](double x) { return x == v; });
  CHECK_MESSAGE(all, what << " is not all " << v);
}
void check_norms(const InitFixture& f) {
  for (const auto& [name, t] : f.by_name) {
    if (!contains(name, "norm.")) continue;
    check_constant(t, contains(name, ".weight") ? 1.0 : 0.0, name);
  }
}

const std::string kQ = "0.wrap_att.layer.sublayer.in_proj_container.q_proj";
const std::string kProj = "1.wrap_att.layer.sublayer.proj";
const std::string kMlp0 = "0.wrap_ff.layer.sublayer.mlp.0";
const std::string kMlp3 = "1.wrap_ff.sublayer.layer.sublayer.mlp.3";
const std::string kPos = "0.pose_encoding.position_embeddings.weight";
const std::string kWord = "0.pose_encoding.word_embeddings.weight";

}  // namespace

TEST_CASE("factory init: vit (xavier-uniform linears, ffn biases N(0, 1e-6))") {
  const InitFixture f = init_fixture("vit");
  const double D = 64, F = 256;
  for (const std::string p : {kQ, std::string("1.wrap_att.layer.sublayer.in_proj_container.k_proj"),
                              std::string("0.wrap_att.layer.sublayer.in_proj_container.v_proj"), kProj}) {
    check_uniform(f[p + ".weight"], std::sqrt(6.0 / (2 * D)), p);
    check_constant(f[p + ".bias"], 0.0, p + ".bias");
  }
  check_uniform(f[kMlp0 + ".weight"], std::sqrt(6.0 / (D + F)), kMlp0);
  check_uniform(f[kMlp3 + ".weight"], std::sqrt(6.0 / (D + F)), kMlp3);
  check_normal(f[kMlp0 + ".bias"], 1e-6, kMlp0 + ".bias", 0.15);
  check_normal(f[kMlp3 + ".bias"], 1e-6, kMlp3 + ".bias", 0.25);
  check_normal(f[kPos], 0.02, kPos);
  check_normal(f[kWord], 0.02, kWord);
  check_normal(f["lm_head.weight"], 0.02, "lm_head");
  check_norms(f);
}

TEST_CASE("factory init: timm (truncated normal std 0.02 at +-sqrt(3) std, biases 0)") {
  const InitFixture f = init_fixture("timm");
  for (const std::string p : {kQ, kProj, kMlp0, kMlp3}) {
    const Stats s = stats_of(f[p + ".weight"]);
    INFO(p << ": std " << s.std << " absmax " << s.absmax);
    CHECK(std::abs(s.std - 0.81464 * 0.02) < 0.04 * 0.81464 * 0.02);
    CHECK(s.absmax <= std::sqrt(3.0) * 0.02 * (1 + 1e-6));
    CHECK(s.absmax > 0.97 * std::sqrt(3.0) * 0.02);
    check_constant(f[p + ".bias"], 0.0, p + ".bias");
  }
  check_normal(f[kPos], 0.02, kPos);
  check_normal(f[kWord], 0.02, kWord);
  check_norms(f);
}

TEST_CASE("factory init: small (attention U(+-sqrt(6/(5D))), ffn xavier with N(0, 1e-6) biases)") {
  const InitFixture f = init_fixture("small");
  const double D = 64, F = 256;
  for (const std::string p : {kQ, kProj}) {
    check_uniform(f[p + ".weight"], std::sqrt(6.0 / (5 * D)), p);
    check_constant(f[p + ".bias"], 0.0, p + ".bias");
  }
  check_uniform(f[kMlp0 + ".weight"], std::sqrt(6.0 / (D + F)), kMlp0);  // xavier, not small-init
  check_uniform(f[kMlp3 + ".weight"], std::sqrt(6.0 / (D + F)), kMlp3);
  check_normal(f[kMlp0 + ".bias"], 1e-6, kMlp0 + ".bias", 0.15);
  check_normal(f[kWord], 0.02, kWord);
  check_norms(f);
}

TEST_CASE("factory init: moco (every linear U(+-sqrt(6/(in+out))), biases 0)") {
  const InitFixture f = init_fixture("moco");
  const double D = 64, F = 256;
  check_uniform(f[kQ + ".weight"], std::sqrt(6.0 / (2 * D)), kQ);
  check_uniform(f[kProj + ".weight"], std::sqrt(6.0 / (2 * D)), kProj);
  check_uniform(f[kMlp0 + ".weight"], std::sqrt(6.0 / (D + F)), kMlp0);
  check_uniform(f[kMlp3 + ".weight"], std::sqrt(6.0 / (D + F)), kMlp3);
  for (const std::string p : {kQ, kProj, kMlp0, kMlp3}) check_constant(f[p + ".bias"], 0.0, p + ".bias");
  check_normal(f[kPos], 0.02, kPos);
  check_norms(f);
}

TEST_CASE("factory init: deepnorm applies the gain beta (and vit/small leave the embedding alone)") {
  // 2 encoder layers: beta = (8 * 2)^(-1/4) = 0.5; alpha = (2 * 2)^(1/4).
  const auto co = deepnorm_encoder_coefficients(2, 0);
  CHECK(co.beta == doctest::Approx(0.5));
  CHECK(co.alpha == doctest::Approx(std::sqrt(2.0)));
  CHECK(deepnorm_encoder_coefficients(2, 2).alpha == doctest::Approx(1.005905).epsilon(1e-5));
  CHECK(deepnorm_encoder_coefficients(2, 2).beta == doctest::Approx(0.700563).epsilon(1e-5));
  CHECK(deepnorm_encoder_coefficients(12, 0).alpha == doctest::Approx(2.213364).epsilon(1e-5));
  const double D = 64, F = 256, beta = 0.5;
  const std::string q = "0.wrap_att.sublayer.layer.in_proj_container.q_proj";
  const std::string m0 = "0.wrap_ff.sublayer.layer.mlp.0";
  {
    const InitFixture f = init_fixture("vit", "deepnorm");
    CHECK(f.model.train_graph.init_gain == doctest::Approx(beta));
    check_uniform(f[q + ".weight"], beta * std::sqrt(6.0 / (2 * D)), q);  // q/k get it too (xFormers' quirk)
    check_uniform(f[m0 + ".weight"], beta * std::sqrt(6.0 / (D + F)), m0);
    check_normal(f[kWord], 0.02, kWord);  // vit calls init_weights() without the gain
    check_normal(f["lm_head.weight"], 0.02, "lm_head");
    check_norms(f);
  }
  {
    const InitFixture f = init_fixture("small", "deepnorm");
    check_uniform(f[q + ".weight"], beta * std::sqrt(6.0 / (5 * D)), q);
    check_normal(f[kPos], 0.02, kPos);
  }
  {
    const InitFixture f = init_fixture("timm", "deepnorm");
    const Stats s = stats_of(f[q + ".weight"]);
    CHECK(std::abs(s.std - 0.81464 * 0.02 * beta) < 0.04 * 0.81464 * 0.02 * beta);
    CHECK(s.absmax <= std::sqrt(3.0) * 0.02 * beta * (1 + 1e-6));
    check_normal(f[kWord], 0.02 * beta, kWord);  // timm passes the gain to init_weights
    check_normal(f["lm_head.weight"], 0.02, "lm_head");  // outside the xFormer
  }
  {
    const InitFixture f = init_fixture("moco", "deepnorm");
    check_uniform(f[q + ".weight"], beta * std::sqrt(6.0 / (2 * D)), q);
    check_normal(f[kPos], 0.02 * beta, kPos);
  }
}

TEST_CASE("factory init: same seed, same weights; another seed, other weights") {
  const Model a = make_model(tiny(), 18, 2, make_null_logger());
  const Model b = make_model(tiny(), 18, 2, make_null_logger());
  const Model c = make_model(tiny({"runtime.seed=8"}), 18, 2, make_null_logger());
  const size_t bytes = a.store->flat_size() * sizeof(float);
  CHECK(std::memcmp(a.store->params(), b.store->params(), bytes) == 0);
  CHECK(std::memcmp(a.store->params(), c.store->params(), bytes) != 0);
}

TEST_CASE("param store: a store_adjacent group is stored together, in order; initial values do not move") {
  // Two graphs declaring the same parameters (weight, bias per projection, as linear layers do); one groups the
  // three weights and the three biases (a packed q/k/v projection).
  const auto build = [](Graph& g, bool grouped) {
    std::vector<Value> w, b;
    for (const char* p : {"q", "k", "v"}) {
      auto s = g.scope(p);
      w.push_back(g.param("weight", {48, 32}, ParamKind::weight, InitInfo{p, ModuleKind::linear, "weight", "", 32, 48}));
      b.push_back(g.param("bias", {48}, ParamKind::bias, InitInfo{p, ModuleKind::linear, "bias", "", 32, 48}));
    }
    g.param("after", {33}, ParamKind::norm, InitInfo{"after", ModuleKind::layernorm, "weight", "", 0, 0});
    if (grouped) {
      g.store_adjacent(w);
      g.store_adjacent(b);
    }
  };
  Graph plain, grouped;
  build(plain, false);
  build(grouped, true);
  ParamStore a(plain), b(grouped);
  REQUIRE(a.flat_size() == b.flat_size());
  REQUIRE(a.slots().size() == b.slots().size());
  for (size_t i = 0; i < a.slots().size(); ++i) {
    CHECK(a.slots()[i].name == b.slots()[i].name);  // slots stay in declaration order
    CHECK(a.slots()[i].offset == a.slots()[i].stream_offset);
    CHECK(b.slots()[i].stream_offset == a.slots()[i].offset);
  }
  // q.weight, k.weight, v.weight, then q.bias, k.bias, v.bias, then after.
  const size_t w = 48 * 32;
  CHECK(b.slot("q.weight").offset == 0);
  CHECK(b.slot("k.weight").offset == w);
  CHECK(b.slot("v.weight").offset == 2 * w);
  CHECK(b.slot("q.bias").offset == 3 * w);
  CHECK(b.slot("k.bias").offset == 3 * w + 48);
  CHECK(b.slot("v.bias").offset == 3 * w + 96);
  CHECK(b.slot("after").offset == 3 * w + 144);
  initialize_weights(plain, a, "vit", 1.0, 5);
  initialize_weights(grouped, b, "vit", 1.0, 5);
  for (const ParamSlot& s : a.slots()) CHECK_MESSAGE(a.param(s.name).to_doubles() == b.param(s.name).to_doubles(), s.name);
  CHECK(error_of([&] { grouped.store_adjacent({grouped.find("q.weight")}); }).find("in another group") != std::string::npos);
}

TEST_CASE("factory init: the uninitialised-weight check fires on a planted parameter") {
  const Config c = tiny();
  ConfigNode model = c.root.at("model");
  model.set("vocab_size", ConfigNode::make_scalar("18"));
  BuiltModel m = build_model(model, 2, 16, true);
  {
    auto s = m.graph->scope("planted");
    m.graph->param("weight", {4, 4});  // default InitInfo: no rule covers it
    m.graph->param("gamma", {4}, ParamKind::other, InitInfo{"planted", ModuleKind::unknown, "gamma", "", 0, 0});
  }
  ParamStore store(*m.graph);
  const InitReport report = initialize_weights(*m.graph, store, "vit", 1.0, 1);
  CHECK(report.uninitialised == std::vector<std::string>{"planted.weight", "planted.gamma"});
  // The planted parameters stay zero, their rule is empty; the others have one.
  for (size_t i = 0; i < store.slots().size(); ++i) {
    const bool planted = store.slots()[i].name.rfind("planted.", 0) == 0;
    CHECK_MESSAGE(report.rules[i].empty() == planted, store.slots()[i].name);
  }
  const std::string msg = error_of([&] { check_initialised(report, "error", make_null_logger()); });
  CHECK(contains(msg, "2 parameter(s) were not written by any init rule"));
  CHECK(contains(msg, "planted.weight"));
  CHECK(contains(msg, "planted.gamma"));
  CHECK(contains(msg, "model.check_init"));
  // warn: logged, not thrown; off: silent.
  std::ostringstream os;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(os);
  auto logger = std::make_shared<spdlog::logger>("test", sink);
  CHECK_NOTHROW(check_initialised(report, "warn", logger));
  logger->flush();
  CHECK(contains(os.str(), "planted.weight"));
  os.str("");
  CHECK_NOTHROW(check_initialised(report, "off", logger));
  logger->flush();
  CHECK(os.str().empty());
  // An unknown component rule is refused by name, not silently skipped.
  Graph g;
  g.param("w", {2}, ParamKind::other, InitInfo{"x", ModuleKind::component, "w", "glorot(7)", 0, 0});
  ParamStore st(g);
  CHECK(contains(error_of([&] { initialize_weights(g, st, "vit", 1.0, 1); }), "unknown component rule 'glorot(7)'"));
  CHECK(contains(error_of([&] { initialize_weights(g, st, "xavier", 1.0, 1); }), "unknown scheme 'xavier'"));
}

TEST_CASE("factory causal: changing token t leaves the logits before t unchanged") {
  for (const std::string style : {"pre", "post", "deepnorm"}) {
    for (const std::string pos : {"vocab", "sine", "learnable", "rotary"}) {
      INFO(style << " " << pos);
      const Config c = tiny({"model.stack_configs.0.residual_norm_style=" + style,
                             "model.stack_configs.0.position_encoding_config={name: " +
                                 std::string(pos == "rotary" ? "vocab" : pos) + ", seq_len: 16}",
                             "model.stack_configs.0.multi_head_config.use_rotary_embeddings=" +
                                 std::string(pos == "rotary" ? "true" : "false")});
      Model m = make_model(c, 18, 2, make_null_logger());
      const BuiltModel& e = m.eval_graph;
      Executor ex(*e.graph, {e.logits}, Gradients{}, m.store, ExecutorOptions{});
      Tensor tokens = Tensor::zeros({2, 16}, DType::i32), targets = Tensor::zeros({2, 16}, DType::i32);
      for (int i = 0; i < 32; ++i) tokens.data<int32_t>()[i] = (i * 7 + 3) % 18;
      ex.bind(e.tokens, tokens);
      ex.bind(e.targets, targets);
      ex.run();
      const std::vector<double> before = ex.get(e.logits).to_doubles();
      for (int t : {0, 5, 15}) {
        Tensor changed = tokens.clone();
        changed.data<int32_t>()[t] = (changed.data<int32_t>()[t] + 5) % 18;       // row 0
        changed.data<int32_t>()[16 + t] = (changed.data<int32_t>()[16 + t] + 1) % 18;  // row 1
        ex.bind(e.tokens, changed);
        ex.run();
        const std::vector<double> after = ex.get(e.logits).to_doubles();
        for (int b = 0; b < 2; ++b) {
          bool same_before = true, differs_at_t = false;
          for (int s = 0; s < 16; ++s)
            for (int v = 0; v < 18; ++v) {
              const size_t i = static_cast<size_t>((b * 16 + s) * 18 + v);
              if (s < t) same_before &= after[i] == before[i];
              if (s == t) differs_at_t |= after[i] != before[i];
            }
          CHECK_MESSAGE(same_before, "t " << t << " row " << b << ": logits before t changed");
          CHECK_MESSAGE(differs_at_t, "t " << t << " row " << b << ": logits at t did not change");
        }
      }
    }
  }
}

TEST_CASE("factory attention: window_left reaches the fused op; causal with window_right > 0 is a config error") {
  // Two causal layers with window_left 2: token t reaches positions t .. t + 4 and no further.
  const Config c = tiny({"model.stack_configs.0.multi_head_config.attention={name: scaled_dot_product, causal: true, "
                         "window_left: 2, causal_alignment: bottom_right}"});
  CHECK_FALSE(supports_kv_cache(c.root.at("model")));  // a windowed model decodes by recomputing
  Model m = make_model(c, 18, 1, make_null_logger());
  const BuiltModel& e = m.eval_graph;
  Executor ex(*e.graph, {e.logits}, Gradients{}, m.store, ExecutorOptions{});
  Tensor tokens = Tensor::zeros({1, 16}, DType::i32), targets = Tensor::zeros({1, 16}, DType::i32);
  for (int i = 0; i < 16; ++i) tokens.data<int32_t>()[i] = (i * 7 + 3) % 18;
  ex.bind(e.tokens, tokens);
  ex.bind(e.targets, targets);
  ex.run();
  const std::vector<double> before = ex.get(e.logits).to_doubles();
  const int t = 3;
  tokens.data<int32_t>()[t] = (tokens.data<int32_t>()[t] + 5) % 18;
  ex.bind(e.tokens, tokens);
  ex.run();
  const std::vector<double> after = ex.get(e.logits).to_doubles();
  for (int pos = 0; pos < 16; ++pos) {
    bool same = true;
    for (int v = 0; v < 18; ++v) same &= after[static_cast<size_t>(pos * 18 + v)] == before[static_cast<size_t>(pos * 18 + v)];
    CHECK_MESSAGE(same == (pos < t || pos > t + 4), "position " << pos);
  }
  CHECK(contains(config_error(kTiny, {"model.stack_configs.0.multi_head_config.attention.window_right=2"}),
                 "model.stack_configs[0].multi_head_config.attention.window_right: window_right 2 must be -1 or 0 "
                 "with causal"));
  CHECK(contains(config_error(kTiny, {"model.stack_configs.0.multi_head_config.attention.causal_alignment=diagonal"}),
                 "causal_alignment"));
}

// ======================================================================================================
// 4. Training end to end
// ======================================================================================================

TEST_CASE("factory train: the embedded default learns in 60 steps") {
  TempDir dir;
  const Config c = load_default_config({"train.steps=60", "train.schedule.warmup_steps=10", "train.eval_steps=4",
                                        "infer.max_new_tokens=16", "runtime.out_dir=" + dir.sub("out")});
  const TrainResult r = run_training(c);
  INFO("val loss " << r.initial_val_loss << " -> " << r.final_val_loss << ", train " << r.first_loss << " -> "
                   << r.final_loss);
  MESSAGE("embedded default, 60 steps: val loss " << r.initial_val_loss << " -> " << r.final_val_loss);
  CHECK(r.steps == 60);
  REQUIRE(r.initial_val_loss > 0);
  CHECK(r.initial_val_loss > 4.0);   // about ln(vocab): the untrained model is near uniform
  CHECK(r.final_val_loss < r.initial_val_loss - 1.0);
  CHECK(r.final_loss < r.first_loss - 1.0);
  CHECK(r.sample.rfind("ROMEO:\n", 0) == 0);
  CHECK(r.sample.size() > 7);
  CHECK(fs::exists(dir.sub("out/sample.txt")));
  CHECK(fs::exists(dir.sub("out/checkpoints/step_60/manifest.json")));
}

TEST_CASE("factory train: metrics.jsonl has step, loss, lr, grad_norm, tokens_per_s and val_loss on eval steps") {
  TempDir dir;
  const Config c = tiny({"train.steps=8", "train.log_every=2", "train.eval_every=4", "data.val_fraction=0.25",
                         "data.num_examples=32", "train.schedule={name: cosine, warmup_steps: 2}",
                         "runtime.out_dir=" + dir.sub("out")});
  const TrainResult r = run_training(c);
  const auto recs = read_jsonl(dir.sub("out/metrics.jsonl"));
  REQUIRE(recs.size() == 4);
  for (size_t i = 0; i < recs.size(); ++i) {
    const auto& j = recs[i];
    INFO(j.dump());
    CHECK(j.at("step").get<int64_t>() == static_cast<int64_t>(2 * (i + 1)));
    for (const char* k : {"loss", "lr", "grad_norm", "tokens_per_s"}) {
      REQUIRE(j.contains(k));
      CHECK(j.at(k).is_number());
      CHECK(std::isfinite(j.at(k).get<double>()));
    }
    CHECK(j.at("loss").get<double>() == doctest::Approx(r.losses[2 * i + 1]).epsilon(1e-12));
    CHECK(j.at("grad_norm").get<double>() > 0);
    CHECK(j.at("tokens_per_s").get<double>() > 0);
    CHECK(j.contains("val_loss") == (j.at("step").get<int64_t>() % 4 == 0));
  }
  // The schedule: warmup 1/2, 2/2 of lr, then cosine down.
  CHECK(recs[0].at("lr").get<double>() == doctest::Approx(1e-2).epsilon(1e-6));
  CHECK(recs[3].at("lr").get<double>() < recs[1].at("lr").get<double>());
  CHECK(r.final_val_loss == doctest::Approx(recs[3].at("val_loss").get<double>()));
}

TEST_CASE("factory train: resuming from the middle checkpoint reproduces the uninterrupted run exactly") {
  TempDir dir;
  // Dropout everywhere, gradient accumulation and a cosine schedule: the random stream, the data order,
  // the optimizer state and the step count must all be restored.
  const std::vector<std::string> sets = {
      "train.steps=8", "train.checkpoint_every=4", "train.grad_accum=2", "train.schedule={name: cosine, warmup_steps: 2}",
      "model.stack_configs.0.multi_head_config.attention.dropout=0.1",
      "model.stack_configs.0.multi_head_config.residual_dropout=0.1", "model.stack_configs.0.feedforward_config.dropout=0.1",
      "model.stack_configs.0.position_encoding_config.dropout=0.1", "data.num_examples=64", "data.val_fraction=0.1",
      "train.eval_every=2", "train.log_every=1"};
  auto with_out = [&](const std::string& out) {
    auto s = sets;
    s.push_back("runtime.out_dir=" + out);
    return tiny(s);
  };
  std::vector<double> full;
  const TrainResult a = run_training(with_out(dir.sub("a")), "", &full);
  REQUIRE(full.size() == 8);
  REQUIRE(fs::exists(dir.sub("a/checkpoints/step_4/manifest.json")));
  REQUIRE(fs::exists(dir.sub("a/checkpoints/step_8/manifest.json")));
  // The interrupted run: its output folder holds only the step-4 checkpoint.
  fs::create_directories(dir.sub("b/checkpoints"));
  fs::copy(dir.sub("a/checkpoints/step_4"), dir.sub("b/checkpoints/step_4"), fs::copy_options::recursive);
  std::vector<double> resumed;
  const TrainResult b = run_training(with_out(dir.sub("b")), "auto", &resumed);
  REQUIRE(resumed.size() == 4);
  CHECK(b.steps == 8);
  for (size_t i = 0; i < 4; ++i) CHECK_MESSAGE(resumed[i] == full[4 + i], "step " << 5 + i << ": " << resumed[i] << " vs " << full[4 + i]);
  CHECK(b.final_val_loss == a.final_val_loss);
  // The final weights are bit-identical.
  auto bytes = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  CHECK(bytes(dir.sub("a/checkpoints/step_8/model.safetensors")) == bytes(dir.sub("b/checkpoints/step_8/model.safetensors")));
  CHECK(bytes(dir.sub("a/checkpoints/step_8/optimizer.safetensors")) ==
        bytes(dir.sub("b/checkpoints/step_8/optimizer.safetensors")));
  // The resumed run's metrics continue the file: steps 5..8 only.
  const auto recs = read_jsonl(dir.sub("b/metrics.jsonl"));
  REQUIRE(recs.size() == 4);
  CHECK(recs.front().at("step").get<int64_t>() == 5);
  // resume auto with nothing to resume starts fresh and gives the same losses as a fresh run.
  std::vector<double> fresh;
  run_training(with_out(dir.sub("c")), "auto", &fresh);
  CHECK(fresh == full);
}

TEST_CASE("factory train: checkpoint round trip is bit-exact") {
  TempDir dir;
  const Config c = tiny({"runtime.out_dir=" + dir.sub("out")});
  Model a = make_model(c, 18, 2, make_null_logger());
  Model b = make_model(tiny({"runtime.seed=99"}), 18, 2, make_null_logger());
  const size_t n = a.store->flat_size();
  REQUIRE(std::memcmp(a.store->params(), b.store->params(), n * sizeof(float)) != 0);
  // Optimizer state after a step with some gradients.
  OptimizerConfig oc;
  auto opt_a = make_optimizer(oc, a.store->slots(), n);
  auto opt_b = make_optimizer(oc, b.store->slots(), n);
  for (size_t i = 0; i < n; ++i) a.store->grads()[i] = std::sin(static_cast<float>(i));
  opt_a->step(a.store->params(), a.store->grads(), 1e-3f, nullptr);
  const std::string saved = save_checkpoint(dir.sub("out"), 3, *a.store, opt_a.get(), {{"hello", 1}});
  const LoadedCheckpoint ck = load_checkpoint(saved, *b.store, opt_b.get());
  CHECK(ck.step == 3);
  CHECK(ck.state.at("hello") == 1);
  for (const auto& slot : a.store->slots())
    CHECK_MESSAGE(std::memcmp(a.store->params() + slot.offset, b.store->params() + slot.offset, slot.numel * sizeof(float)) == 0,
                  slot.name);
  auto sa = opt_a->state(), sb = opt_b->state();
  REQUIRE(sa.size() == sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    CHECK(sa[i].first == sb[i].first);
    CHECK(*sa[i].second == *sb[i].second);
  }
  // The same forward pass, bit for bit.
  auto logits = [](Model& m) {
    const BuiltModel& e = m.eval_graph;
    Executor ex(*e.graph, {e.logits}, Gradients{}, m.store, ExecutorOptions{});
    Tensor tokens = Tensor::zeros({2, 16}, DType::i32);
    for (int i = 0; i < 32; ++i) tokens.data<int32_t>()[i] = i % 18;
    ex.bind(e.tokens, tokens);
    ex.bind(e.targets, tokens);
    ex.run();
    return ex.get(e.logits).to_doubles();
  };
  CHECK(logits(a) == logits(b));
  // A checkpoint of another architecture is refused by name, and leaves the store untouched.
  Model other = make_model(tiny({"model.stack_configs.0.num_layers=1"}), 18, 2, make_null_logger());
  std::vector<float> keep(other.store->params(), other.store->params() + other.store->flat_size());
  CHECK_THROWS_AS(load_checkpoint(saved, *other.store, nullptr), Error);
  CHECK(std::equal(keep.begin(), keep.end(), other.store->params()));
}

TEST_CASE("factory generate: seeded sampling is deterministic") {
  Model m = make_model(tiny(), 18, 2, make_null_logger());
  ThreadPool pool(1);
  const std::vector<int32_t> prompt = {16, 3, 4, 5};
  const auto a = generate(m, prompt, 24, 1.0, 8, 0.95, 42, &pool);
  const auto b = generate(m, prompt, 24, 1.0, 8, 0.95, 42, &pool);
  const auto c = generate(m, prompt, 24, 1.0, 8, 0.95, 43, &pool);
  CHECK(a.size() == 24);
  CHECK(a == b);
  CHECK(a != c);
  // Without the KV cache (full-window recomputation): deterministic too.
  CHECK(generate(m, prompt, 12, 1.0, 8, 0.95, 42, &pool, false) == generate(m, prompt, 12, 1.0, 8, 0.95, 42, &pool, false));
  for (int32_t t : a) CHECK((t >= 0 && t < 18));
  // Greedy does not depend on the seed.
  CHECK(generate(m, prompt, 24, 0.0, 0, 1.0, 1, &pool) == generate(m, prompt, 24, 0.0, 0, 1.0, 2, &pool));
  // Prompts longer than the window slide it.
  std::vector<int32_t> long_prompt(40, 3);
  CHECK(generate(m, long_prompt, 4, 1.0, 0, 1.0, 5, &pool) == generate(m, long_prompt, 4, 1.0, 0, 1.0, 5, &pool));
}

TEST_CASE("factory config: a required key of an absent section points into the file, not at a default") {
  TempDir dir;
  const std::string empty = dir.write("empty.yaml", "");
  const std::string m1 = error_of([&] { load_config(empty); });
  INFO(m1);
  CHECK(contains(m1, empty + ": model.stack_configs: required"));
  CHECK_FALSE(contains(m1, "<default>"));
  const std::string no_model = dir.write("no_model.yaml", "train: {steps: 3}\n");
  const std::string m2 = error_of([&] { load_config(no_model); });
  INFO(m2);
  CHECK(contains(m2, no_model + ":1:1: model.stack_configs: required"));
  const std::string m3 = config_error(kTiny, {"model=null"});
  CHECK(contains(m3, "--set: model.stack_configs: required"));
}

// A training graph's fused residual layernorms all write x + residual, which their backward reads: the final norm of
// a pre-norm model and a post-norm block's norms would otherwise have it recomputed by an add in the backward. An
// inference graph writes it only where the residual stream goes on from it. (Pre-norm with the residual add in the
// norms, not in the projections' GEMMs: XF_RESIDUAL_IN_GEMM=0.)
TEST_CASE("factory: residual layernorms of a training graph write the sum their backward reads") {
  ScopedEnv in_norms("XF_RESIDUAL_IN_GEMM", "0");
  for (const std::string style : {"pre", "post"}) {
    for (bool training : {true, false}) {
      INFO(style << (training ? " training" : " inference"));
      const Config c = tiny({"model.stack_configs.0.residual_norm_style=" + style});
      ConfigNode model = c.root.at("model");
      model.set("vocab_size", ConfigNode::make_scalar("18"));
      BuiltModel m = build_model(model, 2, 16, training);
      int residual_norms = 0, writing = 0;
      for (int i = 0; i < m.graph->num_nodes(); ++i)
        if (const auto* ln = dynamic_cast<const LayerNormOp*>(m.graph->node(i).op.get()); ln && ln->has_residual) {
          ++residual_norms;
          writing += ln->write_sum;
        }
      CHECK(residual_norms > 0);
      if (training) CHECK(writing == residual_norms);
      else CHECK(writing < residual_norms);  // the final norm (pre) or every norm (post) drops it
    }
  }
}

// The positional encoding's add (embeddings (B, T, C) + positions (T, C)) is taken in by the first block's norm of a
// pre-norm model as its broadcast residual (factory/model_builder.cpp normalize): the add node is read by nothing, and
// the norm writes the sum the residual stream goes on from. With dropout after the add there is nothing to take in.
TEST_CASE("factory: the first pre-norm block's layernorm takes the positional add in as its residual") {
  const int64_t B = 2, T = 16, D = 16;
  for (const std::string pos : {"{name: vocab, seq_len: 16}", "{name: sine}", "{name: learnable, seq_len: 16}",
                                "{name: vocab, seq_len: 16, dropout: 0.1}"})
    for (bool training : {true, false}) {
      INFO(pos << (training ? " training" : " inference"));
      const Config c = tiny({"model.stack_configs.0.position_encoding_config=" + pos});
      ConfigNode model = c.root.at("model");
      model.set("vocab_size", ConfigNode::make_scalar("18"));
      BuiltModel m = build_model(model, B, T, training);
      const Graph& g = *m.graph;
      const bool dropout = pos.find("dropout") != std::string::npos && training;
      std::set<int> read;
      for (int i = 0; i < g.num_nodes(); ++i)
        for (int in : g.node(i).inputs) read.insert(in);
      int adds = 0, unread_adds = 0, first_norm = -1;
      for (int i = 0; i < g.num_nodes(); ++i) {
        const Node& n = g.node(i);
        if (n.name.find("add_positions") != std::string::npos && dynamic_cast<const BinaryOp*>(n.op.get())) {
          ++adds;
          unread_adds += read.count(n.outputs[0]) == 0;
        }
        if (first_norm < 0 && dynamic_cast<const LayerNormOp*>(n.op.get())) first_norm = i;
      }
      CHECK(adds == 1);
      REQUIRE(first_norm >= 0);
      const auto& ln = static_cast<const LayerNormOp&>(*g.node(first_norm).op);
      CHECK(unread_adds == (dropout ? 0 : 1));
      CHECK(ln.has_residual == !dropout);
      if (dropout) continue;
      CHECK(ln.write_sum);
      CHECK(g.value(g.node(first_norm).inputs[0]).meta.shape == Shape{B, T, D});
      CHECK(g.value(g.node(first_norm).inputs[1]).meta.shape == Shape{T, D});
    }
}

// A pre-norm block's residual adds are done by the sublayers' output projections (linear with a residual: the GEMM's
// C input), so the norms that read the sums are plain (but the first block's, which takes the positional add in);
// the old projection nodes are read by nothing. Training is the same, bit for bit on the CPU, as with the adds in the
// norms (XF_RESIDUAL_IN_GEMM=0): (x w^T + b) + r is r + (x w^T + b), and a norm backward's dadd is the add it saves.
// With residual dropout there is no projection output to fold.
TEST_CASE("factory: a pre-norm block's projections add the residual stream in their GEMMs; training is unchanged") {
  const int64_t V = 18, B = 2;
  for (const std::string dropout : {"0.0", "0.1"}) {
    INFO("residual dropout " << dropout);
    const Config c = tiny({"model.stack_configs.0.multi_head_config.residual_dropout=" + dropout,
                           "model.stack_configs.0.feedforward_config.dropout=" + dropout});
    const int layers = static_cast<int>(get_int(c.root.at("model").at("stack_configs").at(0), "num_layers"));
    Model folded = make_model(c, V, B, make_null_logger());
    Model in_norms = [&] {
      ScopedEnv env("XF_RESIDUAL_IN_GEMM", "0");
      return make_model(c, V, B, make_null_logger());
    }();
    in_norms.store->copy_params_from(*folded.store);
    const Graph& g = *folded.train_graph.graph;
    std::set<int> read;
    for (int i = 0; i < g.num_nodes(); ++i)
      for (int in : g.node(i).inputs) read.insert(in);
    int residual_linears = 0, residual_norms = 0, norms = 0;
    for (int i = 0; i < g.num_nodes(); ++i) {
      const Node& n = g.node(i);
      if (const auto* l = dynamic_cast<const LinearOp*>(n.op.get()); l && l->has_residual) {
        ++residual_linears;
        CHECK(n.name.find("_residual") != std::string::npos);
        const std::string old = n.name.substr(0, n.name.size() - std::string("_residual").size());
        for (int j = 0; j < i; ++j)
          if (g.node(j).name == old) CHECK_MESSAGE(read.count(g.node(j).outputs[0]) == 0, old << " is still read");
      }
      if (const auto* ln = dynamic_cast<const LayerNormOp*>(n.op.get())) {
        ++norms;
        residual_norms += ln->has_residual;
      }
    }
    const bool dropped = dropout != "0.0";
    CHECK(residual_linears == (dropped ? 0 : 2 * layers));  // the attention's and the MLP's output projections
    CHECK(norms == 2 * layers + 1);
    CHECK(residual_norms == (dropped ? 2 * layers + 1 : 1));  // the positional add stays in the first norm
    TrainStepOptions o;
    o.optimizer = optimizer_config(c);
    TrainStep ta(folded.train_graph, folded.store, o), tb(in_norms.train_graph, in_norms.store, o);
    const Tensor tokens = cycling_tokens(B, folded.train_graph.tokens.dim(1), V);
    for (int i = 0; i < 3; ++i) {
      const StepResult ra = ta.step(bind_copy_task(folded, tokens), 1e-3f),
                       rb = tb.step(bind_copy_task(in_norms, tokens), 1e-3f);
      CHECK_MESSAGE(ra.loss == rb.loss, "step " << i + 1);
      CHECK(ra.grad_norm == rb.grad_norm);
    }
    const size_t n = folded.store->flat_size();
    CHECK(std::equal(folded.store->params(), folded.store->params() + n, in_norms.store->params()));
  }
}

TEST_CASE("factory train step (CPU): without clipping, grad_norm=false skips the norm and changes nothing else") {
  const int64_t V = 18, B = 2;
  const Config c = tiny({"train.grad_clip=0"});
  Model a = make_model(c, V, B, make_null_logger()), b = make_model(c, V, B, make_null_logger());
  b.store->copy_params_from(*a.store);
  TrainStepOptions on;
  on.optimizer = optimizer_config(c);
  TrainStepOptions off = on;
  off.grad_norm = false;
  TrainStep ta(a.train_graph, a.store, on), tb(b.train_graph, b.store, off);
  const Tensor tokens = cycling_tokens(B, a.train_graph.tokens.dim(1), V);
  for (int i = 0; i < 3; ++i) {
    const StepResult ra = ta.step(bind_copy_task(a, tokens), 1e-3f), rb = tb.step(bind_copy_task(b, tokens), 1e-3f);
    CHECK(ra.loss == rb.loss);
    CHECK(ra.grad_norm > 0.0f);
    CHECK(std::isnan(rb.grad_norm));
  }
  const size_t n = a.store->flat_size();
  CHECK(std::equal(a.store->params(), a.store->params() + n, b.store->params()));
}
