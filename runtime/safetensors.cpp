#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <nlohmann/json.hpp>

#include "runtime/error.h"

// The format is little-endian and tensors are copied as raw bytes.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.cpp copies tensor bytes as they are: it needs a little-endian host"
#endif

namespace xfr {

namespace {

// The reference's MAX_HEADER_SIZE: a header above 100 MB is refused before it is read, so a corrupt or
// hostile length cannot make a reader allocate gigabytes.
constexpr uint64_t kMaxHeaderSize = 100'000'000;

// serde_json's recursion limit: a JSON value nested deeper than this is refused by the reference, so it
// is refused here too (the schema itself needs 3 levels).
constexpr size_t kMaxJsonDepth = 128;

// The data section starts at a multiple of this: the reference pads the header with spaces so that
// 8 + N is a multiple of 8, which keeps every f64/i64 tensor 8-byte aligned in a mapped file.
constexpr uint64_t kDataAlignment = 8;

[[noreturn]] void reject(const std::string& file, const char* rule, const std::string& details) {
  throw Error("safetensors", file + ": " + rule + ": " + details);
}

// Every dtype name the reference knows, with its element size in bits (its Dtype enum), and the xfrun
// dtype when there is one.
struct DTypeInfo {
  const char* name;
  unsigned bits;
  bool supported;
  DType dtype;
};
constexpr DTypeInfo kDTypes[] = {
    {"BOOL", 8, true, DType::boolean}, {"U8", 8, true, DType::u8},        {"I8", 8, false, DType::u8},
    {"F8_E5M2", 8, false, DType::u8},  {"F8_E4M3", 8, false, DType::u8},  {"F8_E8M0", 8, false, DType::u8},
    {"F4", 4, false, DType::u8},       {"F6_E2M3", 6, false, DType::u8},  {"F6_E3M2", 6, false, DType::u8},
    {"I16", 16, false, DType::u8},     {"U16", 16, false, DType::u8},     {"F16", 16, true, DType::f16},
    {"BF16", 16, true, DType::bf16},   {"I32", 32, true, DType::i32},     {"U32", 32, false, DType::u8},
    {"F32", 32, true, DType::f32},     {"F64", 64, true, DType::f64},     {"I64", 64, true, DType::i64},
    {"U64", 64, false, DType::u8},     {"C64", 64, false, DType::u8},
};

const DTypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

// The reference's Dtype enum order (the order of increasing alignment) for xfrun's dtypes; the writer
// sorts by it, descending.
int reference_rank(DType t) {
  switch (t) {
    case DType::boolean: return 0;
    case DType::u8: return 1;
    case DType::f16: return 2;
    case DType::bf16: return 3;
    case DType::i32: return 4;
    case DType::f32: return 5;
    case DType::f64: return 6;
    case DType::i64: return 7;
  }
  return 0;
}

// Strict UTF-8 as Rust's str::from_utf8 checks it: no overlong forms, no surrogates, nothing above
// U+10FFFF, no truncated sequences.
bool valid_utf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint8_t c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong below U+0800
      if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates U+D800..U+DFFF
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong below U+10000
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      return false;  // continuation byte first, overlong C0/C1, or F5..FF
    }
    if (n - i < len) return false;
    if (s[i + 1] < lo || s[i + 1] > hi) return false;
    for (size_t k = 2; k < len; ++k)
      if ((s[i + k] & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

// ---------------------------------------------------------------------------------------------------
// The header parser: a SAX handler that checks the schema while nlohmann's (iterative) parser reads,
// so duplicate keys are seen (a DOM would silently keep the last) and no tree is built.

using json = nlohmann::json;

class HeaderSax : public nlohmann::json_sax<json> {
 public:
  struct Entry {
    std::string name;
    std::string dtype;
    std::vector<uint64_t> shape;
    std::vector<uint64_t> offsets;
    bool has_dtype = false, has_shape = false, has_offsets = false;
  };
  std::map<std::string, std::string> metadata;
  std::vector<Entry> entries;
  // Set when a schema rule (rather than JSON syntax) stopped the parse.
  const char* rule = nullptr;
  std::string details;

  bool null() override { return scalar("null"); }
  bool boolean(bool) override { return scalar("a boolean"); }
  bool number_integer(number_integer_t) override {
    // nlohmann reports only negative integers (and -0) here: none fits the reference's usize.
    return scalar("a negative number");
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (top() == Ctx::shape) {
      entries.back().shape.push_back(v);
      return true;
    }
    if (top() == Ctx::offsets) {
      auto& o = entries.back().offsets;
      if (o.size() == 2) return fail(field_path() + " must hold exactly 2 offsets [begin, end], has more");
      o.push_back(v);
      return true;
    }
    return scalar("a number");
  }
  bool number_float(number_float_t v, const string_t&) override {
    // serde_json refuses numbers out of the f64 range even where it ignores the value.
    if (!std::isfinite(v)) return fail("number out of range");
    return scalar("a non-integer number");
  }
  bool string(string_t& s) override {
    switch (top()) {
      case Ctx::metadata:
        metadata[key_] = std::move(s);
        return true;
      case Ctx::tensor:
        if (field_ == Field::dtype) {
          entries.back().dtype = std::move(s);
          return true;
        }
        break;
      default:
        break;
    }
    return scalar("a string");
  }
  bool binary(binary_t&) override { return fail("binary value"); }

  bool start_object(std::size_t) override {
    if (stack_.empty()) return push(Ctx::top);
    switch (top()) {
      case Ctx::top:
        if (key_ == "__metadata__") return push(Ctx::metadata);
        entries.push_back(Entry{});
        entries.back().name = key_;
        tensor_fields_.clear();
        return push(Ctx::tensor);
      case Ctx::tensor:
        if (field_ == Field::unknown) return push(Ctx::skip);
        return fail(field_path() + " must be " + field_expectation() + ", not an object");
      case Ctx::skip:
        return push(Ctx::skip);
      default:
        return scalar("an object");
    }
  }
  bool end_object() override {
    const Ctx c = top();
    stack_.pop_back();
    if (c == Ctx::tensor) {
      const Entry& e = entries.back();
      const char* missing = !e.has_dtype ? "dtype" : !e.has_shape ? "shape" : !e.has_offsets ? "data_offsets" : nullptr;
      if (missing) return fail("tensor '" + e.name + "' has no \"" + missing + "\"");
    }
    return true;
  }
  bool start_array(std::size_t) override {
    if (stack_.empty()) return fail("the header is not a JSON object");
    switch (top()) {
      case Ctx::tensor:
        if (field_ == Field::shape) return push(Ctx::shape);
        if (field_ == Field::offsets) return push(Ctx::offsets);
        if (field_ == Field::unknown) return push(Ctx::skip);
        return fail(field_path() + " must be " + field_expectation() + ", not an array");
      case Ctx::skip:
        return push(Ctx::skip);
      default:
        return scalar("an array");
    }
  }
  bool end_array() override {
    const Ctx c = top();
    stack_.pop_back();
    if (c == Ctx::offsets && entries.back().offsets.size() != 2)
      return fail("\"data_offsets\" of tensor '" + entries.back().name + "' must hold exactly 2 offsets [begin, end], has " +
                  std::to_string(entries.back().offsets.size()));
    return true;
  }
  bool key(string_t& k) override {
    switch (top()) {
      case Ctx::top:
        if (!top_keys_.insert(k).second) {
          return fail(k == "__metadata__" ? std::string("\"__metadata__\" appears twice")
                                          : "tensor name '" + k + "' appears twice",
                      "DuplicateKey");
        }
        key_ = k;
        return true;
      case Ctx::metadata:
        if (metadata.count(k)) return fail("__metadata__ key '" + k + "' appears twice", "DuplicateKey");
        key_ = k;
        return true;
      case Ctx::tensor: {
        if (!tensor_fields_.insert(k).second)
          return fail("field \"" + k + "\" of tensor '" + entries.back().name + "' appears twice", "DuplicateKey");
        Entry& e = entries.back();
        if (k == "dtype") {
          field_ = Field::dtype;
          e.has_dtype = true;
        } else if (k == "shape") {
          field_ = Field::shape;
          e.has_shape = true;
        } else if (k == "data_offsets") {
          field_ = Field::offsets;
          e.has_offsets = true;
        } else {
          field_ = Field::unknown;  // ignored, as serde ignores unknown struct fields
        }
        return true;
      }
      default:
        return true;  // keys inside ignored values
    }
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) override {
    if (!rule) {
      rule = "InvalidHeaderDeserialization";
      details = str_cat("invalid JSON at byte ", position, " of the header: ", ex.what());
    }
    return false;
  }

 private:
  enum class Ctx { top, metadata, tensor, shape, offsets, skip };
  enum class Field { dtype, shape, offsets, unknown };

  Ctx top() const { return stack_.back(); }
  bool push(Ctx c) {
    if (stack_.size() >= kMaxJsonDepth) return fail(str_cat("JSON nested deeper than ", kMaxJsonDepth, " levels"));
    stack_.push_back(c);
    return true;
  }
  bool fail(std::string why, const char* r = "InvalidHeaderDeserialization") {
    if (!rule) {
      rule = r;
      details = std::move(why);
    }
    return false;
  }
  std::string field_path() const {
    const char* f = field_ == Field::dtype ? "dtype" : field_ == Field::shape ? "shape" : "data_offsets";
    return std::string("\"") + f + "\" of tensor '" + entries.back().name + "'";
  }
  const char* field_expectation() const {
    return field_ == Field::dtype   ? "a string"
           : field_ == Field::shape ? "an array of non-negative integers"
                                    : "an array [begin, end] of non-negative integers";
  }
  // A scalar (or a container, when `what` says so) where the context allows only something else.
  bool scalar(const std::string& what) {
    if (stack_.empty()) return fail("the header is not a JSON object");
    switch (top()) {
      case Ctx::top:
        if (key_ == "__metadata__") {
          if (what == "null") return true;  // Option<HashMap>: null means no metadata
          return fail("\"__metadata__\" must be an object of strings, not " + what);
        }
        return fail("tensor '" + key_ + "' must be an object, not " + what);
      case Ctx::metadata:
        return fail("__metadata__ value of '" + key_ + "' must be a string, not " + what);
      case Ctx::tensor:
        if (field_ == Field::unknown) return true;
        return fail(field_path() + " must be " + field_expectation() + ", not " + what);
      case Ctx::shape:
        return fail("\"shape\" of tensor '" + entries.back().name + "' must hold non-negative integers, not " + what);
      case Ctx::offsets:
        return fail("\"data_offsets\" of tensor '" + entries.back().name + "' must hold non-negative integers, not " +
                    what);
      case Ctx::skip:
        return true;
    }
    return true;
  }

  std::vector<Ctx> stack_;
  std::string key_;                     // the current key of the top level or of __metadata__
  Field field_ = Field::unknown;        // the current field of a tensor entry
  std::set<std::string> top_keys_;      // tensor names (and __metadata__) seen so far
  std::set<std::string> tensor_fields_; // fields of the current tensor entry seen so far
};

// ---------------------------------------------------------------------------------------------------
// Writing

// JSON string escaping as serde_json writes it (the reference's serializer): \" \\ \b \f \n \r \t, other
// control characters as \u00xx (lowercase hex); everything else, non-ASCII included, verbatim.
void append_json_string(std::string& out, const std::string& s) {
  static const char kHex[] = "0123456789abcdef";
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xf];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

struct Prepared {
  std::string header;                  // padded JSON
  std::vector<Tensor> tensors;         // contiguous CPU tensors in data order
};

Prepared prepare(const std::vector<std::pair<std::string, Tensor>>& tensors,
                 const std::map<std::string, std::string>& metadata, SafetensorsOrder order) {
  std::vector<size_t> idx(tensors.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    XF_CHECK(t.defined(), "safetensors", "tensor '", name, "' is undefined");
    XF_CHECK(t.device().is_cpu(), "safetensors", "tensor '", name, "' is on ", t.device().str(),
             "; copy it to the CPU first");
    XF_CHECK(name != "__metadata__", "safetensors", "'__metadata__' is reserved and cannot name a tensor");
    XF_CHECK(valid_utf8(reinterpret_cast<const uint8_t*>(name.data()), name.size()), "safetensors",
             "tensor name '", name, "' is not valid UTF-8");
    XF_CHECK(names.insert(name).second, "safetensors", "tensor name '", name, "' appears twice");
  }
  for (const auto& [k, v] : metadata) {
    XF_CHECK(valid_utf8(reinterpret_cast<const uint8_t*>(k.data()), k.size()) &&
                 valid_utf8(reinterpret_cast<const uint8_t*>(v.data()), v.size()),
             "safetensors", "metadata entry '", k, "' is not valid UTF-8");
  }
  if (order == SafetensorsOrder::reference) {
    std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
      const int ra = reference_rank(tensors[a].second.dtype()), rb = reference_rank(tensors[b].second.dtype());
      if (ra != rb) return ra > rb;
      return tensors[a].first < tensors[b].first;
    });
  } else if (order == SafetensorsOrder::by_name) {
    std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return tensors[a].first < tensors[b].first; });
  }

  Prepared p;
  std::string& h = p.header;
  h += '{';
  bool first = true;
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool mfirst = true;
    for (const auto& [k, v] : metadata) {
      if (!mfirst) h += ',';
      mfirst = false;
      append_json_string(h, k);
      h += ':';
      append_json_string(h, v);
    }
    h += '}';
    first = false;
  }
  uint64_t offset = 0;
  for (size_t i : idx) {
    const auto& [name, t] = tensors[i];
    Tensor c = t.contiguous();
    const uint64_t n = c.nbytes();
    if (!first) h += ',';
    first = false;
    append_json_string(h, name);
    h += ":{\"dtype\":\"";
    h += safetensors_dtype_name(c.dtype());
    h += "\",\"shape\":[";
    for (size_t d = 0; d < c.shape().size(); ++d) {
      if (d) h += ',';
      h += std::to_string(c.shape()[d]);
    }
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + n) + "]}";
    offset += n;
    p.tensors.push_back(std::move(c));
  }
  h += '}';
  h.append((kDataAlignment - h.size() % kDataAlignment) % kDataAlignment, ' ');
  XF_CHECK(h.size() <= kMaxHeaderSize, "safetensors", "header of ", h.size(), " bytes exceeds the ", kMaxHeaderSize,
           "-byte limit of safetensors readers");
  return p;
}

