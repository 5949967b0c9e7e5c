// xfrun_server: an example HTTP service over the public API (<xfrun/xfrun.h> only, as a user's service
// would be written), answering in OpenAI's JSON shapes:
//
//   GET  /health           status, model, limits, request counts
//   GET  /v1/models        the one model, as OpenAI's model list
//   POST /v1/embeddings    {input: "text" | ["text", ...] | [ids] | [[ids], ...], encoding_format?}
//   POST /v1/completions   {prompt: (as input), max_tokens, temperature, top_p, top_k, stop, seed, ...}
//
// One xfrun::Model is loaded and shared; each request borrows one xfrun::Session from a pool of
// --threads sessions (a Session is used by one thread at a time), so at most --threads requests compute at
// once while up to --http-threads connections are served. Every error is a JSON body
// {"error": {"message", "type", "param", "code"}}: 400 for malformed JSON, wrong types, values out of range
// or over a limit; 413 for a body over --max-body-bytes; 404 for an unknown path; 405 for a known path with
// the wrong method; 500 if the library fails. SIGINT/SIGTERM stop it gracefully: the listening socket
// closes, requests in flight finish, and it exits 0.
//
//   xfrun_server --config model.yaml --checkpoint out/checkpoints/step_600 --port 8080 --threads 2
//   curl -s localhost:8080/v1/completions -d '{"prompt": "ROMEO:", "max_tokens": 40, "temperature": 0.8}'
//
// Exit codes: 0 after a signal, 1 if the model cannot be loaded or the port bound, 2 for a usage error.
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <xfrun/xfrun.h>

namespace {

using json = nlohmann::json;
// Responses print floats as float32 (shortest round trip), not as the doubles they widen to.
using ojson = nlohmann::basic_json<std::map, std::vector, std::string, bool, std::int64_t, std::uint64_t, float>;

struct Options {
  std::string config, checkpoint, host = "127.0.0.1", model_name;
  int port = 8080;
  int threads = 2;          // sessions: requests computing at once
  int http_threads = 0;     // connections served at once (0: max(16, 4 x threads))
  int session_threads = 1;  // kernel threads per session
  bool precompile = false;
  bool log_requests = false;
  size_t max_body_bytes = 1 << 20;
  int64_t max_inputs = 64;       // inputs per embeddings request, prompts per completions request
  int64_t max_input_tokens = 0;  // tokens per input or prompt (0: the model's max_length)
  int64_t max_tokens_cap = 256;  // the largest max_tokens a completion may ask for
};

// An error answered to the client as {"error": {...}} with an HTTP status.
struct HttpError {
  int status;
  std::string message;
  std::string param;
  std::string type = "invalid_request_error";
};

[[noreturn]] void bad(const std::string& message, const std::string& param = "") { throw HttpError{400, message, param}; }

std::string error_body(const std::string& message, const std::string& type, const std::string& param = "") {
  ojson e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  return ojson{{"error", e}}.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

void send_json(httplib::Response& res, int status, const ojson& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, ojson::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& type,
                const std::string& param = "") {
  res.status = status;
  res.set_content(error_body(message, type, param), "application/json");
}

// A fixed set of sessions on the shared model; a request borrows one for its duration.
class SessionPool {
 public:
  SessionPool(const xfrun::Model& model, int n, const xfrun::SessionOptions& o) {
    for (int i = 0; i < n; ++i) sessions_.push_back(std::make_unique<xfrun::Session>(model, o));
    for (auto& s : sessions_) free_.push_back(s.get());
  }
  class Lease {
   public:
    Lease(SessionPool& pool, xfrun::Session* s) : pool_(pool), s_(s) {}
    ~Lease() { pool_.release(s_); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    xfrun::Session& operator*() const { return *s_; }
    xfrun::Session* operator->() const { return s_; }

   private:
    SessionPool& pool_;
    xfrun::Session* s_;
  };
  Lease acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !free_.empty(); });
    xfrun::Session* s = free_.back();
    free_.pop_back();
    return Lease(*this, s);
  }
  size_t size() const { return sessions_.size(); }

