// safetensors writer/reader against the format as the reference implementation (huggingface/safetensors,
// safetensors/src/tensor.rs) defines it: hand-built bytes for the layout, one malformed file per rule.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "temp_dir.h"
#include "runtime/error.h"
#include "runtime/file_io.h"
#include "runtime/safetensors.h"

using namespace xfr;
namespace fs = std::filesystem;

namespace {

using xfr::testing::TempDir;

void append_u64le(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

// A file built by hand: the 8-byte little-endian length, the header exactly as given, then `data`.
std::vector<uint8_t> raw_file(const std::string& header, const std::vector<uint8_t>& data = {}) {
  std::vector<uint8_t> out;
  append_u64le(out, header.size());
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// The same with the header padded with spaces to a multiple of 8, as the spec's writer does.
std::vector<uint8_t> spec_file(std::string header, const std::vector<uint8_t>& data = {}) {
  header.append((8 - header.size() % 8) % 8, ' ');
  return raw_file(header, data);
}

template <class T>
std::vector<uint8_t> le_bytes(const std::vector<T>& values) {
  std::vector<uint8_t> out(values.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), values.data(), out.size());  // the test hosts are little-endian
  return out;
}

// Parsing `bytes` must fail with `rule` named in the message, after the file name.
void expect_rule(const std::vector<uint8_t>& bytes, const std::string& rule, const std::string& what) {
  const std::string name = "case.safetensors";
  try {
    parse_safetensors(bytes, name);
    FAIL_CHECK(what << ": accepted, expected " << rule);
  } catch (const Error& e) {
    const std::string msg = e.what();
    CHECK_MESSAGE(msg.find(name + ": " + rule + ": ") != std::string::npos, what << ": got '" << msg << "'");
    CHECK(e.op() == "safetensors");
  }
}

std::vector<uint8_t> tensor_bytes(const Tensor& t) {
  Tensor c = t.contiguous();
  std::vector<uint8_t> b(c.nbytes());
  if (!b.empty()) std::memcpy(b.data(), c.raw_data(), b.size());
  return b;
}

template <class T>
Tensor raw_tensor(const std::vector<T>& bits, const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  REQUIRE(t.nbytes() == bits.size() * sizeof(T));
  if (!bits.empty()) std::memcpy(t.raw_data(), bits.data(), t.nbytes());
  return t;
}

// Tensors of every dtype holding awkward bit patterns: NaN payloads (quiet and signalling), -0, infinities,
// subnormals, integer extremes, every 16-bit and 8-bit pattern.
std::vector<std::pair<std::string, Tensor>> every_dtype() {
  std::vector<std::pair<std::string, Tensor>> ts;
  ts.emplace_back("f32", raw_tensor<uint32_t>({0x7fc00001u, 0xffbfffffu, 0x7f800001u, 0x80000000u, 0x7f800000u,
                                               0xff800000u, 0x00000001u, 0x807fffffu, 0x7f7fffffu, 0x3f800000u},
                                              {2, 5}, DType::f32));
  ts.emplace_back("f64", raw_tensor<uint64_t>({0x7ff8000000000001ull, 0xfff0000000000001ull, 0x8000000000000000ull,
                                               0x0000000000000001ull, 0x7fefffffffffffffull, 0x3ff0000000000000ull},
                                              {3, 2}, DType::f64));
  std::vector<uint16_t> all16(65536);
  for (size_t i = 0; i < all16.size(); ++i) all16[i] = static_cast<uint16_t>(i);
  ts.emplace_back("f16", raw_tensor(all16, {256, 256}, DType::f16));
  std::reverse(all16.begin(), all16.end());
  ts.emplace_back("bf16", raw_tensor(all16, {65536}, DType::bf16));
  ts.emplace_back("i32", Tensor::from_vector<int32_t>({std::numeric_limits<int32_t>::min(), -1, 0, 1,
                                                      std::numeric_limits<int32_t>::max()},
                                                     {5}));
  ts.emplace_back("i64", Tensor::from_vector<int64_t>({std::numeric_limits<int64_t>::min(), -1, 0,
                                                      std::numeric_limits<int64_t>::max()},
                                                     {2, 1, 2}));
  std::vector<uint8_t> all8(256);
  for (size_t i = 0; i < all8.size(); ++i) all8[i] = static_cast<uint8_t>(i);
  ts.emplace_back("u8", raw_tensor(all8, {16, 16}, DType::u8));
  ts.emplace_back("bool", raw_tensor<uint8_t>({1, 0, 0, 1, 1}, {5}, DType::boolean));
  ts.emplace_back("scalar", Tensor::from_vector<float>({3.5f}, {}));           // rank 0: shape []
  ts.emplace_back("empty", Tensor::empty({0, 3}, DType::f64));                 // zero elements
  ts.emplace_back("odd_u8", Tensor::from_vector<uint8_t>({7, 8, 9}, {3}));     // misaligns what follows by name
  return ts;
}

void check_same(const std::vector<std::pair<std::string, Tensor>>& expected, const SafetensorsFile& f) {
  REQUIRE(f.tensors.size() == expected.size());
  for (const auto& [name, t] : expected) {
    INFO("tensor " << name);
    REQUIRE(f.has(name));
    const Tensor& got = f.get(name);
    CHECK(got.dtype() == t.dtype());
    CHECK(got.shape() == t.shape());
    CHECK(tensor_bytes(got) == tensor_bytes(t));
  }
}

}  // namespace

TEST_CASE("safetensors: round trip is bit-exact for every dtype, in memory and on disk") {
  const auto ts = every_dtype();
  const std::map<std::string, std::string> meta{{"format", "pt"}, {"note", "ünïcode \"quoted\"\n"}};
  TempDir tmp;
  for (auto order : {SafetensorsOrder::reference, SafetensorsOrder::by_name, SafetensorsOrder::given}) {
    const auto bytes = serialize_safetensors(ts, meta, order);
    const SafetensorsFile mem = parse_safetensors(bytes, "mem");
    check_same(ts, mem);
    CHECK(mem.metadata == meta);

    const std::string path = tmp.file("rt.safetensors");
    const FileDigest d = save_safetensors(path, ts, meta, order);
    CHECK(d.size == bytes.size());
    CHECK(d.crc32 == crc32(bytes.data(), bytes.size()));
    CHECK(read_file(path) == bytes);  // the streamed file is the in-memory serialisation
    const SafetensorsFile disk = load_safetensors(path);
    check_same(ts, disk);
    CHECK(disk.metadata == meta);

    // The data section starts 8-byte aligned; in the reference order every tensor is aligned to its size.
    const auto h = parse_safetensors_header(bytes.data(), bytes.size(), bytes.size(), "mem");
    CHECK(h.data_start % 8 == 0);
    if (order == SafetensorsOrder::reference)
      for (const auto& e : h.entries) {
        const DType dt = safetensors_entry_dtype(e, "mem");
        CHECK_MESSAGE(e.begin % dtype_size(dt) == 0, e.name);
      }
  }
  // No temporary files are left next to the destination.
  size_t n_files = 0;
  for (const auto& entry : fs::directory_iterator(tmp.path)) {
    (void)entry;
    ++n_files;
  }
  CHECK(n_files == 1);
}

TEST_CASE("safetensors: strided input is written in row-major order") {
  Tensor base = Tensor::from_vector<int32_t>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor tr = base.transpose(0, 1);  // (3, 2): 1 4 / 2 5 / 3 6
  REQUIRE(!tr.is_contiguous());
  const auto f = parse_safetensors(serialize_safetensors({{"t", tr}}), "mem");
  CHECK(f.get("t").shape() == Shape{3, 2});
  CHECK(f.get("t").to_doubles() == std::vector<double>{1, 4, 2, 5, 3, 6});
}

TEST_CASE("safetensors: byte layout matches the specification and the reference serializer") {
  SUBCASE("one F32 tensor (the reference's test_serialization)") {
    const std::vector<float> v{0, 1, 2, 3, 4, 5};
    // 64 bytes of JSON: already a multiple of 8, so no padding.
    const std::string header = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
    REQUIRE(header.size() == 64);
    const auto expected = raw_file(header, le_bytes(v));
    CHECK(serialize_safetensors({{"attn.0", Tensor::from_vector(v, {1, 2, 3})}}) == expected);
  }
  SUBCASE("padding with spaces (the reference's test_serialization_forced_alignement)") {
    const std::vector<float> v{0, 1, 2, 3, 4, 5};
    const std::string header = R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})";
    REQUIRE(header.size() == 65);
    const auto expected = raw_file(header + std::string(7, ' '), le_bytes(v));
    CHECK(expected[0] == 72);
    CHECK(serialize_safetensors({{"attn0", Tensor::from_vector(v, {1, 1, 2, 3})}}) == expected);
  }
  SUBCASE("no tensors, with and without metadata (the reference's test_empty)") {
    CHECK(serialize_safetensors({}) == std::vector<uint8_t>{8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '});
    const auto with_meta = serialize_safetensors({}, {{"framework", "pt"}});
    CHECK(with_meta == raw_file(R"({"__metadata__":{"framework":"pt"}})" + std::string(5, ' ')));
    CHECK(with_meta[0] == 40);
  }
  SUBCASE("mixed dtypes: descending alignment then name; metadata first; serde_json escaping") {
    const Tensor b = Tensor::from_vector<uint8_t>({1, 2, 3}, {3});
    const Tensor a = Tensor::from_vector<float>({1.5f, -2.0f}, {2});
    const Tensor c = Tensor::from_vector<int64_t>({-7}, {1});
    Tensor d = Tensor::empty({1}, DType::bf16);
    d.data<bf16>()[0].bits = 0x3f80;
    const Tensor e = Tensor::from_vector<bool>({true}, {1});
    Tensor f = Tensor::empty({1}, DType::f16);
    f.data<f16>()[0].bits = 0x3c00;
    const Tensor g = Tensor::from_vector<int32_t>({42}, {1});
    const Tensor h = Tensor::from_vector<double>({0.25}, {1});
    const std::string weird = "we\"i\\rd\n\x01\xc3\xa9";  // quote, backslash, newline, U+0001, é
    const auto bytes = serialize_safetensors(
        {{"b", b}, {"a", a}, {"c", c}, {"d", d}, {"e", e}, {"f", f}, {"g", g}, {weird, h}},
        {{"z", "last"}, {"a", "tab\there"}});
    // I64 > F64 > F32 > I32 > BF16 > F16 > U8 > BOOL (the reverse of the reference's Dtype enum order).
    const std::string header =
        R"({"__metadata__":{"a":"tab\there","z":"last"},)"
        R"("c":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
        R"("we\"i\\rd\n\u0001)" "\xc3\xa9" R"(":{"dtype":"F64","shape":[1],"data_offsets":[8,16]},)"
        R"("a":{"dtype":"F32","shape":[2],"data_offsets":[16,24]},)"
        R"("g":{"dtype":"I32","shape":[1],"data_offsets":[24,28]},)"
        R"("d":{"dtype":"BF16","shape":[1],"data_offsets":[28,30]},)"
        R"("f":{"dtype":"F16","shape":[1],"data_offsets":[30,32]},)"
        R"("b":{"dtype":"U8","shape":[3],"data_offsets":[32,35]},)"
        R"("e":{"dtype":"BOOL","shape":[1],"data_offsets":[35,36]}})";
    std::vector<uint8_t> data;
    for (const auto& part : {le_bytes<int64_t>({-7}), le_bytes<double>({0.25}), le_bytes<float>({1.5f, -2.0f}),
                             le_bytes<int32_t>({42}), le_bytes<uint16_t>({0x3f80}), le_bytes<uint16_t>({0x3c00}),
                             std::vector<uint8_t>{1, 2, 3}, std::vector<uint8_t>{1}})
      data.insert(data.end(), part.begin(), part.end());
    CHECK(bytes == spec_file(header, data));
    const auto back = parse_safetensors(bytes, "mem");
    CHECK(back.get(weird).to_doubles() == std::vector<double>{0.25});
    CHECK(back.metadata.at("a") == "tab\there");
  }
  SUBCASE("by_name and given orders") {
    const Tensor u = Tensor::from_vector<uint8_t>({1}, {1});
    const Tensor w = Tensor::from_vector<float>({1}, {1});
    auto order_of = [](const std::vector<uint8_t>& bytes) {
      std::vector<std::string> names;
      for (const auto& e : parse_safetensors_header(bytes.data(), bytes.size(), bytes.size(), "m").entries)
        names.push_back(e.name);
      return names;
    };
    CHECK(order_of(serialize_safetensors({{"z", w}, {"a", u}}, {}, SafetensorsOrder::by_name)) ==
          std::vector<std::string>{"a", "z"});
    CHECK(order_of(serialize_safetensors({{"z", w}, {"a", u}, {"m", w}}, {}, SafetensorsOrder::given)) ==
          std::vector<std::string>{"z", "a", "m"});
    CHECK(order_of(serialize_safetensors({{"z", u}, {"a", u}, {"m", w}})) == std::vector<std::string>{"m", "a", "z"});
  }
}

