/* xfrun's C ABI: a thin layer over <xfrun/xfrun.h> for services in other languages. No exception crosses
 * it: every function returns an xfrun_status; on failure, xfrun_last_error() gives the message (thread-
 * local: it describes the last failed call of the calling thread, and stays until that thread's next
 * failure). Threads: as in the C++ API, a model is shared by any number of threads; a session is used by
 * one thread at a time.
 *
 *   xfrun_model* m; xfrun_session* s;
 *   if (xfrun_model_load_file("model.yaml", "ckpt/step_600", "cpu", &m) != XFRUN_OK) puts(xfrun_last_error());
 *   xfrun_session_create(m, 4, 0, 1, &s);
 *   ...
 *   xfrun_session_free(s); xfrun_model_free(m);
 */
#ifndef XFRUN_C_H
#define XFRUN_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum xfrun_status {
  XFRUN_OK = 0,
  XFRUN_ERROR_INVALID_ARGUMENT = 1, /* a null handle/pointer, a bad size or option */
  XFRUN_ERROR_RUNTIME = 2,          /* the library refused (config, checkpoint, tokens out of range...) */
  XFRUN_ERROR_BUFFER_TOO_SMALL = 3, /* *needed says how many elements the output takes */
  XFRUN_ERROR_OUT_OF_MEMORY = 4,
  XFRUN_ERROR_UNKNOWN = 5
} xfrun_status;

typedef enum xfrun_output { XFRUN_OUTPUT_LOGITS = 0, XFRUN_OUTPUT_HIDDEN = 1, XFRUN_OUTPUT_POOLED = 2 } xfrun_output;

typedef enum xfrun_stop_reason {
  XFRUN_STOP_MAX_TOKENS = 0,
  XFRUN_STOP_TOKEN = 1,
  XFRUN_STOP_CALLBACK = 2
} xfrun_stop_reason;

typedef struct xfrun_model xfrun_model;
typedef struct xfrun_session xfrun_session;

/* "0.1.0"; static storage. */
const char* xfrun_version(void);
/* The message of the calling thread's last failure ("" if none); valid until its next failing call. */
const char* xfrun_last_error(void);

/* device: "cpu", "cuda", "cuda:N" or "auto" (NULL means "cpu"). checkpoint: a step folder, a folder with model.safetensors, or a
 * .safetensors file. format: "yaml" or "json". */
xfrun_status xfrun_model_load_file(const char* config_path, const char* checkpoint, const char* device,
                                   xfrun_model** out);
xfrun_status xfrun_model_load_string(const char* config_text, const char* format, const char* checkpoint,
                                     const char* device, xfrun_model** out);
void xfrun_model_free(xfrun_model* model); /* NULL is fine; sessions keep the weights alive */
/* task: "causal_lm", "classification" or "embedding" (static storage). */
xfrun_status xfrun_model_info(const xfrun_model* model, const char** task, int64_t* vocab_size,
                              int64_t* max_length, int64_t* hidden_size);

/* max_length 0: the model's; threads >= 1. */
xfrun_status xfrun_session_create(const xfrun_model* model, int64_t max_batch, int64_t max_length, int threads,
                                  xfrun_session** out);
void xfrun_session_free(xfrun_session* session);

/* One sequence of n tokens. Writes the output (logits (n, V) or (K); hidden (n, C); pooled (C)) to out,
 * which holds `capacity` floats; *needed (may be NULL) gets the element count. With too small a buffer
 * returns XFRUN_ERROR_BUFFER_TOO_SMALL and writes nothing (call with out NULL, capacity 0 to ask). */
xfrun_status xfrun_session_forward(xfrun_session* session, const int32_t* tokens, size_t n, xfrun_output what,
                                   float* out, size_t capacity, size_t* needed);

/* Return nonzero to continue, 0 to stop after this token. */
typedef int (*xfrun_token_callback)(int32_t token, void* user_data);

typedef struct xfrun_generate_options {
  int64_t max_new_tokens;
  const int32_t* stop_tokens; /* may be NULL */
  size_t num_stop_tokens;
  double temperature; /* 0: greedy */
  int64_t top_k;      /* 0: no limit */
  double top_p;       /* 1: no limit */
  uint64_t seed;
} xfrun_generate_options;

/* Defaults: 64 tokens, greedy, top_p 1, seed 0, no stop tokens. */
xfrun_generate_options xfrun_generate_default_options(void);

/* Continues the prompt (causal_lm). Writes up to `capacity` new tokens to out (may be NULL with
 * capacity 0: stream only), their count to *count (may be NULL) and why it stopped to *reason (may be NULL).
 * callback may be NULL. Generation is not cut short by a small buffer: *count is the full count. */
xfrun_status xfrun_session_generate(xfrun_session* session, const int32_t* prompt, size_t prompt_len,
                                    const xfrun_generate_options* options, xfrun_token_callback callback,
                                    void* user_data, int32_t* out, size_t capacity, size_t* count,
                                    xfrun_stop_reason* reason);

#ifdef __cplusplus
}
#endif

#endif /* XFRUN_C_H */
