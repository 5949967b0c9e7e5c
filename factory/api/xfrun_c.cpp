// The C ABI: each function catches everything, records the message in a thread-local string and returns
// a status code.
#include "xfrun/xfrun_c.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "xfrun/xfrun.h"

struct xfrun_model {
  xfrun::Model model;
};
struct xfrun_session {
  xfrun::Session session;
  std::vector<std::vector<int32_t>> batch;  // reused request storage
  std::vector<xfrun::Array> out;
  std::vector<int32_t> prompt;
  xfrun::GenerateResult result;
  xfrun::GenerateOptions gen;
};

namespace {

thread_local std::string t_last_error;

xfrun_status fail(xfrun_status s, const char* message) noexcept {
  try {
    t_last_error = message;
  } catch (...) {
  }
  return s;
}

template <class F>
xfrun_status guarded(F&& f) noexcept {
  try {
    return f();
  } catch (const xfrun::Error& e) {
    return fail(XFRUN_ERROR_RUNTIME, e.what());
  } catch (const std::bad_alloc&) {
    return fail(XFRUN_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(XFRUN_ERROR_UNKNOWN, e.what());
  } catch (...) {
    return fail(XFRUN_ERROR_UNKNOWN, "unknown exception");
  }
}

#define XFRUN_REQUIRE(cond, msg) \
  do {                           \
    if (!(cond)) return fail(XFRUN_ERROR_INVALID_ARGUMENT, msg); \
  } while (0)

}  // namespace

extern "C" {

const char* xfrun_version(void) { return xfrun::version(); }
const char* xfrun_last_error(void) { return t_last_error.c_str(); }

xfrun_status xfrun_model_load_file(const char* config_path, const char* checkpoint, const char* device,
                                   xfrun_model** out) {
  XFRUN_REQUIRE(out != nullptr, "xfrun_model_load_file: out is NULL");
  *out = nullptr;
  XFRUN_REQUIRE(config_path != nullptr && checkpoint != nullptr, "xfrun_model_load_file: config_path and checkpoint must not be NULL");
  return guarded([&] {
    xfrun::LoadOptions o;
    if (device) o.device = device;
    *out = new xfrun_model{xfrun::Model::load_file(config_path, checkpoint, o)};
    return XFRUN_OK;
  });
}

xfrun_status xfrun_model_load_string(const char* text, const char* format, const char* checkpoint, const char* device,
                                     xfrun_model** out) {
  XFRUN_REQUIRE(out != nullptr, "xfrun_model_load_string: out is NULL");
  *out = nullptr;
  XFRUN_REQUIRE(text != nullptr && format != nullptr && checkpoint != nullptr,
                "xfrun_model_load_string: config_text, format and checkpoint must not be NULL");
  return guarded([&] {
    xfrun::LoadOptions o;
    if (device) o.device = device;
    *out = new xfrun_model{xfrun::Model::load_string(text, format, checkpoint, o)};
    return XFRUN_OK;
  });
}

void xfrun_model_free(xfrun_model* model) { delete model; }

xfrun_status xfrun_model_info(const xfrun_model* model, const char** task, int64_t* vocab_size, int64_t* max_length,
                              int64_t* hidden_size) {
  XFRUN_REQUIRE(model != nullptr, "xfrun_model_info: model is NULL");
  if (task) *task = model->model.task() == "causal_lm" ? "causal_lm"
                    : model->model.task() == "classification" ? "classification" : "embedding";
  if (vocab_size) *vocab_size = model->model.vocab_size();
  if (max_length) *max_length = model->model.max_length();
  if (hidden_size) *hidden_size = model->model.hidden_size();
  return XFRUN_OK;
}

xfrun_status xfrun_session_create(const xfrun_model* model, int64_t max_batch, int64_t max_length, int threads,
                                  xfrun_session** out) {
  XFRUN_REQUIRE(out != nullptr, "xfrun_session_create: out is NULL");
  *out = nullptr;
  XFRUN_REQUIRE(model != nullptr, "xfrun_session_create: model is NULL");
  return guarded([&] {
    xfrun::SessionOptions o;
    o.max_batch = max_batch;
    o.max_length = max_length;
    o.threads = threads;
    *out = new xfrun_session{xfrun::Session(model->model, o), {}, {}, {}, {}, {}};
    return XFRUN_OK;
  });
}

void xfrun_session_free(xfrun_session* session) { delete session; }

xfrun_status xfrun_session_forward(xfrun_session* s, const int32_t* tokens, size_t n, xfrun_output what, float* out,
                                   size_t capacity, size_t* needed) {
  XFRUN_REQUIRE(s != nullptr, "xfrun_session_forward: session is NULL");
  XFRUN_REQUIRE(tokens != nullptr || n == 0, "xfrun_session_forward: tokens is NULL");
  XFRUN_REQUIRE(out != nullptr || capacity == 0, "xfrun_session_forward: out is NULL with a nonzero capacity");
  XFRUN_REQUIRE(what == XFRUN_OUTPUT_LOGITS || what == XFRUN_OUTPUT_HIDDEN || what == XFRUN_OUTPUT_POOLED,
                "xfrun_session_forward: unknown output kind");
  return guarded([&] {
    const xfrun::Model& m = s->session.model();
    const auto L = static_cast<int64_t>(n);
    size_t count = 0;
    if (what == XFRUN_OUTPUT_LOGITS) count = static_cast<size_t>(m.task() == "classification" ? m.output_size(xfrun::Output::logits) : L * m.vocab_size());
    else if (what == XFRUN_OUTPUT_HIDDEN) count = static_cast<size_t>(L * m.hidden_size());
    else count = static_cast<size_t>(m.hidden_size());
    if (needed) *needed = count;
    if (capacity < count)
      return fail(XFRUN_ERROR_BUFFER_TOO_SMALL, ("xfrun_session_forward: the output takes " + std::to_string(count) +
                                                 " floats; the buffer holds " + std::to_string(capacity)).c_str());
    s->batch.resize(1);
    s->batch[0].assign(tokens, tokens + n);
    s->session.forward(s->batch, static_cast<xfrun::Output>(what), s->out);
    std::memcpy(out, s->out[0].data.data(), s->out[0].data.size() * sizeof(float));
    return XFRUN_OK;
  });
}

xfrun_generate_options xfrun_generate_default_options(void) {
  xfrun_generate_options o;
  o.max_new_tokens = 64;
  o.stop_tokens = nullptr;
  o.num_stop_tokens = 0;
  o.temperature = 0.0;
  o.top_k = 0;
  o.top_p = 1.0;
  o.seed = 0;
  return o;
}

xfrun_status xfrun_session_generate(xfrun_session* s, const int32_t* prompt, size_t prompt_len,
                                    const xfrun_generate_options* options, xfrun_token_callback callback,
                                    void* user_data, int32_t* out, size_t capacity, size_t* count,
                                    xfrun_stop_reason* reason) {
  XFRUN_REQUIRE(s != nullptr, "xfrun_session_generate: session is NULL");
  XFRUN_REQUIRE(prompt != nullptr || prompt_len == 0, "xfrun_session_generate: prompt is NULL");
  XFRUN_REQUIRE(out != nullptr || capacity == 0, "xfrun_session_generate: out is NULL with a nonzero capacity");
  XFRUN_REQUIRE(options == nullptr || options->stop_tokens != nullptr || options->num_stop_tokens == 0,
                "xfrun_session_generate: stop_tokens is NULL with num_stop_tokens > 0");
  return guarded([&] {
    const xfrun_generate_options o = options ? *options : xfrun_generate_default_options();
    xfrun::GenerateOptions& g = s->gen;
    g.max_new_tokens = o.max_new_tokens;
    g.stop_tokens.assign(o.stop_tokens, o.stop_tokens + o.num_stop_tokens);
    g.temperature = o.temperature;
    g.top_k = o.top_k;
    g.top_p = o.top_p;
    g.seed = o.seed;
    s->prompt.assign(prompt, prompt + prompt_len);
    xfrun::TokenCallback cb;
    if (callback) cb = [&](int32_t t) { return callback(t, user_data) != 0; };
    s->session.generate(s->prompt, g, cb, s->result);
    const size_t k = std::min(capacity, s->result.tokens.size());
    if (k) std::memcpy(out, s->result.tokens.data(), k * sizeof(int32_t));
    if (count) *count = s->result.tokens.size();
    if (reason) *reason = static_cast<xfrun_stop_reason>(static_cast<int>(s->result.reason));
    return XFRUN_OK;
  });
}

}  // extern "C"
