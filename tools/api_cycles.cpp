// Load/forward/generate/destroy cycles through the public API (C++ and C), for a sanitizer build:
//   xfrun_api_cycles CONFIG CHECKPOINT [CYCLES]   (scripts/asan_api.sh runs 1000 under ASan/LSan)
// Each cycle also takes the error paths (a missing checkpoint, an out-of-range token, a bad C argument).
#include <xfrun/xfrun.h>
#include <xfrun/xfrun_c.h>

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CONFIG CHECKPOINT [CYCLES]\n", argv[0]);
    return 2;
  }
  const int cycles = argc > 3 ? std::atoi(argv[3]) : 1000;
  for (int c = 0; c < cycles; ++c) {
    try {
      const xfrun::Model model = xfrun::Model::load_file(argv[1], argv[2]);
      xfrun::Session s(model, {2, 0, 1, false});
      const auto out = s.forward({{1, 2, 3}, {4, 5}}, xfrun::Output::logits);
      if (out.size() != 2) return 1;
      if (model.task() == "causal_lm") {
        xfrun::GenerateOptions o;
        o.max_new_tokens = 4;
        if (s.generate({1, 2}, o, [](int32_t) { return true; }).tokens.size() != 4) return 1;
      }
      try {
        s.forward({{1, static_cast<int32_t>(model.vocab_size())}}, xfrun::Output::hidden);
        return 1;
      } catch (const xfrun::Error&) {
      }
      try {
        xfrun::Model::load_file(argv[1], std::string(argv[2]) + "/absent");
        return 1;
      } catch (const xfrun::Error&) {
      }
    } catch (const xfrun::Error& e) {
      std::fprintf(stderr, "cycle %d: %s\n", c, e.what());
      return 1;
    }
    xfrun_model* m = nullptr;
    xfrun_session* s = nullptr;
    if (xfrun_model_load_file(argv[1], argv[2], "cpu", &m) != XFRUN_OK) return 1;
    if (xfrun_session_create(m, 1, 0, 1, &s) != XFRUN_OK) return 1;
    xfrun_model_free(m);
    const int32_t ids[2] = {1, 2};
    size_t n = 0;
    if (xfrun_session_forward(s, ids, 2, XFRUN_OUTPUT_HIDDEN, nullptr, 0, &n) != XFRUN_ERROR_BUFFER_TOO_SMALL) return 1;
    if (xfrun_session_forward(nullptr, ids, 2, XFRUN_OUTPUT_HIDDEN, nullptr, 0, &n) != XFRUN_ERROR_INVALID_ARGUMENT) return 1;
    xfrun_session_free(s);
  }
  std::printf("%d load/forward/generate/destroy cycles ok\n", cycles);
  return 0;
}