 private:
  void release(xfrun::Session* s) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(s);
    }
    cv_.notify_one();
  }
  std::vector<std::unique_ptr<xfrun::Session>> sessions_;
  std::vector<xfrun::Session*> free_;
  std::mutex mu_;
  std::condition_variable cv_;
};

// The float32 values' little-endian bytes in base64 (OpenAI's encoding_format "base64").
std::string base64(const std::vector<float>& v) {
  static const char* digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string bytes(v.size() * sizeof(float), '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &v[i], 4);
    for (int b = 0; b < 4; ++b) bytes[4 * i + static_cast<size_t>(b)] = static_cast<char>((u >> (8 * b)) & 0xff);
  }
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    const size_t n = std::min<size_t>(3, bytes.size() - i);
    uint32_t w = 0;
    for (size_t k = 0; k < 3; ++k) w = (w << 8) | (k < n ? static_cast<uint8_t>(bytes[i + k]) : 0u);
    for (size_t k = 0; k < 4; ++k) out += k <= n ? digits[(w >> (18 - 6 * k)) & 63] : '=';
  }
  return out;
}

std::string type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "a list";
  return "an object";
}

class Server {
 public:
  Server(const Options& o, xfrun::Model model)
      : opt_(o), model_(std::move(model)), started_(std::chrono::steady_clock::now()) {
    if (opt_.max_input_tokens == 0) opt_.max_input_tokens = model_.max_length();
    xfrun::SessionOptions so;
    so.max_batch = opt_.max_inputs;
    so.threads = opt_.session_threads;
    so.precompile = opt_.precompile;
    pool_ = std::make_unique<SessionPool>(model_, opt_.threads, so);
  }

  void install(httplib::Server& svr) {
    svr.Get("/health", [this](const httplib::Request& q, httplib::Response& r) { guard(r, [&] { health(r); }); });
    svr.Get("/v1/models", [this](const httplib::Request& q, httplib::Response& r) { guard(r, [&] { models(r); }); });
    svr.Post("/v1/embeddings",
             [this](const httplib::Request& q, httplib::Response& r) { guard(r, [&] { embeddings(q, r); }); });
    svr.Post("/v1/completions",
             [this](const httplib::Request& q, httplib::Response& r) { guard(r, [&] { completions(q, r); }); });
    // Statuses httplib sets itself (404 unknown path, 413 body too large, 400 bad request line): JSON bodies,
    // and 405 for a known path asked with another method.
    svr.set_error_handler([this](const httplib::Request& q, httplib::Response& r) {
      if (!r.body.empty()) return;  // a handler's own error
      failed_++;
      const bool get_path = q.path == "/health" || q.path == "/v1/models";
      const bool post_path = q.path == "/v1/embeddings" || q.path == "/v1/completions";
      if (r.status == 404 && (get_path || post_path)) {
        r.status = 405;
        r.set_header("Allow", get_path ? "GET, HEAD" : "POST");
        r.set_content(error_body("method " + q.method + " is not allowed on " + q.path + "; use " +
                                     (get_path ? "GET" : "POST"), "invalid_request_error"),
                      "application/json");
      } else if (r.status == 404) {
        r.set_content(error_body("no such path: " + q.path + " (endpoints: GET /health, GET /v1/models, POST "
                                 "/v1/embeddings, POST /v1/completions)", "invalid_request_error"),
                      "application/json");
      } else if (r.status == 413) {
        r.set_content(error_body("the request body is larger than the server's limit of " +
                                     std::to_string(opt_.max_body_bytes) + " bytes (--max-body-bytes)",
                                 "invalid_request_error"),
                      "application/json");
      } else {
        r.set_content(error_body("HTTP status " + std::to_string(r.status) + (r.status == 400 ? ": a malformed request" : ""),
                                 r.status >= 500 ? "server_error" : "invalid_request_error"),
                      "application/json");
      }
    });
    svr.set_exception_handler([this](const httplib::Request&, httplib::Response& r, std::exception_ptr) {
      failed_++;
      send_error(r, 500, "internal error", "server_error");
    });
  }

  std::string describe() const {
    return "model " + name() + ": " + model_.task() + ", vocab " + std::to_string(model_.vocab_size()) +
           ", max_length " + std::to_string(model_.max_length()) + ", hidden " + std::to_string(model_.hidden_size()) +
           ", tokenizer " + (model_.tokenizer().empty() ? "none" : model_.tokenizer()) + "; " +
           std::to_string(pool_->size()) + " sessions";
  }

