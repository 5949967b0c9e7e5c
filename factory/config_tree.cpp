// The config tree, its YAML/JSON loaders, --set overrides and writers (see config_tree.h).
//
// YAML is read through yaml-cpp's event API (YAML::Parser + YAML::EventHandler), not YAML::Load: events
// carry each node's Mark, arrive in document order (so key order and duplicate keys are visible), and
// an alias arrives as one event that we expand ourselves, counting every expanded node against the
// budget before copying anything. Only API present in both yaml-cpp 0.7 and 0.8 is used; the emitter
// style parameter type differs between releases and is deduced from EventHandler itself.
//
// JSON is read by nlohmann/json's iterative SAX parser (strict syntax, no recursion); line:col for each
// node comes from a small token scanner run over the same text (the n-th SAX event is the n-th token).
#include "factory/config_tree.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/mark.h>
#include <yaml-cpp/parser.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "runtime/error.h"

namespace xfr {

namespace fs = std::filesystem;

// ======================================================================================================
// SourceLoc, paths
// ======================================================================================================

std::string to_string(const SourceLoc& loc) {
  std::string s = loc.file;
  if (loc.line > 0) {
    s += str_cat(s.empty() ? "" : ":", loc.line);
    if (loc.col > 0) s += str_cat(":", loc.col);
  }
  return s;
}

namespace {

[[noreturn]] void fail(const SourceLoc& loc, const std::string& msg, const std::string& path = {}) {
  const std::string where = to_string(loc);
  throw Error("config", where.empty() ? msg : where + ": " + msg, path);
}

bool key_needs_brackets(const std::string& key) {
  if (key.empty()) return true;
  for (unsigned char c : key)
    if (c == '.' || c == '[' || c == ']' || c == '"' || std::isspace(c)) return true;
  return false;
}

std::string quote_for_message(const std::string& s) {
  // Short, single-line rendering of a value inside an error message.
  std::string out;
  for (char c : s.substr(0, 80)) out += (c == '\n' ? ' ' : c);
  if (s.size() > 80) out += "...";
  return out;
}

}  // namespace

std::string path_join(const std::string& base, const std::string& key) {
  if (key_needs_brackets(key)) {
    std::string q = "[\"";
    for (char c : key) {
      if (c == '"' || c == '\\') q += '\\';
      q += c;
    }
    return base + q + "\"]";
  }
  return base.empty() ? key : base + "." + key;
}

std::string path_join(const std::string& base, std::size_t index) { return str_cat(base, "[", index, "]"); }

// ======================================================================================================
// ConfigNode
// ======================================================================================================

struct ConfigNodeAccess {
  static std::vector<ConfigNode>& items(ConfigNode& n) { return n.items_; }
  static std::vector<ConfigMapEntry>& entries(ConfigNode& n) { return n.entries_; }
};

ConfigNode ConfigNode::make_null(SourceLoc loc) {
  ConfigNode n;
  n.loc_ = std::move(loc);
  return n;
}
ConfigNode ConfigNode::make_scalar(std::string text, bool quoted, SourceLoc loc) {
  ConfigNode n;
  n.kind_ = Kind::scalar;
  n.text_ = std::move(text);
  n.quoted_ = quoted;
  n.loc_ = std::move(loc);
  return n;
}
ConfigNode ConfigNode::make_list(SourceLoc loc) {
  ConfigNode n;
  n.kind_ = Kind::list;
  n.loc_ = std::move(loc);
  return n;
}
ConfigNode ConfigNode::make_map(SourceLoc loc) {
  ConfigNode n;
  n.kind_ = Kind::map;
  n.loc_ = std::move(loc);
  return n;
}

const char* ConfigNode::kind_name() const {
  switch (kind_) {
    case Kind::null: return "null";
    case Kind::scalar: return "scalar";
    case Kind::list: return "list";
    case Kind::map: return "map";
  }
  return "?";
}

void ConfigNode::require(Kind k, const char* what) const {
  if (kind_ != k) {
    ConfigNode tmp;
    tmp.kind_ = k;
    fail(loc_, str_cat(what, ": expected a ", tmp.kind_name(), ", found a ", kind_name()));
  }
}
void ConfigNode::become_map_if_null() {
  if (kind_ == Kind::null) kind_ = Kind::map;
  require(Kind::map, "map access");
}
void ConfigNode::become_list_if_null() {
  if (kind_ == Kind::null) kind_ = Kind::list;
  require(Kind::list, "list access");
}

const std::string& ConfigNode::text() const {
  require(Kind::scalar, "text()");
  return text_;
}
bool ConfigNode::quoted() const {
  require(Kind::scalar, "quoted()");
  return quoted_;
}

namespace {

bool is_null_text(const std::string& s) {
  return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL";
}

std::optional<bool> core_bool(const std::string& s) {
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  return std::nullopt;
}

bool all_of_class(const std::string& s, std::size_t from, int (*pred)(int)) {
  if (from >= s.size()) return false;
  for (std::size_t i = from; i < s.size(); ++i)
    if (!pred(static_cast<unsigned char>(s[i]))) return false;
  return true;
}
int is_octal_digit(int c) { return c >= '0' && c <= '7'; }

// YAML 1.2 core schema integers: [-+]?[0-9]+ | 0o[0-7]+ | 0x[0-9a-fA-F]+. 'overflow' reports a valid
// integer literal that does not fit int64 (to_json then tries uint64, then double).
std::optional<std::int64_t> core_int(const std::string& s, bool* overflow = nullptr) {
  if (overflow) *overflow = false;
  int base = 10;
  std::size_t start = 0;
  bool neg = false;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
    base = s[1] == 'x' ? 16 : 8;
    start = 2;
    if (!all_of_class(s, start, base == 16 ? ::isxdigit : is_octal_digit)) return std::nullopt;
  } else {
    if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
      neg = s[0] == '-';
      start = 1;
    }
    if (!all_of_class(s, start, ::isdigit)) return std::nullopt;
  }
  std::uint64_t mag = 0;
  const char* b = s.data() + start;
  auto r = std::from_chars(b, s.data() + s.size(), mag, base);
  const std::uint64_t lim = neg ? std::uint64_t(std::numeric_limits<std::int64_t>::max()) + 1
                                : std::uint64_t(std::numeric_limits<std::int64_t>::max());
  if (r.ec == std::errc::result_out_of_range || mag > lim) {
    if (overflow) *overflow = true;
    return std::nullopt;
  }
  if (r.ec != std::errc()) return std::nullopt;
  if (neg) return mag == lim ? std::numeric_limits<std::int64_t>::min() : -std::int64_t(mag);
  return std::int64_t(mag);
}