template <class Sink>
void emit(const Prepared& p, Sink&& sink) {
  uint8_t len[8];
  const uint64_t n = p.header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  sink(len, 8);
  sink(p.header.data(), p.header.size());
  for (const Tensor& t : p.tensors)
    if (t.nbytes()) sink(t.raw_data(), t.nbytes());
}

// ---------------------------------------------------------------------------------------------------
// Reading

Tensor make_tensor(const SafetensorsEntry& e, const std::string& file) {
  const DType dt = safetensors_entry_dtype(e, file);
  return Tensor::empty(safetensors_entry_shape(e, file), dt);
}

// Any nonzero BOOL byte reads as true: a C++ bool holding another byte value is undefined behaviour.
void normalize_bools(Tensor& t) {
  if (t.dtype() != DType::boolean) return;
  auto* p = static_cast<uint8_t*>(t.raw_data());
  for (size_t i = 0, n = t.nbytes(); i < n; ++i) p[i] = p[i] != 0;
}

void pread_fully(int fd, void* dst, size_t size, uint64_t offset, const std::string& path) {
  constexpr size_t kMaxTransfer = size_t{1} << 30;  // Linux moves at most ~2 GiB per call anyway
  auto* p = static_cast<char*>(dst);
  while (size > 0) {
    const ssize_t n = ::pread(fd, p, size < kMaxTransfer ? size : kMaxTransfer, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error("safetensors", path + ": read failed: " + std::strerror(errno));
    }
    if (n == 0) throw Error("safetensors", path + ": file shrank while being read");
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::u8: return "U8";
    case DType::boolean: return "BOOL";
  }
  return "?";
}

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t available, uint64_t file_size,
                                           const std::string& name) {
  if (file_size < 8) reject(name, "HeaderTooSmall", str_cat("the file has ", file_size, " bytes, fewer than the 8 of the header length"));
  XF_CHECK(available >= 8, "safetensors", name, ": internal: fewer than 8 bytes given");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  if (n > kMaxHeaderSize) reject(name, "HeaderTooLarge", str_cat("header length ", n, " exceeds ", kMaxHeaderSize, " bytes"));
  if (8 + n > file_size)
    reject(name, "InvalidHeaderLength", str_cat("header length ", n, " runs past the end of the ", file_size, "-byte file"));
  XF_CHECK(available >= 8 + n, "safetensors", name, ": internal: header not fully given");
  const uint8_t* h = bytes + 8;
  if (!valid_utf8(h, n)) reject(name, "InvalidHeader", "the header is not valid UTF-8");
  if (n == 0 || h[0] != '{')
    reject(name, "InvalidHeaderStart", n == 0 ? "the header is empty" : "the header does not start with '{'");

  HeaderSax sax;
  const char* begin = reinterpret_cast<const char*>(h);
  const bool ok = json::sax_parse(begin, begin + n, &sax, json::input_format_t::json,
                                  /*strict=*/true, /*ignore_comments=*/false);
  if (!ok || sax.rule) reject(name, sax.rule ? sax.rule : "InvalidHeaderDeserialization", sax.rule ? sax.details : "invalid JSON");

  SafetensorsHeader out;
  out.metadata = std::move(sax.metadata);
  out.header_size = n;
  out.data_start = 8 + n;
  out.entries.reserve(sax.entries.size());
  for (auto& e : sax.entries) {
    if (!find_dtype(e.dtype)) reject(name, "InvalidHeaderDeserialization", "tensor '" + e.name + "' has unknown dtype '" + e.dtype + "'");
    SafetensorsEntry se;
    se.name = std::move(e.name);
    se.dtype = std::move(e.dtype);
    se.shape = std::move(e.shape);
    se.begin = e.offsets[0];
    se.end = e.offsets[1];
    out.entries.push_back(std::move(se));
  }
  // As the reference: sort by offsets (files may list tensors in any order), then each tensor must start
  // where the previous one ended and hold exactly product(shape) * dtype size bytes.
  std::sort(out.entries.begin(), out.entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
  uint64_t start = 0;
  for (const auto& e : out.entries) {
    if (e.begin != start || e.end < e.begin)
      reject(name, "InvalidOffset",
             str_cat("tensor '", e.name, "' has data_offsets [", e.begin, ", ", e.end, "] but ",
                     e.end < e.begin ? "its end precedes its begin" : e.begin < start ? "overlaps the previous tensor" : "leaves a gap after the previous tensor",
                     " (expected begin ", start, ")"));
    start = e.end;
    uint64_t elements = 1;
    for (uint64_t d : e.shape)
      if (!checked_mul(elements, d, &elements))
        reject(name, "ValidationOverflow", "the element count of tensor '" + e.name + "' overflows 64 bits");
    const DTypeInfo* info = find_dtype(e.dtype);
    if (info->bits % 8 != 0)
      reject(name, "UnsupportedDtype", "tensor '" + e.name + "' has sub-byte dtype '" + e.dtype + "', which xfrun cannot hold");
    uint64_t nbytes = 0;
    if (!checked_mul(elements, info->bits / 8, &nbytes))
      reject(name, "ValidationOverflow", "the byte size of tensor '" + e.name + "' overflows 64 bits");
    if (e.end - e.begin != nbytes)
      reject(name, "TensorInvalidInfo",
             str_cat("tensor '", e.name, "' spans ", e.end - e.begin, " bytes but its shape and dtype ", e.dtype,
                     " need ", nbytes));
  }
  // Overflow-safe form of the reference's `buffer_end + 8 + n != buffer_len`.
  if (start != file_size - 8 - n)
    reject(name, "MetadataIncompleteBuffer",
           str_cat("the tensors cover ", start, " data bytes but the file holds ", file_size - 8 - n,
                   " after the header"));
  return out;
}

DType safetensors_entry_dtype(const SafetensorsEntry& e, const std::string& file) {
  const DTypeInfo* info = find_dtype(e.dtype);
  if (!info || !info->supported)
    reject(file, "UnsupportedDtype", "tensor '" + e.name + "' has dtype '" + e.dtype + "', which xfrun cannot hold");
  return info->dtype;
}

Shape safetensors_entry_shape(const SafetensorsEntry& e, const std::string& file) {
  Shape s;
  s.reserve(e.shape.size());
  for (uint64_t d : e.shape) {
    if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      reject(file, "UnsupportedShape", str_cat("tensor '", e.name, "' has dimension ", d, ", above INT64_MAX"));
    s.push_back(static_cast<int64_t>(d));
  }
  return s;
}

bool SafetensorsFile::has(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.first == name) return true;
  return false;
}

