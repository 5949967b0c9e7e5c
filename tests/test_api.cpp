// The public API (<xfrun/xfrun.h>, <xfrun/xfrun_c.h>): loading from a config and a safetensors checkpoint,
// forward from many threads (bit-identical to serial), checkpoint mismatches named, generation with
// streaming and stop conditions, the C ABI's status codes and thread-local messages, and the installed
// package (a consumer built with find_package against a temporary prefix).
#include <xfrun/xfrun.h>
#include <xfrun/xfrun_c.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <thread>

#include "tests/fixtures.h"
#include "factory/config.h"
#include "factory/predictor.h"
#include "factory/trainer.h"
#include "runtime/checkpoint.h"
#include "runtime/device_context.h"
#include "tests/cuda_testing.h"
#include "runtime/safetensors.h"
#include "temp_dir.h"
#include "testing.h"

using namespace xfr::testing;

namespace {

const char* const kLm = xfr::testing::kTinyLmConfig;

const char* kClassifier = R"(
model:
  task: classification
  num_classes: 4
  stack_configs:
    - num_layers: 1
      dim_model: 16
      position_encoding_config: {name: vocab}
      multi_head_config:
        num_heads: 2
        attention: {name: scaled_dot_product, causal: false}
      feedforward_config: {name: MLP, activation: relu, hidden_layer_multiplier: 2}
data: {kind: majority, seq_len: 12, num_symbols: 4}
)";


// A model built by the factory with larger random weights than the init (logits far from ties), and its
// parameters as named tensors.
struct Reference {
  xfr::Model model;
  std::vector<std::pair<std::string, xfr::Tensor>> tensors;
};
Reference reference(const char* config, int64_t vocab) {
  const xfr::Config cfg = xfr::parse_config(config, "yaml", "<api test>");
  Reference r{xfr::make_model(cfg, vocab, 1, xfr::make_null_logger()), {}};
  auto v = random_doubles(r.model.store->flat_size(), 5, -0.3, 0.3);
  for (size_t i = 0; i < v.size(); ++i) r.model.store->params()[i] = static_cast<float>(v[i]);
  for (const auto& s : r.model.store->slots()) r.tensors.emplace_back(s.name, r.model.store->param(s.name));
  return r;
}

std::string save_weights(const TempDir& dir, const std::vector<std::pair<std::string, xfr::Tensor>>& tensors,
                         const std::string& name = "model.safetensors") {
  xfr::save_safetensors(dir.file(name), tensors);
  return dir.file(name);
}

std::vector<std::vector<int32_t>> random_batch(int n, int64_t max_len, int32_t vocab, uint64_t seed) {
  std::vector<std::vector<int32_t>> b;
  auto r = random_doubles(static_cast<size_t>(n) * (static_cast<size_t>(max_len) + 1), seed, 0.0, 1.0);
  size_t k = 0;
  for (int i = 0; i < n; ++i) {
    const auto len = 1 + static_cast<int64_t>(r[k++] * static_cast<double>(max_len - 1) + 0.5);
    std::vector<int32_t> s;
    for (int64_t t = 0; t < len; ++t) s.push_back(static_cast<int32_t>(r[k++] * (vocab - 1) + 0.5));
    b.push_back(s);
  }
  return b;
}

// Runs body(t) on n threads at once; body returns how many results differed from the expected ones. Checks
// that no thread saw a difference or an exception.
void check_threads_agree(int n, const std::function<int(int)>& body) {
  std::vector<int> mismatches(static_cast<size_t>(n), 0), errors(static_cast<size_t>(n), 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < n; ++t)
    threads.emplace_back([&, t] {
      try {
        mismatches[static_cast<size_t>(t)] = body(t);
      } catch (...) {
        ++errors[static_cast<size_t>(t)];
      }
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < n; ++t) {
    CHECK_MESSAGE(mismatches[static_cast<size_t>(t)] == 0, "thread " << t);
    CHECK_MESSAGE(errors[static_cast<size_t>(t)] == 0, "thread " << t);
  }
}

bool same_bits(const std::vector<xfrun::Array>& a, const std::vector<xfrun::Array>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].shape != b[i].shape || a[i].data.size() != b[i].data.size() ||
        std::memcmp(a[i].data.data(), b[i].data.data(), a[i].data.size() * sizeof(float)) != 0)
      return false;
  return true;
}

}  // namespace

