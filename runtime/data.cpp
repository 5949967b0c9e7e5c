// Training data: tokenizers, token sources, the train/val split and the batch samplers (see data.h).
#include "runtime/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "runtime/rng.h"

namespace xfr {

namespace {

const char* kOp = "data";

std::string hex_byte(unsigned v) {
  const char* digits = "0123456789ABCDEF";
  std::string s = "0x";
  s += digits[(v >> 4) & 15u];
  s += digits[v & 15u];
  return s;
}

// ---- Counter-based draws ---------------------------------------------------------------------------------

// Stream domains: each user of a seed in this file hashes it with its own tag, so the train sampler, the
// val sampler and the synthetic examples never share Philox counters with each other, nor with dropout or
// weight init, which use the seed's plain stream (counter words 2 and 3 zero, see rng.h).
enum Domain : uint32_t { kDomainTrain = 1, kDomainVal = 2, kDomainSynthetic = 3 };
// "data" in ASCII: makes the hash input differ from any counter of the plain stream within reach.
constexpr uint32_t kDataTag = 0x64617461u;

// A Philox key derived from (seed, domain): one Philox block of the counter (domain, "data", 0, 0) under
// the seed's key, i.e. a keyed hash.
void derive_key(uint64_t seed, uint32_t domain, uint32_t key[2]) {
  const Philox4x32 r = philox4x32_10(domain, kDataTag, 0u, 0u, static_cast<uint32_t>(seed),
                                     static_cast<uint32_t>(seed >> 32));
  key[0] = r.x[0];
  key[1] = r.x[1];
}

// Uniform in [0, bound), exactly: 64 random bits from the block (c0, attempt, lo32(c23), hi32(c23)) scaled
// by Lemire's multiply-shift, rejecting the 2^64 mod bound low products that would bias it (probability
// below bound / 2^64, so `attempt` is 0 in practice). Requires bound >= 1.
uint64_t draw_below(const uint32_t key[2], uint32_t c0, uint64_t c23, uint64_t bound) {
  for (uint32_t attempt = 0;; ++attempt) {
    const Philox4x32 r = philox4x32_10(c0, attempt, static_cast<uint32_t>(c23), static_cast<uint32_t>(c23 >> 32),
                                       key[0], key[1]);
    const uint64_t x = static_cast<uint64_t>(r.x[0]) | (static_cast<uint64_t>(r.x[1]) << 32);
    const unsigned __int128 m = static_cast<unsigned __int128>(x) * bound;
    const uint64_t lo = static_cast<uint64_t>(m);
    if (lo < bound) {
      const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
      if (lo < threshold) continue;
    }
    return static_cast<uint64_t>(m >> 64);
  }
}

// ---- Batch tensors -----------------------------------------------------------------------------------------

void check_batch_tensor(const Tensor& t, int64_t b, int64_t s, const char* name) {
  XF_CHECK(t.defined() && t.device().is_cpu() && t.dtype() == DType::i32 && t.is_contiguous() &&
               t.shape() == Shape({b, s}),
           kOp, name, " must be a contiguous CPU i32 tensor of shape ", shape_str({b, s}), ", got ",
           t.defined() ? t.desc() : std::string("an undefined tensor"));
}

// Reads the window of T + 1 tokens at `start` and writes row `row` of inputs and targets.
void fill_row(const TokenSource& src, size_t start, int64_t seq_len, int64_t row, int32_t* window, int32_t* inputs,
              int32_t* targets) {
  const size_t t = static_cast<size_t>(seq_len);
  src.copy_to(start, t + 1, window);
  std::memcpy(inputs + static_cast<size_t>(row) * t, window, t * sizeof(int32_t));
  std::memcpy(targets + static_cast<size_t>(row) * t, window + 1, t * sizeof(int32_t));
}

void check_range(const TokenSource& src, size_t start, size_t count) {
  const size_t n = src.size();
  XF_CHECK(start <= n && count <= n - start, kOp, "tokens [", start, ", ", start + count, ") out of range for ", n,
           " tokens of ", src.describe());
}

}  // namespace

// ==== Tokenizer ============================================================================================

Tokenizer::Tokenizer() { std::fill(std::begin(byte_to_id_), std::end(byte_to_id_), int16_t{-1}); }

Tokenizer Tokenizer::byte_level() { return Tokenizer(); }

Tokenizer Tokenizer::char_level(const std::string& training_text) {
  XF_CHECK(!training_text.empty(), kOp, "char tokenizer: the training text is empty, so there is no vocabulary");
  bool present[256] = {};
  for (unsigned char c : training_text) present[c] = true;
  Tokenizer t;
  t.kind_ = Kind::char_;
  for (int b = 0; b < 256; ++b) {
    if (!present[b]) continue;
    t.byte_to_id_[b] = static_cast<int16_t>(t.id_to_byte_.size());
    t.id_to_byte_.push_back(static_cast<uint8_t>(b));
  }
  return t;
}

Tokenizer Tokenizer::from_name(const std::string& kind, const std::string& training_text) {
  if (kind == "byte") return byte_level();
  if (kind == "char") return char_level(training_text);
  throw Error(kOp, "unknown tokenizer '" + kind + "' (known: char, byte)", "data.tokenizer");
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (kind_ == Kind::byte) {
      ids[i] = c;
      continue;
    }
    const int16_t id = byte_to_id_[c];
    if (id < 0)
      throw Error(kOp, str_cat("byte ", hex_byte(c), " at offset ", i, " is not in the char tokenizer's vocabulary of ",
                               id_to_byte_.size(), " bytes (the distinct bytes of its training text)"));
    ids[i] = id;
  }
  return ids;
}

