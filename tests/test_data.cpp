// Training data (runtime/data.h): tokenizers, token files, splits, samplers, synthetic tasks.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "temp_dir.h"
#include "runtime/data.h"
#include "testing.h"

using namespace xfr;
using xfr::testing::contains;

namespace {

using xfr::testing::TempDir;

void write_bytes(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// The config path of the xfr::Error that f throws ("<no error>" if none, "<other>" for another exception).
template <class F>
std::string error_path(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.config_path();
  } catch (...) {
    return "<other>";
  }
  return "<no error>";
}

template <class F>
std::string error_text(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (...) {
    return "<other>";
  }
  return "<no error>";
}


std::vector<int32_t> values(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

// ids[i] = i: every window is a run of consecutive integers, so its start and contents are visible.
TokenSourcePtr iota_source(int32_t n) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = i;
  return std::make_shared<VectorTokenSource>(std::move(ids), n, "iota");
}

}  // namespace

// ---- Tokenizers --------------------------------------------------------------------------------------------

TEST_CASE("data: byte tokenizer round trips every byte, non-ASCII included") {
  Tokenizer t = Tokenizer::byte_level();
  CHECK(t.kind_name() == "byte");
  CHECK(t.vocab_size() == 256);
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::vector<int32_t> ids = t.encode(all);
  REQUIRE(ids.size() == 256);
  for (int b = 0; b < 256; ++b) CHECK(ids[static_cast<size_t>(b)] == b);
  CHECK(t.decode(ids) == all);
  const std::string utf8 = "na\xC3\xAFve \xE2\x9C\x93";  // "naïve ✓"
  CHECK(t.encode(utf8)[2] == 0xC3);
  CHECK(t.decode(t.encode(utf8)) == utf8);
  CHECK(t.decode({104, -1, 105, 256, 1000}) == "h?i??");
  Tokenizer back = Tokenizer::from_json(nlohmann::json::parse(t.to_json().dump()));
  CHECK(back == t);
}

TEST_CASE("data: char tokenizer vocabulary is the sorted distinct bytes of the text") {
  Tokenizer t = Tokenizer::char_level("hello world");
  CHECK(t.kind_name() == "char");
  CHECK(t.vocab_size() == 8);
  CHECK(std::string(t.vocabulary().begin(), t.vocabulary().end()) == " dehlorw");
  CHECK(t.encode("hello") == std::vector<int32_t>{3, 2, 4, 4, 5});
  CHECK(t.decode(t.encode("world hello")) == "world hello");
  CHECK(t.decode({0, 8, -3, 7}) == " ??w");  // ids outside the vocabulary decode to '?'

  // Non-ASCII: multi-byte UTF-8 characters are several byte tokens and round trip exactly.
  const std::string text = "caf\xC3\xA9 \xE2\x9C\x93 na\xC3\xAFve";  // "café ✓ naïve"
  Tokenizer u = Tokenizer::char_level(text);
  std::set<unsigned char> distinct(text.begin(), text.end());
  CHECK(u.vocab_size() == static_cast<int32_t>(distinct.size()));
  CHECK(u.vocabulary().back() == 0xE2);  // the largest byte, the lead byte of the check mark
  CHECK(u.decode(u.encode(text)) == text);
  CHECK(u.encode(text).size() == text.size());

  // A byte the training text lacks is an error naming the byte and its offset, never silently mapped.
  const std::string msg = error_text([&] { t.encode("hex"); });
  CHECK(contains(msg, "0x78"));
  CHECK(contains(msg, "offset 2"));
  CHECK(error_text([] { Tokenizer::char_level(""); }) != "<no error>");
  CHECK(error_path([] { Tokenizer::from_name("bpe", "abc"); }) == "data.tokenizer");
}

