// Training checkpoints: bit-exact round trip of parameters and AdamW state, refusal of mismatched
// models, skipping of interrupted or damaged saves, pruning.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "temp_dir.h"
#include "runtime/checkpoint.h"
#include "runtime/error.h"
#include "runtime/file_io.h"
#include "runtime/graph.h"
#include "runtime/optimizer.h"
#include "runtime/param_store.h"
#include "runtime/safetensors.h"

using namespace xfr;
namespace fs = std::filesystem;

namespace {

using xfr::testing::TempDir;

struct ParamSpec {
  std::string name;
  Shape shape;
  ParamKind kind;
};

// The parameters of a small model (odd sizes, so the 16-element padding between slots is exercised).
std::vector<ParamSpec> model_spec() {
  return {{"embed.weight", {11, 6}, ParamKind::embedding},
          {"block.0.attn.q_proj.weight", {6, 6}, ParamKind::weight},
          {"block.0.attn.q_proj.bias", {6}, ParamKind::bias},
          {"block.0.norm.weight", {6}, ParamKind::norm},
          {"head.weight", {6, 3}, ParamKind::weight},
          {"head.gain", {}, ParamKind::other}};
}

// A graph holding just these parameters, its store and an optimizer over it.
struct Model {
  Graph graph;
  std::unique_ptr<ParamStore> store;
  std::unique_ptr<Optimizer> opt;
  explicit Model(const std::vector<ParamSpec>& spec, const std::string& optimizer = "adamw") {
    for (const auto& p : spec) graph.param(p.name, p.shape, p.kind);
    store = std::make_unique<ParamStore>(graph);
    OptimizerConfig c;
    c.name = optimizer;
    c.weight_decay = 0.1f;
    opt = make_optimizer(c, store->slots(), store->flat_size());
  }
};

void fill_random(float* p, const std::vector<ParamSlot>& slots, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (const auto& s : slots)
    for (size_t i = 0; i < s.numel; ++i) p[s.offset + i] = dist(rng);
}

// A few optimizer steps with random gradients, so every state buffer holds distinct, non-trivial values.
void train(Model& m, int steps, uint64_t seed) {
  for (int k = 0; k < steps; ++k) {
    fill_random(m.store->grads(), m.store->slots(), seed + static_cast<uint64_t>(k));
    m.opt->step(m.store->params(), m.store->grads(), 1e-2f, nullptr);
  }
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

void check_same_state(Model& a, Model& b) {
  CHECK(same_bits(a.store->params(), b.store->params(), a.store->flat_size()));
  auto sa = a.opt->state(), sb = b.opt->state();
  REQUIRE(sa.size() == sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    CHECK(sa[i].first == sb[i].first);
    REQUIRE(sa[i].second->size() == sb[i].second->size());
    CHECK_MESSAGE(same_bits(sa[i].second->data(), sb[i].second->data(), sa[i].second->size()), sa[i].first);
  }
  CHECK(a.opt->step_count() == b.opt->step_count());
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    FAIL_CHECK("accepted, expected an error containing '" << needle << "'");
  } catch (const Error& e) {
    CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, "got '" << e.what() << "'");
  }
}

}  // namespace