TEST_CASE("safetensors: the reader accepts what the reference accepts") {
  const auto four = std::vector<uint8_t>{1, 2, 3, 4};
  SUBCASE("entries in any order, sorted by offset") {
    const auto f = parse_safetensors(
        spec_file(R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
                  four),
        "m");
    REQUIRE(f.tensors.size() == 2);
    CHECK(f.tensors[0].first == "a");
    CHECK(f.get("b").to_doubles() == std::vector<double>{3, 4});
  }
  SUBCASE("unknown fields inside an entry are ignored; __metadata__ may be null") {
    const auto f = parse_safetensors(
        spec_file(R"({"__metadata__":null,"a":{"extra":{"x":[1,-2,2.5,{"y":null}],"z":true},"dtype":"U8","shape":[4],)"
                  R"("data_offsets":[0,4],"more":"s"}})",
                  four),
        "m");
    CHECK(f.metadata.empty());
    CHECK(f.get("a").numel() == 4);
  }
  SUBCASE("any JSON whitespace, unpadded header, zero-size tensors sharing an offset") {
    const auto f = parse_safetensors(
        raw_file("{ \"a\" :\n{\"dtype\":\"U8\",\t\"shape\":[0],\"data_offsets\":[0,0]},\r\n"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[1,0],\"data_offsets\":[0,0]},"
                 "\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}\n\t ",
                 four),
        "m");
    CHECK(f.tensors.size() == 3);
  }
  SUBCASE("BOOL bytes other than 0/1 read as true") {
    const auto f = parse_safetensors(spec_file(R"({"m":{"dtype":"BOOL","shape":[4],"data_offsets":[0,4]}})", {0, 1, 2, 255}), "m");
    CHECK(f.get("m").to_doubles() == std::vector<double>{0, 1, 1, 1});
  }
  SUBCASE("dtypes xfrun cannot hold pass validation, then are refused by name") {
    const auto bytes = spec_file(R"({"q":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}})", four);
    const auto h = parse_safetensors_header(bytes.data(), bytes.size(), bytes.size(), "m");
    CHECK(h.entries.at(0).dtype == "I8");
    expect_rule(bytes, "UnsupportedDtype", "I8");
    expect_rule(spec_file(R"({"q":{"dtype":"U64","shape":[1],"data_offsets":[0,8]}})", std::vector<uint8_t>(8)),
                "UnsupportedDtype", "U64");
  }
  SUBCASE("a dimension above INT64_MAX in a zero-element tensor") {
    expect_rule(spec_file(R"({"z":{"dtype":"U8","shape":[0,18446744073709551615],"data_offsets":[0,0]}})"),
                "UnsupportedShape", "huge dimension");
  }
}