TEST_CASE("data: char tokenizer JSON round trip and validation") {
  const std::string text = "To be, or not to be\n\xC3\xA9\xFF";
  Tokenizer t = Tokenizer::char_level(text);
  const std::string dumped = t.to_json().dump();  // must not throw: the vocabulary is stored as byte values
  Tokenizer back = Tokenizer::from_json(nlohmann::json::parse(dumped));
  CHECK(back == t);
  CHECK(back.encode(text) == t.encode(text));
  CHECK(back.decode(back.encode(text)) == text);

  nlohmann::json j = t.to_json();
  CHECK(j["vocab_size"] == t.vocab_size());
  CHECK(j["vocab"].size() == static_cast<size_t>(t.vocab_size()));

  auto bad = [](nlohmann::json x) { return error_text([&] { Tokenizer::from_json(x); }); };
  CHECK(contains(bad(nlohmann::json{{"kind", "char"}, {"vocab", {98, 97}}}), "ascending"));
  CHECK(contains(bad(nlohmann::json{{"kind", "char"}, {"vocab", {97, 300}}}), "byte value"));
  CHECK(contains(bad(nlohmann::json{{"kind", "char"}, {"vocab", {97, 98}}, {"vocab_size", 3}}), "vocab_size"));
  CHECK(contains(bad(nlohmann::json{{"kind", "wordpiece"}}), "unknown kind"));
  CHECK(contains(bad(nlohmann::json{{"kind", "char"}}), "vocab"));
  CHECK(contains(bad(nlohmann::json::array()), "object"));
}

// ---- Token files -------------------------------------------------------------------------------------------

TEST_CASE("data: uint16 and uint32 token files are little-endian and memory-mapped") {
  TempDir dir;
  // Written byte by byte, independently of write_token_file: 0x0201 = 513, 0xFFFF = 65535, 7.
  write_bytes(dir.file("a.u16"), {0x01, 0x02, 0xFF, 0xFF, 0x07, 0x00});
  TokenFileSource a(dir.file("a.u16"), TokenFileDType::u16, 65536);
  CHECK(a.size() == 3);
  CHECK(a.read(0, 3) == std::vector<int32_t>{513, 65535, 7});
  CHECK(contains(a.describe(), "uint16"));

  // 70000 = 0x00011170 and 0x01020304 = 16909060 need 32 bits.
  write_bytes(dir.file("b.u32"), {0x70, 0x11, 0x01, 0x00, 0x04, 0x03, 0x02, 0x01});
  TokenFileSource b(dir.file("b.u32"), TokenFileDType::u32, 16909061);
  CHECK(b.size() == 2);
  CHECK(b.at(0) == 70000);
  CHECK(b.at(1) == 16909060);

  // write_token_file writes exactly this format.
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 1000; ++i) ids.push_back((i * 7919) % 50257);  // spread over GPT-2's vocabulary
  for (TokenFileDType dt : {TokenFileDType::u16, TokenFileDType::u32}) {
    const std::string p = dir.file(std::string("c.") + token_file_dtype_name(dt));
    write_token_file(p, ids, dt);
    CHECK(std::filesystem::file_size(p) == ids.size() * (dt == TokenFileDType::u16 ? 2 : 4));
    TokenFileSource c(p, dt, 50304);
    CHECK(c.size() == ids.size());
    CHECK(c.read(0, ids.size()) == ids);
    CHECK(c.read(500, 10) == std::vector<int32_t>(ids.begin() + 500, ids.begin() + 510));
    CHECK(error_text([&] { c.read(995, 10); }) != "<no error>");  // past the end
  }
  CHECK(error_text([&] { write_token_file(dir.file("d"), {70000}, TokenFileDType::u16); }) != "<no error>");
  CHECK(token_file_dtype_from_name("uint32") == TokenFileDType::u32);
  CHECK(error_path([] { token_file_dtype_from_name("int8"); }) == "data.dtype");
}

