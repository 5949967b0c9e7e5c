// The xfrun command line, run as a separate process (the binary CMake builds next to the tests):
// exit codes (0 ok, 1 runtime failure, 2 usage or config error), errors on stderr with nothing written,
// and the machine-readable outputs (print-config, components --json, describe --json).
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "temp_dir.h"
#include "cli_runner.h"
#include "factory/config.h"
#include "factory/registry.h"
#include "factory/trainer.h"
#include "runtime/device_context.h"
#include "runtime/logging.h"

#ifdef XF_CLI_PATH

using namespace xfr;
namespace fs = std::filesystem;

namespace {

using xfr::testing::TempDir;

using xfr::testing::contains;
using xfr::testing::CliRun;
using xfr::testing::sh_quote;
using xfr::testing::xfrun;
const std::string& kTinyText = xfr::testing::kTinyTextLm;
std::string read_file(const std::string& p) { return xfr::testing::read_text(p); }

// Writes the config and its text into `dir`; returns the config's path.
std::string write_tiny(const TempDir& dir, const std::string& text = kTinyText) {
  std::string corpus;
  for (int i = 0; i < 40; ++i) corpus += "to be, or not to be, that is the question.\n";
  dir.write("text.txt", corpus);
  return dir.write("tiny.yaml", text);
}

std::string replaced(std::string text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  REQUIRE(at != std::string::npos);
  return text.replace(at, from.size(), to);
}

}  // namespace

TEST_CASE("cli validate: ok for the embedded default and a good file (exit 0)") {
  const CliRun a = xfrun({"validate"});
  CHECK(a.rc == 0);
  CHECK(a.out == "ok\n");
  TempDir dir;
  const std::string cfg = write_tiny(dir);
  const CliRun b = xfrun({"validate", "--config", cfg, "--set", "train.steps=10"});
  CHECK(b.rc == 0);
  CHECK(b.out == "ok\n");
}

TEST_CASE("cli validate: a bad config exits 2 with every error on stderr") {
  TempDir dir;
  std::string text = replaced(kTinyText, "      num_layers: 1\n", "      num_layer: 1\n");
  text = replaced(text, "num_heads: 2", "num_heads: two");
  const std::string cfg = write_tiny(dir, text);
  const CliRun r = xfrun({"validate", "--config", cfg});
  INFO(r.err);
  CHECK(r.rc == 2);
  CHECK(r.out.empty());
  CHECK(contains(r.err, "2 errors"));
  CHECK(contains(r.err, cfg + ":6:7: model.stack_configs[0].num_layer: unknown key 'num_layer'; did you mean 'num_layers'?"));
  CHECK(contains(r.err, cfg + ":11:20: model.stack_configs[0].multi_head_config.num_heads: expected an integer, got 'two'"));
  // A missing file, a syntax error: config errors too.
  CHECK(xfrun({"validate", "--config", dir.sub("nope.yaml")}).rc == 2);
  const CliRun s = xfrun({"validate", "--config", dir.write("syntax.yaml", "model: [1, 2\n")});
  CHECK(s.rc == 2);
  CHECK(contains(s.err, "syntax.yaml:"));
}

TEST_CASE("cli train: a config error exits 2 before anything is written") {
  TempDir dir;
  const std::string cfg = write_tiny(dir, replaced(kTinyText, "causal: true}", "causal: true, dropout: 2}"));
  const CliRun r = xfrun({"train", "--config", cfg, "--out", dir.sub("out")});
  INFO(r.err);
  CHECK(r.rc == 2);
  CHECK(contains(r.err, "model.stack_configs[0].multi_head_config.attention.dropout: 2 is outside [0, 1)"));
  CHECK_FALSE(fs::exists(dir.sub("out")));
  // Cross-field errors too (the data vocab is only known once the data loads).
  const std::string cfg2 = write_tiny(dir, replaced(kTinyText, "  task: causal_lm\n", "  task: causal_lm\n  vocab_size: 5\n"));
  const CliRun r2 = xfrun({"train", "--config", cfg2, "--out", dir.sub("out2")});
  INFO(r2.err);
  CHECK(r2.rc == 2);
  CHECK(contains(r2.err, "does not cover"));
  CHECK_FALSE(fs::exists(dir.sub("out2")));
  // Nor the config's own out_dir (relative to the config file).
  CHECK_FALSE(fs::exists(dir.sub("run")));
}