TEST_CASE("safetensors: one malformed file per rejection rule") {
  const std::string good_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<uint8_t> eight(8, 0);

  SUBCASE("HeaderTooSmall") {
    for (size_t n = 0; n < 8; ++n) expect_rule(std::vector<uint8_t>(n, 0), "HeaderTooSmall", str_cat(n, " bytes"));
  }
  SUBCASE("HeaderTooLarge") {
    std::vector<uint8_t> b;
    append_u64le(b, 100'000'001);  // one byte above MAX_HEADER_SIZE
    expect_rule(b, "HeaderTooLarge", "100 MB + 1");
    b.clear();
    append_u64le(b, ~uint64_t{0});
    expect_rule(b, "HeaderTooLarge", "u64 max");
  }
  SUBCASE("InvalidHeaderLength") {
    std::vector<uint8_t> b;
    append_u64le(b, 100);
    b.insert(b.end(), 50, ' ');
    expect_rule(b, "InvalidHeaderLength", "header past the end");
    std::vector<uint8_t> c;
    append_u64le(c, 1);
    expect_rule(c, "InvalidHeaderLength", "8-byte file announcing a 1-byte header");
  }
  SUBCASE("InvalidHeader (UTF-8)") {
    expect_rule(spec_file("{\"\xff\":1}"), "InvalidHeader", "0xff");
    expect_rule(spec_file("{\"\xc0\xaf\":1}"), "InvalidHeader", "overlong");
    expect_rule(spec_file("{\"\xed\xa0\x80\":1}"), "InvalidHeader", "surrogate");
    expect_rule(spec_file("{\"\xf4\x90\x80\x80\":1}"), "InvalidHeader", "above U+10FFFF");
    expect_rule(raw_file("{}\xe2\x82"), "InvalidHeader", "truncated sequence");
  }
  SUBCASE("InvalidHeaderStart") {
    expect_rule(spec_file(" {}"), "InvalidHeaderStart", "leading space");
    expect_rule(spec_file("[]"), "InvalidHeaderStart", "array");
    expect_rule(raw_file(""), "InvalidHeaderStart", "empty header");
    expect_rule(raw_file("\xef\xbb\xbf{}"), "InvalidHeaderStart", "byte-order mark");
  }
  SUBCASE("InvalidHeaderDeserialization") {
    const char* rule = "InvalidHeaderDeserialization";
    expect_rule(spec_file("{\"a\":"), rule, "truncated JSON");
    expect_rule(spec_file("{}x"), rule, "trailing garbage");
    expect_rule(spec_file("{/*c*/}"), rule, "comment");
    expect_rule(spec_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},}"), rule, "trailing comma");
    expect_rule(spec_file(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", eight), rule, "unknown dtype");
    expect_rule(spec_file(R"({"a":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", eight), rule, "lowercase dtype");
    expect_rule(spec_file(R"({"a":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", eight), rule, "numeric dtype");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight), rule, "negative dim");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}})"), rule, "-0 dim");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", eight), rule, "float dim");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[1e1],"data_offsets":[0,8]}})", eight), rule, "exponent dim");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}})", eight), rule,
                "dim above u64");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", eight), rule, "shape not array");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", eight), rule, "nested shape");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", eight), rule, "3 offsets");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", eight), rule, "1 offset");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", eight), rule, "negative offset");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":{"0":8}}})", eight), rule, "offsets object");
    expect_rule(spec_file(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", eight), rule, "missing dtype");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", eight), rule, "missing shape");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[2]}})", eight), rule, "missing data_offsets");
    expect_rule(spec_file(R"({"a":[1,2]})"), rule, "tensor entry is an array");
    expect_rule(spec_file(R"({"a":"x"})"), rule, "tensor entry is a string");
    expect_rule(spec_file(R"({"__metadata__":{"k":1}})"), rule, "metadata value not a string");
    expect_rule(spec_file(R"({"__metadata__":{"k":{"x":"y"}}})"), rule, "metadata value an object");
    expect_rule(spec_file(R"({"__metadata__":{"k":null}})"), rule, "metadata value null");
    expect_rule(spec_file(R"({"__metadata__":["k"]})"), rule, "metadata an array");
    expect_rule(spec_file(R"({"__metadata__":"k"})"), rule, "metadata a string");
    expect_rule(spec_file(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":1e999}})"), rule,
                "number out of range in an ignored field");
    expect_rule(spec_file("{\"a\":\"\\ud800\"}"), rule, "lone surrogate escape");
    // serde_json's recursion limit of 128, reached inside an ignored field.
    const std::string deep = std::string(200, '[') + std::string(200, ']');
    expect_rule(spec_file(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":)" + deep + "}}"), rule,
                "nesting deeper than 128");
  }
  SUBCASE("DuplicateKey") {
    expect_rule(spec_file("{" + good_entry + "," + good_entry + "}", eight), "DuplicateKey", "tensor name twice");
    expect_rule(spec_file(R"({"__metadata__":{"k":"a","k":"b"}})"), "DuplicateKey", "metadata key twice");
    expect_rule(spec_file(R"({"__metadata__":{},"__metadata__":{}})"), "DuplicateKey", "__metadata__ twice");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", eight),
                "DuplicateKey", "field twice");
  }
  SUBCASE("InvalidOffset") {
    expect_rule(spec_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})", {0, 0, 0}), "InvalidOffset",
                "first tensor not at 0");
    expect_rule(spec_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})",
                          std::vector<uint8_t>(5)),
                "InvalidOffset", "gap");
    expect_rule(spec_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})",
                          std::vector<uint8_t>(3)),
                "InvalidOffset", "overlap");
    expect_rule(spec_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
                          std::vector<uint8_t>(2)),
                "InvalidOffset", "same range twice");
    expect_rule(spec_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[0],"data_offsets":[2,1]}})",
                          std::vector<uint8_t>(2)),
                "InvalidOffset", "end before begin");
  }
  SUBCASE("ValidationOverflow") {
    expect_rule(spec_file(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"),
                "ValidationOverflow", "element count overflows");
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
                "ValidationOverflow", "byte size overflows");
  }
  SUBCASE("TensorInvalidInfo") {
    expect_rule(spec_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", {0, 0, 0, 0}), "TensorInvalidInfo",
                "4 bytes for 2 floats");
    expect_rule(spec_file(R"({"a":{"dtype":"F64","shape":[],"data_offsets":[0,4]}})", {0, 0, 0, 0}), "TensorInvalidInfo",
                "scalar f64 in 4 bytes");
  }
  SUBCASE("MetadataIncompleteBuffer") {
    expect_rule(spec_file("{" + good_entry + "}", std::vector<uint8_t>(9)), "MetadataIncompleteBuffer", "trailing byte");
    expect_rule(spec_file("{" + good_entry + "}", std::vector<uint8_t>(7)), "MetadataIncompleteBuffer", "truncated data");
    expect_rule(spec_file("{}", {0}), "MetadataIncompleteBuffer", "data without tensors");
  }
}