TEST_CASE("checkpoint: ParamStore and AdamW state round trip bit-exactly, and training continues identically") {
  TempDir tmp;
  Model a(model_spec());
  fill_random(a.store->params(), a.store->slots(), 1);
  train(a, 3, 100);
  const nlohmann::json state = {{"step", 3}, {"data", {{"split", "train"}, {"position", 12345}}},
                                {"rng", {{"seed", 42}, {"runs", 3}}}, {"loss_scale", 65536.0}};
  const std::string dir = save_checkpoint(tmp.str(), 3, *a.store, a.opt.get(), state);
  CHECK(dir == checkpoint_dir(tmp.str(), 3));
  CHECK(fs::path(dir) == tmp.path / "checkpoints" / "step_3");
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "state.json", "manifest.json"})
    CHECK_MESSAGE(fs::exists(fs::path(dir) / f), f);

  Model b(model_spec());
  const LoadedCheckpoint loaded = load_checkpoint(dir, *b.store, b.opt.get());
  CHECK(loaded.step == 3);
  CHECK(loaded.state == state);
  check_same_state(a, b);

  // The next steps from the restored state are the same as from the original.
  train(a, 2, 900);
  train(b, 2, 900);
  check_same_state(a, b);

  SUBCASE("the files are plain safetensors with the expected names, shapes and metadata") {
    const auto model = load_safetensors((fs::path(dir) / "model.safetensors").string());
    CHECK(model.metadata.at("format") == "pt");
    CHECK(model.tensors.size() == model_spec().size());
    for (const auto& p : model_spec()) {
      CHECK(model.get(p.name).shape() == p.shape);
      CHECK(model.get(p.name).dtype() == DType::f32);
    }
    const auto opt = load_safetensors((fs::path(dir) / "optimizer.safetensors").string());
    CHECK(opt.metadata.at("optimizer") == "adamw");
    CHECK(opt.metadata.at("step_count") == "3");
    CHECK(opt.tensors.size() == 2 * model_spec().size());
    CHECK(opt.get("exp_avg.head.weight").shape() == Shape{6, 3});
    CHECK(opt.get("exp_avg_sq.head.gain").shape() == Shape{});

    // The manifest's sizes and CRC-32s describe the files.
    const auto mbytes = read_file((fs::path(dir) / "manifest.json").string());
    const auto manifest = nlohmann::json::parse(mbytes.begin(), mbytes.end());
    CHECK(manifest.at("step") == 3);
    CHECK(manifest.at("files").size() == 3);
    for (auto it = manifest.at("files").begin(); it != manifest.at("files").end(); ++it) {
      const auto bytes = read_file((fs::path(dir) / it.key()).string());
      CHECK(it.value().at("size") == bytes.size());
      char hex[9];
      std::snprintf(hex, sizeof hex, "%08x", crc32(bytes.data(), bytes.size()));
      CHECK(it.value().at("crc32") == std::string(hex));
    }
  }
  SUBCASE("a checkpoint with optimizer state loads into a model without an optimizer") {
    Model c(model_spec());
    load_checkpoint(dir, *c.store, nullptr);
    Model fresh(model_spec());
    fill_random(fresh.store->params(), fresh.store->slots(), 1);
    train(fresh, 3, 100);
    CHECK(same_bits(c.store->params(), fresh.store->params(), c.store->flat_size()));
  }
  SUBCASE("re-saving the same step replaces it") {
    save_checkpoint(tmp.str(), 3, *a.store, a.opt.get(), {{"step", 5}});
    Model c(model_spec());
    CHECK(load_checkpoint(dir, *c.store, c.opt.get()).state.at("step") == 5);
    check_same_state(a, c);
  }
}

TEST_CASE("checkpoint: a missing, extra or mis-shaped tensor is refused by name, and nothing is modified") {
  TempDir tmp;
  Model a(model_spec());
  fill_random(a.store->params(), a.store->slots(), 7);
  train(a, 1, 8);
  const std::string dir = save_checkpoint(tmp.str(), 1, *a.store, a.opt.get(), nlohmann::json::object());

  auto check_untouched = [](Model& m) {
    for (size_t i = 0; i < m.store->flat_size(); ++i) REQUIRE(m.store->params()[i] == 0.0f);
    for (auto& [name, buf] : m.opt->state())
      for (float v : *buf) REQUIRE(v == 0.0f);
    CHECK(m.opt->step_count() == 0);
  };
  SUBCASE("mis-shaped") {
    auto spec = model_spec();
    spec[4].shape = {3, 6};  // head.weight transposed: same element count, other shape
    Model b(spec);
    expect_error([&] { load_checkpoint(dir, *b.store, b.opt.get()); }, "'head.weight' has shape (6, 3), expected (3, 6)");
    check_untouched(b);
  }
  SUBCASE("missing from the checkpoint") {
    auto spec = model_spec();
    spec.push_back({"head.bias", {3}, ParamKind::bias});
    Model b(spec);
    expect_error([&] { load_checkpoint(dir, *b.store, b.opt.get()); }, "missing tensor 'head.bias'");
    check_untouched(b);
  }
  SUBCASE("extra in the checkpoint") {
    auto spec = model_spec();
    spec.erase(spec.begin());  // no embed.weight in this model
    Model b(spec);
    expect_error([&] { load_checkpoint(dir, *b.store, b.opt.get()); }, "unexpected tensor 'embed.weight'");
    check_untouched(b);
  }
  SUBCASE("another optimizer") {
    Model b(model_spec(), "sgd");
    expect_error([&] { load_checkpoint(dir, *b.store, b.opt.get()); }, "holds 'adamw' state but the optimizer is 'sgd'");
    for (size_t i = 0; i < b.store->flat_size(); ++i) REQUIRE(b.store->params()[i] == 0.0f);
  }
  SUBCASE("no optimizer state saved") {
    const std::string d2 = save_checkpoint(tmp.str(), 2, *a.store, nullptr, nlohmann::json::object());
    CHECK(!fs::exists(fs::path(d2) / "optimizer.safetensors"));
    Model b(model_spec());
    expect_error([&] { load_checkpoint(d2, *b.store, b.opt.get()); }, "has no optimizer state");
    load_checkpoint(d2, *b.store, nullptr);
    CHECK(same_bits(a.store->params(), b.store->params(), a.store->flat_size()));
  }
}

