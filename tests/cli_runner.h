// Running the built `xfrun` binary from tests (its path is the compile definition XF_CLI_PATH), and the
// tiny character-level LM config the CLI and sweep tests share.
#pragma once
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "temp_dir.h"
#include "testing.h"  // contains

namespace xfr::testing {

inline std::string read_text(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Single-quoted for sh.
inline std::string sh_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// A tiny character-level LM on text.txt next to the config (data.path is relative to the config).
inline const std::string kTinyTextLm = R"(model:
  task: causal_lm
  weight_init: small
  stack_configs:
    - block_type: encoder
      num_layers: 1
      dim_model: 16
      residual_norm_style: pre
      position_encoding_config: {name: vocab, seq_len: 16}
      multi_head_config:
        num_heads: 2
        attention: {name: scaled_dot_product, causal: true}
      feedforward_config: {name: MLP, activation: relu, hidden_layer_multiplier: 2}
data: {kind: text, path: text.txt, seq_len: 16, val_fraction: 0.1}
train:
  steps: 4
  batch_size: 4
  schedule: {name: constant}
  eval_every: 2
  eval_steps: 2
  log_every: 1
infer: {max_new_tokens: 8, prompt: "to be", temperature: 0.8}
runtime: {device: cpu, seed: 3, threads: 1, out_dir: run}
)";

#ifdef XF_CLI_PATH
struct CliRun {
  int rc = -1;
  std::string out, err;
  double wall_s = 0;
};

// Runs `xfrun args...` in `cwd` (a fresh temp folder when empty), capturing stdout, stderr, exit code.
inline CliRun xfrun(const std::vector<std::string>& args, const std::string& cwd = "") {
  TempDir io;
  std::string cmd = "cd " + sh_quote(cwd.empty() ? io.str() : cwd) + " && " + sh_quote(XF_CLI_PATH);
  for (const auto& a : args) cmd += " " + sh_quote(a);
  cmd += " > " + sh_quote(io.sub("stdout")) + " 2> " + sh_quote(io.sub("stderr")) + " < /dev/null";
  const auto t0 = std::chrono::steady_clock::now();
  const int status = std::system(cmd.c_str());
  CliRun r;
  r.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_text(io.sub("stdout"));
  r.err = read_text(io.sub("stderr"));
  return r;
}
#endif

}  // namespace xfr::testing