// YAML 1.2 core schema floats: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? | [-+]?\.inf | \.nan
std::optional<double> core_float(const std::string& s) {
  std::size_t i = 0;
  bool neg = false;
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
  const std::string rest = s.substr(i);
  if (rest == ".inf" || rest == ".Inf" || rest == ".INF")
    return neg ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
  if (i == 0 && (rest == ".nan" || rest == ".NaN" || rest == ".NAN"))
    return std::numeric_limits<double>::quiet_NaN();
  std::size_t j = i, int_digits = 0, frac_digits = 0;
  while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j, ++int_digits;
  if (j < s.size() && s[j] == '.') {
    ++j;
    while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j, ++frac_digits;
    if (int_digits == 0 && frac_digits == 0) return std::nullopt;
  } else if (int_digits == 0) {
    return std::nullopt;
  }
  if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
    ++j;
    if (j < s.size() && (s[j] == '-' || s[j] == '+')) ++j;
    std::size_t e = 0;
    while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j, ++e;
    if (e == 0) return std::nullopt;
  }
  if (j != s.size()) return std::nullopt;
  // from_chars does not take a leading '+'; it is locale-independent (strtod is not).
  const char* b = s.data() + (s[0] == '+' ? 1 : 0);
  double v = 0;
  auto r = std::from_chars(b, s.data() + s.size(), v);
  if (r.ec == std::errc::result_out_of_range) {
    // Overflow gives +-inf; underflow gives 0, as YAML/JSON readers do.
    bool big = false;
    auto epos = s.find_first_of("eE");
    if (epos != std::string::npos) big = s.find('-', epos) == std::string::npos;
    return big ? (neg ? -HUGE_VAL : HUGE_VAL) : (neg ? -0.0 : 0.0);
  }
  if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

std::optional<bool> ConfigNode::as_bool() const {
  if (kind_ != Kind::scalar || quoted_) return std::nullopt;
  return core_bool(text_);
}
std::optional<std::int64_t> ConfigNode::as_int() const {
  if (kind_ != Kind::scalar || quoted_) return std::nullopt;
  return core_int(text_);
}
std::optional<double> ConfigNode::as_double() const {
  if (kind_ != Kind::scalar || quoted_) return std::nullopt;
  if (auto i = core_int(text_)) return double(*i);
  bool overflow = false;
  core_int(text_, &overflow);
  if (overflow) {  // an integer literal beyond int64
    double v = 0;
    const char* b = text_.data() + (text_[0] == '+' ? 1 : 0);
    if (text_.size() > 2 && text_[0] == '0' && (text_[1] == 'x' || text_[1] == 'o')) {
      for (std::size_t k = 2; k < text_.size(); ++k) {
        char c = text_[k];
        int d = std::isdigit(static_cast<unsigned char>(c)) ? c - '0' : (std::tolower(c) - 'a' + 10);
        v = v * (text_[1] == 'x' ? 16 : 8) + d;
      }
      return v;
    }
    std::from_chars(b, text_.data() + text_.size(), v);
    return v;
  }
  return core_float(text_);
}
bool ConfigNode::is_null_like() const {
  return kind_ == Kind::null || (kind_ == Kind::scalar && !quoted_ && is_null_text(text_));
}

std::size_t ConfigNode::size() const {
  return kind_ == Kind::list ? items_.size() : kind_ == Kind::map ? entries_.size() : 0;
}

const std::vector<ConfigNode>& ConfigNode::items() const {
  require(Kind::list, "items()");
  return items_;
}
const ConfigNode& ConfigNode::at(std::size_t index) const {
  require(Kind::list, "at(index)");
  if (index >= items_.size())
    fail(loc_, str_cat("index ", index, " is out of range for a list of ", items_.size(), " items"));
  return items_[index];
}
ConfigNode& ConfigNode::at(std::size_t index) {
  return const_cast<ConfigNode&>(static_cast<const ConfigNode&>(*this).at(index));
}
ConfigNode& ConfigNode::push_back(ConfigNode value) {
  become_list_if_null();
  items_.push_back(std::move(value));
  return items_.back();
}
ConfigNode& ConfigNode::insert(std::size_t index, ConfigNode value) {
  become_list_if_null();
  if (index > items_.size())
    fail(loc_, str_cat("insert at ", index, " is out of range for a list of ", items_.size(), " items"));
  return *items_.insert(items_.begin() + std::ptrdiff_t(index), std::move(value));
}
ConfigNode& ConfigNode::set(std::size_t index, ConfigNode value) {
  ConfigNode& slot = at(index);
  slot = std::move(value);
  return slot;
}
void ConfigNode::erase(std::size_t index) {
  at(index);  // checks
  items_.erase(items_.begin() + std::ptrdiff_t(index));
}

const std::vector<ConfigMapEntry>& ConfigNode::entries() const {
  require(Kind::map, "entries()");
  return entries_;
}
std::vector<std::string> ConfigNode::keys() const {
  std::vector<std::string> k;
  if (kind_ != Kind::map) return k;
  k.reserve(entries_.size());
  for (const auto& e : entries_) k.push_back(e.key);
  return k;
}
bool ConfigNode::contains(const std::string& key) const { return find(key) != nullptr; }
const ConfigNode* ConfigNode::find(const std::string& key) const {
  if (kind_ != Kind::map) return nullptr;
  for (const auto& e : entries_)
    if (e.key == key) return &e.value;
  return nullptr;
}
ConfigNode* ConfigNode::find(const std::string& key) {
  return const_cast<ConfigNode*>(static_cast<const ConfigNode&>(*this).find(key));
}
const ConfigNode& ConfigNode::at(const std::string& key) const {
  require(Kind::map, "at(key)");
  if (const ConfigNode* v = find(key)) return *v;
  std::string hint = did_you_mean(key, keys());
  fail(loc_, str_cat("missing key '", key, "'", hint.empty() ? "" : "; " + hint));
}
ConfigNode& ConfigNode::at(const std::string& key) {
  return const_cast<ConfigNode&>(static_cast<const ConfigNode&>(*this).at(key));
}
const SourceLoc* ConfigNode::key_loc(const std::string& key) const {
  if (kind_ != Kind::map) return nullptr;
  for (const auto& e : entries_)
    if (e.key == key) return &e.key_loc;
  return nullptr;
}
ConfigNode& ConfigNode::set(const std::string& key, ConfigNode value, std::optional<SourceLoc> key_loc) {
  become_map_if_null();
  for (auto& e : entries_) {
    if (e.key == key) {
      e.value = std::move(value);
      if (key_loc) e.key_loc = std::move(*key_loc);
      return e.value;
    }
  }
  entries_.push_back(ConfigMapEntry{key, key_loc ? std::move(*key_loc) : SourceLoc{}, std::move(value)});
  return entries_.back().value;
}
ConfigNode& ConfigNode::insert(const std::string& key, ConfigNode value, SourceLoc key_loc) {
  become_map_if_null();
  if (const SourceLoc* first = this->key_loc(key))
    fail(key_loc, str_cat("duplicate key '", key, "'",
                          first->line > 0 ? str_cat(" (first defined at ", to_string(*first), ")") : ""));
  entries_.push_back(ConfigMapEntry{key, std::move(key_loc), std::move(value)});
  return entries_.back().value;
}
bool ConfigNode::erase(const std::string& key) {
  if (kind_ != Kind::map) return false;
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->key == key) {
      entries_.erase(it);
      return true;
    }
  }
  return false;
}

