// The public C++ API over the factory: Model wraps a loaded xfr::Model (read-only once loaded), Session
// owns a Predictor (per-length forward graphs) and a Generator (the decode graph and its KV cache).
#include "xfrun/xfrun.h"

#include <algorithm>
#include <filesystem>
#include <new>

#include <nlohmann/json.hpp>

#include "factory/config.h"
#include "factory/generator.h"
#include "factory/predictor.h"
#include "factory/schema.h"
#include "factory/trainer.h"
#include "runtime/checkpoint.h"
#include "runtime/cpu/threadpool.h"
#include "runtime/error.h"
#include "runtime/file_io.h"
#include "runtime/logging.h"

namespace xfrun {

namespace fs = std::filesystem;

namespace {

// Runs f, turning every library exception into xfrun::Error.
template <class F>
auto guarded(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const xfr::Error& e) {
    throw Error(e.what());
  } catch (const std::bad_alloc&) {
    throw Error("out of memory");
  } catch (const std::exception& e) {
    throw Error(e.what());
  }
}

}  // namespace

namespace detail {

struct ModelImpl {
  xfr::Model model;
  std::string task, device;
  int64_t vocab = 0, max_len = 0, hidden = 0, classes = 0;
  std::shared_ptr<const xfr::Tokenizer> tokenizer;  // null: none
  std::string tokenizer_kind;                       // "byte", "char" or ""
  std::string no_tokenizer;                         // why there is none
};

struct SessionImpl {
  Model model;
  SessionOptions options;
  std::unique_ptr<xfr::ThreadPool> pool;
  std::shared_ptr<xfr::DeviceContext> device_ctx;  // a GPU model: this session's own stream and pool
  std::unique_ptr<xfr::Predictor> predictor;
  std::unique_ptr<xfr::Generator> generator;
  bool generator_kv = true;

  SessionImpl(const Model& m, const SessionOptions& o) : model(m), options(o) {}
};

}  // namespace detail

const char* version() { return xfr::xfrun_version(); }

namespace {

// The vocabulary size and the text tokenizer: model.vocab_size or the checkpoint's state.json tokenizer or
// the config's data; the tokenizer from state.json, else from text data (a char vocabulary needs the text).
struct Vocabulary {
  int64_t size = 0;
  std::shared_ptr<const xfr::Tokenizer> tokenizer;
  std::string no_tokenizer;
};

Vocabulary resolve_vocab(const xfr::Config& cfg, const std::string& checkpoint) {
  Vocabulary v;
  const xfr::ConfigNode& model = cfg.root.at("model");
  if (xfr::has_value(model, "vocab_size")) v.size = xfr::get_int(model, "vocab_size");
  std::error_code ec;
  const fs::path state = fs::path(checkpoint) / "state.json";
  if (fs::is_directory(checkpoint, ec) && fs::is_regular_file(state, ec)) {
    const std::vector<uint8_t> bytes = xfr::read_file(state.string());
    const nlohmann::json j = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("tokenizer") && j["tokenizer"].is_object()) {
      const nlohmann::json& t = j["tokenizer"];
      if (v.size == 0 && t.contains("vocab_size") && t["vocab_size"].is_number_integer())
        v.size = t["vocab_size"].get<int64_t>();
      try {
        v.tokenizer = std::make_shared<const xfr::Tokenizer>(xfr::Tokenizer::from_json(t));
      } catch (const std::exception& e) {
        v.no_tokenizer = state.string() + ": " + e.what();
      }
      if (v.tokenizer) return v;
    }
  }
  const xfr::ConfigNode& data = cfg.root.at("data");
  const bool text = xfr::get_string(data, "kind") == "text";
  if (text && xfr::get_string(data, "tokenizer") == "byte") {
    v.tokenizer = std::make_shared<const xfr::Tokenizer>(xfr::Tokenizer::byte_level());
    if (v.size == 0) v.size = v.tokenizer->vocab_size();
    return v;
  }
  if (v.size != 0 && !text) {
    if (v.no_tokenizer.empty()) v.no_tokenizer = "the checkpoint carries none and the config's data is not text";
    return v;
  }
  if (v.size != 0) {  // a char tokenizer from the training text, if it can be read
    try {
      const xfr::LoadedData d = xfr::load_data(cfg);
      v.tokenizer = d.tokenizer;
    } catch (const std::exception& e) {
      v.no_tokenizer = std::string("the checkpoint carries none and the config's text data cannot be read: ") + e.what();
    }
    return v;
  }
  const xfr::LoadedData d = xfr::load_data(cfg);
  v.size = d.vocab_size;
  v.tokenizer = d.tokenizer;
  if (!v.tokenizer) v.no_tokenizer = "the checkpoint carries none and the config's data is not text";
  return v;
}