 private:
  std::string name() const {
    if (!opt_.model_name.empty()) return opt_.model_name;
    return std::filesystem::path(opt_.config).stem().string();
  }

  template <class F>
  void guard(httplib::Response& res, F&& f) {
    try {
      f();
      served_++;
      return;
    } catch (const HttpError& e) {
      send_error(res, e.status, e.message, e.type, e.param);
    } catch (const xfrun::Error& e) {
      send_error(res, 500, e.what(), "server_error");
    } catch (const std::bad_alloc&) {
      send_error(res, 503, "out of memory", "server_error");
    } catch (const std::exception& e) {
      send_error(res, 500, e.what(), "server_error");
    }
    failed_++;
  }

  void health(httplib::Response& res) {
    const double up = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    ojson model = {{"id", name()},
                   {"task", model_.task()},
                   {"vocab_size", model_.vocab_size()},
                   {"max_length", model_.max_length()},
                   {"hidden_size", model_.hidden_size()},
                   {"device", model_.device()},
                   {"tokenizer", model_.tokenizer().empty() ? ojson(nullptr) : ojson(model_.tokenizer())}};
    ojson limits = {{"max_body_bytes", opt_.max_body_bytes},
                    {"max_inputs", opt_.max_inputs},
                    {"max_input_tokens", opt_.max_input_tokens},
                    {"max_tokens", opt_.max_tokens_cap}};
    send_json(res, 200,
              {{"status", "ok"},
               {"version", xfrun::version()},
               {"model", model},
               {"sessions", pool_->size()},
               {"limits", limits},
               {"requests", {{"served", served_.load()}, {"failed", failed_.load()}}},
               {"uptime_s", static_cast<float>(up)}});
  }

  void models(httplib::Response& res) {
    ojson m = {{"id", name()}, {"object", "model"}, {"created", created_}, {"owned_by", "xfrun"}};
    send_json(res, 200, {{"object", "list"}, {"data", ojson::array({m})}});
  }

  static json parse_body(const httplib::Request& req) {
    json body;
    try {
      body = json::parse(req.body);
    } catch (const json::parse_error& e) {
      std::string what = e.what();
      const std::string prefix = "[json.exception.parse_error.101] ";
      if (what.rfind("[json.exception.", 0) == 0 && what.find("] ") != std::string::npos) what = what.substr(what.find("] ") + 2);
      bad("the request body is not valid JSON: " + what);
    }
    if (!body.is_object()) bad("the request body must be a JSON object, not " + type_name(body));
    return body;
  }

  // One token id from JSON, checked against the vocabulary.
  int32_t token_id(const json& v, const std::string& where) const {
    if (!v.is_number_integer()) bad(where + " must be an integer token id, not " + type_name(v), where);
    const bool neg = v.is_number_unsigned() ? false : v.get<int64_t>() < 0;
    const uint64_t id = neg ? 0 : v.get<uint64_t>();
    if (neg || id >= static_cast<uint64_t>(model_.vocab_size()))
      bad(where + ": token id " + v.dump() + " is outside 0.." + std::to_string(model_.vocab_size() - 1) +
              " (the model's vocabulary)", where);
    return static_cast<int32_t>(id);
  }

  std::vector<int32_t> encode(const std::string& text, const std::string& where) const {
    if (model_.tokenizer().empty())
      bad(where + ": this model has no tokenizer; send token ids (a list of integers) instead of text", where);
    try {
      return model_.encode(text);
    } catch (const xfrun::Error& e) {
      bad(where + ": " + e.what(), where);
    }
  }