namespace {

// Splits "a.b[0].c" / "a.b.0.c" into parts; bracketed parts are flagged as indices.
struct PathPart {
  std::string text;
  bool bracketed = false;
};

std::vector<PathPart> split_path(const std::string& path, bool* ok) {
  std::vector<PathPart> parts;
  *ok = true;
  std::string cur;
  bool have_cur = false;
  for (std::size_t i = 0; i < path.size(); ++i) {
    char c = path[i];
    if (c == '.') {
      if (!have_cur) { *ok = false; return parts; }
      parts.push_back({cur, false});
      cur.clear();
      have_cur = false;
      // "a[0].b": the '.' after ']' separates and nothing is pending.
    } else if (c == '[') {
      if (have_cur) parts.push_back({cur, false});
      cur.clear();
      have_cur = false;
      auto close = path.find(']', i);
      if (close == std::string::npos) { *ok = false; return parts; }
      std::string inner = path.substr(i + 1, close - i - 1);
      if (inner.size() >= 2 && inner.front() == '"' && inner.back() == '"') {
        parts.push_back({inner.substr(1, inner.size() - 2), false});  // ["a.b"]: a key
      } else {
        parts.push_back({inner, true});
      }
      i = close;
      if (i + 1 < path.size() && path[i + 1] == '.') {
        ++i;
        if (i + 1 >= path.size()) { *ok = false; return parts; }
      }
    } else {
      cur += c;
      have_cur = true;
    }
  }
  if (have_cur) parts.push_back({cur, false});
  else if (!path.empty() && path.back() == '.') *ok = false;
  if (parts.empty()) *ok = false;
  return parts;
}

std::optional<std::size_t> parse_index(const std::string& s) {
  if (s.empty() || s.size() > 18) return std::nullopt;
  for (char c : s)
    if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
  return std::size_t(std::stoull(s));
}

}  // namespace

const ConfigNode* ConfigNode::find_path(const std::string& path) const {
  bool ok = false;
  auto parts = split_path(path, &ok);
  if (!ok) return nullptr;
  const ConfigNode* n = this;
  for (const auto& p : parts) {
    if (n->is_list()) {
      auto idx = parse_index(p.text);
      if (!idx || *idx >= n->items_.size()) return nullptr;
      n = &n->items_[*idx];
    } else if (n->is_map() && !p.bracketed) {
      n = n->find(p.text);
      if (!n) return nullptr;
    } else {
      return nullptr;
    }
  }
  return n;
}

bool ConfigNode::operator==(const ConfigNode& o) const {
  if (kind_ != o.kind_) return false;
  switch (kind_) {
    case Kind::null: return true;
    case Kind::scalar: return text_ == o.text_ && quoted_ == o.quoted_;
    case Kind::list: return items_ == o.items_;
    case Kind::map:
      if (entries_.size() != o.entries_.size()) return false;
      for (std::size_t i = 0; i < entries_.size(); ++i)
        if (entries_[i].key != o.entries_[i].key || entries_[i].value != o.entries_[i].value) return false;
      return true;
  }
  return false;
}

// ======================================================================================================
// YAML through yaml-cpp events
// ======================================================================================================

namespace {

// The style argument of OnMapStart is EmitterStyle::value in yaml-cpp 0.7/0.8 and an enum class later;
// take its type from the base class so the overrides match whichever is installed.
template <class F>
struct fourth_arg;
template <class C, class R, class A1, class A2, class A3, class A4>
struct fourth_arg<R (C::*)(A1, A2, A3, A4)> {
  using type = A4;
};
using YamlStyle = fourth_arg<decltype(&YAML::EventHandler::OnMapStart)>::type;

constexpr const char* kYamlTagPrefix = "tag:yaml.org,2002:";

struct YamlOptions {
  std::string file;             // used in SourceLoc and errors
  ConfigLimits limits;
  // Override mode: nodes get SourceLoc{file}, errors name the assignment and the column in it.
  bool override_mode = false;
  std::string assignment;
  int column_offset = 0;
};

class YamlBuilder : public YAML::EventHandler {
 public:
  explicit YamlBuilder(const YamlOptions& opt) : opt_(opt) {}

  ConfigNode take_root() { return std::move(root_); }
  bool done() const { return done_; }
  bool root_is_block_collection() const { return root_block_; }

  [[noreturn]] void fail_at(const YAML::Mark& m, const std::string& msg) const {
    if (opt_.override_mode) {
      std::string where = m.is_null() ? "" : str_cat(" (column ", opt_.column_offset + m.column + 1, ")");
      throw Error("config", str_cat(opt_.file, " '", opt_.assignment, "': ", msg, where));
    }
    fail(loc(m), msg);
  }

  SourceLoc loc(const YAML::Mark& m) const {
    if (opt_.override_mode || m.is_null()) return SourceLoc{opt_.file, 0, 0};
    return SourceLoc{opt_.file, m.line + 1, m.column + 1};
  }