TEST_CASE("api: a model loads from a config and a bare model.safetensors; outputs have the documented shapes") {
  TempDir dir;
  Reference ref = reference(kLm, 18);
  save_weights(dir, ref.tensors);
  // The folder holding model.safetensors, and the file itself.
  for (const std::string& ck : {dir.str(), dir.file("model.safetensors")}) {
    const xfrun::Model m = xfrun::Model::load_string(kLm, "yaml", ck);
    CHECK(m.task() == "causal_lm");
    CHECK(m.vocab_size() == 18);
    CHECK(m.max_length() == 24);
    CHECK(m.hidden_size() == 32);
    CHECK(std::string(xfrun::version()) == "0.1.0");
    xfrun::Session s(m, {3, 0, 1, false});
    const std::vector<std::vector<int32_t>> batch = {{1, 2, 3}, {4}, {5, 6, 7, 8, 9}};
    const auto logits = s.forward(batch, xfrun::Output::logits);
    const auto hidden = s.forward(batch, xfrun::Output::hidden);
    const auto pooled = s.forward(batch, xfrun::Output::pooled);
    REQUIRE(logits.size() == 3);
    CHECK(logits[2].shape == std::vector<int64_t>{5, 18});
    CHECK(hidden[2].shape == std::vector<int64_t>{5, 32});
    CHECK(pooled[2].shape == std::vector<int64_t>{32});
    // Same numbers as the factory's predictor on the same weights.
    xfr::Predictor p(ref.model, nullptr);
    for (size_t i = 0; i < batch.size(); ++i) {
      const std::vector<float> last = p.run(batch[i]);
      const auto L = batch[i].size();
      for (size_t v = 0; v < 18; ++v) CHECK(logits[i].data[(L - 1) * 18 + v] == last[v]);
    }
    // causal_lm pooled: the mean of the hidden states.
    float mean0 = 0;
    for (int t = 0; t < 5; ++t) mean0 += hidden[2].data[static_cast<size_t>(t) * 32];
    CHECK(pooled[2].data[0] == doctest::Approx(mean0 / 5).epsilon(1e-6));
  }
}

TEST_CASE("api: a checkpoint step folder loads; classification gives class logits and pooled features") {
  TempDir dir;
  Reference ref = reference(kClassifier, 4);
  const std::string step = xfr::save_checkpoint(dir.str(), 3, *ref.model.store, nullptr, nlohmann::json::object());
  const xfrun::Model m = xfrun::Model::load_string(kClassifier, "yaml", step);
  CHECK(m.task() == "classification");
  const auto out = m.forward({{0, 1, 2, 3, 3}, {2}}, xfrun::Output::logits);
  CHECK(out[0].shape == std::vector<int64_t>{4});
  CHECK(m.forward({{0, 1}}, xfrun::Output::pooled)[0].shape == std::vector<int64_t>{16});
  // A JSON config as a file works too.
  const std::string json_cfg = dir.write("cfg.json", xfr::to_json(xfr::parse_config(kClassifier, "yaml", "<c>").root).dump());
  const xfrun::Model mj = xfrun::Model::load_file(json_cfg, step);
  CHECK(same_bits(mj.forward({{0, 1, 2, 3, 3}, {2}}, xfrun::Output::logits), out));
}

TEST_CASE("api: forward from 4 threads, one session each on one shared model, equals serial forward bit for bit") {
  TempDir dir;
  Reference ref = reference(kLm, 18);
  save_weights(dir, ref.tensors);
  const xfrun::Model model = xfrun::Model::load_string(kLm, "yaml", dir.str());
  std::vector<std::vector<std::vector<int32_t>>> batches;
  for (int b = 0; b < 8; ++b) batches.push_back(random_batch(4, 24, 18, 100 + static_cast<uint64_t>(b)));
  const xfrun::Output kinds[] = {xfrun::Output::logits, xfrun::Output::hidden, xfrun::Output::pooled};
  std::vector<std::vector<xfrun::Array>> serial;
  {
    xfrun::Session s(model, {4, 24, 1, false});
    for (const auto& b : batches)
      for (auto k : kinds) serial.push_back(s.forward(b, k));
  }
  check_threads_agree(4, [&](int t) {
    int mismatches = 0;
    xfrun::Session s(model, {4, 24, 1, false});
    std::vector<xfrun::Array> out;
    for (int rep = 0; rep < 3; ++rep)
      for (size_t i = 0; i < batches.size(); ++i) {
        const size_t b = (i + static_cast<size_t>(t)) % batches.size();  // a different order per thread
        for (size_t k = 0; k < 3; ++k) {
          s.forward(batches[b], kinds[k], out);
          if (!same_bits(out, serial[b * 3 + k])) ++mismatches;
        }
      }
    return mismatches;
  });
}