std::string Tokenizer::decode(const int32_t* ids, size_t n) const {
  std::string s(n, '?');
  const int32_t v = vocab_size();
  for (size_t i = 0; i < n; ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= v) continue;  // unknown: stays '?'
    s[i] = static_cast<char>(kind_ == Kind::byte ? static_cast<uint8_t>(id) : id_to_byte_[static_cast<size_t>(id)]);
  }
  return s;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const { return decode(ids.data(), ids.size()); }

nlohmann::json Tokenizer::to_json() const {
  nlohmann::json j;
  j["kind"] = kind_name();
  j["vocab_size"] = vocab_size();
  if (kind_ == Kind::char_) {
    nlohmann::json v = nlohmann::json::array();
    for (uint8_t b : id_to_byte_) v.push_back(static_cast<int>(b));
    j["vocab"] = std::move(v);
  }
  return j;
}

Tokenizer Tokenizer::from_json(const nlohmann::json& j) {
  auto bad = [](const std::string& why) { return Error(kOp, "malformed tokenizer JSON: " + why); };
  if (!j.is_object()) throw bad("expected an object, got " + std::string(j.type_name()));
  if (!j.contains("kind") || !j["kind"].is_string()) throw bad("missing string 'kind'");
  const std::string kind = j["kind"].get<std::string>();
  const bool has_size = j.contains("vocab_size");
  if (has_size && !j["vocab_size"].is_number_integer()) throw bad("'vocab_size' is not an integer");
  if (kind == "byte") {
    if (has_size && j["vocab_size"].get<int64_t>() != 256)
      throw bad(str_cat("a byte tokenizer has vocab_size 256, not ", j["vocab_size"].get<int64_t>()));
    return byte_level();
  }
  if (kind != "char") throw bad("unknown kind '" + kind + "' (known: char, byte)");
  if (!j.contains("vocab") || !j["vocab"].is_array() || j["vocab"].empty())
    throw bad("a char tokenizer needs a non-empty array 'vocab' of byte values");
  Tokenizer t;
  t.kind_ = Kind::char_;
  int64_t prev = -1;
  for (const auto& e : j["vocab"]) {
    if (!e.is_number_integer()) throw bad("'vocab' holds a non-integer");
    const int64_t b = e.get<int64_t>();
    if (b < 0 || b > 255) throw bad(str_cat("'vocab' holds ", b, ", not a byte value"));
    if (b <= prev) throw bad("'vocab' is not strictly ascending");
    prev = b;
    t.byte_to_id_[b] = static_cast<int16_t>(t.id_to_byte_.size());
    t.id_to_byte_.push_back(static_cast<uint8_t>(b));
  }
  if (has_size && j["vocab_size"].get<int64_t>() != t.vocab_size())
    throw bad(str_cat("vocab_size ", j["vocab_size"].get<int64_t>(), " but 'vocab' has ", t.vocab_size(), " bytes"));
  return t;
}

// ==== Token sources ========================================================================================

int32_t TokenSource::at(size_t i) const {
  int32_t v = 0;
  copy_to(i, 1, &v);
  return v;
}