void load_weights(const std::string& checkpoint, xfr::ParamStore& store) {
  std::error_code ec;
  const fs::path p(checkpoint);
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "manifest.json", ec)) {
      xfr::load_checkpoint(checkpoint, store, nullptr);
    } else if (fs::is_regular_file(p / "model.safetensors", ec)) {
      xfr::load_model_weights((p / "model.safetensors").string(), store);
    } else {
      throw Error("[checkpoint] " + checkpoint + ": holds neither a manifest.json (a checkpoint step folder) nor a model.safetensors");
    }
  } else if (fs::is_regular_file(p, ec)) {
    xfr::load_model_weights(checkpoint, store);
  } else {
    throw Error("[checkpoint] " + checkpoint + ": no such file or folder");
  }
}

std::shared_ptr<const detail::ModelImpl> load(const xfr::Config& cfg, const std::string& checkpoint,
                                              const LoadOptions& options) {
  // "cpu", "cuda", "cuda:N" or "auto"; a device that is not there is an error naming why.
  const xfr::Device device = xfr::resolve_device(options.device, "LoadOptions.device");
  auto impl = std::make_shared<detail::ModelImpl>();
  Vocabulary vocab = resolve_vocab(cfg, checkpoint);
  impl->model = xfr::make_model(cfg, vocab.size, 1, xfr::make_null_logger());
  impl->tokenizer = std::move(vocab.tokenizer);
  impl->tokenizer_kind = impl->tokenizer ? impl->tokenizer->kind_name() : "";
  impl->no_tokenizer = std::move(vocab.no_tokenizer);
  load_weights(checkpoint, *impl->model.store);
  xfr::place_on_device(impl->model, device);  // a GPU: the weights copied once, shared by every session
  impl->task = xfr::get_string(impl->model.model_config, "task");
  impl->device = device.str();
  impl->vocab = impl->model.train_graph.vocab_size;
  impl->max_len = impl->model.train_graph.tokens.dim(1);
  impl->hidden = impl->model.train_graph.hidden.dim(2);
  impl->classes = impl->task == "classification" ? impl->model.train_graph.logits.dim(1) : 0;
  // Only the parameters are needed from here on: drop the training graph's gradient memory.
  impl->model.eval_graph = xfr::BuiltModel{};
  return impl;
}

}  // namespace

Model::Model(std::shared_ptr<const detail::ModelImpl> impl) : impl_(std::move(impl)) {}

Model Model::load_file(const std::string& config_path, const std::string& checkpoint, const LoadOptions& options) {
  return guarded([&] { return Model(load(xfr::load_config(config_path), checkpoint, options)); });
}

Model Model::load_string(const std::string& text, const std::string& format, const std::string& checkpoint,
                         const LoadOptions& options) {
  return guarded([&] {
    if (format != "yaml" && format != "json") throw Error("[config] format '" + format + "': expected \"yaml\" or \"json\"");
    return Model(load(xfr::parse_config(text, format, "<string>"), checkpoint, options));
  });
}

const std::string& Model::task() const { return impl_->task; }
int64_t Model::vocab_size() const { return impl_->vocab; }
int64_t Model::max_length() const { return impl_->max_len; }
int64_t Model::hidden_size() const { return impl_->hidden; }
const std::string& Model::device() const { return impl_->device; }
const std::string& Model::tokenizer() const { return impl_->tokenizer_kind; }

std::vector<int32_t> Model::encode(const std::string& text) const {
  return guarded([&] {
    if (!impl_->tokenizer) throw Error("[tokenizer] this model has no tokenizer: " + impl_->no_tokenizer);
    return impl_->tokenizer->encode(text);
  });
}

std::string Model::decode(const std::vector<int32_t>& tokens) const {
  return guarded([&] {
    if (!impl_->tokenizer) throw Error("[tokenizer] this model has no tokenizer: " + impl_->no_tokenizer);
    return impl_->tokenizer->decode(tokens);
  });
}
int64_t Model::output_size(Output what) const {
  if (what == Output::logits) return impl_->task == "classification" ? impl_->classes : impl_->vocab;
  return impl_->hidden;
}

std::vector<Array> Model::forward(const std::vector<std::vector<int32_t>>& batch, Output what) const {
  SessionOptions o;
  o.max_batch = std::max<int64_t>(1, static_cast<int64_t>(batch.size()));
  Session s(*this, o);
  return s.forward(batch, what);
}

Session::Session(const Model& model, const SessionOptions& options) {
  guarded([&] {
    SessionOptions o = options;
    if (o.max_length == 0) o.max_length = model.max_length();
    XF_CHECK(o.max_batch >= 1, "session", "max_batch must be at least 1, not ", o.max_batch);
    XF_CHECK(o.max_length >= 1 && o.max_length <= model.max_length(), "session", "max_length ", o.max_length,
             " is outside 1..", model.max_length(), " (the model's)");
    XF_CHECK(o.threads >= 1, "session", "threads must be at least 1, not ", o.threads);
    auto impl = std::make_unique<detail::SessionImpl>(model, o);
    if (o.threads > 1) impl->pool = std::make_unique<xfr::ThreadPool>(o.threads);
    // A GPU model: this session's own context (stream, pool, scratch), reading the model's device weights.
    if (model.impl_->model.device_ctx) impl->device_ctx = xfr::make_device_context(model.impl_->model.device_ctx->device());
    impl->predictor = std::make_unique<xfr::Predictor>(model.impl_->model, impl->pool.get(), impl->device_ctx);
    if (o.precompile) {
      for (int64_t L = 1; L <= o.max_length; ++L) impl->predictor->prepare(L);
      if (model.task() == "causal_lm")
        impl->generator = std::make_unique<xfr::Generator>(model.impl_->model, impl->pool.get(), true, impl->device_ctx);
    }
    impl_ = std::move(impl);
  });
}