TEST_CASE("api: a checkpoint that does not match the config is refused, naming the tensor") {
  Reference ref = reference(kLm, 18);
  auto load_error = [&](const std::vector<std::pair<std::string, xfr::Tensor>>& tensors) {
    TempDir dir;
    save_weights(dir, tensors);
    try {
      xfrun::Model::load_string(kLm, "yaml", dir.str());
    } catch (const xfrun::Error& e) {
      return std::string(e.what());
    }
    return std::string("loaded");
  };
  const std::string victim = ref.tensors[1].first;
  auto missing = ref.tensors;
  missing.erase(missing.begin() + 1);
  const std::string m = load_error(missing);
  CHECK_MESSAGE(contains(m, "missing tensor '" + victim + "'"), m);

  auto extra = ref.tensors;
  extra.emplace_back("encoder.9.bogus.weight", xfr::Tensor::zeros({3}, xfr::DType::f32));
  const std::string x = load_error(extra);
  CHECK_MESSAGE(contains(x, "unexpected tensor 'encoder.9.bogus.weight'"), x);

  auto shaped = ref.tensors;
  shaped[1].second = xfr::Tensor::zeros({ref.tensors[1].second.numel() + 1}, xfr::DType::f32);
  const std::string s = load_error(shaped);
  CHECK_MESSAGE(contains(s, "tensor '" + victim + "' has shape"), s);

  // A config that disagrees (wider model) is refused on the same grounds.
  TempDir dir;
  save_weights(dir, ref.tensors);
  try {
    xfrun::Model::load_string(kLm, "yaml", dir.str(), {});
    xfrun::Model::load_string(std::string(kLm) + "runtime: {seed: 1}\n", "yaml", dir.str());
  } catch (const xfrun::Error& e) {
    FAIL("a matching checkpoint was refused: " << e.what());
  }
  const std::string wider = std::string(kLm).replace(std::string(kLm).find("dim_model: 32"), 13, "dim_model: 48");
  CHECK_THROWS_WITH_AS(xfrun::Model::load_string(wider, "yaml", dir.str()), doctest::Contains("has shape"), xfrun::Error);
  // Missing files, bad devices and bad configs are xfrun::Error too.
  CHECK_THROWS_WITH_AS(xfrun::Model::load_string(kLm, "yaml", dir.file("nope")), doctest::Contains("no such file"), xfrun::Error);
  CHECK_THROWS_WITH_AS(xfrun::Model::load_string(kLm, "yaml", dir.str(), {"gpu"}), doctest::Contains("unknown device 'gpu'"),
                       xfrun::Error);
  if (xfr::cuda_device_count() == 0)
    CHECK_THROWS_WITH_AS(xfrun::Model::load_string(kLm, "yaml", dir.str(), {"cuda"}), doctest::Contains("not available"),
                         xfrun::Error);
  CHECK_THROWS_WITH_AS(xfrun::Model::load_string("model: {tsk: 1}\n", "yaml", dir.str()), doctest::Contains("did you mean"),
                       xfrun::Error);
}

