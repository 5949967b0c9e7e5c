// Loads a model through the installed C++ API, runs forward from two threads and generates.
#include <xfrun/xfrun.h>

#include <cstdio>
#include <thread>

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  try {
    const xfrun::Model model = xfrun::Model::load_file(argv[1], argv[2]);
    std::vector<float> first[2];
    std::thread threads[2];
    for (int t = 0; t < 2; ++t)
      threads[t] = std::thread([&, t] {
        xfrun::Session s(model, {2, 0, 1, false});
        first[t] = s.forward({{1, 2, 3}, {4, 5}}, xfrun::Output::logits)[0].data;
      });
    for (auto& th : threads) th.join();
    if (first[0] != first[1] || first[0].size() != static_cast<size_t>(3 * model.vocab_size())) return 1;
    xfrun::Session s(model);
    xfrun::GenerateOptions o;
    o.max_new_tokens = 5;
    int streamed = 0;
    const auto r = s.generate({1, 2}, o, [&](int32_t) { return ++streamed > 0; });
    if (r.tokens.size() != 5 || streamed != 5) return 1;
    try {
      xfrun::Model::load_file(argv[1], "/nonexistent");
      return 1;
    } catch (const xfrun::Error&) {
    }
    std::printf("c++ consumer: xfrun %s, %s, vocab %lld\n", xfrun::version(), model.task().c_str(),
                static_cast<long long>(model.vocab_size()));
    return 0;
  } catch (const xfrun::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