const Tensor& SafetensorsFile::get(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.first == name) return t.second;
  throw Error("safetensors", "no tensor named '" + name + "'");
}

std::vector<uint8_t> serialize_safetensors(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                           const std::map<std::string, std::string>& metadata,
                                           SafetensorsOrder order) {
  const Prepared p = prepare(tensors, metadata, order);
  std::vector<uint8_t> out;
  size_t total = 8 + p.header.size();
  for (const Tensor& t : p.tensors) total += t.nbytes();
  out.reserve(total);
  emit(p, [&](const void* d, size_t n) {
    const auto* b = static_cast<const uint8_t*>(d);
    out.insert(out.end(), b, b + n);
  });
  return out;
}

FileDigest save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                            const std::map<std::string, std::string>& metadata, SafetensorsOrder order) {
  const Prepared p = prepare(tensors, metadata, order);
  AtomicFileWriter w(path);
  emit(p, [&](const void* d, size_t n) { w.write(d, n); });
  return w.commit();
}

SafetensorsFile parse_safetensors(const uint8_t* bytes, size_t size, const std::string& name) {
  const SafetensorsHeader h = parse_safetensors_header(bytes, size, size, name);
  SafetensorsFile f;
  f.metadata = h.metadata;
  f.tensors.reserve(h.entries.size());
  for (const auto& e : h.entries) {
    Tensor t = make_tensor(e, name);
    if (e.end > e.begin) std::memcpy(t.raw_data(), bytes + h.data_start + e.begin, e.end - e.begin);
    normalize_bools(t);
    f.tensors.emplace_back(e.name, std::move(t));
  }
  return f;
}