  // ---- events ----
  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    count(mark, 1);
    if (at_key_position()) fail_at(mark, "a map key is empty or null");
    finish(ConfigNode::make_null(loc(mark)), anchor, 0, 1);
  }

  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    auto it = anchors_.find(anchor);
    if (it == anchors_.end()) fail_at(mark, "alias refers to a node that contains it (recursive alias)");
    const Anchored& a = *it->second;
    // Budget and depth first, so that a bomb stops before anything is copied.
    count(mark, a.nodes);
    if (int(frames_.size()) + a.height > opt_.limits.max_depth)
      fail_at(mark, str_cat("nesting deeper than ", opt_.limits.max_depth, " levels (through an alias)"));
    ConfigNode copy = a.node;
    if (at_key_position()) {
      if (!copy.is_scalar()) fail_at(mark, "a map key must be a scalar (the alias names a " +
                                               std::string(copy.kind_name()) + ")");
      set_key(copy.text(), false, mark);
      return;
    }
    set_loc_recursive(copy, mark);  // the alias is written here
    finish(std::move(copy), YAML::NullAnchor, a.height, 0);
  }

  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                const std::string& value) override {
    count(mark, 1);
    bool quoted = tag != "?";
    bool make_null = false;
    if (tag != "?" && tag != "!") {
      if (tag.rfind(kYamlTagPrefix, 0) != 0) fail_at(mark, str_cat("unsupported tag '", tag, "'"));
      const std::string t = tag.substr(std::char_traits<char>::length(kYamlTagPrefix));
      ConfigNode probe = ConfigNode::make_scalar(value, false);
      if (t == "str") {
        quoted = true;
      } else if (t == "int" || t == "float" || t == "bool" || t == "null") {
        quoted = false;
        bool ok = t == "int" ? probe.as_int().has_value()
                : t == "float" ? probe.as_double().has_value()
                : t == "bool" ? probe.as_bool().has_value()
                : is_null_text(value);
        if (!ok) fail_at(mark, str_cat("'", quote_for_message(value), "' is not a valid !!", t));
        make_null = t == "null";
      } else {
        fail_at(mark, str_cat("unsupported tag '!!", t, "' on a scalar"));
      }
    }
    if (at_key_position()) {
      if (make_null) fail_at(mark, "a map key is empty or null");
      set_key(value, quoted, mark);
      if (anchor != YAML::NullAnchor) store_anchor(anchor, ConfigNode::make_scalar(value, quoted, loc(mark)), 1, 0);
      return;
    }
    ConfigNode n = make_null ? ConfigNode::make_null(loc(mark)) : ConfigNode::make_scalar(value, quoted, loc(mark));
    finish(std::move(n), anchor, 0, 1);
  }

  void OnSequenceStart(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                       YamlStyle style) override {
    start(mark, tag, anchor, style, ConfigNode::Kind::list);
  }
  void OnSequenceEnd() override { end(); }

  void OnMapStart(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                  YamlStyle style) override {
    start(mark, tag, anchor, style, ConfigNode::Kind::map);
  }
  void OnMapEnd() override { end(); }

 private:
  struct Anchored {
    ConfigNode node;
    std::size_t nodes;  // nodes in the subtree, aliases expanded
    int height;         // 0 for a scalar, 1 + children's for a collection
  };
  struct Frame {
    ConfigNode node;
    YAML::Mark mark;
    YAML::anchor_t anchor = YAML::NullAnchor;
    std::size_t nodes_at_start = 0;
    int child_height = 0;
    // maps
    bool have_key = false;
    std::string key;
    bool key_quoted = false;
    SourceLoc key_loc;
    YAML::Mark key_mark;
    std::unordered_map<std::string, SourceLoc> seen;
    // "<<" merge key: the value and where its entries go
    bool has_merge = false;
    ConfigNode merge;
    std::size_t merge_pos = 0;
    YAML::Mark merge_mark;
  };

  bool at_key_position() const {
    return !frames_.empty() && frames_.back().node.is_map() && !frames_.back().have_key;
  }

  void count(const YAML::Mark& mark, std::size_t n) {
    nodes_ += n;
    if (nodes_ > opt_.limits.max_nodes)
      fail_at(mark, str_cat("the config has more than ", opt_.limits.max_nodes,
                            " nodes (aliases count each time they are used)"));
  }

  void set_loc_recursive(ConfigNode& n, const YAML::Mark& mark) {
    // An expanded alias reports the alias's location for every node it produced.
    n.set_loc(loc(mark));
    if (n.is_list()) {
      for (auto& c : ConfigNodeAccess::items(n)) set_loc_recursive(c, mark);
    } else if (n.is_map()) {
      for (auto& e : ConfigNodeAccess::entries(n)) {
        e.key_loc = loc(mark);
        set_loc_recursive(e.value, mark);
      }
    }
  }

  void set_key(const std::string& key, bool quoted, const YAML::Mark& mark) {
    Frame& f = frames_.back();
    f.have_key = true;
    f.key = key;
    f.key_quoted = quoted;
    f.key_loc = loc(mark);
    f.key_mark = mark;
    auto [it, inserted] = f.seen.emplace(key, f.key_loc);
    if (!inserted) {
      const SourceLoc& first = it->second;
      fail_at(mark, str_cat("duplicate key '", quote_for_message(key), "'",
                            first.line > 0 ? str_cat(" (first defined at line ", first.line, ", column ",
                                                     first.col, ")")
                                           : ""));
    }
  }

  void store_anchor(YAML::anchor_t anchor, const ConfigNode& n, std::size_t nodes, int height) {
    // Anchored copies are memory too: nested anchors could otherwise store the tree many times over.
    anchor_nodes_ += nodes;
    if (anchor_nodes_ > opt_.limits.max_nodes)
      fail_at(YAML::Mark::null_mark(), str_cat("anchored nodes exceed the budget of ", opt_.limits.max_nodes));
    anchors_[anchor] = std::make_shared<Anchored>(Anchored{n, nodes, height});
  }

  void start(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor, YamlStyle style,
             ConfigNode::Kind kind) {
    count(mark, 1);
    if (at_key_position()) fail_at(mark, "a map key must be a scalar, not a list or map");
    if (tag != "?" && tag != "!") {
      const std::string want = str_cat(kYamlTagPrefix, kind == ConfigNode::Kind::map ? "map" : "seq");
      if (tag != want) fail_at(mark, str_cat("unsupported tag '", tag, "'"));
    }
    if (int(frames_.size()) + 1 > opt_.limits.max_depth)
      fail_at(mark, str_cat("nesting deeper than ", opt_.limits.max_depth, " levels"));
    if (frames_.empty() && style == YamlStyle::Block) root_block_ = true;
    Frame f;
    f.node = kind == ConfigNode::Kind::map ? ConfigNode::make_map(loc(mark)) : ConfigNode::make_list(loc(mark));
    f.mark = mark;
    f.anchor = anchor;
    f.nodes_at_start = nodes_ - 1;
    frames_.push_back(std::move(f));
  }

  void end() {
    Frame f = std::move(frames_.back());
    frames_.pop_back();
    if (f.has_merge) apply_merge(f);
    finish(std::move(f.node), f.anchor, f.child_height + 1, nodes_ - f.nodes_at_start);
  }

  // "<<: *base" or "<<: [*a, *b]": keys of the merged maps that the map does not set itself are added
  // where the "<<" key was written; earlier maps in a list win over later ones (YAML merge key spec).
  void apply_merge(Frame& f) {
    std::vector<const ConfigNode*> sources;
    if (f.merge.is_map()) {
      sources.push_back(&f.merge);
    } else if (f.merge.is_list()) {
      for (const auto& m : ConfigNodeAccess::items(f.merge)) {
        if (!m.is_map()) fail_at(f.merge_mark, "a '<<' merge list must hold only maps");
        sources.push_back(&m);
      }
    } else {
      fail_at(f.merge_mark, "the value of a '<<' merge key must be a map or a list of maps");
    }
    std::vector<ConfigMapEntry> add;
    for (const ConfigNode* src : sources) {
      for (const auto& e : ConfigNodeAccess::entries(const_cast<ConfigNode&>(*src))) {
        if (f.seen.count(e.key)) continue;
        f.seen.emplace(e.key, e.key_loc);
        add.push_back(e);
      }
    }
    auto& entries = ConfigNodeAccess::entries(f.node);
    entries.insert(entries.begin() + std::ptrdiff_t(f.merge_pos), std::make_move_iterator(add.begin()),
                   std::make_move_iterator(add.end()));
  }

  // A finished value node (scalar, null, collection or expanded alias).
  void finish(ConfigNode n, YAML::anchor_t anchor, int height, std::size_t nodes) {
    if (anchor != YAML::NullAnchor) store_anchor(anchor, n, std::max<std::size_t>(nodes, 1), height);
    if (frames_.empty()) {
      root_ = std::move(n);
      done_ = true;
      return;
    }
    Frame& p = frames_.back();
    p.child_height = std::max(p.child_height, height);
    if (p.node.is_list()) {
      ConfigNodeAccess::items(p.node).push_back(std::move(n));
      return;
    }
    p.have_key = false;
    if (p.key == "<<" && !p.key_quoted) {
      p.has_merge = true;
      p.merge = std::move(n);
      p.merge_pos = ConfigNodeAccess::entries(p.node).size();
      p.merge_mark = p.key_mark;
      return;
    }
    ConfigNodeAccess::entries(p.node).push_back(ConfigMapEntry{std::move(p.key), p.key_loc, std::move(n)});
  }

  const YamlOptions& opt_;
  ConfigNode root_;
  bool done_ = false;
  bool root_block_ = false;
  std::vector<Frame> frames_;
  std::size_t nodes_ = 0, anchor_nodes_ = 0;
  std::unordered_map<YAML::anchor_t, std::shared_ptr<Anchored>> anchors_;
};