TEST_CASE("api: sessions refuse batches, lengths and tokens beyond their limits") {
  TempDir dir;
  Reference ref = reference(kLm, 18);
  save_weights(dir, ref.tensors);
  const xfrun::Model model = xfrun::Model::load_string(kLm, "yaml", dir.str());
  CHECK_THROWS_WITH_AS(xfrun::Session(model, {1, 25, 1, false}), doctest::Contains("max_length 25"), xfrun::Error);
  xfrun::Session s(model, {2, 8, 1, true});
  CHECK_THROWS_WITH_AS(s.forward({{1}, {2}, {3}}, xfrun::Output::logits), doctest::Contains("a batch of 3"), xfrun::Error);
  CHECK_THROWS_WITH_AS(s.forward({std::vector<int32_t>(9, 1)}, xfrun::Output::logits), doctest::Contains("has 9 tokens"),
                       xfrun::Error);
  CHECK_THROWS_WITH_AS(s.forward({{1}, {2, 18}}, xfrun::Output::logits), doctest::Contains("sequence 1"), xfrun::Error);
  CHECK_THROWS_WITH_AS(s.forward({{}}, xfrun::Output::logits), doctest::Contains("has 0 tokens"), xfrun::Error);
  // Still usable after refusals.
  CHECK(s.forward({{1, 2}}, xfrun::Output::logits)[0].shape == std::vector<int64_t>{2, 18});
}

TEST_CASE("api: generate streams each token and honours max tokens, stop tokens and the callback") {
  TempDir dir;
  Reference ref = reference(kLm, 18);
  save_weights(dir, ref.tensors);
  const xfrun::Model model = xfrun::Model::load_string(kLm, "yaml", dir.str());
  xfrun::Session s(model);
  const std::vector<int32_t> prompt = {16, 3, 7, 1, 9};
  xfrun::GenerateOptions o;
  o.max_new_tokens = 30;  // crosses the 24-position cache restart
  std::vector<int32_t> streamed;
  const auto r = s.generate(prompt, o, [&](int32_t t) {
    streamed.push_back(t);
    return true;
  });
  CHECK(r.reason == xfrun::StopReason::max_tokens);
  REQUIRE(r.tokens.size() == 30);
  CHECK(streamed == r.tokens);
  CHECK(r.tokens == xfr::generate(ref.model, prompt, 30, 0.0, 0, 1.0, 0, nullptr));
  // Without the KV cache: the same tokens (within the first window).
  o.kv_cache = false;
  o.max_new_tokens = 12;
  CHECK(s.generate(prompt, o).tokens == std::vector<int32_t>(r.tokens.begin(), r.tokens.begin() + 12));
  o.kv_cache = true;
  o.max_new_tokens = 30;
  // A stop token: generation ends before it, and it is neither streamed nor returned.
  const int32_t stop = r.tokens[6];
  const auto first = static_cast<size_t>(std::find(r.tokens.begin(), r.tokens.end(), stop) - r.tokens.begin());
  o.stop_tokens = {stop};
  streamed.clear();
  const auto rs = s.generate(prompt, o, [&](int32_t t) {
    streamed.push_back(t);
    return true;
  });
  CHECK(rs.reason == xfrun::StopReason::stop_token);
  CHECK(rs.tokens == std::vector<int32_t>(r.tokens.begin(), r.tokens.begin() + static_cast<int64_t>(first)));
  CHECK(streamed == rs.tokens);
  // The callback stops after the token it returned false for.
  o.stop_tokens.clear();
  int calls = 0;
  const auto rc = s.generate(prompt, o, [&](int32_t) { return ++calls < 3; });
  CHECK(rc.reason == xfrun::StopReason::callback);
  CHECK(rc.tokens == std::vector<int32_t>(r.tokens.begin(), r.tokens.begin() + 3));
  o.max_new_tokens = 0;
  CHECK(s.generate(prompt, o).tokens.empty());
  // Seeded sampling is reproducible across sessions.
  o.max_new_tokens = 20;
  o.temperature = 1.0;
  o.seed = 9;
  xfrun::Session s2(model);
  CHECK(s.generate(prompt, o).tokens == s2.generate(prompt, o).tokens);
  // An exception from the callback comes out as xfrun::Error; the session still works afterwards.
  CHECK_THROWS_AS(s.generate(prompt, o, [](int32_t) -> bool { throw std::runtime_error("client went away"); }), xfrun::Error);
  CHECK(s.generate(prompt, o).tokens.size() == 20);
}

namespace {
int c_callback(int32_t token, void* user) {
  auto* v = static_cast<std::vector<int32_t>*>(user);
  v->push_back(token);
  return v->size() < 4 ? 1 : 0;
}
}  // namespace