TEST_CASE("cli --set: a typo exits 2 with a did-you-mean") {
  TempDir dir;
  const std::string cfg = write_tiny(dir);
  const CliRun r = xfrun({"validate", "--config", cfg, "--set", "model.stack_configs.0.num_layer=2"});
  INFO(r.err);
  CHECK(r.rc == 2);
  CHECK(contains(r.err, "--set: model.stack_configs[0].num_layer: unknown key 'num_layer'; did you mean 'num_layers'?"));
  const CliRun t = xfrun({"train", "--config", cfg, "--set", "train.step=2", "--out", dir.sub("out")});
  CHECK(t.rc == 2);
  CHECK(contains(t.err, "did you mean 'steps'?"));
  CHECK_FALSE(fs::exists(dir.sub("out")));
  // An index past the list's end, a malformed assignment.
  CHECK(xfrun({"validate", "--config", cfg, "--set", "model.stack_configs.3.num_layers=2"}).rc == 2);
  CHECK(xfrun({"validate", "--config", cfg, "--set", "train.steps"}).rc == 2);
  CHECK(xfrun({"validate", "--set", "train.steps=0"}).rc == 2);
}

namespace {

// `a` equals `b` once a's path fields are replaced by b's (which print-config writes absolute), and those
// name the same files.
void check_same_config(Config a, const Config& b) {
  for (const auto& [section, key] : {std::pair<const char*, const char*>{"data", "path"}, {"runtime", "out_dir"}}) {
    INFO(section << "." << key);
    CHECK(config_path_value(b.root.at(section), key) == config_path_value(a.root.at(section), key));
    CHECK(fs::path(b.root.at(section).at(key).text()).is_absolute());
    a.root.at(section).set(key, b.root.at(section).at(key));
  }
  CHECK(a.root == b.root);
}

}  // namespace

TEST_CASE("cli print-config: the output reloads to an equal config, from any folder") {
  TempDir dir, elsewhere;
  const std::string cfg = write_tiny(dir);
  const CliRun r = xfrun({"print-config", "--config", cfg, "--set", "train.steps=9"});
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const Config b = load_config(elsewhere.write("printed.yaml", r.out));
  check_same_config(load_config(cfg, {"train.steps=9"}), b);
  CHECK(get_int(b.root.at("train"), "steps") == 9);
  CHECK(config_path_value(b.root.at("data"), "path") == dir.sub("text.txt"));
  // Defaults are filled in.
  CHECK(contains(r.out, "check_init: error"));
  CHECK(contains(r.out, "grad_accum: 1"));
  // A --set path is relative to the working directory.
  const CliRun s = xfrun({"print-config", "--config", cfg, "--set", "data.path=other.txt"}, elsewhere.path.string());
  REQUIRE(s.rc == 0);
  const Config c = load_config(dir.write("printed2.yaml", s.out));
  CHECK(config_path_value(c.root.at("data"), "path") == elsewhere.sub("other.txt"));
  // The embedded default too: its data is the text the repository ships.
  const CliRun d = xfrun({"print-config"});
  REQUIRE(d.rc == 0);
  const Config e = load_config(elsewhere.write("default_printed.yaml", d.out));
  check_same_config(load_default_config(), e);
  CHECK(fs::equivalent(config_path_value(e.root.at("data"), "path"), default_data_path()));
}