// Refuses a second document in the stream.
class SecondDocument : public YAML::EventHandler {
 public:
  explicit SecondDocument(const YamlBuilder& b) : b_(b) {}
  void OnDocumentStart(const YAML::Mark& m) override {
    b_.fail_at(m, "a config holds one YAML document; found a second ('---')");
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YamlStyle) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YamlStyle) override {}
  void OnMapEnd() override {}

 private:
  const YamlBuilder& b_;
};

ConfigNode parse_yaml(const std::string& text, const YamlOptions& opt, bool* root_block = nullptr) {
  YamlBuilder builder(opt);
  std::istringstream in(text);
  try {
    YAML::Parser parser(in);
    if (!parser.HandleNextDocument(builder)) return ConfigNode::make_null(builder.loc(YAML::Mark::null_mark()));
    SecondDocument second(builder);
    parser.HandleNextDocument(second);
  } catch (const YAML::Exception& e) {
    std::string msg = e.msg.empty() ? std::string(e.what()) : e.msg;
    builder.fail_at(e.mark, "YAML syntax error: " + msg);
  }
  if (root_block) *root_block = builder.root_is_block_collection();
  return builder.take_root();
}

// ======================================================================================================
// JSON through nlohmann SAX + a position scanner
// ======================================================================================================

struct TextPos {
  int line, col;
};

