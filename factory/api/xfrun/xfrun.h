// xfrun's public C++ API: load a model from a config and a safetensors checkpoint, run it from many
// threads. Only the C++17 standard library is exposed; everything else is behind opaque types.
//
//   #include <xfrun/xfrun.h>
//   xfrun::Model model = xfrun::Model::load_file("model.yaml", "run/checkpoints/step_600");
//   xfrun::Session session(model, {/*max_batch=*/8, /*max_length=*/128});
//   std::vector<xfrun::Array> out;
//   session.forward({{1, 2, 3}, {4, 5}}, xfrun::Output::logits, out);   // out[i]: (L_i, V)
//
// Threads. A Model is immutable once loaded (its parameters are only read) and may be shared by any
// number of threads; copies of a Model share the same weights. A Session holds the mutable state of
// requests (compiled graphs, activation memory, the KV cache, sampling scratch): each Session must be
// used by one thread at a time; give each thread its own Session on the shared Model. Results do not
// depend on which session or thread computed them: the same input gives bit-identical output.
//
// Memory. A Session compiles one graph per sequence length (batch 1; a batch runs its sequences one after
// another, so a sequence's result never depends on the others in its batch) and caches it: by default on
// first use of each length, or for every length 1..max_length up front with SessionOptions::precompile.
// The generation graph (with its KV cache) is compiled on the first generate() call, or up front with
// precompile. Once a length is compiled, forward() into a reused output vector and generate() into a
// reused result allocate no tensor memory.
//
// Errors: every function throws xfrun::Error (a std::runtime_error) with a message that names the cause:
// the config path and file:line:col for config errors, the tensor for checkpoint mismatches.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace xfrun {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// "0.1.0"
const char* version();

// What forward() returns per sequence of L tokens:
//   logits: (L, V) next-token logits for causal_lm and embedding models, (K) class logits for classification
//   hidden: (L, C) the last hidden states (after the final norm of a pre-norm stack)
//   pooled: (C) classification's pooled features; embedding's unit-norm embedding; causal_lm: the mean
//           of the hidden states over the positions
enum class Output { logits, hidden, pooled };

// A dense float32 array, row-major.
struct Array {
  std::vector<float> data;
  std::vector<int64_t> shape;
};

struct LoadOptions {
  // "cpu", "cuda", "cuda:N" or "auto" (the first GPU when there is one). A GPU model keeps one copy of the
  // weights on the device; each Session runs its graphs there (fp32) and returns results on the host.
  std::string device = "cpu";
};

namespace detail {
struct ModelImpl;
struct SessionImpl;
}  // namespace detail

class Model {
 public:
  // config: a YAML or JSON config file (what `xfrun train` takes). checkpoint: a checkpoint step folder
  // (<out>/checkpoints/step_N, verified against its manifest), a folder holding model.safetensors, or a
  // .safetensors file. The checkpoint must hold exactly the model's parameters in their shapes: a missing,
  // extra or mis-shaped tensor is refused, naming it. model.vocab_size, when not in the config, comes from
  // the checkpoint's tokenizer (state.json) or else from the config's data.
  static Model load_file(const std::string& config_path, const std::string& checkpoint, const LoadOptions& options = {});
  // The same from config text; format "yaml" or "json". Relative paths in it resolve against the working
  // directory.
  static Model load_string(const std::string& config_text, const std::string& format, const std::string& checkpoint,
                           const LoadOptions& options = {});

  const std::string& task() const;  // "causal_lm", "classification" or "embedding"
  int64_t vocab_size() const;
  int64_t max_length() const;   // the longest sequence the model takes (data.seq_len)
  int64_t hidden_size() const;  // C
  int64_t output_size(Output what) const;  // the last dimension of that output (V, K or C)
  const std::string& device() const;

  // The text tokenizer the model was trained with: "byte" or "char" (xfrun's lossless byte-level
  // tokenizers), taken from the checkpoint step folder's state.json, else from the config's text data
  // (data.tokenizer; char reads the training text for its vocabulary). "" when the model has none (token
  // or synthetic data, or the text cannot be read): then only token ids go in and out.
  const std::string& tokenizer() const;
  // Text -> token ids and back with that tokenizer. Both throw Error when the model has none (saying
  // why); encode also for a byte of `text` outside a char vocabulary. decode maps ids outside the
  // vocabulary to '?'; what it returns is bytes, not necessarily valid UTF-8.
  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& tokens) const;

  // Convenience: runs `batch` on a temporary Session (compiling what it needs; thread-safe).
  std::vector<Array> forward(const std::vector<std::vector<int32_t>>& batch, Output what) const;

 private:
  friend class Session;
  explicit Model(std::shared_ptr<const detail::ModelImpl> impl);
  std::shared_ptr<const detail::ModelImpl> impl_;
};

struct SessionOptions {
  int64_t max_batch = 1;    // the most sequences one forward() takes
  int64_t max_length = 0;   // the longest sequence; 0: the model's max_length()
  int threads = 1;          // CPU threads this session's kernels use (its own pool; 1: the calling thread)
  bool precompile = false;  // compile every length 1..max_length (and generation) now, not on first use
};

struct GenerateOptions {
  int64_t max_new_tokens = 64;       // stop after this many tokens
  std::vector<int32_t> stop_tokens;  // stop when one is sampled (it is neither streamed nor returned)
  double temperature = 0.0;          // 0: greedy
  int64_t top_k = 0;                 // 0: no limit
  double top_p = 1.0;
  uint64_t seed = 0;
  bool kv_cache = true;              // false: recompute the window per token (same tokens)
};

enum class StopReason { max_tokens, stop_token, callback };

struct GenerateResult {
  std::vector<int32_t> tokens;  // the new tokens (stop token excluded)
  StopReason reason = StopReason::max_tokens;
};

// Called with each new token as soon as it is sampled; return false to stop (that token is kept).
using TokenCallback = std::function<bool(int32_t token)>;

class Session {
 public:
  Session(const Model& model, const SessionOptions& options = {});
  ~Session();
  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Model& model() const;
  const SessionOptions& options() const;

  // Each sequence: 1..max_length ids below vocab_size; at most max_batch sequences. `out` is resized to
  // the batch size and each Array filled (reusing its storage).
  void forward(const std::vector<std::vector<int32_t>>& batch, Output what, std::vector<Array>& out);
  std::vector<Array> forward(const std::vector<std::vector<int32_t>>& batch, Output what);

  // causal_lm only: continues `prompt` (ids below vocab_size; empty: token 0). Prompts longer than the
  // model's max_length keep their last max_length tokens. `on_token` may be empty.
  void generate(const std::vector<int32_t>& prompt, const GenerateOptions& options, const TokenCallback& on_token,
                GenerateResult& result);
  GenerateResult generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                          const TokenCallback& on_token = {});

 private:
  std::unique_ptr<detail::SessionImpl> impl_;
};

}  // namespace xfrun