TEST_CASE("cli components --json: every family and name with its parameters") {
  const CliRun r = xfrun({"components", "--json"});
  REQUIRE(r.rc == 0);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  const Registry& reg = Registry::builtin();
  for (const char* family : {"attention", "feedforward", "position_encoding", "residual_norm_style", "normalization",
                             "activation", "weight_init"}) {
    INFO(family);
    REQUIRE(j.contains(family));
    std::set<std::string> listed;
    for (const auto& e : j.at(family)) {
      listed.insert(e.at("name").get<std::string>());
      CHECK(e.at("doc").is_string());
      CHECK(e.at("parameters").is_array());
    }
    const auto names = reg.names(family);
    CHECK(listed == std::set<std::string>(names.begin(), names.end()));
  }
  CHECK(j.size() == reg.families().size());
  // The parameters of scaled_dot_product, with their defaults.
  bool found = false;
  for (const auto& e : j.at("attention"))
    if (e.at("name") == "scaled_dot_product")
      for (const auto& p : e.at("parameters"))
        if (p.at("name") == "causal") {
          found = true;
          CHECK(p.at("type") == "bool");
          CHECK(p.at("default") == "false");
        }
  CHECK(found);
  // The text form lists them too.
  const CliRun t = xfrun({"components"});
  CHECK(t.rc == 0);
  CHECK(contains(t.out, "scaled_dot_product"));
  CHECK(contains(t.out, "weight_init:"));
}

TEST_CASE("cli describe --json: total_params is the sum of the parameters' numels") {
  TempDir dir;
  const std::string cfg = write_tiny(dir);
  const CliRun r = xfrun({"describe", "--config", cfg, "--json"});
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  size_t sum = 0;
  for (const auto& p : j.at("parameters")) {
    size_t numel = 1;
    for (const auto& d : p.at("shape")) numel *= d.get<size_t>();
    CHECK(numel == p.at("numel").get<size_t>());
    sum += p.at("numel").get<size_t>();
    CHECK_FALSE(p.at("init").get<std::string>().empty());
  }
  CHECK(j.at("total_params").get<size_t>() == sum);
  // The library agrees.
  const Config c = load_config(cfg);
  const LoadedData data = load_data(c);
  const Model m = make_model(c, data.vocab_size, 1, make_null_logger());
  CHECK(sum == m.store->num_params());
  CHECK(j.at("vocab_size").get<int64_t>() == data.vocab_size);
  // The GPU memory estimate, before anything runs: the flat buffers (weights, gradients, AdamW's two
  // moments: 4 x 4 bytes a padded parameter) plus a positive activation arena and the workspace.
  const auto& gm = j.at("gpu_memory_bytes");
  const size_t w = gm.at("weights").get<size_t>();
  CHECK(w >= 4 * sum);
  CHECK(gm.at("optimizer").get<size_t>() == 2 * w);
  CHECK(gm.at("activations").get<size_t>() > 0);
  CHECK(gm.at("total").get<size_t>() == 4 * w + gm.at("activations").get<size_t>() + gm.at("workspace").get<size_t>());
  // Text form.
  const CliRun t = xfrun({"describe", "--config", cfg});
  CHECK(t.rc == 0);
  CHECK(contains(t.out, "total parameters: " + std::to_string(sum)));
  // A bad config: exit 2.
  CHECK(xfrun({"describe", "--config", cfg, "--set", "model.weight_init=jax"}).rc == 2);
}