TEST_CASE("safetensors: load_safetensors names the file and reads no more than the header needs") {
  TempDir tmp;
  const auto good = serialize_safetensors({{"w", Tensor::from_vector<float>({1, 2, 3}, {3})}});
  const std::string path = tmp.file("cut.safetensors");
  write_file_atomic(path, good.data(), good.size() - 1);
  try {
    load_safetensors(path);
    FAIL("truncated file accepted");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find(path + ": MetadataIncompleteBuffer: ") != std::string::npos);
  }
  std::vector<uint8_t> huge;
  append_u64le(huge, 100'000'001);
  write_file_atomic(path, huge.data(), huge.size());
  CHECK_THROWS_WITH_AS(load_safetensors(path), doctest::Contains("HeaderTooLarge"), Error);
  CHECK_THROWS_AS(load_safetensors(tmp.file("absent.safetensors")), Error);
}

TEST_CASE("safetensors: mutated files are either valid or refused with xfr::Error") {
  // Random byte flips, truncations and extensions of a valid file: the reader must never crash, hang or
  // throw anything but xfr::Error, and what it accepts must be a self-consistent file.
  const auto good = serialize_safetensors(
      {{"a", Tensor::from_vector<float>({1, 2}, {2})}, {"b", Tensor::from_vector<int64_t>({3}, {1})},
       {"c", Tensor::from_vector<uint8_t>({4, 5, 6}, {1, 3})}},
      {{"k", "v"}});
  std::mt19937_64 rng(12345);
  int accepted = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    auto b = good;
    const int kind = iter % 3;
    if (kind == 0) {
      const int flips = 1 + static_cast<int>(rng() % 3);
      for (int k = 0; k < flips; ++k) b[rng() % b.size()] = static_cast<uint8_t>(rng());
    } else if (kind == 1) {
      b.resize(rng() % b.size());
    } else {
      b.insert(b.begin() + static_cast<long>(8 + rng() % (b.size() - 8)), static_cast<uint8_t>(rng()));
    }
    try {
      const auto f = parse_safetensors(b, "fuzz");
      ++accepted;
      // Accepted: re-serialising what was read gives a file that reads back the same.
      const auto again = parse_safetensors(serialize_safetensors(f.tensors, f.metadata), "again");
      CHECK(again.tensors.size() == f.tensors.size());
    } catch (const Error&) {
    }
  }
  CHECK(accepted > 0);  // flips inside tensor data keep the file valid
}