std::vector<int32_t> TokenSource::read(size_t start, size_t count) const {
  std::vector<int32_t> v(count);
  copy_to(start, count, v.data());
  return v;
}

VectorTokenSource::VectorTokenSource(std::vector<int32_t> ids, int64_t vocab_size, std::string description)
    : ids_(std::move(ids)), vocab_size_(vocab_size), description_(std::move(description)) {
  XF_CHECK(vocab_size_ >= 1, kOp, "vocab_size must be >= 1, got ", vocab_size_, " (", description_, ")");
  for (size_t i = 0; i < ids_.size(); ++i) {
    XF_CHECK(ids_[i] >= 0, kOp, "token id ", ids_[i], " at position ", i, " is negative (", description_, ")");
    XF_CHECK(ids_[i] < vocab_size_, kOp, "token id ", ids_[i], " at position ", i, " exceeds vocab_size ",
             vocab_size_, " (", description_, ")");
  }
}

void VectorTokenSource::copy_to(size_t start, size_t count, int32_t* out) const {
  check_range(*this, start, count);
  if (count) std::memcpy(out, ids_.data() + start, count * sizeof(int32_t));
}

TokenFileDType token_file_dtype_from_name(const std::string& name) {
  if (name == "uint16" || name == "u16") return TokenFileDType::u16;
  if (name == "uint32" || name == "u32") return TokenFileDType::u32;
  throw Error(kOp, "unknown token file dtype '" + name + "' (known: uint16, uint32)", "data.dtype");
}

const char* token_file_dtype_name(TokenFileDType t) { return t == TokenFileDType::u16 ? "uint16" : "uint32"; }

static size_t element_size(TokenFileDType t) { return t == TokenFileDType::u16 ? 2 : 4; }

TokenFileSource::TokenFileSource(const std::string& path, TokenFileDType dtype, int64_t vocab_size)
    : path_(path), dtype_(dtype), vocab_size_(vocab_size) {
  // Ids are returned as int32, so a vocabulary cannot usefully exceed INT32_MAX.
  if (vocab_size < 1 || vocab_size > std::numeric_limits<int32_t>::max())
    throw Error(kOp, str_cat("vocab_size must be in [1, 2^31 - 1] to read tokens file ", path, ", got ", vocab_size),
                "model.vocab_size");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(kOp, str_cat("cannot open tokens file ", path, ": ", std::strerror(errno)), "data.path");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(kOp, str_cat("cannot stat tokens file ", path, ": ", std::strerror(err)), "data.path");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(kOp, str_cat("tokens file ", path, " is not a regular file"), "data.path");
  }
  const size_t bytes = static_cast<size_t>(st.st_size);
  const size_t es = element_size(dtype);
  if (bytes == 0) {
    ::close(fd);
    throw Error(kOp, str_cat("tokens file ", path, " is empty"), "data.path");
  }
  if (bytes % es != 0) {
    ::close(fd);
    throw Error(kOp, str_cat("tokens file ", path, " has ", bytes, " bytes, not a multiple of ", es, " (",
                             token_file_dtype_name(dtype), "): wrong data.dtype, or a truncated file"),
                "data.dtype");
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file open
  if (p == MAP_FAILED) throw Error(kOp, str_cat("cannot mmap tokens file ", path, ": ", std::strerror(err)), "data.path");
  data_ = static_cast<const unsigned char*>(p);
  mapped_bytes_ = bytes;
  num_tokens_ = bytes / es;
}

TokenFileSource::~TokenFileSource() {
  if (data_) ::munmap(const_cast<unsigned char*>(data_), mapped_bytes_);
}

std::string TokenFileSource::describe() const {
  return str_cat("tokens file ", path_, " (", token_file_dtype_name(dtype_), ")");
}

void TokenFileSource::copy_to(size_t start, size_t count, int32_t* out) const {
  check_range(*this, start, count);
  // Little-endian decoding from bytes: portable to big-endian hosts; compilers emit one load on x86/ARM.
  const uint64_t bound = static_cast<uint64_t>(vocab_size_);
  auto fail = [&](uint64_t id, size_t pos) {
    throw Error(kOp, str_cat("token id ", id, " at position ", pos, " exceeds vocab_size ", vocab_size_, " (file ",
                             path_, ")"));
  };
  if (dtype_ == TokenFileDType::u16) {
    const unsigned char* p = data_ + 2 * start;
    for (size_t i = 0; i < count; ++i, p += 2) {
      const uint32_t v = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8);
      if (v >= bound) fail(v, start + i);
      out[i] = static_cast<int32_t>(v);
    }
  } else {
    const unsigned char* p = data_ + 4 * start;
    for (size_t i = 0; i < count; ++i, p += 4) {
      const uint32_t v = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
                         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
      if (v >= bound) fail(v, start + i);
      out[i] = static_cast<int32_t>(v);
    }
  }
}