  // `input` of /v1/embeddings and `prompt` of /v1/completions: a string, a list of strings, a list of token
  // ids, or a list of token-id lists. Each sequence is checked against the limits.
  std::vector<std::vector<int32_t>> sequences(const json& v, const std::string& field, bool allow_empty) const {
    std::vector<std::vector<int32_t>> out;
    const std::string shape = "'" + field + "' must be a string, a list of strings, a list of token ids or a list of token-id lists";
    if (v.is_string()) {
      out.push_back(encode(v.get<std::string>(), field));
    } else if (v.is_array()) {
      if (v.empty()) bad("'" + field + "' must not be an empty list", field);
      if (v[0].is_number()) {
        std::vector<int32_t> ids;
        for (size_t j = 0; j < v.size(); ++j) ids.push_back(token_id(v[j], field + "[" + std::to_string(j) + "]"));
        out.push_back(std::move(ids));
      } else {
        if (static_cast<int64_t>(v.size()) > opt_.max_inputs)
          bad("'" + field + "' has " + std::to_string(v.size()) + " items; the limit is " + std::to_string(opt_.max_inputs) +
                  " (--max-inputs)", field);
        for (size_t i = 0; i < v.size(); ++i) {
          const std::string where = field + "[" + std::to_string(i) + "]";
          if (v[i].is_string()) {
            out.push_back(encode(v[i].get<std::string>(), where));
          } else if (v[i].is_array()) {
            std::vector<int32_t> ids;
            for (size_t j = 0; j < v[i].size(); ++j) ids.push_back(token_id(v[i][j], where + "[" + std::to_string(j) + "]"));
            out.push_back(std::move(ids));
          } else {
            bad(shape + "; " + where + " is " + type_name(v[i]), where);
          }
        }
      }
    } else {
      bad(v.is_null() ? "'" + field + "' is required" : shape + ", not " + type_name(v), field);
    }
    for (size_t i = 0; i < out.size(); ++i) {
      const std::string where = out.size() == 1 ? field : field + "[" + std::to_string(i) + "]";
      const auto n = static_cast<int64_t>(out[i].size());
      if (n == 0 && !allow_empty) bad(where + " is empty (no tokens)", where);
      if (n > opt_.max_input_tokens)
        bad(where + " has " + std::to_string(n) + " tokens; the limit is " + std::to_string(opt_.max_input_tokens) +
                " (--max-input-tokens)", where);
    }
    return out;
  }

  static const json& field(const json& body, const char* key) {
    static const json null_value;
    auto it = body.find(key);
    return it == body.end() ? null_value : *it;
  }