TEST_CASE("data: token file validation names the file and config key") {
  TempDir dir;
  write_bytes(dir.file("odd.bin"), {1, 2, 3});
  CHECK(error_path([&] { TokenFileSource(dir.file("odd.bin"), TokenFileDType::u16, 100); }) == "data.dtype");
  CHECK(contains(error_text([&] { TokenFileSource(dir.file("odd.bin"), TokenFileDType::u16, 100); }),
                 "not a multiple of 2"));
  write_bytes(dir.file("six.bin"), {1, 0, 2, 0, 3, 0});
  CHECK(contains(error_text([&] { TokenFileSource(dir.file("six.bin"), TokenFileDType::u32, 100); }),
                 "not a multiple of 4"));
  write_bytes(dir.file("empty.bin"), {});
  CHECK(contains(error_text([&] { TokenFileSource(dir.file("empty.bin"), TokenFileDType::u16, 100); }), "empty"));
  CHECK(error_path([&] { TokenFileSource(dir.file("missing.bin"), TokenFileDType::u16, 100); }) == "data.path");
  CHECK(contains(error_text([&] { TokenFileSource(dir.file("missing.bin"), TokenFileDType::u16, 100); }),
                 "missing.bin"));
  CHECK(error_path([&] { TokenFileSource(dir.file("six.bin"), TokenFileDType::u16, 0); }) == "model.vocab_size");
}

TEST_CASE("data: an out-of-range token id is reported lazily with its position") {
  TempDir dir;
  std::vector<int32_t> ids(400, 11);
  ids[123] = 70000;
  const std::string path = dir.file("bad.u32");
  write_token_file(path, ids, TokenFileDType::u32);
  // Opening does not scan the file; reads that avoid the bad id succeed.
  auto src = std::make_shared<TokenFileSource>(path, TokenFileDType::u32, 50304);
  CHECK(src->read(0, 123) == std::vector<int32_t>(123, 11));
  CHECK(src->read(124, 276) == std::vector<int32_t>(276, 11));
  const std::string expected = "[data] token id 70000 at position 123 exceeds vocab_size 50304 (file " + path + ")";
  CHECK(error_text([&] { src->read(100, 50); }) == expected);
  // Through a split and a batch, the position is still the one in the file.
  TrainValSplit s = split_train_val(src, 0.5, 16);
  CHECK(error_text([&] { s.train->read(120, 10); }) == expected);
  EvalBatches eval(s.train, 2, 16);  // windows [0, 17), [16, 33), ...: window 7 covers 112..128
  CHECK(error_text([&] { for (int64_t i = 0; i < eval.num_batches(); ++i) eval.batch(i); }) == expected);
  // In memory, ids are checked up front.
  CHECK(contains(error_text([] { VectorTokenSource({1, 2, 9}, 5); }), "token id 9 at position 2 exceeds vocab_size 5"));
  CHECK(contains(error_text([] { VectorTokenSource({1, -2}, 5); }), "negative"));
}

// ---- Split ----------------------------------------------------------------------------------------------------

TEST_CASE("data: train/val split sizes and contents") {
  TokenSourcePtr src = iota_source(1000);
  TrainValSplit s = split_train_val(src, 0.1, 64);
  REQUIRE(s.train);
  REQUIRE(s.val);
  CHECK(s.train->size() == 900);  // nanoGPT: int(1000 * 0.9)
  CHECK(s.val->size() == 100);
  CHECK(s.train->at(0) == 0);
  CHECK(s.train->at(899) == 899);
  CHECK(s.val->at(0) == 900);
  CHECK(s.val->at(99) == 999);
  CHECK(error_text([&] { s.val->at(100); }) != "<no error>");

  TrainValSplit q = split_train_val(iota_source(1001), 0.25, 8);
  CHECK(q.train->size() == 750);  // floor(1001 * 0.75) = floor(750.75)
  CHECK(q.val->size() == 251);

  TrainValSplit none = split_train_val(src, 0.0, 64);
  CHECK(none.train->size() == 1000);
  CHECK(none.val == nullptr);

  // The smallest legal split: each side exactly seq_len + 1 tokens.
  TrainValSplit tight = split_train_val(iota_source(20), 0.5, 9);
  CHECK(tight.train->size() == 10);
  CHECK(tight.val->size() == 10);
}