void write_token_file(const std::string& path, const std::vector<int32_t>& ids, TokenFileDType dtype) {
  const uint64_t max_id = dtype == TokenFileDType::u16 ? 0xFFFFu : 0xFFFFFFFFu;
  std::string bytes;
  bytes.reserve(ids.size() * element_size(dtype));
  for (size_t i = 0; i < ids.size(); ++i) {
    XF_CHECK(ids[i] >= 0 && static_cast<uint64_t>(ids[i]) <= max_id, kOp, "token id ", ids[i], " at position ", i,
             " does not fit ", token_file_dtype_name(dtype));
    const uint32_t v = static_cast<uint32_t>(ids[i]);
    for (size_t b = 0; b < element_size(dtype); ++b) bytes.push_back(static_cast<char>((v >> (8 * b)) & 0xFFu));
  }
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  XF_CHECK(f.good(), kOp, "cannot create tokens file ", path);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  f.close();
  XF_CHECK(!f.fail(), kOp, "cannot write tokens file ", path);
}

SliceTokenSource::SliceTokenSource(TokenSourcePtr parent, size_t begin, size_t end)
    : parent_(std::move(parent)), begin_(begin), end_(end) {
  XF_CHECK(parent_ != nullptr, kOp, "slice of a null token source");
  XF_CHECK(begin_ <= end_ && end_ <= parent_->size(), kOp, "slice [", begin_, ", ", end_, ") out of range for ",
           parent_->size(), " tokens of ", parent_->describe());
}

void SliceTokenSource::copy_to(size_t start, size_t count, int32_t* out) const {
  check_range(*this, start, count);
  parent_->copy_to(begin_ + start, count, out);
}

std::string SliceTokenSource::describe() const {
  return str_cat(parent_->describe(), " [", begin_, ", ", end_, ")");
}

// ==== Synthetic tasks ======================================================================================

SyntheticTask::Kind synthetic_kind_from_name(const std::string& name) {
  if (name == "copy") return SyntheticTask::Kind::copy;
  if (name == "reverse") return SyntheticTask::Kind::reverse;
  throw Error(kOp, "unknown synthetic task '" + name + "' (known: copy, reverse)", "data.kind");
}

double synthetic_loss_floor(const SyntheticTask& task) {
  const double m = static_cast<double>(task.half_len);
  return m * std::log(static_cast<double>(task.num_symbols)) / (2.0 * m + 2.0);
}

SyntheticTokenSource::SyntheticTokenSource(const SyntheticTask& task) : task_(task) {
  // At least 2 symbols: with one, nothing is random and there is nothing to learn. At most 2^31 - 3, so that
  // BOS and SEP (num_symbols, num_symbols + 1) are still int32 ids.
  if (task.num_symbols < 2 || task.num_symbols > std::numeric_limits<int32_t>::max() - 2)
    throw Error(kOp, str_cat("num_symbols must be in [2, 2^31 - 3], got ", task.num_symbols), "data.num_symbols");
  // half_len indexes Philox counter word 0 (a uint32).
  if (task.half_len < 1 || task.half_len > std::numeric_limits<uint32_t>::max())
    throw Error(kOp, str_cat("half_len must be in [1, 2^32 - 1], got ", task.half_len), "data.half_len");
  if (task.num_tokens < 1) throw Error(kOp, str_cat("num_tokens must be >= 1, got ", task.num_tokens), "data.num_tokens");
  derive_key(task.seed, kDomainSynthetic, key_);
}

int32_t SyntheticTokenSource::symbol(uint64_t example, uint64_t i) const {
  return static_cast<int32_t>(
      draw_below(key_, static_cast<uint32_t>(i), example, static_cast<uint64_t>(task_.num_symbols)));
}

