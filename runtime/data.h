// Training data, nanoGPT / llm.c style: a flat stream of token ids, split into train and validation, read
// as random windows of seq_len + 1 tokens (inputs = the first seq_len, targets = the same shifted by one).
//
//   data: {kind: text,   path: input.txt, tokenizer: char, seq_len: 256, val_fraction: 0.1}
//   data: {kind: tokens, path: train.bin, dtype: uint16,   seq_len: 1024}     (vocab_size = model.vocab_size)
//   data: {kind: copy,   num_symbols: 16, half_len: 7,     seq_len: 64}        (also kind: reverse)
//
// Sources (all TokenSource, read-only and safe to share between threads):
//   text    a file read whole and encoded by a Tokenizer (char: the distinct bytes of the text; byte: 256).
//   tokens  a flat little-endian uint16 or uint32 file of token ids with no header (nanoGPT's train.bin;
//           llm.c's headered .bin files are not this format), memory-mapped read-only; every id read is
//           checked against vocab_size, lazily, batch by batch, so a 10 GB file opens instantly.
//   copy / reverse   synthetic examples computed on demand from the seed (SyntheticTokenSource below).
//
// Split: the first floor(n * (1 - val_fraction)) tokens train, the rest validate (nanoGPT's
// `data[:int(n * 0.9)]` for val_fraction 0.1). val_fraction 0 means no validation split.
//
// Randomness: all of it is Philox (runtime/rng.h) addressed by counters, never a stateful generator. Batch k
// of a BatchSampler is a pure function of (seed, split, k), so resuming at step k reproduces exactly the
// batches of an uninterrupted run, and the checkpoint state is just {split, step}.
//
// Errors are xfr::Error("[data] ...") and name the config key when one is to blame
// ("[data] val_fraction must be in [0, 1), got 1 (at data.val_fraction)").
// POSIX only (mmap).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace xfr {

// ==== Tokenizer ============================================================================================
// Two exact, lossless tokenizers over bytes:
//   byte  vocabulary 256, id = byte value.
//   char  vocabulary = the sorted set of distinct BYTES of the training text (not code points): ids are
//         0..V-1 in byte order. ASCII text gives nanoGPT's shakespeare_char vocabulary exactly; a multi-byte
//         UTF-8 character becomes several tokens, and decode(encode(s)) == s for every s whose bytes are in
//         the vocabulary. Encoding a byte outside the vocabulary throws (it is not silently mapped).
// decode maps ids outside the vocabulary to '?'.
class Tokenizer {
 public:
  enum class Kind { byte, char_ };

  Tokenizer();  // the byte tokenizer
  static Tokenizer byte_level();
  // Throws on an empty text (a vocabulary of nothing cannot encode anything).
  static Tokenizer char_level(const std::string& training_text);
  // kind "char" (vocabulary from training_text) or "byte" (training_text unused); anything else throws,
  // naming the config key data.tokenizer.
  static Tokenizer from_name(const std::string& kind, const std::string& training_text);

  Kind kind() const { return kind_; }
  std::string kind_name() const { return kind_ == Kind::byte ? "byte" : "char"; }
  int32_t vocab_size() const { return kind_ == Kind::byte ? 256 : static_cast<int32_t>(id_to_byte_.size()); }
  // char only: the byte of each id, ascending.
  const std::vector<uint8_t>& vocabulary() const { return id_to_byte_; }

  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string decode(const int32_t* ids, size_t n) const;

  // {"kind": "byte", "vocab_size": 256} or {"kind": "char", "vocab_size": V, "vocab": [10, 32, 33, ...]}.
  // The char vocabulary is stored as byte values, not as a string: a byte set need not be valid UTF-8, and
  // JSON strings must be. from_json validates (sorted, distinct, 0..255, vocab_size consistent).
  nlohmann::json to_json() const;
  static Tokenizer from_json(const nlohmann::json& j);

  bool operator==(const Tokenizer& o) const { return kind_ == o.kind_ && id_to_byte_ == o.id_to_byte_; }
  bool operator!=(const Tokenizer& o) const { return !(*this == o); }

 private:
  Kind kind_ = Kind::byte;
  std::vector<uint8_t> id_to_byte_;  // char only
  int16_t byte_to_id_[256];          // char only; -1 for bytes outside the vocabulary
};