TEST_CASE("cli info, usage errors and help") {
  const CliRun i = xfrun({"info"});
  CHECK(i.rc == 0);
  CHECK(contains(i.out, std::string("xfrun ") + xfrun_version()));
  CHECK(contains(i.out, "BLAS"));
  CHECK(contains(i.out, "cpu flash_attention (query blocks through sgemm, f64 oracle; bhsd/bshd; causal "
                        "top_left/bottom_right, sliding window, bias (+ grad), packed varlen): available"));
  CHECK(contains(i.out, "cpu composite (matmul + softmax + matmul; causal top_left, additive masks, no window)"));
  CHECK(contains(i.out, "cuda flash_attention, native (FA2-style, mma.sync bf16/f16, fp32 path; head dim <= 256, "
                        "exact 32/64/128/256; bhsd/bshd"));  // available, or unavailable with the reason
  CHECK(contains(i.out, "XF_ATTENTION_BACKEND="));
  // The cuDNN line: how this build configured it, and the cuDNN loaded now (or why it is unavailable).
  const size_t at = i.out.find("  cudnn fused attention");
  REQUIRE(at != std::string::npos);
  const std::string cudnn_line = i.out.substr(at, i.out.find('\n', at) - at);
  CHECK_MESSAGE((contains(cudnn_line, ": available (") || contains(cudnn_line, ": unavailable (")), cudnn_line);
#ifdef XF_HAVE_CUDNN_ATTENTION
  CHECK_MESSAGE(contains(cudnn_line, "built against cuDNN frontend "), cudnn_line);
  CHECK_MESSAGE(contains(cudnn_line, ", runtime cuDNN "), cudnn_line);
  CHECK_MESSAGE(contains(cudnn_line, cuda_device_count() > 0 ? ": available (" : ": unavailable ("), cudnn_line);
#else
  CHECK_MESSAGE(contains(cudnn_line, ": unavailable (not built: "), cudnn_line);
#endif
  CHECK(xfrun({"frobnicate"}).rc == 2);
  CHECK(xfrun({}).rc == 2);
  CHECK(xfrun({"validate", "--config"}).rc == 2);
  CHECK(xfrun({"validate", "--no-such-flag"}).rc == 2);
  CHECK(xfrun({"infer"}).rc == 2);  // --checkpoint is required
  const CliRun h = xfrun({"--help"});
  CHECK(h.rc == 0);
  CHECK(contains(h.out, "train"));
}

TEST_CASE("cli train and infer: exit 0, relative paths, metrics, checkpoints, deterministic samples") {
  TempDir dir;
  const std::string cfg = write_tiny(dir);
  TempDir cwd;  // the data path resolves against the config's folder, not the working directory
  const CliRun r = xfrun({"train", "--config", cfg, "--out", "out"}, cwd.path.string());
  INFO(r.err);
  REQUIRE(r.rc == 0);
  CHECK(contains(r.out, "---- sample ----\nto be"));
  // --out is a command-line path: relative to the working directory.
  CHECK(fs::exists(cwd.sub("out/metrics.jsonl")));
  CHECK(fs::exists(cwd.sub("out/checkpoints/step_4/manifest.json")));
  CHECK_FALSE(fs::exists(dir.sub("run")));
  const CliRun a = xfrun({"infer", "--config", cfg, "--checkpoint", cwd.sub("out/checkpoints/step_4"), "--prompt", "not "});
  INFO(a.err);
  REQUIRE(a.rc == 0);
  CHECK(a.out.rfind("not ", 0) == 0);
  CHECK(a.out.size() >= 4 + 8);
  const CliRun b = xfrun({"infer", "--config", cfg, "--checkpoint", cwd.sub("out/checkpoints/step_4"), "--prompt", "not "});
  CHECK(b.out == a.out);
  // A missing checkpoint is a runtime failure: exit 1.
  const CliRun m = xfrun({"infer", "--config", cfg, "--checkpoint", dir.sub("nowhere/step_1")});
  CHECK(m.rc == 1);
  CHECK(contains(m.err, "error:"));
  // Resume from the finished run: nothing left to do, still exit 0.
  const CliRun again = xfrun({"train", "--config", cfg, "--out", "out", "--resume", "auto"}, cwd.path.string());
  CHECK(again.rc == 0);
}

#else

TEST_CASE("cli: skipped (xfrun_cli was not built; XF_CLI_PATH undefined)" * doctest::skip()) {}

#endif