void SyntheticTokenSource::copy_to(size_t start, size_t count, int32_t* out) const {
  check_range(*this, start, count);
  const uint64_t len = static_cast<uint64_t>(task_.example_len());
  const uint64_t m = static_cast<uint64_t>(task_.half_len);
  for (size_t k = 0; k < count; ++k) {
    const uint64_t pos = start + k;
    const uint64_t e = pos / len, o = pos % len;
    if (o == 0) {
      out[k] = task_.bos();
    } else if (o <= m) {
      out[k] = symbol(e, o - 1);
    } else if (o == m + 1) {
      out[k] = task_.sep();
    } else {
      const uint64_t j = o - m - 2;
      out[k] = symbol(e, task_.kind == SyntheticTask::Kind::copy ? j : m - 1 - j);
    }
  }
}

std::string SyntheticTokenSource::describe() const {
  return str_cat("synthetic ", task_.kind == SyntheticTask::Kind::copy ? "copy" : "reverse", " task (",
                 task_.num_symbols, " symbols, half_len ", task_.half_len, ", seed ", task_.seed, ")");
}

// ==== Train / validation split ============================================================================

TrainValSplit split_train_val(const TokenSourcePtr& source, double val_fraction, int64_t seq_len) {
  XF_CHECK(source != nullptr, kOp, "split of a null token source");
  if (!(val_fraction >= 0.0 && val_fraction < 1.0))
    throw Error(kOp, str_cat("val_fraction must be in [0, 1), got ", val_fraction), "data.val_fraction");
  if (seq_len < 1) throw Error(kOp, str_cat("seq_len must be >= 1, got ", seq_len), "data.seq_len");
  const size_t n = source->size();
  const size_t window = static_cast<size_t>(seq_len) + 1;
  // nanoGPT's int(n * 0.9), in double (exact for n < 2^53, far beyond any token file).
  size_t n_train = static_cast<size_t>(std::floor(static_cast<double>(n) * (1.0 - val_fraction)));
  n_train = std::min(n_train, n);
  const size_t n_val = n - n_train;
  if (n_train < window)
    throw Error(kOp,
                str_cat("the train split has ", n_train, " tokens (", 1.0 - val_fraction, " of the ", n, " tokens of ",
                        source->describe(), "), fewer than seq_len + 1 = ", window,
                        ": lower data.seq_len or data.val_fraction, or use more data"),
                "data.seq_len");
  TrainValSplit s;
  s.train = std::make_shared<SliceTokenSource>(source, 0, n_train);
  if (val_fraction > 0.0) {
    if (n_val < window)
      throw Error(kOp,
                  str_cat("the validation split has ", n_val, " tokens (val_fraction ", val_fraction, " of the ", n,
                          " tokens of ", source->describe(), "), fewer than seq_len + 1 = ", window,
                          ": raise data.val_fraction, lower data.seq_len, or set data.val_fraction to 0 for no "
                          "validation"),
                  "data.val_fraction");
    s.val = std::make_shared<SliceTokenSource>(source, n_train, n);
  }
  return s;
}

// ==== BatchSampler ========================================================================================

BatchSampler::BatchSampler(TokenSourcePtr source, int64_t batch_size, int64_t seq_len, uint64_t seed,
                           std::string split)
    : source_(std::move(source)), batch_size_(batch_size), seq_len_(seq_len), split_(std::move(split)) {
  XF_CHECK(source_ != nullptr, kOp, "BatchSampler over a null token source");
  XF_CHECK(split_ == "train" || split_ == "val", kOp, "BatchSampler split must be 'train' or 'val', got '", split_,
           "'");
  // Row indices are Philox counter word 0, a uint32.
  if (batch_size < 1 || batch_size > std::numeric_limits<uint32_t>::max())
    throw Error(kOp, str_cat("batch_size must be in [1, 2^32 - 1], got ", batch_size), "train.batch_size");
  if (seq_len < 1) throw Error(kOp, str_cat("seq_len must be >= 1, got ", seq_len), "data.seq_len");
  if (source_->size() < static_cast<size_t>(seq_len) + 1)
    throw Error(kOp,
                str_cat("the ", split_, " split has ", source_->size(), " tokens, fewer than seq_len + 1 = ",
                        seq_len + 1, " (", source_->describe(), ")"),
                "data.seq_len");
  derive_key(seed, split_ == "train" ? kDomainTrain : kDomainVal, key_);
}