// ==== Token sources ========================================================================================
// A read-only array of token ids, every one in [0, vocab_size()). Implementations are immutable after
// construction, so a source may be read from many threads.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual size_t size() const = 0;
  virtual int64_t vocab_size() const = 0;
  // Copies ids [start, start + count) to out. Throws when the range is out of bounds, or (file sources,
  // checked lazily here) when an id is not below vocab_size, naming its position in the whole source.
  virtual void copy_to(size_t start, size_t count, int32_t* out) const = 0;
  // "tokens file /data/train.bin (uint16)", for messages.
  virtual std::string describe() const = 0;

  int32_t at(size_t i) const;
  std::vector<int32_t> read(size_t start, size_t count) const;
};
using TokenSourcePtr = std::shared_ptr<const TokenSource>;

// Ids held in memory (the text source, tests). All ids are checked against vocab_size at construction.
class VectorTokenSource final : public TokenSource {
 public:
  VectorTokenSource(std::vector<int32_t> ids, int64_t vocab_size, std::string description = "token vector");
  size_t size() const override { return ids_.size(); }
  int64_t vocab_size() const override { return vocab_size_; }
  void copy_to(size_t start, size_t count, int32_t* out) const override;
  std::string describe() const override { return description_; }
  const std::vector<int32_t>& ids() const { return ids_; }

 private:
  std::vector<int32_t> ids_;
  int64_t vocab_size_;
  std::string description_;
};

enum class TokenFileDType { u16, u32 };
// "uint16" / "uint32" (also "u16", "u32"); anything else throws naming data.dtype.
TokenFileDType token_file_dtype_from_name(const std::string& name);
const char* token_file_dtype_name(TokenFileDType t);

// A flat little-endian file of uint16 or uint32 ids, memory-mapped read-only (MAP_PRIVATE, PROT_READ). The
// constructor checks that the file opens, is not empty and that its size is a multiple of the element
// size; ids are checked against vocab_size as they are read (copy_to), so opening costs no pass over it.
class TokenFileSource final : public TokenSource {
 public:
  TokenFileSource(const std::string& path, TokenFileDType dtype, int64_t vocab_size);
  ~TokenFileSource() override;
  TokenFileSource(const TokenFileSource&) = delete;
  TokenFileSource& operator=(const TokenFileSource&) = delete;

  size_t size() const override { return num_tokens_; }
  int64_t vocab_size() const override { return vocab_size_; }
  void copy_to(size_t start, size_t count, int32_t* out) const override;
  std::string describe() const override;
  const std::string& path() const { return path_; }
  TokenFileDType dtype() const { return dtype_; }

 private:
  std::string path_;
  TokenFileDType dtype_;
  int64_t vocab_size_;
  size_t num_tokens_ = 0;
  size_t mapped_bytes_ = 0;
  const unsigned char* data_ = nullptr;
};

// Writes ids as a flat little-endian uint16/uint32 file (the format TokenFileSource reads); throws when an
// id does not fit the element type or the file cannot be written. For tools and tests.
void write_token_file(const std::string& path, const std::vector<int32_t>& ids, TokenFileDType dtype);

// Tokens [begin, end) of a parent source, positions renumbered from 0. Errors from the parent keep naming
// positions in the parent (the file), which is where a user looks.
class SliceTokenSource final : public TokenSource {
 public:
  SliceTokenSource(TokenSourcePtr parent, size_t begin, size_t end);
  size_t size() const override { return end_ - begin_; }
  int64_t vocab_size() const override { return parent_->vocab_size(); }
  void copy_to(size_t start, size_t count, int32_t* out) const override;
  std::string describe() const override;
  size_t begin() const { return begin_; }
  size_t end() const { return end_; }
  const TokenSourcePtr& parent() const { return parent_; }

 private:
  TokenSourcePtr parent_;
  size_t begin_, end_;
};