// 1-based line and column of a byte offset; columns count bytes, as yaml-cpp's marks do.
TextPos pos_of(const std::string& text, std::size_t offset) {
  int line = 1, col = 1;
  for (std::size_t i = 0; i < offset && i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return {line, col};
}

// Positions of JSON tokens that start a SAX event (values, keys, '{', '['), in order; closers and
// punctuation are skipped. Also enforces the depth limit with an exact location. Safe on invalid input.
struct JsonToken {
  int line, col;
  std::size_t begin, end;  // byte range (literals and numbers: their exact text)
};

std::vector<JsonToken> scan_json(const std::string& text, const std::string& file, int max_depth) {
  std::vector<JsonToken> toks;
  int line = 1, col = 1, depth = 0;
  std::size_t i = 0;
  const std::size_t n = text.size();
  auto advance = [&](std::size_t to) {
    for (; i < to && i < n; ++i) {
      unsigned char c = static_cast<unsigned char>(text[i]);
      if (c == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
  };
  while (i < n) {
    char c = text[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ':' || c == ',') {
      advance(i + 1);
    } else if (c == '{' || c == '[') {
      if (++depth > max_depth)
        fail(SourceLoc{file, line, col}, str_cat("nesting deeper than ", max_depth, " levels"));
      toks.push_back({line, col, i, i + 1});
      advance(i + 1);
    } else if (c == '}' || c == ']') {
      --depth;
      advance(i + 1);
    } else if (c == '"') {
      std::size_t j = i + 1;
      while (j < n && text[j] != '"') j += (text[j] == '\\') ? 2 : 1;
      toks.push_back({line, col, i, std::min(j + 1, n)});
      advance(j + 1);
    } else {
      std::size_t j = i;
      while (j < n && !std::strchr(" \t\r\n,:[]{}\"", text[j])) ++j;
      if (j == i) j = i + 1;
      toks.push_back({line, col, i, j});
      advance(j);
    }
  }
  return toks;
}

using json = nlohmann::json;

class JsonBuilder : public nlohmann::json_sax<json> {
 public:
  JsonBuilder(const std::string& text, const std::string& file, const ConfigLimits& limits,
              std::vector<JsonToken> toks)
      : text_(text), file_(file), limits_(limits), toks_(std::move(toks)) {}

  ConfigNode take_root() { return std::move(root_); }

  bool null() override { return value(ConfigNode::make_null(next_loc())); }
  bool boolean(bool v) override { return value(ConfigNode::make_scalar(v ? "true" : "false", false, next_loc())); }
  bool number_integer(number_integer_t v) override { return number(str_cat(v)); }
  bool number_unsigned(number_unsigned_t v) override { return number(str_cat(v)); }
  bool number_float(number_float_t, const string_t& s) override { return number(s); }
  bool string(string_t& s) override { return value(ConfigNode::make_scalar(s, true, next_loc())); }
  bool binary(binary_t&) override { return value(ConfigNode::make_null(next_loc())); }  // not in JSON text

  bool start_object(std::size_t) override { return start(ConfigNode::make_map(next_loc())); }
  bool start_array(std::size_t) override { return start(ConfigNode::make_list(next_loc())); }
  bool end_object() override { return end(); }
  bool end_array() override { return end(); }

  bool key(string_t& k) override {
    SourceLoc kl = next_loc();
    count(kl);
    Frame& f = frames_.back();
    auto [it, inserted] = f.seen.emplace(k, kl);
    if (!inserted)
      fail(kl, str_cat("duplicate key '", quote_for_message(k), "' (first defined at line ", it->second.line,
                       ", column ", it->second.col, ")"));
    f.key = k;
    f.key_loc = kl;
    return true;
  }

  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) override {
    // nlohmann's position counts the bytes read; the offending one is the last.
    TextPos p = pos_of(text_, position > 0 ? position - 1 : 0);
    std::string what = ex.what();
    std::size_t c = what.find("column ");
    std::size_t colon = c == std::string::npos ? std::string::npos : what.find(": ", c);
    if (colon != std::string::npos) {
      what = what.substr(colon + 2);
    } else if (what.rfind("[json.exception", 0) == 0 && what.find("] ") != std::string::npos) {
      what = what.substr(what.find("] ") + 2);
    }
    fail(SourceLoc{file_, p.line, p.col}, "JSON syntax error: " + what);
  }

 private:
  struct Frame {
    ConfigNode node;
    std::string key;
    SourceLoc key_loc;
    std::unordered_map<std::string, SourceLoc> seen;
  };

  SourceLoc next_loc() {
    if (tok_ < toks_.size()) {
      const JsonToken& t = toks_[tok_++];
      last_tok_ = &t;
      return SourceLoc{file_, t.line, t.col};
    }
    last_tok_ = nullptr;
    return SourceLoc{file_, 0, 0};
  }

  void count(const SourceLoc& l) {
    if (++nodes_ > limits_.max_nodes) fail(l, str_cat("the config has more than ", limits_.max_nodes, " nodes"));
  }

  bool number(const std::string& fallback) {
    SourceLoc l = next_loc();
    std::string t = last_tok_ ? text_.substr(last_tok_->begin, last_tok_->end - last_tok_->begin) : fallback;
    return value(ConfigNode::make_scalar(t, false, std::move(l)));
  }

  bool value(ConfigNode n) {
    count(n.loc());
    add(std::move(n));
    return true;
  }

  bool start(ConfigNode n) {
    count(n.loc());
    if (int(frames_.size()) + 1 > limits_.max_depth)
      fail(n.loc(), str_cat("nesting deeper than ", limits_.max_depth, " levels"));
    frames_.push_back(Frame{std::move(n), {}, {}, {}});
    return true;
  }

  bool end() {
    ConfigNode n = std::move(frames_.back().node);
    frames_.pop_back();
    add(std::move(n));
    return true;
  }

  void add(ConfigNode n) {
    if (frames_.empty()) {
      root_ = std::move(n);
      return;
    }
    Frame& f = frames_.back();
    if (f.node.is_list()) {
      ConfigNodeAccess::items(f.node).push_back(std::move(n));
    } else {
      ConfigNodeAccess::entries(f.node).push_back(ConfigMapEntry{std::move(f.key), f.key_loc, std::move(n)});
    }
  }

  const std::string& text_;
  const std::string& file_;
  const ConfigLimits& limits_;
  std::vector<JsonToken> toks_;
  std::size_t tok_ = 0;
  const JsonToken* last_tok_ = nullptr;
  std::vector<Frame> frames_;
  std::size_t nodes_ = 0;
  ConfigNode root_;
};

ConfigNode parse_json(const std::string& text, const std::string& file, const ConfigLimits& limits) {
  JsonBuilder sax(text, file, limits, scan_json(text, file, limits.max_depth));
  json::sax_parse(text, &sax, nlohmann::detail::input_format_t::json, /*strict=*/true);
  return sax.take_root();
}

std::string strip_bom(const std::string& text) {
  if (text.size() >= 3 && static_cast<unsigned char>(text[0]) == 0xEF &&
      static_cast<unsigned char>(text[1]) == 0xBB && static_cast<unsigned char>(text[2]) == 0xBF)
    return text.substr(3);
  return text;
}

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

ConfigNode parse_config_string(const std::string& text, const std::string& format, const std::string& name,
                               const ConfigLimits& limits) {
  if (text.size() > limits.max_file_bytes)
    fail(SourceLoc{name}, str_cat("config is ", text.size(), " bytes; the limit is ", limits.max_file_bytes));
  const std::string body = strip_bom(text);
  const std::string fmt = lower(format);
  if (fmt == "yaml" || fmt == "yml") {
    YamlOptions opt;
    opt.file = name;
    opt.limits = limits;
    return parse_yaml(body, opt);
  }
  if (fmt == "json") return parse_json(body, name, limits);
  throw Error("config", str_cat("unknown config format '", format, "' (expected yaml or json)"));
}

ConfigNode load_config_file(const std::string& path, const ConfigLimits& limits) {
  const std::string ext = lower(fs::path(path).extension().string());
  std::string format;
  if (ext == ".yaml" || ext == ".yml") format = "yaml";
  else if (ext == ".json") format = "json";
  else
    fail(SourceLoc{path}, str_cat("unsupported config file extension '", ext,
                                  "' (expected .yaml, .yml or .json)"));
  std::error_code ec;
  auto st = fs::status(path, ec);
  if (ec || !fs::exists(st)) fail(SourceLoc{path}, "cannot open the config file: no such file");
  if (fs::is_directory(st)) fail(SourceLoc{path}, "cannot open the config file: it is a directory");
  if (fs::is_regular_file(st)) {
    auto size = fs::file_size(path, ec);
    if (!ec && size > limits.max_file_bytes)
      fail(SourceLoc{path}, str_cat("config file is ", size, " bytes; the limit is ", limits.max_file_bytes));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(SourceLoc{path}, "cannot open the config file");
  // Read at most one byte past the cap (the size check above does not cover pipes and devices).
  std::string text;
  char buf[65536];
  while (in && text.size() <= limits.max_file_bytes) {
    in.read(buf, sizeof buf);
    text.append(buf, std::size_t(in.gcount()));
  }
  if (in.bad()) fail(SourceLoc{path}, "error while reading the config file");
  if (text.size() > limits.max_file_bytes)
    fail(SourceLoc{path}, str_cat("config file is larger than the limit of ", limits.max_file_bytes, " bytes"));
  return parse_config_string(text, format, path, limits);
}

// ======================================================================================================
// Overrides
// ======================================================================================================

namespace {

void relocate(ConfigNode& n, const SourceLoc& l) {
  n.set_loc(l);
  if (n.is_list()) {
    for (auto& c : ConfigNodeAccess::items(n)) relocate(c, l);
  } else if (n.is_map()) {
    for (auto& e : ConfigNodeAccess::entries(n)) {
      e.key_loc = l;
      relocate(e.value, l);
    }
  }
}

[[noreturn]] void override_fail(const std::string& origin, const std::string& assignment, const std::string& msg,
                                const std::string& path = {}) {
  throw Error("config", str_cat(origin, " '", quote_for_message(assignment), "': ", msg), path);
}

}  // namespace

void apply_override(ConfigNode& root, const std::string& assignment, const std::string& origin) {
  auto bad = [&](const std::string& msg, const std::string& path = {}) { override_fail(origin, assignment, msg, path); };
  const auto eq = assignment.find('=');
  if (eq == std::string::npos) bad("expected key.path=value");
  std::string lhs = assignment.substr(0, eq);
  while (!lhs.empty() && std::isspace(static_cast<unsigned char>(lhs.back()))) lhs.pop_back();
  while (!lhs.empty() && std::isspace(static_cast<unsigned char>(lhs.front()))) lhs.erase(lhs.begin());
  if (lhs.empty()) bad("empty key path");
  bool ok = false;
  const auto parts = split_path(lhs, &ok);
  if (!ok) bad(str_cat("malformed key path '", lhs, "'"));

  const SourceLoc where{origin, 0, 0};
  YamlOptions opt;
  opt.file = origin;
  opt.override_mode = true;
  opt.assignment = quote_for_message(assignment);
  opt.column_offset = int(eq + 1);
  const std::string value_text = assignment.substr(eq + 1);
  if (value_text.size() > opt.limits.max_file_bytes) bad("value too long");
  bool root_block = false;
  ConfigNode value = parse_yaml(value_text, opt, &root_block);
  if (root_block)
    bad("the value is a YAML block collection; write lists and maps in flow style ([1, 2], {a: 1}) "
        "or quote a string that contains ': ' or starts with '- '");
  relocate(value, where);

  ConfigNode* node = &root;
  std::string path;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const PathPart& p = parts[i];
    const bool last = i + 1 == parts.size();
    if (node->is_null()) *node = ConfigNode::make_map(node->loc().file.empty() ? where : node->loc());
    if (node->is_list()) {
      auto idx = parse_index(p.text);
      if (!idx)
        bad(str_cat("'", path.empty() ? "<root>" : path, "' is a list; '", p.text, "' is not an index"), path);
      if (*idx >= node->size())
        bad(str_cat("index ", *idx, " is past the end of '", path, "' (", node->size(), " items)"),
            path_join(path, *idx));
      path = path_join(path, *idx);
      ConfigNode& child = ConfigNodeAccess::items(*node)[*idx];
      if (last) {
        child = std::move(value);
        return;
      }
      node = &child;
    } else if (node->is_map()) {
      if (p.bracketed)
        bad(str_cat("'", path.empty() ? "<root>" : path, "' is a map; use a key, not [", p.text, "]"), path);
      path = path_join(path, p.text);
      ConfigNode* child = node->find(p.text);
      if (!child) {
        ConfigNodeAccess::entries(*node).push_back(ConfigMapEntry{p.text, where, ConfigNode::make_null(where)});
        child = &ConfigNodeAccess::entries(*node).back().value;
      }
      if (last) {
        *child = std::move(value);
        return;
      }
      node = child;
    } else {
      bad(str_cat("'", path.empty() ? "<root>" : path, "' is a scalar, so it has no '", p.text, "'"), path);
    }
  }
}

// ======================================================================================================
// Writers
// ======================================================================================================

namespace {

bool has_unicode_break(const std::string& s) {
  // NEL (U+0085), LS (U+2028), PS (U+2029) and BOM (U+FEFF) may be read as breaks or dropped.
  for (std::size_t i = 0; i + 1 < s.size(); ++i) {
    unsigned char a = static_cast<unsigned char>(s[i]), b = static_cast<unsigned char>(s[i + 1]);
    if (a == 0xC2 && b == 0x85) return true;
    if (i + 2 < s.size()) {
      unsigned char c = static_cast<unsigned char>(s[i + 2]);
      if (a == 0xE2 && b == 0x80 && (c == 0xA8 || c == 0xA9)) return true;
      if (a == 0xEF && b == 0xBB && c == 0xBF) return true;
    }
  }
  return false;
}

// Whether s, written plain as a block-context value or key, reads back as the same plain scalar.
bool plain_ok(const std::string& s) {
  if (s.empty()) return false;
  const unsigned char first = static_cast<unsigned char>(s[0]);
  if (first == ' ' || first == '\t' || s.back() == ' ' || s.back() == '\t') return false;
  for (unsigned char c : s)
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;  // a tab inside a plain scalar is fine
  if (std::strchr(",[]{}#&*!|>'\"%@`", first)) return false;
  if ((first == '-' || first == '?' || first == ':') && (s.size() == 1 || s[1] == ' ' || s[1] == '\t')) return false;
  if (s.rfind("---", 0) == 0 || s.rfind("...", 0) == 0) return false;
  for (const char* bad : {": ", ":\t", " #", "\t#"})
    if (s.find(bad) != std::string::npos) return false;
  if (s.back() == ':') return false;
  if (has_unicode_break(s)) return false;
  return true;
}

std::string double_quoted(const std::string& s) {
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      case '\0': out += "\\0"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          static const char* hex = "0123456789ABCDEF";
          out += "\\x";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else if (c == 0xC2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) == 0x85) {
          out += "\\u0085";
          i += 1;
        } else if (c == 0xE2 && i + 2 < s.size() && static_cast<unsigned char>(s[i + 1]) == 0x80 &&
                   (static_cast<unsigned char>(s[i + 2]) == 0xA8 ||
                    static_cast<unsigned char>(s[i + 2]) == 0xA9)) {
          out += static_cast<unsigned char>(s[i + 2]) == 0xA8 ? "\\u2028" : "\\u2029";
          i += 2;
        } else if (c == 0xEF && i + 2 < s.size() && static_cast<unsigned char>(s[i + 1]) == 0xBB &&
                   static_cast<unsigned char>(s[i + 2]) == 0xBF) {
          out += "\\uFEFF";
          i += 2;
        } else {
          out += char(c);
        }
    }
  }
  return out + "\"";
}