TEST_CASE("safetensors: the writer refuses what a reader would refuse") {
  const Tensor t = Tensor::from_vector<float>({1}, {1});
  CHECK_THROWS_AS(serialize_safetensors({{"x", t}, {"x", t}}), Error);
  CHECK_THROWS_AS(serialize_safetensors({{"__metadata__", t}}), Error);
  CHECK_THROWS_AS(serialize_safetensors({{"bad\xff", t}}), Error);
  CHECK_THROWS_AS(serialize_safetensors({{"u", Tensor()}}), Error);
  CHECK_THROWS_AS(serialize_safetensors({}, {{"k", "\xc0"}}), Error);
}

TEST_CASE("safetensors: file_io helpers (CRC-32, atomic replace)") {
  // The CRC-32 check value of the IEEE polynomial (zlib.crc32(b"123456789")).
  const std::string check = "123456789";
  CHECK(crc32(check.data(), check.size()) == 0xCBF43926u);
  CHECK(crc32(nullptr, 0) == 0u);
  // Chaining over any split point equals one pass (the 8-byte fast path and the byte tail agree).
  std::vector<uint8_t> data(1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 31 + 7);
  const uint32_t whole = crc32(data.data(), data.size());
  for (size_t split : {0, 1, 7, 8, 9, 500, 999, 1000})
    CHECK(crc32(data.data() + split, data.size() - split, crc32(data.data(), split)) == whole);

  TempDir tmp;
  const std::string path = tmp.file("f.txt");
  write_file_atomic(path, std::string("first version, longer"));
  const FileDigest d = write_file_atomic(path, std::string("second"));
  CHECK(d.size == 6);
  const auto back = read_file(path);
  CHECK(std::string(back.begin(), back.end()) == "second");
  {
    AtomicFileWriter w(path);
    w.write("never committed", 15);
    CHECK(fs::exists(w.temp_path()));
  }  // abandoned: the destination keeps its content and the temporary file is gone
  const auto after = read_file(path);
  CHECK(std::string(after.begin(), after.end()) == "second");
  size_t n_files = 0;
  for (const auto& entry : fs::directory_iterator(tmp.path)) {
    (void)entry;
    ++n_files;
  }
  CHECK(n_files == 1);
  CHECK_THROWS_AS(write_file_atomic(tmp.file("no/such/folder/f"), std::string("x")), Error);
}