std::vector<size_t> BatchSampler::window_starts(uint64_t step) const {
  const uint64_t num_starts = source_->size() - static_cast<uint64_t>(seq_len_);  // windows of T + 1 tokens
  std::vector<size_t> starts(static_cast<size_t>(batch_size_));
  for (int64_t b = 0; b < batch_size_; ++b)
    starts[static_cast<size_t>(b)] = static_cast<size_t>(draw_below(key_, static_cast<uint32_t>(b), step, num_starts));
  return starts;
}

void BatchSampler::fill(uint64_t step, Tensor& inputs, Tensor& targets) const {
  check_batch_tensor(inputs, batch_size_, seq_len_, "inputs");
  check_batch_tensor(targets, batch_size_, seq_len_, "targets");
  const std::vector<size_t> starts = window_starts(step);
  std::vector<int32_t> window(static_cast<size_t>(seq_len_) + 1);
  int32_t* in = inputs.data<int32_t>();
  int32_t* tg = targets.data<int32_t>();
  for (int64_t b = 0; b < batch_size_; ++b)
    fill_row(*source_, starts[static_cast<size_t>(b)], seq_len_, b, window.data(), in, tg);
}

Batch BatchSampler::batch_at(uint64_t step) const {
  Batch batch{Tensor::empty({batch_size_, seq_len_}, DType::i32), Tensor::empty({batch_size_, seq_len_}, DType::i32)};
  fill(step, batch.inputs, batch.targets);
  return batch;
}

Batch BatchSampler::next() {
  Batch b = batch_at(step_);
  ++step_;
  return b;
}

nlohmann::json BatchSampler::state() const { return nlohmann::json{{"split", split_}, {"step", step_}}; }

void BatchSampler::set_state(const nlohmann::json& state) {
  auto bad = [](const std::string& why) { return Error(kOp, "malformed sampler state: " + why); };
  if (!state.is_object()) throw bad("expected an object, got " + std::string(state.type_name()));
  if (!state.contains("split") || !state["split"].is_string()) throw bad("missing string 'split'");
  if (!state.contains("step") || !state["step"].is_number_integer()) throw bad("missing integer 'step'");
  const std::string split = state["split"].get<std::string>();
  XF_CHECK(split == split_, kOp, "sampler state is for the '", split, "' split, this sampler reads '", split_, "'");
  if (state["step"].is_number_unsigned()) {
    step_ = state["step"].get<uint64_t>();
  } else {
    const int64_t s = state["step"].get<int64_t>();
    if (s < 0) throw bad(str_cat("negative step ", s));
    step_ = static_cast<uint64_t>(s);
  }
}

// ==== EvalBatches =========================================================================================

EvalBatches::EvalBatches(TokenSourcePtr source, int64_t batch_size, int64_t seq_len, int64_t max_batches)
    : source_(std::move(source)), batch_size_(batch_size), seq_len_(seq_len) {
  XF_CHECK(source_ != nullptr, kOp, "EvalBatches over a null token source (no validation split: data.val_fraction 0?)");
  if (batch_size < 1) throw Error(kOp, str_cat("batch_size must be >= 1, got ", batch_size), "train.batch_size");
  if (seq_len < 1) throw Error(kOp, str_cat("seq_len must be >= 1, got ", seq_len), "data.seq_len");
  XF_CHECK(max_batches >= 0, kOp, "max_batches must be >= 0 (0: all), got ", max_batches);
  const size_t n = source_->size();
  if (n < static_cast<size_t>(seq_len) + 1)
    throw Error(kOp,
                str_cat("the evaluation split has ", n, " tokens, fewer than seq_len + 1 = ", seq_len + 1, " (",
                        source_->describe(), ")"),
                "data.seq_len");
  num_windows_ = static_cast<int64_t>((n - 1) / static_cast<size_t>(seq_len));
  num_batches_ = num_windows_ >= batch_size_ ? num_windows_ / batch_size_ : 1;
  if (max_batches > 0) num_batches_ = std::min(num_batches_, max_batches);
}

void EvalBatches::fill(int64_t i, Tensor& inputs, Tensor& targets) const {
  XF_CHECK(i >= 0 && i < num_batches_, kOp, "eval batch ", i, " out of range [0, ", num_batches_, ")");
  check_batch_tensor(inputs, batch_size_, seq_len_, "inputs");
  check_batch_tensor(targets, batch_size_, seq_len_, "targets");
  std::vector<int32_t> window(static_cast<size_t>(seq_len_) + 1);
  int32_t* in = inputs.data<int32_t>();
  int32_t* tg = targets.data<int32_t>();
  for (int64_t r = 0; r < batch_size_; ++r) {
    const int64_t w = (i * batch_size_ + r) % num_windows_;  // wraps only when num_windows < batch_size
    fill_row(*source_, static_cast<size_t>(w * seq_len_), seq_len_, r, window.data(), in, tg);
  }
}