// ==== Synthetic tasks ======================================================================================
// Copy / reverse: a stream of examples, each 2 * half_len + 2 tokens,
//     BOS a_1 ... a_m SEP b_1 ... b_m          m = half_len
// with a_i i.i.d. uniform over the symbols 0..num_symbols-1, BOS = num_symbols, SEP = num_symbols + 1
// (vocab_size = num_symbols + 2), and b = a (copy) or b_i = a_{m+1-i} (reverse). Symbol a_i of example e is
// drawn by Philox from (seed, e, i) alone, so any token is computed on demand in O(1): the source holds no
// memory, and the same seed gives the same stream on every machine.
// What is learnable: the a's are random (loss ln num_symbols each); BOS, SEP and the b's are determined by
// the earlier tokens of the example. A model that sees whole examples reaches a mean next-token loss of
// m ln(num_symbols) / (2m + 2) (synthetic_loss_floor); windows that cut an example are slightly worse.
struct SyntheticTask {
  enum class Kind { copy, reverse };
  Kind kind = Kind::copy;
  // 16 symbols: a random token costs ln 16 = 2.77 nats, so the learnable part (the b's) stands out clearly
  // from the floor, while a small model learns the rule within a few hundred steps.
  int64_t num_symbols = 16;
  int64_t half_len = 7;  // 7: an example is 16 tokens, several whole examples fit a 64-token window
  // 2^24 tokens (about 1M examples at half_len 7): more than a quick run can see, so the model must learn
  // the rule rather than memorise examples; tokens are computed on demand, so the size costs nothing.
  int64_t num_tokens = int64_t{1} << 24;
  uint64_t seed = 0;

  int64_t example_len() const { return 2 * half_len + 2; }
  int32_t bos() const { return static_cast<int32_t>(num_symbols); }
  int32_t sep() const { return static_cast<int32_t>(num_symbols + 1); }
  int64_t vocab_size() const { return num_symbols + 2; }
};
// "copy" / "reverse"; anything else throws naming data.kind.
SyntheticTask::Kind synthetic_kind_from_name(const std::string& name);
// m ln(num_symbols) / (2m + 2): the mean loss of a model that has learnt the task, for windows much longer
// than an example.
double synthetic_loss_floor(const SyntheticTask& task);

class SyntheticTokenSource final : public TokenSource {
 public:
  explicit SyntheticTokenSource(const SyntheticTask& task);  // validates, naming data.* keys
  size_t size() const override { return static_cast<size_t>(task_.num_tokens); }
  int64_t vocab_size() const override { return task_.vocab_size(); }
  void copy_to(size_t start, size_t count, int32_t* out) const override;
  std::string describe() const override;
  const SyntheticTask& task() const { return task_; }
  // Symbol a_i (i in [0, half_len)) of example e.
  int32_t symbol(uint64_t example, uint64_t i) const;

 private:
  SyntheticTask task_;
  uint32_t key_[2];
};

// ==== Train / validation split ============================================================================
struct TrainValSplit {
  TokenSourcePtr train;  // the first floor(n * (1 - val_fraction)) tokens
  TokenSourcePtr val;    // the rest; null when val_fraction is 0
};
// Checks val_fraction in [0, 1) (data.val_fraction), seq_len >= 1 (data.seq_len), and that the train split
// and (when val_fraction > 0) the validation split each hold at least seq_len + 1 tokens, one window.
TrainValSplit split_train_val(const TokenSourcePtr& source, double val_fraction, int64_t seq_len);

// ==== Batches =============================================================================================
struct Batch {
  Tensor inputs;   // (B, T) i32, CPU
  Tensor targets;  // (B, T) i32, CPU
  // Row b is a window w of T + 1 consecutive tokens: inputs[b][t] = w[t], targets[b][t] = w[t + 1].
};

// Random windows of seq_len + 1 tokens. Row b of batch `step` starts at a position drawn uniformly (exactly,
// by rejection) from the split's size - seq_len possible starts, by Philox with
//     key     = derive(seed, split)           a keyed hash, so train and val streams and other users of the
//                                             same seed (dropout, init) never share counters
//     counter = (b, attempt, lo32(step), hi32(step))
// Batch k is therefore the same whatever was sampled before: batch_at(k) is pure and thread-safe, next()
// is batch_at(step()) followed by step()++. Windows are drawn with replacement, as in nanoGPT.
class BatchSampler {
 public:
  // split: "train" or "val" (selects the stream and is recorded in state()).
  BatchSampler(TokenSourcePtr source, int64_t batch_size, int64_t seq_len, uint64_t seed,
               std::string split = "train");