TEST_CASE("data: errors name the config keys") {
  TokenSourcePtr src = iota_source(100);
  CHECK(error_path([&] { split_train_val(src, 1.0, 8); }) == "data.val_fraction");
  CHECK(error_path([&] { split_train_val(src, -0.1, 8); }) == "data.val_fraction");
  CHECK(error_path([&] { split_train_val(src, std::nan(""), 8); }) == "data.val_fraction");
  CHECK(contains(error_text([&] { split_train_val(src, 1.5, 8); }), "(at data.val_fraction)"));
  CHECK(error_path([&] { split_train_val(src, 0.1, 0); }) == "data.seq_len");
  CHECK(error_path([&] { split_train_val(src, 0.1, 90); }) == "data.seq_len");      // train: 90 < 91
  CHECK(error_path([&] { split_train_val(src, 0.1, 10); }) == "data.val_fraction");  // val: 10 < 11
  const std::string msg = error_text([&] { split_train_val(src, 0.1, 10); });
  CHECK(contains(msg, "validation split has 10 tokens"));
  CHECK(contains(msg, "seq_len + 1 = 11"));
  CHECK(error_path([&] { split_train_val(src, 0.1, 9); }) == "<no error>");

  CHECK(error_path([&] { BatchSampler(src, 0, 8, 1); }) == "train.batch_size");
  CHECK(error_path([&] { BatchSampler(src, 4, 100, 1); }) == "data.seq_len");
  CHECK(error_path([&] { EvalBatches(src, 4, 0); }) == "data.seq_len");

  DataConfig c;
  c.kind = "parquet";
  CHECK(error_path([&] { load_dataset(c); }) == "data.kind");
  c.kind = "text";
  c.path = "";
  CHECK(error_path([&] { load_dataset(c); }) == "data.path");
  c.kind = "tokens";
  c.path = "/nonexistent/x.bin";
  CHECK(error_path([&] { load_dataset(c); }) == "model.vocab_size");
  c.vocab_size = 50304;
  CHECK(error_path([&] { load_dataset(c); }) == "data.path");
  c.kind = "copy";
  c.synthetic.num_symbols = 1;
  CHECK(error_path([&] { load_dataset(c); }) == "data.num_symbols");
  c.synthetic.num_symbols = 8;
  c.synthetic.half_len = 0;
  CHECK(error_path([&] { load_dataset(c); }) == "data.half_len");
  c.synthetic.half_len = 4;
  c.synthetic.num_tokens = 0;
  CHECK(error_path([&] { load_dataset(c); }) == "data.num_tokens");
  c.synthetic.num_tokens = 1000;
  c.vocab_size = 9;  // the task needs 8 symbols + BOS + SEP = 10
  CHECK(error_path([&] { load_dataset(c); }) == "model.vocab_size");
  c.vocab_size = 10;
  c.seq_len = 16;
  c.val_fraction = 1.0;
  CHECK(error_path([&] { load_dataset(c); }) == "data.val_fraction");
  c.val_fraction = 0.1;
  CHECK(error_path([&] { load_dataset(c); }) == "<no error>");
}

// ---- Batch sampler -----------------------------------------------------------------------------------------

TEST_CASE("data: batches are windows with targets = inputs shifted by one") {
  const int32_t n = 300;
  const int64_t B = 8, T = 32;
  BatchSampler s(iota_source(n), B, T, 42);
  for (uint64_t step = 0; step < 50; ++step) {
    Batch b = s.batch_at(step);
    CHECK(b.inputs.shape() == Shape{B, T});
    CHECK(b.targets.shape() == Shape{B, T});
    CHECK(b.inputs.dtype() == DType::i32);
    const std::vector<int32_t> in = values(b.inputs), tg = values(b.targets);
    const std::vector<size_t> starts = s.window_starts(step);
    for (int64_t r = 0; r < B; ++r) {
      const int32_t start = in[static_cast<size_t>(r * T)];
      CHECK(static_cast<size_t>(start) == starts[static_cast<size_t>(r)]);
      CHECK(start >= 0);
      CHECK(start + T + 1 <= n);  // the whole window, target included, lies in the split
      for (int64_t t = 0; t < T; ++t) {
        CHECK(in[static_cast<size_t>(r * T + t)] == start + t);
        CHECK(tg[static_cast<size_t>(r * T + t)] == start + t + 1);
      }
    }
  }
}