Batch EvalBatches::batch(int64_t i) const {
  Batch b{Tensor::empty({batch_size_, seq_len_}, DType::i32), Tensor::empty({batch_size_, seq_len_}, DType::i32)};
  fill(i, b.inputs, b.targets);
  return b;
}

bool EvalBatches::next(Batch* out) {
  if (cursor_ >= num_batches_) return false;
  *out = batch(cursor_++);
  return true;
}

// ==== Loading a config's data ==============================================================================

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(kOp, str_cat("cannot open text file ", path, ": ", std::strerror(errno)), "data.path");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw Error(kOp, str_cat("cannot read text file ", path), "data.path");
  return ss.str();
}

Dataset load_dataset(const DataConfig& config, const Tokenizer* saved_tokenizer) {
  if (config.seq_len < 1) throw Error(kOp, str_cat("seq_len must be >= 1, got ", config.seq_len), "data.seq_len");
  if (config.vocab_size < 0)
    throw Error(kOp, str_cat("vocab_size must be >= 0, got ", config.vocab_size), "model.vocab_size");
  Dataset ds;
  if (config.kind == "text") {
    if (config.path.empty()) throw Error(kOp, "kind 'text' needs a path", "data.path");
    if (config.tokenizer != "char" && config.tokenizer != "byte")
      throw Error(kOp, "unknown tokenizer '" + config.tokenizer + "' (known: char, byte)", "data.tokenizer");
    const std::string text = read_text_file(config.path);
    if (saved_tokenizer) {
      if (saved_tokenizer->kind_name() != config.tokenizer)
        throw Error(kOp,
                    "the checkpoint's tokenizer is '" + saved_tokenizer->kind_name() + "' but the config asks for '" +
                        config.tokenizer + "'",
                    "data.tokenizer");
      ds.tokenizer = *saved_tokenizer;
    } else {
      try {
        ds.tokenizer = Tokenizer::from_name(config.tokenizer, text);
      } catch (const Error& e) {
        throw Error(kOp, e.message() + " (text file " + config.path + ")", "data.path");
      }
    }
    std::vector<int32_t> ids;
    try {
      ids = ds.tokenizer->encode(text);
    } catch (const Error& e) {
      throw Error(kOp, e.message() + " (text file " + config.path + "; has it changed since the checkpoint?)",
                  "data.path");
    }
    ds.vocab_size = ds.tokenizer->vocab_size();
    ds.source = std::make_shared<VectorTokenSource>(
        std::move(ids), ds.vocab_size,
        str_cat("text file ", config.path, " (", ds.tokenizer->kind_name(), " tokenizer)"));
  } else if (config.kind == "tokens") {
    if (config.path.empty()) throw Error(kOp, "kind 'tokens' needs a path", "data.path");
    if (config.vocab_size < 1)
      throw Error(kOp, "kind 'tokens' needs the model's vocab_size to check token ids against", "model.vocab_size");
    ds.source = std::make_shared<TokenFileSource>(config.path, token_file_dtype_from_name(config.dtype),
                                                  config.vocab_size);
    ds.vocab_size = config.vocab_size;
  } else if (config.kind == "copy" || config.kind == "reverse") {
    SyntheticTask task = config.synthetic;
    task.kind = synthetic_kind_from_name(config.kind);
    task.seed = config.seed;
    ds.source = std::make_shared<SyntheticTokenSource>(task);
    ds.vocab_size = task.vocab_size();
  } else {
    throw Error(kOp, "unknown kind '" + config.kind + "' (known: text, tokens, copy, reverse)", "data.kind");
  }
  if (config.vocab_size > 0 && ds.vocab_size > config.vocab_size)
    throw Error(kOp,
                str_cat("the data has ", ds.vocab_size, " token ids (", ds.source->describe(),
                        "), more than the model's vocab_size ", config.vocab_size),
                "model.vocab_size");
  ds.split = split_train_val(ds.source, config.val_fraction, config.seq_len);
  return ds;
}

}  // namespace xfr