std::string yaml_key(const std::string& k) {
  // A plain "<<" would be a merge key and a null-like one a null key when read back.
  if (!plain_ok(k) || k == "<<" || is_null_text(k)) return double_quoted(k);
  return k;
}

// The one-line form of a node that has one (null, scalar, empty collection); "" otherwise.
bool inline_form(const ConfigNode& n, std::string* out) {
  switch (n.kind()) {
    case ConfigNode::Kind::null: *out = "null"; return true;
    case ConfigNode::Kind::scalar:
      *out = (!n.quoted() && plain_ok(n.text())) ? n.text() : double_quoted(n.text());
      return true;
    case ConfigNode::Kind::list:
      if (n.size() == 0) { *out = "[]"; return true; }
      return false;
    case ConfigNode::Kind::map:
      if (n.size() == 0) { *out = "{}"; return true; }
      return false;
  }
  return false;
}

// Writes a non-empty collection at `indent`; when inline_start, the first line's indentation (a "- ")
// has already been written.
void emit_block(std::string& out, const ConfigNode& n, int indent, bool inline_start) {
  const std::string pad(std::size_t(indent), ' ');
  std::string one;
  if (n.is_map()) {
    bool first = true;
    for (const auto& e : n.entries()) {
      if (!(first && inline_start)) out += pad;
      first = false;
      out += yaml_key(e.key);
      out += ':';
      if (inline_form(e.value, &one)) {
        out += ' ' + one + '\n';
      } else {
        out += '\n';
        emit_block(out, e.value, indent + 2, false);
      }
    }
  } else {
    bool first = true;
    for (const auto& item : n.items()) {
      if (!(first && inline_start)) out += pad;
      first = false;
      out += '-';
      if (inline_form(item, &one)) {
        out += ' ' + one + '\n';
      } else {
        out += ' ';
        emit_block(out, item, indent + 2, true);
      }
    }
  }
}

}  // namespace