  Batch next();
  Batch batch_at(uint64_t step) const;
  // Fills preallocated contiguous CPU (B, T) i32 tensors (pinned buffers, a captured graph's inputs).
  void fill(uint64_t step, Tensor& inputs, Tensor& targets) const;
  // The B window starts (positions in the split) of batch `step`.
  std::vector<size_t> window_starts(uint64_t step) const;

  uint64_t step() const { return step_; }
  void set_step(uint64_t step) { step_ = step; }
  // {"split": "train", "step": 1234}: the next batch to be returned.
  nlohmann::json state() const;
  // Accepts only a state of the same split; throws on a malformed state.
  void set_state(const nlohmann::json& state);

  int64_t batch_size() const { return batch_size_; }
  int64_t seq_len() const { return seq_len_; }
  const std::string& split() const { return split_; }
  const TokenSourcePtr& source() const { return source_; }

 private:
  TokenSourcePtr source_;
  int64_t batch_size_, seq_len_;
  std::string split_;
  uint32_t key_[2];
  uint64_t step_ = 0;
};

// Fixed, sequential windows over a (validation) split, so eval loss is comparable from one eval to the
// next. Window w covers tokens [w T, w T + T + 1) (inputs do not overlap, as llm.c's val loader); there are
// W = (size - 1) / T of them. Batch i holds windows i B .. i B + B - 1. Only whole batches are produced
// (every batch has the compiled shape (B, T)): with W >= B there are W / B batches and the last W mod B
// windows are not used; with W < B there is one batch whose rows cycle through the W windows. max_batches
// > 0 caps the count (llm.c's val_max_steps).
class EvalBatches {
 public:
  EvalBatches(TokenSourcePtr source, int64_t batch_size, int64_t seq_len, int64_t max_batches = 0);

  int64_t num_batches() const { return num_batches_; }
  int64_t num_windows() const { return num_windows_; }
  Batch batch(int64_t i) const;
  void fill(int64_t i, Tensor& inputs, Tensor& targets) const;

  // Sequential use: while (eval.next(&b)) {...}; reset() before the next evaluation.
  bool next(Batch* out);
  void reset() { cursor_ = 0; }

 private:
  TokenSourcePtr source_;
  int64_t batch_size_, seq_len_, num_windows_ = 0, num_batches_ = 0, cursor_ = 0;
};

// ==== The data section of a config =========================================================================
struct DataConfig {
  std::string kind = "text";         // data.kind: text | tokens | copy | reverse
  std::string path;                  // data.path (text, tokens)
  int64_t seq_len = 256;             // data.seq_len: T
  // data.val_fraction: nanoGPT's 90/10 split.
  double val_fraction = 0.1;
  std::string tokenizer = "char";    // data.tokenizer (text): char | byte
  std::string dtype = "uint16";      // data.dtype (tokens): uint16 | uint32; uint16 holds GPT-2's 50257 ids
  // The model's vocabulary (model.vocab_size), filled in by the caller. Required for tokens (the bound every
  // id is checked against); for text and synthetic data, when > 0, the data's vocabulary must fit in it.
  int64_t vocab_size = 0;
  // data.num_symbols, data.half_len, data.num_tokens (copy, reverse). Its kind and seed are ignored:
  // load_dataset takes them from data.kind and data.seed.
  SyntheticTask synthetic;
  uint64_t seed = 0;                 // data.seed: window sampling and synthetic examples
};

struct Dataset {
  TokenSourcePtr source;                 // the whole stream
  TrainValSplit split;                   // views of `source`
  std::optional<Tokenizer> tokenizer;    // text only (store it in checkpoints)
  int64_t vocab_size = 0;                // of the data (tokenizer, synthetic task, or the config's for tokens)
};

// Reads a file whole, bytes as they are. Throws naming data.path when it cannot be read.
std::string read_text_file(const std::string& path);

// Builds the source, tokenizer and split of a config. `saved_tokenizer` (from a checkpoint) replaces the
// one that would be built from the text, so a resumed run encodes exactly as the original did; it must be
// of the configured kind.
Dataset load_dataset(const DataConfig& config, const Tokenizer* saved_tokenizer = nullptr);

}  // namespace xfr