TEST_CASE("api: the C ABI returns status codes and thread-local messages, never throws") {
  TempDir dir;
  Reference ref = reference(kLm, 18);
  save_weights(dir, ref.tensors);
  CHECK(std::string(xfrun_version()) == "0.1.0");
  xfrun_model* m = reinterpret_cast<xfrun_model*>(0x1);
  CHECK(xfrun_model_load_string(kLm, "yaml", dir.file("absent").c_str(), "cpu", &m) == XFRUN_ERROR_RUNTIME);
  CHECK(m == nullptr);
  CHECK(contains(xfrun_last_error(), "absent"));
  CHECK(xfrun_model_load_string(kLm, "yaml", dir.str().c_str(), "tpu", &m) == XFRUN_ERROR_RUNTIME);
  CHECK(contains(xfrun_last_error(), "unknown device 'tpu'"));
  CHECK(xfrun_model_load_string("model: [", "yaml", dir.str().c_str(), nullptr, &m) == XFRUN_ERROR_RUNTIME);
  CHECK(xfrun_model_load_file(nullptr, dir.str().c_str(), nullptr, &m) == XFRUN_ERROR_INVALID_ARGUMENT);
  CHECK(xfrun_model_load_file("x", "y", nullptr, nullptr) == XFRUN_ERROR_INVALID_ARGUMENT);
  // The message is per thread: another thread's failure does not replace this one's.
  const std::string mine = xfrun_last_error();
  std::thread([&] {
    xfrun_model* other = nullptr;
    CHECK(xfrun_model_load_string(kLm, "json", dir.str().c_str(), nullptr, &other) == XFRUN_ERROR_RUNTIME);
    CHECK(std::string(xfrun_last_error()) != mine);
  }).join();
  CHECK(std::string(xfrun_last_error()) == mine);

  REQUIRE(xfrun_model_load_string(kLm, "yaml", dir.str().c_str(), "cpu", &m) == XFRUN_OK);
  const char* task = nullptr;
  int64_t V = 0, T = 0, C = 0;
  CHECK(xfrun_model_info(m, &task, &V, &T, &C) == XFRUN_OK);
  CHECK(std::string(task) == "causal_lm");
  CHECK((V == 18 && T == 24 && C == 32));
  xfrun_session* s = nullptr;
  CHECK(xfrun_session_create(m, 2, 100, 1, &s) == XFRUN_ERROR_RUNTIME);
  CHECK(contains(xfrun_last_error(), "max_length 100"));
  REQUIRE(xfrun_session_create(m, 2, 0, 1, &s) == XFRUN_OK);
  xfrun_model_free(m);  // the session keeps the weights alive

  const int32_t tokens[] = {1, 2, 3};
  size_t needed = 0;
  CHECK(xfrun_session_forward(s, tokens, 3, XFRUN_OUTPUT_LOGITS, nullptr, 0, &needed) == XFRUN_ERROR_BUFFER_TOO_SMALL);
  CHECK(needed == 3 * 18);
  std::vector<float> logits(needed);
  CHECK(xfrun_session_forward(s, tokens, 3, XFRUN_OUTPUT_LOGITS, logits.data(), logits.size(), &needed) == XFRUN_OK);
  xfr::Predictor p(ref.model, nullptr);
  const auto last = p.run({1, 2, 3});
  for (size_t v = 0; v < 18; ++v) CHECK(logits[2 * 18 + v] == last[v]);
  const int32_t bad[] = {1, 99};
  CHECK(xfrun_session_forward(s, bad, 2, XFRUN_OUTPUT_LOGITS, logits.data(), logits.size(), nullptr) == XFRUN_ERROR_RUNTIME);
  CHECK(contains(xfrun_last_error(), "token 99"));
  CHECK(xfrun_session_forward(s, tokens, 3, static_cast<xfrun_output>(7), logits.data(), logits.size(), nullptr) ==
        XFRUN_ERROR_INVALID_ARGUMENT);
  CHECK(xfrun_session_forward(nullptr, tokens, 3, XFRUN_OUTPUT_LOGITS, logits.data(), logits.size(), nullptr) ==
        XFRUN_ERROR_INVALID_ARGUMENT);

  xfrun_generate_options o = xfrun_generate_default_options();
  o.max_new_tokens = 10;
  std::vector<int32_t> streamed;
  int32_t out[10];
  size_t count = 0;
  xfrun_stop_reason reason = XFRUN_STOP_MAX_TOKENS;
  CHECK(xfrun_session_generate(s, tokens, 3, &o, c_callback, &streamed, out, 10, &count, &reason) == XFRUN_OK);
  CHECK(count == 4);
  CHECK(reason == XFRUN_STOP_CALLBACK);
  CHECK(std::vector<int32_t>(out, out + 4) == streamed);
  CHECK(streamed == xfr::generate(ref.model, {1, 2, 3}, 4, 0.0, 0, 1.0, 0, nullptr));
  o.stop_tokens = &streamed[2];
  o.num_stop_tokens = 1;
  CHECK(xfrun_session_generate(s, tokens, 3, &o, nullptr, nullptr, out, 10, &count, &reason) == XFRUN_OK);
  CHECK(reason == XFRUN_STOP_TOKEN);
  CHECK(count <= 2);
  xfrun_session_free(s);
  xfrun_session_free(nullptr);
  xfrun_model_free(nullptr);
}