Session::~Session() = default;
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;

const Model& Session::model() const { return impl_->model; }
const SessionOptions& Session::options() const { return impl_->options; }

void Session::forward(const std::vector<std::vector<int32_t>>& batch, Output what, std::vector<Array>& out) {
  guarded([&] {
    XF_CHECK(impl_ != nullptr, "session", "this session was moved from");
    const SessionOptions& o = impl_->options;
    const auto n = static_cast<int64_t>(batch.size());
    XF_CHECK(n >= 1 && n <= o.max_batch, "session", "a batch of ", n, " sequences; this session takes 1 to ", o.max_batch);
    for (int64_t i = 0; i < n; ++i) {
      const auto L = static_cast<int64_t>(batch[static_cast<size_t>(i)].size());
      XF_CHECK(L >= 1 && L <= o.max_length, "session", "sequence ", i, " has ", L, " tokens; this session takes 1 to ",
               o.max_length);
    }
    const detail::ModelImpl& m = *impl_->model.impl_;
    out.resize(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      const auto L = static_cast<int64_t>(batch[i].size());
      xfr::Predictor::Outputs r;
      try {
        r = impl_->predictor->forward(batch[i].data(), L);
      } catch (const xfr::Error& e) {
        throw Error(xfr::str_cat("sequence ", i, ": ", e.what()));
      }
      Array& a = out[i];
      if (what == Output::logits) {
        const float* p = r.logits.data<float>();
        a.data.assign(p, p + r.logits.numel());
        if (m.task == "classification") a.shape.assign({m.classes});
        else a.shape.assign({L, m.vocab});
      } else if (what == Output::hidden) {
        const float* p = r.hidden.data<float>();
        a.data.assign(p, p + r.hidden.numel());
        a.shape.assign({L, m.hidden});
      } else if (r.pooled.defined()) {
        const float* p = r.pooled.data<float>();
        a.data.assign(p, p + r.pooled.numel());
        a.shape.assign({m.hidden});
      } else {  // causal_lm: the mean of the hidden states over the positions
        const float* h = r.hidden.data<float>();
        a.data.assign(static_cast<size_t>(m.hidden), 0.0f);
        for (int64_t t = 0; t < L; ++t)
          for (int64_t c = 0; c < m.hidden; ++c) a.data[static_cast<size_t>(c)] += h[t * m.hidden + c];
        for (float& v : a.data) v /= static_cast<float>(L);
        a.shape.assign({m.hidden});
      }
    }
  });
}

std::vector<Array> Session::forward(const std::vector<std::vector<int32_t>>& batch, Output what) {
  std::vector<Array> out;
  forward(batch, what, out);
  return out;
}

void Session::generate(const std::vector<int32_t>& prompt, const GenerateOptions& options, const TokenCallback& on_token,
                       GenerateResult& result) {
  guarded([&] {
    XF_CHECK(impl_ != nullptr, "session", "this session was moved from");
    const detail::ModelImpl& m = *impl_->model.impl_;
    XF_CHECK(m.task == "causal_lm", "generate", "only causal_lm models generate; this one is ", m.task);
    XF_CHECK(options.max_new_tokens >= 0, "generate", "max_new_tokens must be >= 0, not ", options.max_new_tokens);
    if (!impl_->generator || impl_->generator_kv != options.kv_cache) {
      impl_->generator.reset();
      impl_->generator = std::make_unique<xfr::Generator>(m.model, impl_->pool.get(), options.kv_cache, impl_->device_ctx);
      impl_->generator_kv = options.kv_cache;
    }
    xfr::SamplingOptions s;
    s.temperature = options.temperature;
    s.top_k = options.top_k;
    s.top_p = options.top_p;
    s.seed = options.seed;
    result.reason = StopReason::max_tokens;
    bool stopped_on_token = false;
    std::function<bool(int32_t)> cb = [&](int32_t t) {
      if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), t) != options.stop_tokens.end()) {
        stopped_on_token = true;
        return false;
      }
      if (on_token && !on_token(t)) {
        result.reason = StopReason::callback;
        return false;
      }
      return true;
    };
    impl_->generator->run(prompt, options.max_new_tokens, s, cb, result.tokens);
    if (stopped_on_token) {
      result.tokens.pop_back();
      result.reason = StopReason::stop_token;
    }
  });
}

GenerateResult Session::generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                                 const TokenCallback& on_token) {
  GenerateResult r;
  generate(prompt, options, on_token, r);
  return r;
}

}  // namespace xfrun