  static int64_t int_field(const json& body, const char* key, int64_t def, int64_t lo, int64_t hi, const std::string& hint = "") {
    const json& v = field(body, key);
    if (v.is_null()) return def;
    if (!v.is_number_integer()) bad(std::string("'") + key + "' must be an integer, not " + type_name(v), key);
    if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(hi) : (v.get<int64_t>() < lo || v.get<int64_t>() > hi))
      bad(std::string("'") + key + "' is " + v.dump() + "; it must be in " + std::to_string(lo) + ".." + std::to_string(hi) + hint, key);
    return v.get<int64_t>();
  }

  static double number_field(const json& body, const char* key, double def, double lo, double hi) {
    const json& v = field(body, key);
    if (v.is_null()) return def;
    if (!v.is_number()) bad(std::string("'") + key + "' must be a number, not " + type_name(v), key);
    const double x = v.get<double>();
    if (!(x >= lo && x <= hi)) bad(std::string("'") + key + "' is " + v.dump() + "; it must be in [" + json(lo).dump() + ", " + json(hi).dump() + "]", key);
    return x;
  }

  // Options this server does not implement: accepted only at their default value.
  static void unsupported(const json& body, const char* key, const json& default_value) {
    const json& v = field(body, key);
    if (v.is_null() || v == default_value) return;
    bad(std::string("'") + key + "' is not supported by this server (only " + default_value.dump() + ")", key);
  }

  void embeddings(const httplib::Request& req, httplib::Response& res) {
    const json body = parse_body(req);
    const json& fmt = field(body, "encoding_format");
    if (!fmt.is_null() && !fmt.is_string()) bad("'encoding_format' must be a string, not " + type_name(fmt), "encoding_format");
    const std::string format = fmt.is_null() ? "float" : fmt.get<std::string>();
    if (format != "float" && format != "base64") bad("'encoding_format' must be \"float\" or \"base64\", not \"" + format + "\"", "encoding_format");
    unsupported(body, "dimensions", model_.hidden_size());
    std::vector<std::vector<int32_t>> batch = sequences(field(body, "input"), "input", false);
    for (size_t i = 0; i < batch.size(); ++i)
      if (static_cast<int64_t>(batch[i].size()) > model_.max_length())
        bad("input[" + std::to_string(i) + "] has " + std::to_string(batch[i].size()) + " tokens; the model takes at most " +
                std::to_string(model_.max_length()), "input");
    std::vector<xfrun::Array> out;
    {
      auto session = pool_->acquire();
      session->forward(batch, xfrun::Output::pooled, out);
    }
    int64_t tokens = 0;
    for (const auto& s : batch) tokens += static_cast<int64_t>(s.size());
    ojson data = ojson::array();
    for (size_t i = 0; i < out.size(); ++i) {
      ojson e = {{"object", "embedding"}, {"index", i}};
      if (format == "float") {
        e["embedding"] = out[i].data;
      } else {
        e["embedding"] = base64(out[i].data);
      }
      data.push_back(std::move(e));
    }
    send_json(res, 200,
              {{"object", "list"},
               {"data", std::move(data)},
               {"model", name()},
               {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}}});
  }

  void completions(const httplib::Request& req, httplib::Response& res) {
    const json body = parse_body(req);
    if (model_.task() != "causal_lm")
      bad("this model's task is " + model_.task() + "; only causal_lm models complete text (use /v1/embeddings)");
    const int64_t cap = opt_.max_tokens_cap;
    const int64_t max_tokens = int_field(body, "max_tokens", std::min<int64_t>(16, cap), 0, cap, " (--max-tokens-cap)");
    xfrun::GenerateOptions g;
    g.max_new_tokens = max_tokens;
    g.temperature = number_field(body, "temperature", 1.0, 0.0, 2.0);
    g.top_p = number_field(body, "top_p", 1.0, 0.0, 1.0);
    if (g.top_p == 0.0) bad("'top_p' must be above 0", "top_p");
    g.top_k = int_field(body, "top_k", 0, 0, model_.vocab_size());
    const json& seed = field(body, "seed");
    if (!seed.is_null() && !seed.is_number_integer()) bad("'seed' must be an integer, not " + type_name(seed), "seed");
    // Without a seed, each prompt gets a fresh one (as OpenAI's: sampling is not reproducible then).
    uint64_t base_seed = seed.is_null() ? 0 : seed.get<uint64_t>();
    if (seed.is_null()) {
      std::lock_guard<std::mutex> lock(rng_mu_);
      base_seed = rng_();
    }
    std::vector<std::string> stops;
    const json& stop = field(body, "stop");
    if (stop.is_string()) {
      stops.push_back(stop.get<std::string>());
    } else if (stop.is_array()) {
      if (stop.size() > 4) bad("'stop' has " + std::to_string(stop.size()) + " sequences; at most 4", "stop");
      for (const auto& s : stop) {
        if (!s.is_string()) bad("'stop' must be a string or a list of strings; it holds " + type_name(s), "stop");
        stops.push_back(s.get<std::string>());
      }
    } else if (!stop.is_null()) {
      bad("'stop' must be a string or a list of strings, not " + type_name(stop), "stop");
    }
    for (const auto& s : stops)
      if (s.empty()) bad("'stop' sequences must not be empty", "stop");
    if (!stops.empty() && model_.tokenizer().empty())
      bad("'stop' strings need a tokenizer; this model has none (use 'stop_token_ids')", "stop");
    const json& stop_ids = field(body, "stop_token_ids");
    if (!stop_ids.is_null() && !stop_ids.is_array()) bad("'stop_token_ids' must be a list of token ids, not " + type_name(stop_ids), "stop_token_ids");
    if (stop_ids.is_array())
      for (size_t j = 0; j < stop_ids.size(); ++j) g.stop_tokens.push_back(token_id(stop_ids[j], "stop_token_ids[" + std::to_string(j) + "]"));
    const json& stream = field(body, "stream");
    if (!stream.is_null() && !stream.is_boolean()) bad("'stream' must be a boolean, not " + type_name(stream), "stream");
    unsupported(body, "stream", false);
    unsupported(body, "echo", false);
    unsupported(body, "n", 1);
    unsupported(body, "best_of", 1);
    unsupported(body, "logprobs", nullptr);
    unsupported(body, "suffix", nullptr);
    unsupported(body, "presence_penalty", 0);
    unsupported(body, "frequency_penalty", 0);
    const json& bias = field(body, "logit_bias");
    if (!bias.is_null() && !(bias.is_object() && bias.empty())) bad("'logit_bias' is not supported by this server", "logit_bias");
    const std::vector<std::vector<int32_t>> prompts = sequences(field(body, "prompt"), "prompt", true);

    ojson choices = ojson::array();
    int64_t prompt_tokens = 0, completion_tokens = 0;
    {
      auto session = pool_->acquire();
      xfrun::GenerateResult r;
      for (size_t i = 0; i < prompts.size(); ++i) {
        g.seed = base_seed + i;
        std::string text;
        bool stop_hit = false;
        size_t scanned = 0;  // text before this offset holds no complete stop sequence
        xfrun::TokenCallback on_token;
        if (!stops.empty()) {
          on_token = [&](int32_t t) {
            text += model_.decode({t});
            size_t cut = std::string::npos;
            for (const auto& s : stops) {
              const size_t from = scanned >= s.size() ? scanned - s.size() + 1 : 0;
              cut = std::min(cut, text.find(s, from));
            }
            scanned = text.size();
            if (cut == std::string::npos) return true;
            text.resize(cut);
            stop_hit = true;
            return false;
          };
        }
        session->generate(prompts[i], g, on_token, r);
        if (stops.empty() && !model_.tokenizer().empty()) text = model_.decode(r.tokens);
        const bool stopped = stop_hit || r.reason == xfrun::StopReason::stop_token;
        choices.push_back({{"text", text},
                           {"index", i},
                           {"logprobs", nullptr},
                           {"finish_reason", stopped ? "stop" : "length"},
                           {"tokens", r.tokens}});
        prompt_tokens += static_cast<int64_t>(prompts[i].size());
        completion_tokens += static_cast<int64_t>(r.tokens.size());
      }
    }
    char id[40];
    std::snprintf(id, sizeof(id), "cmpl-%016llx", static_cast<unsigned long long>(base_seed ^ (next_id_++ * 0x9E3779B97F4A7C15ull)));
    send_json(res, 200,
              {{"id", id},
               {"object", "text_completion"},
               {"created", static_cast<int64_t>(std::time(nullptr))},
               {"model", name()},
               {"choices", std::move(choices)},
               {"usage",
                {{"prompt_tokens", prompt_tokens},
                 {"completion_tokens", completion_tokens},
                 {"total_tokens", prompt_tokens + completion_tokens}}}});
  }

  Options opt_;
  xfrun::Model model_;
  std::unique_ptr<SessionPool> pool_;
  std::chrono::steady_clock::time_point started_;
  int64_t created_ = static_cast<int64_t>(std::time(nullptr));
  std::atomic<uint64_t> served_{0}, failed_{0}, next_id_{1};
  std::mutex rng_mu_;
  std::mt19937_64 rng_{std::random_device{}()};
};