TEST_CASE("data: window starts cover every position uniformly") {
  // 40 tokens, T = 31: 9 possible starts. 9000 draws: each start expects 1000 (sd ~ 30).
  BatchSampler s(iota_source(40), 10, 31, 7);
  std::map<size_t, int> count;
  for (uint64_t step = 0; step < 900; ++step)
    for (size_t st : s.window_starts(step)) ++count[st];
  CHECK(count.size() == 9);
  double chi2 = 0;
  for (auto& [st, c] : count) {
    CHECK(st <= 8);
    chi2 += (c - 1000.0) * (c - 1000.0) / 1000.0;
  }
  CHECK(chi2 < 26.1);  // the 0.001 quantile of chi-square with 8 degrees of freedom
}

TEST_CASE("data: batch k depends only on (seed, split, k), not on call history") {
  TokenSourcePtr src = iota_source(5000);
  BatchSampler a(src, 4, 16, 1234);
  std::vector<std::vector<int32_t>> seq;
  for (int k = 0; k < 10; ++k) seq.push_back(values(a.next().inputs));
  CHECK(a.step() == 10);

  // Random access in any order, after unrelated calls, from a fresh sampler.
  BatchSampler b(src, 4, 16, 1234);
  b.batch_at(999);
  b.next();
  b.next();
  for (int k : {7, 3, 9, 0, 5}) CHECK(values(b.batch_at(static_cast<uint64_t>(k)).inputs) == seq[static_cast<size_t>(k)]);
  CHECK(values(b.next().inputs) == seq[2]);  // b had returned 0 and 1

  // Resume through the JSON state.
  BatchSampler c(src, 4, 16, 1234);
  c.set_state(nlohmann::json::parse(BatchSampler(src, 4, 16, 1234).state().dump()));
  BatchSampler d(src, 4, 16, 1234);
  for (int k = 0; k < 6; ++k) d.next();
  const nlohmann::json st = d.state();
  CHECK(st["split"] == "train");
  CHECK(st["step"] == 6);
  c.set_state(nlohmann::json::parse(st.dump()));
  for (int k = 6; k < 10; ++k) CHECK(values(c.next().inputs) == seq[static_cast<size_t>(k)]);

  // Other seeds, steps and splits give other windows (the chance of a coincidence is ~4985^-4).
  BatchSampler other_seed(src, 4, 16, 1235);
  CHECK(values(other_seed.batch_at(0).inputs) != seq[0]);
  CHECK(seq[0] != seq[1]);
  BatchSampler val(src, 4, 16, 1234, "val");
  CHECK(values(val.batch_at(0).inputs) != seq[0]);
  CHECK(error_text([&] { val.set_state(st); }) != "<no error>");  // a train state on a val sampler
  CHECK(error_text([&] { c.set_state(nlohmann::json{{"split", "train"}, {"step", -1}}); }) != "<no error>");
  CHECK(error_text([&] { c.set_state(nlohmann::json{{"step", 3}}); }) != "<no error>");

  // fill() into preallocated tensors gives the same batch and checks shapes.
  Tensor in = Tensor::empty({4, 16}, DType::i32), tg = Tensor::empty({4, 16}, DType::i32);
  a.fill(3, in, tg);
  CHECK(values(in) == seq[3]);
  Tensor wrong = Tensor::empty({4, 15}, DType::i32);
  CHECK(error_text([&] { a.fill(3, wrong, tg); }) != "<no error>");
  Tensor wrong_dtype = Tensor::empty({4, 16}, DType::f32);
  CHECK(error_text([&] { a.fill(3, in, wrong_dtype); }) != "<no error>");
}