#if defined(XF_API_INSTALL_SCRIPT)
TEST_CASE("api: an installed tree builds and runs a find_package(xfrun) consumer") {
  if (std::getenv("XF_SKIP_INSTALL_TEST")) return;
  TempDir dir;
  const std::string cmd = std::string("timeout 300 bash ") + XF_API_INSTALL_SCRIPT + " " + XF_API_BUILD_DIR + " " +
                          dir.str() + " > " + dir.file("log.txt") + " 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream log(dir.file("log.txt"));
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  CHECK_MESSAGE(rc == 0, text);
  CHECK_MESSAGE(contains(text, "consumer: ok"), text);
}
#endif

XF_CUDA_TEST_CASE("api: a model on the GPU gives the CPU's outputs, shared by 4 threads, and generates") {
  TempDir dir;
  Reference ref = reference(kLm, 18);
  save_weights(dir, ref.tensors);
  const xfrun::Model cpu = xfrun::Model::load_string(kLm, "yaml", dir.str());
  const xfrun::Model gpu = xfrun::Model::load_string(kLm, "yaml", dir.str(), {"cuda"});
  CHECK(gpu.device() == "cuda:0");
  const auto batch = random_batch(3, 24, 18, 7);
  const xfrun::Output kinds[] = {xfrun::Output::logits, xfrun::Output::hidden, xfrun::Output::pooled};
  xfrun::Session sc(cpu, {3, 24, 1, false}), sg(gpu, {3, 24, 1, false});
  std::vector<std::vector<xfrun::Array>> want;
  for (auto k : kinds) {
    const auto a = sc.forward(batch, k), b = sg.forward(batch, k);
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].shape == b[i].shape);
      std::vector<double> x(a[i].data.begin(), a[i].data.end()), y(b[i].data.begin(), b[i].data.end());
      // fp32 on both; cuBLASLt and flash-attention sums in other orders than OpenBLAS and the CPU kernels.
      xfr::testing::check_close(y, x, 1e-4, 1e-3, "gpu vs cpu forward");
    }
    want.push_back(b);
  }
  // Four threads, a session each, on the one GPU model: every result equals the serial GPU result.
  check_threads_agree(4, [&](int) {
    int mismatches = 0;
    xfrun::Session s(gpu, {3, 24, 1, false});
    for (int rep = 0; rep < 3; ++rep)
      for (size_t k = 0; k < 3; ++k)
        if (!same_bits(s.forward(batch, kinds[k]), want[k])) ++mismatches;
    return mismatches;
  });
  // Generation on the GPU, with and without the KV cache: the same number of tokens, valid ids.
  for (bool kv : {true, false}) {
    xfrun::GenerateOptions o;
    o.max_new_tokens = 12;
    o.kv_cache = kv;
    const auto r = sg.generate({1, 2, 3}, o);
    CHECK(r.tokens.size() == 12);
    for (int32_t id : r.tokens) CHECK((id >= 0 && id < 18));
  }
}
