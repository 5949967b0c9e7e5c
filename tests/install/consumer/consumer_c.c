/* The C ABI from C: load, forward, generate, an error with its message. */
#include <stdio.h>
#include <stdlib.h>
#include <xfrun/xfrun_c.h>

int main(int argc, char** argv) {
  xfrun_model* m = NULL;
  xfrun_session* s = NULL;
  int64_t vocab = 0;
  size_t needed = 0, count = 0;
  const int32_t tokens[3] = {1, 2, 3};
  int32_t out[8];
  float* logits;
  if (argc != 3) return 2;
  if (xfrun_model_load_file(argv[1], "/nonexistent", "cpu", &m) == XFRUN_OK || xfrun_last_error()[0] == 0) return 1;
  if (xfrun_model_load_file(argv[1], argv[2], "cpu", &m) != XFRUN_OK) {
    fprintf(stderr, "error: %s\n", xfrun_last_error());
    return 1;
  }
  xfrun_model_info(m, NULL, &vocab, NULL, NULL);
  if (xfrun_session_create(m, 1, 0, 1, &s) != XFRUN_OK) return 1;
  if (xfrun_session_forward(s, tokens, 3, XFRUN_OUTPUT_LOGITS, NULL, 0, &needed) != XFRUN_ERROR_BUFFER_TOO_SMALL) return 1;
  logits = (float*)malloc(needed * sizeof(float));
  if (xfrun_session_forward(s, tokens, 3, XFRUN_OUTPUT_LOGITS, logits, needed, NULL) != XFRUN_OK) return 1;
  xfrun_generate_options o = xfrun_generate_default_options();
  o.max_new_tokens = 8;
  if (xfrun_session_generate(s, tokens, 3, &o, NULL, NULL, out, 8, &count, NULL) != XFRUN_OK || count != 8) return 1;
  free(logits);
  xfrun_session_free(s);
  xfrun_model_free(m);
  printf("c consumer: xfrun %s, vocab %lld, %zu logits\n", xfrun_version(), (long long)vocab, needed);
  return 0;
}