std::string to_yaml(const ConfigNode& node) {
  std::string out, one;
  if (inline_form(node, &one)) return one + '\n';
  emit_block(out, node, 0, false);
  return out;
}

nlohmann::json to_json(const ConfigNode& n) {
  switch (n.kind()) {
    case ConfigNode::Kind::null: return nullptr;
    case ConfigNode::Kind::scalar: {
      const std::string& t = n.text();
      if (n.quoted()) return t;
      if (is_null_text(t)) return nullptr;
      if (auto b = core_bool(t)) return *b;
      bool overflow = false;
      if (auto i = core_int(t, &overflow)) return *i;
      if (overflow) {
        std::uint64_t u = 0;
        if (t[0] != '-' && !(t.size() > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'o'))) {
          const char* b = t.data() + (t[0] == '+' ? 1 : 0);
          auto r = std::from_chars(b, t.data() + t.size(), u);
          if (r.ec == std::errc() && r.ptr == t.data() + t.size()) return u;
        }
        return *n.as_double();
      }
      if (auto d = core_float(t)) return *d;
      return t;
    }
    case ConfigNode::Kind::list: {
      json a = json::array();
      for (const auto& c : n.items()) a.push_back(to_json(c));
      return a;
    }
    case ConfigNode::Kind::map: {
      json o = json::object();
      for (const auto& e : n.entries()) o[e.key] = to_json(e.value);
      return o;
    }
  }
  return nullptr;
}

// ======================================================================================================
// did you mean, paths
// ======================================================================================================

namespace {

// Edit distance with adjacent transpositions counting as one edit (optimal string alignment), so the
// commonest typo, two swapped letters ("setps", "trian"), is one edit away, as in Python's argparse-style
// suggesters and git's "did you mean".
std::size_t levenshtein(const std::string& a, const std::string& b) {
  std::vector<std::size_t> prev2(b.size() + 1), prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) cur[j] = std::min(cur[j], prev2[j - 2] + 1);
    }
    std::swap(prev2, prev);
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

std::string did_you_mean(const std::string& key, const std::vector<std::string>& candidates) {
  const std::size_t limit = std::max<std::size_t>(1, key.size() / 3);
  const std::string lk = lower(key);
  const std::string* best = nullptr;
  std::size_t best_d = std::numeric_limits<std::size_t>::max(), best_raw = best_d;
  for (const auto& c : candidates) {
    const std::size_t len_diff = c.size() > key.size() ? c.size() - key.size() : key.size() - c.size();
    if (len_diff > limit) continue;  // cannot be within the limit; also keeps hostile keys cheap
    const std::size_t d = levenshtein(lk, lower(c));
    if (d > limit) continue;
    const std::size_t raw = levenshtein(key, c);
    if (d < best_d || (d == best_d && raw < best_raw)) {
      best = &c;
      best_d = d;
      best_raw = raw;
    }
  }
  return best ? "did you mean '" + *best + "'?" : std::string();
}

std::string resolve_path(const ConfigNode& node_with_value, const std::string& value, const std::string& cwd) {
  if (value.empty()) return value;
  const fs::path v(value);
  if (v.is_absolute()) return v.lexically_normal().string();
  fs::path base = cwd.empty() ? fs::current_path() : fs::path(cwd);
  const SourceLoc& loc = node_with_value.loc();
  if (!loc.file.empty() && !loc.from_command_line() && loc.file[0] != '<') {
    const fs::path dir = fs::path(loc.file).parent_path();
    base = dir.is_absolute() ? dir : base / dir;
  }
  return (base / v).lexically_normal().string();
}

}  // namespace xfr