TEST_CASE("data: eval batches are fixed sequential windows") {
  // 1000 tokens, T = 10: windows start at 0, 10, ..., 980 (99 windows; window 99 would need token 1000).
  TokenSourcePtr src = iota_source(1000);
  EvalBatches e(src, 8, 10);
  CHECK(e.num_windows() == 99);
  CHECK(e.num_batches() == 12);  // 96 windows used, the last 3 dropped
  std::vector<std::vector<int32_t>> first;
  Batch b;
  int64_t i = 0;
  while (e.next(&b)) {
    const std::vector<int32_t> in = values(b.inputs), tg = values(b.targets);
    for (int64_t r = 0; r < 8; ++r) {
      const int32_t start = static_cast<int32_t>((i * 8 + r) * 10);
      for (int64_t t = 0; t < 10; ++t) {
        CHECK(in[static_cast<size_t>(r * 10 + t)] == start + t);
        CHECK(tg[static_cast<size_t>(r * 10 + t)] == start + t + 1);
      }
    }
    first.push_back(in);
    ++i;
  }
  CHECK(i == 12);
  e.reset();
  for (int64_t k = 0; k < 12; ++k) {  // a second evaluation sees exactly the same batches
    REQUIRE(e.next(&b));
    CHECK(values(b.inputs) == first[static_cast<size_t>(k)]);
  }
  CHECK_FALSE(e.next(&b));
  CHECK(EvalBatches(src, 8, 10, 5).num_batches() == 5);  // max_batches

  // Fewer windows than rows: one batch cycling through them.
  EvalBatches small(iota_source(31), 4, 10);  // windows at 0, 10, 20
  CHECK(small.num_windows() == 3);
  CHECK(small.num_batches() == 1);
  const std::vector<int32_t> in = values(small.batch(0).inputs);
  CHECK(in[0] == 0);
  CHECK(in[10] == 10);
  CHECK(in[20] == 20);
  CHECK(in[30] == 0);
  CHECK(error_text([&] { small.batch(1); }) != "<no error>");
}

// ---- Synthetic tasks ----------------------------------------------------------------------------------------

TEST_CASE("data: synthetic copy and reverse tasks") {
  SyntheticTask task;
  task.num_symbols = 10;
  task.half_len = 5;
  task.num_tokens = 12 * 2000;  // 2000 examples of 12 tokens
  task.seed = 99;
  SyntheticTokenSource copy(task);
  task.kind = SyntheticTask::Kind::reverse;
  SyntheticTokenSource rev(task);
  CHECK(copy.vocab_size() == 12);
  CHECK(task.bos() == 10);
  CHECK(task.sep() == 11);

  const std::vector<int32_t> c = copy.read(0, copy.size()), r = rev.read(0, rev.size());
  std::vector<int> histogram(10, 0);
  for (size_t e = 0; e < 2000; ++e) {
    const int32_t* x = c.data() + e * 12;
    const int32_t* y = r.data() + e * 12;
    CHECK(x[0] == task.bos());
    CHECK(x[6] == task.sep());
    CHECK(y[0] == task.bos());
    CHECK(y[6] == task.sep());
    for (int i = 0; i < 5; ++i) {
      CHECK(x[1 + i] >= 0);
      CHECK(x[1 + i] < 10);
      ++histogram[static_cast<size_t>(x[1 + i])];
      CHECK(x[7 + i] == x[1 + i]);      // copy: the second half repeats the first
      CHECK(y[1 + i] == x[1 + i]);      // same seed: the same random halves
      CHECK(y[7 + i] == y[1 + (4 - i)]);  // reverse: the second half is the first reversed
    }
  }
  // 10000 symbols over 10 values: each expects 1000 (sd ~ 30).
  double chi2 = 0;
  for (int h : histogram) chi2 += (h - 1000.0) * (h - 1000.0) / 1000.0;
  CHECK(chi2 < 27.9);  // the 0.001 quantile of chi-square with 9 degrees of freedom

  // Random access agrees with the bulk read, and the stream is a function of the seed alone.
  for (size_t p : {0u, 5u, 6u, 7u, 11u, 12u, 12345u, 23999u}) CHECK(copy.at(p) == c[p]);
  CHECK(copy.read(7001, 50) == std::vector<int32_t>(c.begin() + 7001, c.begin() + 7051));
  SyntheticTask again;
  again.num_symbols = 10;
  again.half_len = 5;
  again.num_tokens = 12 * 2000;
  again.seed = 99;
  CHECK(SyntheticTokenSource(again).read(0, 1200) == std::vector<int32_t>(c.begin(), c.begin() + 1200));
  again.seed = 100;
  CHECK(SyntheticTokenSource(again).read(0, 1200) != std::vector<int32_t>(c.begin(), c.begin() + 1200));

  CHECK(synthetic_loss_floor(task) == doctest::Approx(5 * std::log(10.0) / 12));
  CHECK(error_path([] { synthetic_kind_from_name("sort"); }) == "data.kind");
}