SafetensorsFile parse_safetensors(const std::vector<uint8_t>& bytes, const std::string& name) {
  return parse_safetensors(bytes.data(), bytes.size(), name);
}

SafetensorsFile load_safetensors(const std::string& path) {
  Fd fd;
  fd.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd.fd < 0) throw Error("safetensors", path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) throw Error("safetensors", path + ": cannot stat: " + std::strerror(errno));
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  // The length prefix first; the header only once its length has passed the size checks.
  std::vector<uint8_t> prefix(file_size < 8 ? file_size : 8);
  pread_fully(fd.fd, prefix.data(), prefix.size(), 0, path);
  if (file_size >= 8) {
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(prefix[i]) << (8 * i);
    if (n <= kMaxHeaderSize && 8 + n <= file_size) {
      prefix.resize(8 + n);
      pread_fully(fd.fd, prefix.data() + 8, n, 8, path);
    }
  }
  const SafetensorsHeader h = parse_safetensors_header(prefix.data(), prefix.size(), file_size, path);
  SafetensorsFile f;
  f.metadata = h.metadata;
  f.tensors.reserve(h.entries.size());
  for (const auto& e : h.entries) {
    Tensor t = make_tensor(e, path);
    if (e.end > e.begin) pread_fully(fd.fd, t.raw_data(), e.end - e.begin, h.data_start + e.begin, path);
    normalize_bools(t);
    f.tensors.emplace_back(e.name, std::move(t));
  }
  return f;
}

}  // namespace xfr