TEST_CASE("checkpoint: SGD momentum state round trips; plain SGD has none") {
  TempDir tmp;
  for (float momentum : {0.9f, 0.0f}) {
    auto make = [&] {
      auto m = std::make_unique<Model>(model_spec(), "sgd");
      OptimizerConfig c;
      c.name = "sgd";
      c.momentum = momentum;
      m->opt = make_optimizer(c, m->store->slots(), m->store->flat_size());
      return m;
    };
    auto a = make();
    fill_random(a->store->params(), a->store->slots(), 3);
    train(*a, 2, 30);
    const int64_t step = momentum == 0.0f ? 20 : 10;
    const std::string dir = save_checkpoint(tmp.str(), step, *a->store, a->opt.get(), {{"m", momentum}});
    auto b = make();
    load_checkpoint(dir, *b->store, b->opt.get());
    check_same_state(*a, *b);
    const auto opt = load_safetensors((fs::path(dir) / "optimizer.safetensors").string());
    CHECK(opt.tensors.size() == (momentum == 0.0f ? 0u : model_spec().size()));
  }
}

TEST_CASE("checkpoint: find_latest_checkpoint skips incomplete and damaged saves") {
  TempDir tmp;
  CHECK(!find_latest_checkpoint(tmp.str()).has_value());               // no checkpoints folder
  CHECK(!find_latest_checkpoint((tmp.path / "absent").string()).has_value());
  Model a(model_spec());
  for (int64_t s : {1, 2, 3, 10}) {
    train(a, 1, static_cast<uint64_t>(s));
    save_checkpoint(tmp.str(), s, *a.store, a.opt.get(), {{"step", s}});
  }
  // Numeric order, not lexicographic: step_10 is the newest.
  CHECK(find_latest_checkpoint(tmp.str()) == checkpoint_dir(tmp.str(), 10));

  // An interrupted save: no manifest.
  fs::remove(fs::path(checkpoint_dir(tmp.str(), 10)) / "manifest.json");
  CHECK(find_latest_checkpoint(tmp.str()) == checkpoint_dir(tmp.str(), 3));
  Model b(model_spec());
  expect_error([&] { load_checkpoint(checkpoint_dir(tmp.str(), 10), *b.store, b.opt.get()); }, "no manifest.json");

  // A corrupted byte (same size): the CRC-32 catches it.
  {
    const std::string f = (fs::path(checkpoint_dir(tmp.str(), 3)) / "model.safetensors").string();
    auto bytes = read_file(f);
    bytes[bytes.size() - 5] ^= 0x10;
    write_file_atomic(f, bytes.data(), bytes.size());
  }
  CHECK(find_latest_checkpoint(tmp.str()) == checkpoint_dir(tmp.str(), 2));
  expect_error([&] { load_checkpoint(checkpoint_dir(tmp.str(), 3), *b.store, b.opt.get()); }, "does not match the manifest");

  // A truncated file.
  fs::resize_file(fs::path(checkpoint_dir(tmp.str(), 2)) / "optimizer.safetensors", 100);
  CHECK(find_latest_checkpoint(tmp.str()) == checkpoint_dir(tmp.str(), 1));

  // A missing file listed in the manifest, and a garbled manifest.
  fs::remove(fs::path(checkpoint_dir(tmp.str(), 1)) / "state.json");
  CHECK(!find_latest_checkpoint(tmp.str()).has_value());

  // Folders that are not step_<N> are ignored.
  fs::create_directories(tmp.path / "checkpoints" / "step_x");
  fs::create_directories(tmp.path / "checkpoints" / "step_99.tmp");
  const std::string d = save_checkpoint(tmp.str(), 4, *a.store, a.opt.get(), {{"step", 4}});
  CHECK(find_latest_checkpoint(tmp.str()) == d);
  write_file_atomic((fs::path(d) / "manifest.json").string(), std::string("{not json"));
  CHECK(!find_latest_checkpoint(tmp.str()).has_value());
  CHECK_THROWS_AS(verify_checkpoint(d), Error);
}

TEST_CASE("checkpoint: prune keeps the newest") {
  TempDir tmp;
  Model a(model_spec());
  for (int64_t s = 1; s <= 5; ++s) save_checkpoint(tmp.str(), s * 100, *a.store, a.opt.get(), {{"step", s}});
  fs::create_directories(checkpoint_dir(tmp.str(), 50));   // an old interrupted save (no manifest)
  fs::create_directories(checkpoint_dir(tmp.str(), 600));  // newer than any complete one: maybe in progress
  auto remaining = [&] {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(tmp.path / "checkpoints")) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  };
  prune_checkpoints(tmp.str(), 0);  // 0 keeps everything
  CHECK(remaining().size() == 7);
  prune_checkpoints(tmp.str(), 2);
  CHECK(remaining() == std::vector<std::string>{"step_400", "step_500", "step_600"});
  CHECK(find_latest_checkpoint(tmp.str()) == checkpoint_dir(tmp.str(), 500));
  prune_checkpoints(tmp.str(), 5);  // fewer than `keep`: nothing to remove
  CHECK(remaining().size() == 3);
  prune_checkpoints(tmp.str(), 1);
  CHECK(remaining() == std::vector<std::string>{"step_500", "step_600"});
  CHECK_THROWS_AS(prune_checkpoints(tmp.str(), -1), Error);
  prune_checkpoints((tmp.path / "absent").string(), 1);  // nothing there: no error
}