// ---- load_dataset ---------------------------------------------------------------------------------------------

TEST_CASE("data: load_dataset for text, tokens and synthetic configs") {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 50; ++i) text += "First Citizen: We are accounted poor citizens. \xC3\xA9\n";
  write_text(dir.file("input.txt"), text);

  DataConfig c;
  c.kind = "text";
  c.path = dir.file("input.txt");
  c.seq_len = 32;
  Dataset ds = load_dataset(c);
  REQUIRE(ds.tokenizer.has_value());
  CHECK(ds.tokenizer->kind_name() == "char");
  CHECK(ds.vocab_size == ds.tokenizer->vocab_size());
  CHECK(ds.source->size() == text.size());
  CHECK(ds.split.train->size() == static_cast<size_t>(std::floor(text.size() * 0.9)));
  CHECK(ds.tokenizer->decode(ds.source->read(0, text.size())) == text);

  // Resuming with the checkpoint's tokenizer encodes identically.
  Tokenizer saved = Tokenizer::from_json(nlohmann::json::parse(ds.tokenizer->to_json().dump()));
  Dataset resumed = load_dataset(c, &saved);
  CHECK(resumed.source->read(0, 500) == ds.source->read(0, 500));
  // ...and refuses a text with bytes it cannot encode, or a tokenizer of another kind.
  write_text(dir.file("input.txt"), text + "Zebra");
  CHECK(error_path([&] { load_dataset(c, &saved); }) == "data.path");
  Tokenizer byte = Tokenizer::byte_level();
  CHECK(error_path([&] { load_dataset(c, &byte); }) == "data.tokenizer");
  c.tokenizer = "byte";
  Dataset bytes = load_dataset(c);
  CHECK(bytes.vocab_size == 256);
  CHECK(bytes.source->at(0) == 'F');
  c.vocab_size = 100;  // a model with fewer ids than the byte tokenizer
  CHECK(error_path([&] { load_dataset(c); }) == "model.vocab_size");

  // tokens
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 2000; ++i) ids.push_back(i % 1000);
  write_token_file(dir.file("train.bin"), ids, TokenFileDType::u16);
  DataConfig t;
  t.kind = "tokens";
  t.path = dir.file("train.bin");
  t.seq_len = 64;
  t.vocab_size = 1000;
  Dataset tk = load_dataset(t);
  CHECK(tk.source->size() == 2000);
  CHECK(tk.split.train->size() == 1800);
  CHECK(tk.split.val->at(0) == 800);
  CHECK_FALSE(tk.tokenizer.has_value());
  BatchSampler sampler(tk.split.train, 4, 64, 0);
  CHECK(sampler.next().inputs.shape() == Shape{4, 64});

  // synthetic: kind and seed come from data.kind and data.seed.
  DataConfig s;
  s.kind = "reverse";
  s.seq_len = 64;
  s.seed = 5;
  Dataset syn = load_dataset(s);
  CHECK(syn.vocab_size == 18);  // 16 symbols + BOS + SEP
  auto* src = dynamic_cast<const SyntheticTokenSource*>(syn.source.get());
  REQUIRE(src != nullptr);
  CHECK(src->task().kind == SyntheticTask::Kind::reverse);
  CHECK(src->task().seed == 5);
  CHECK(syn.split.val->size() == syn.source->size() - syn.split.train->size());
}
