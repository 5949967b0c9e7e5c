// Fuzz target over config loading, validation and model building: any input must end in success or an
// xfr::Error, never a crash, a hang or another exception.
//
// Built with clang's -fsanitize=fuzzer (XF_LIBFUZZER=ON) it is a libFuzzer target. Otherwise it has its
// own driver: mutations (byte flips, insertions, deletions, splices of YAML fragments) of a seed corpus,
// deterministic by seed, for a time budget:  xfrun_fuzz_config [seconds] [corpus files...]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "factory/config.h"
#include "factory/model_builder.h"
#include "factory/schema.h"
#include "runtime/error.h"

namespace {

void run_one(const std::string& text) {
  for (const char* format : {"yaml", "json"}) {
    try {
      xfr::Config cfg = xfr::parse_config(text, format, "<fuzz>");
      const xfr::ConfigNode& model = cfg.root.at("model");
      // Build only small models: the fuzzer looks for crashes, not for big allocations.
      int64_t width = 0, layers = 0;
      const xfr::ConfigNode& stacks = model.at("stack_configs");
      for (size_t i = 0; i < stacks.size(); ++i) {
        width = std::max(width, xfr::get_int(stacks.at(i), "dim_model"));
        layers += xfr::get_int(stacks.at(i), "num_layers");
      }
      const int64_t seq = xfr::get_int(cfg.root.at("data"), "seq_len");
      xfr::ConfigNode m = model;
      if (!xfr::has_value(m, "vocab_size")) m.set("vocab_size", xfr::ConfigNode::make_scalar("16"));
      if (width <= 256 && layers <= 8 && seq <= 256 && xfr::get_int(m, "vocab_size") <= 4096)
        xfr::build_model(m, 2, seq, true);
    } catch (const xfr::Error&) {
      // a clean refusal
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  run_one(std::string(reinterpret_cast<const char*>(data), size));
  return 0;
}

#ifndef XF_LIBFUZZER
namespace {

// A small deterministic generator (splitmix64) for the mutations.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return n ? static_cast<size_t>(next() % n) : 0; }
};

const char* const kFragments[] = {
    "\n  - ", ": ", "{", "}", "[", "]", "&a ", "*a", "<<: *a", "\n", "  ", "null", "~", "-1", "0", "1e309", "true",
    "\"x\"", "'", "#", "num_layers: 100000", "dim_model: 0", "name: vocab", "name: sine", "causal: true",
    "stack_configs:", "multi_head_config:", "!!str ", "---\n", "...", "\t", "num_heads: 7", "seq_len: 3"};

std::string mutate(const std::string& s, Rng& r) {
  std::string t = s;
  const size_t n = 1 + r.below(4);
  for (size_t i = 0; i < n; ++i) {
    switch (r.below(5)) {
      case 0:
        if (!t.empty()) t[r.below(t.size())] = static_cast<char>(r.below(256));
        break;
      case 1:
        if (!t.empty()) t.erase(r.below(t.size()), 1 + r.below(8));
        break;
      case 2: t.insert(r.below(t.size() + 1), kFragments[r.below(sizeof(kFragments) / sizeof(kFragments[0]))]); break;
      case 3:
        if (t.size() > 2) {
          const size_t a = r.below(t.size()), len = 1 + r.below(std::min<size_t>(64, t.size() - a));
          t.insert(r.below(t.size() + 1), t.substr(a, len));
        }
        break;
      default:
        if (!t.empty()) t.resize(r.below(t.size()));
        break;
    }
  }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 10.0;
  std::vector<std::string> corpus;
  for (int i = 2; i < argc; ++i) {
    std::ifstream in(argv[i]);
    std::stringstream ss;
    ss << in.rdbuf();
    corpus.push_back(ss.str());
  }
  if (corpus.empty()) corpus.push_back(xfr::default_config_text());
  Rng rng{0xF022ull};
  const auto start = std::chrono::steady_clock::now();
  uint64_t runs = 0;
  for (const auto& c : corpus) {
    run_one(c);
    ++runs;
  }
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds) {
    run_one(mutate(corpus[rng.below(corpus.size())], rng));
    ++runs;
  }
  std::printf("fuzz_config: %llu inputs in %.0f s, no crash\n", static_cast<unsigned long long>(runs), seconds);
  return 0;
}
#endif