int g_stop_pipe[2] = {-1, -1};
volatile sig_atomic_t g_stop_signals = 0;

// The first SIGINT/SIGTERM asks for a graceful stop; a second one exits at once.
void on_stop_signal(int sig) {
  if (g_stop_signals++ > 0) _exit(128 + sig);
  const unsigned char c = static_cast<unsigned char>(sig);
  const int saved = errno;
  if (write(g_stop_pipe[1], &c, 1) < 0) {
  }
  errno = saved;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"xfrun_server: an HTTP server (OpenAI-style /v1/embeddings and /v1/completions) over one model"};
  app.add_option("--config,-c", o.config, "the model's YAML or JSON config")->required();
  app.add_option("--checkpoint", o.checkpoint, "a checkpoint step folder, a folder with model.safetensors, or a .safetensors file")
      ->required();
  app.add_option("--host", o.host, "address to listen on")->capture_default_str();
  app.add_option("--port", o.port, "port (0: any free port; the chosen one is printed)")->capture_default_str()->check(CLI::Range(0, 65535));
  app.add_option("--threads", o.threads, "sessions: requests that compute at once")->capture_default_str()->check(CLI::Range(1, 1024));
  app.add_option("--http-threads", o.http_threads, "connections served at once (0: max(16, 4 x --threads))")
      ->capture_default_str()->check(CLI::Range(0, 4096));
  app.add_option("--session-threads", o.session_threads, "CPU threads of each session's kernels")->capture_default_str()->check(CLI::Range(1, 256));
  app.add_flag("--precompile", o.precompile, "compile every sequence length and generation at start");
  app.add_option("--model-name", o.model_name, "the model id in responses (default: the config file's name)");
  app.add_option("--max-body-bytes", o.max_body_bytes, "larger request bodies get 413")->capture_default_str()->check(CLI::Range(size_t{16}, size_t{1} << 34));
  app.add_option("--max-inputs", o.max_inputs, "inputs per embeddings request, prompts per completions request")
      ->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--max-input-tokens", o.max_input_tokens, "tokens per input or prompt (0: the model's max_length)")
      ->capture_default_str()->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  app.add_option("--max-tokens-cap", o.max_tokens_cap, "the largest max_tokens a completion may ask for")
      ->capture_default_str()->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  app.add_flag("--log-requests", o.log_requests, "one line per request on stderr");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (o.http_threads == 0) o.http_threads = std::max(16, 4 * o.threads);

  // SIGINT/SIGTERM: the handler (whichever thread it runs on; OpenBLAS starts threads before main, so
  // blocking the signals for a sigwait thread is not possible) writes the signal to a pipe; a watcher
  // thread reads it and stops the listener.
  if (pipe(g_stop_pipe) != 0) {
    std::cerr << "xfrun_server: error: pipe() failed\n";
    return 1;
  }
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<Server> server;
  try {
    server = std::make_unique<Server>(o, xfrun::Model::load_file(o.config, o.checkpoint));
  } catch (const std::exception& e) {
    std::cerr << "xfrun_server: error: " << e.what() << "\n";
    return 1;
  }
  httplib::Server svr;
  const int http_threads = o.http_threads;
  svr.new_task_queue = [http_threads] { return new httplib::ThreadPool(static_cast<size_t>(http_threads)); };
  svr.set_payload_max_length(o.max_body_bytes);
  svr.set_keep_alive_max_count(1000);
  svr.set_keep_alive_timeout(5);
  svr.set_tcp_nodelay(true);  // a response is written as headers then body: no Nagle wait between them
  server->install(svr);
  if (o.log_requests)
    svr.set_logger([](const httplib::Request& q, const httplib::Response& r) {
      std::fprintf(stderr, "%s %s %d %zu\n", q.method.c_str(), q.path.c_str(), r.status, r.body.size());
    });

  int port = o.port;
  if (port == 0) {
    port = svr.bind_to_any_port(o.host);
    if (port < 0) port = 0;
  } else if (!svr.bind_to_port(o.host, port)) {
    port = 0;
  }
  if (port == 0) {
    std::cerr << "xfrun_server: error: cannot listen on " << o.host << ":" << o.port << "\n";
    return 1;
  }

  std::atomic<int> got_signal{0};
  std::atomic<bool> listen_done{false};
  std::thread watcher([&] {
    unsigned char sig = 0;
    while (read(g_stop_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    if (sig == 0) return;  // main's "exit now"
    got_signal = sig;
    std::cerr << "xfrun_server: " << (sig == SIGINT ? "SIGINT" : "SIGTERM") << ": stopping\n";
    // stop() only acts on a running listener: a signal during start-up waits for it.
    while (!svr.is_running() && !listen_done) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    svr.stop();
  });
  std::cout << "xfrun_server: listening on http://" << o.host << ":" << port << " (" << server->describe() << ", "
            << http_threads << " http threads)" << std::endl;
  const bool ok = svr.listen_after_bind();  // returns after stop(), once the requests in flight are answered
  listen_done = true;
  if (got_signal == 0) {
    const unsigned char zero = 0;
    if (write(g_stop_pipe[1], &zero, 1) != 1) watcher.detach();
  }
  if (watcher.joinable()) watcher.join();
  if (got_signal == 0) {
    std::cerr << "xfrun_server: the listener failed\n";
    return 1;
  }
  (void)ok;
  std::cerr << "xfrun_server: stopped\n";
  return 0;
}
