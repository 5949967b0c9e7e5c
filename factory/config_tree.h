// The config tree: what a YAML or JSON config file (plus --set overrides) becomes before the schema
// gives it types. Every node remembers where it was written (file:line:col) so that a later error can
// point there; scalars keep their text and whether they were quoted, so `yes`, `1` and `"1"` stay
// distinguishable until the schema decides what a parameter accepts.
//
// Loading refuses hostile input cleanly (xfr::Error, op "config", naming file:line:col where known):
// files over a size cap, nesting deeper than a limit, duplicate keys, and YAML alias bombs (aliases are
// expanded while converting and every expansion counts against a node budget, so a billion-laughs
// document stops after max_nodes nodes, not after 10^9).
//
// This header uses only standard types (and nlohmann's forward declarations); yaml-cpp stays private.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace xfr {

// Where a node was written. line/col are 1-based; 0 means unknown. Nodes set with --set carry
// file == "--set" (the origin given to apply_override) and line = col = 0.
struct SourceLoc {
  std::string file;
  int line = 0, col = 0;

  // True for nodes that came from the command line (an origin starting with "--", such as "--set").
  bool from_command_line() const { return file.rfind("--", 0) == 0; }
};

// "file:line:col", "file:line", "file", or "" when nothing is known.
std::string to_string(const SourceLoc& loc);

// Limits that make loading safe on untrusted input.
struct ConfigLimits {
  std::size_t max_file_bytes = std::size_t(1) << 20;  // text larger than this is refused unread
  int max_depth = 64;                                 // nested lists/maps; the root collection is depth 1
  std::size_t max_nodes = 100000;                     // every node created; YAML aliases count each use
};

struct ConfigMapEntry;

class ConfigNode {
 public:
  enum class Kind { null, scalar, list, map };

  ConfigNode() = default;  // a null node with an unknown location
  static ConfigNode make_null(SourceLoc loc = {});
  static ConfigNode make_scalar(std::string text, bool quoted = false, SourceLoc loc = {});
  static ConfigNode make_list(SourceLoc loc = {});
  static ConfigNode make_map(SourceLoc loc = {});

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::null; }
  bool is_scalar() const { return kind_ == Kind::scalar; }
  bool is_list() const { return kind_ == Kind::list; }
  bool is_map() const { return kind_ == Kind::map; }
  const char* kind_name() const;  // "null", "scalar", "list", "map"

  const SourceLoc& loc() const { return loc_; }
  void set_loc(SourceLoc loc) { loc_ = std::move(loc); }

  // ---- scalars (throw xfr::Error on another kind) ----
  const std::string& text() const;
  bool quoted() const;  // written quoted ('..', "..", block scalars |, >, or tagged !!str) or a JSON string

  // Typed views of a *plain* scalar under the YAML 1.2 core schema (true/True/TRUE, 0x1F, 0o17, 1e-3, .inf,
  // ~/null). A quoted scalar is a string: these return nullopt (and is_null_like false) for it; a schema
  // that wants to be lenient can read text() itself. "yes"/"on" are strings under the 1.2 core schema.
  std::optional<bool> as_bool() const;
  std::optional<std::int64_t> as_int() const;
  std::optional<double> as_double() const;  // also accepts integers
  bool is_null_like() const;                // a null node, or a plain scalar "", "~", "null", "Null", "NULL"

  // ---- lists and maps ----
  std::size_t size() const;  // items of a list, entries of a map, 0 otherwise

  // Lists (throw xfr::Error on another kind, or an index out of range).
  const std::vector<ConfigNode>& items() const;
  const ConfigNode& at(std::size_t index) const;
  ConfigNode& at(std::size_t index);
  ConfigNode& push_back(ConfigNode value);  // a null node becomes an empty list first
  ConfigNode& insert(std::size_t index, ConfigNode value);  // index <= size()
  ConfigNode& set(std::size_t index, ConfigNode value);     // replaces an item
  void erase(std::size_t index);

  // Maps, in the order the keys were written. Mutators turn a null node into an empty map first.
  const std::vector<ConfigMapEntry>& entries() const;
  std::vector<std::string> keys() const;
  bool contains(const std::string& key) const;
  const ConfigNode* find(const std::string& key) const;  // nullptr when absent (or not a map)
  ConfigNode* find(const std::string& key);
  const ConfigNode& at(const std::string& key) const;    // throws, with a "did you mean", when absent
  ConfigNode& at(const std::string& key);
  const SourceLoc* key_loc(const std::string& key) const;  // where the key itself was written
  // Inserts or replaces (a replaced key keeps its position and, unless key_loc is given, its location).
  ConfigNode& set(const std::string& key, ConfigNode value, std::optional<SourceLoc> key_loc = std::nullopt);
  // Appends a new key; throws when it is already present.
  ConfigNode& insert(const std::string& key, ConfigNode value, SourceLoc key_loc = {});
  bool erase(const std::string& key);  // false when absent

  // A node by path relative to this one: "a.b.0.c" or "a.b[0].c"; nullptr when absent.
  const ConfigNode* find_path(const std::string& path) const;

  // Same tree: kinds, scalar text and quoting, list items and map entries in order. Locations are ignored.
  bool operator==(const ConfigNode& other) const;
  bool operator!=(const ConfigNode& other) const { return !(*this == other); }

 private:
  friend struct ConfigNodeAccess;  // the loaders build trees directly (duplicate checks by hash)
  void require(Kind k, const char* what) const;
  void become_map_if_null();
  void become_list_if_null();

  Kind kind_ = Kind::null;
  bool quoted_ = false;
  std::string text_;
  SourceLoc loc_;
  std::vector<ConfigNode> items_;
  std::vector<ConfigMapEntry> entries_;
};

struct ConfigMapEntry {
  std::string key;
  SourceLoc key_loc;
  ConfigNode value;
};

// Config paths as errors show them: path_join("stack_configs", 1) == "stack_configs[1]",
// path_join("stack_configs[1]", "multi_head_config") == "stack_configs[1].multi_head_config".
// A key that is empty or holds '.', '[', ']', '"' or whitespace is written ["like this"].
std::string path_join(const std::string& base, const std::string& key);
std::string path_join(const std::string& base, std::size_t index);

// Loads a .yaml/.yml (yaml-cpp) or .json (nlohmann/json, strict) file; any other extension is an error.
// Duplicate keys, oversize files, deep nesting, node budgets and syntax errors throw xfr::Error naming
// file:line:col. A YAML file holds one document; `<<` merge keys are honoured; an empty file is a null node.
ConfigNode load_config_file(const std::string& path, const ConfigLimits& limits = {});

// The same from text; format is "yaml" or "json"; name is used as the file in locations and errors.
ConfigNode parse_config_string(const std::string& text, const std::string& format,
                               const std::string& name = "<string>", const ConfigLimits& limits = {});

// Applies one `--set a.b.c=value` assignment. Path parts are separated by '.'; a part that addresses a
// list is an index (`model.stack_configs.0.num_layers=2`, or `stack_configs[0]`). Missing map keys are
// created (the schema rejects unknown ones later); an index past a list's end is an error naming the path.
// The value is parsed as a YAML scalar or flow value (`x=[1, 2]`, `x={a: 1}`, `x="1"`; `x=` is null).
// The new nodes get SourceLoc{origin, 0, 0}; pass origin "--set" for command-line overrides.
void apply_override(ConfigNode& root, const std::string& assignment, const std::string& origin = "--set");

// Block-style YAML with the tree's key order; quoted scalars are written double-quoted and plain ones
// plain when YAML reads them back unchanged, so the output reloads to the same tree. (The exceptions are
// plain scalars that cannot be written plain on one line, such as multi-line plain text folded from
// blank lines or a root scalar starting with "---": they are written double-quoted, which reloads as a
// quoted scalar with the same text; the core schema gives both the same string value.)
std::string to_yaml(const ConfigNode& node);

// A JSON value; plain scalars typed with the YAML 1.2 core schema (null, bool, int, float, else string),
// quoted scalars always strings. (nlohmann::json objects sort their keys.)
nlohmann::json to_json(const ConfigNode& node);

// "did you mean 'x'?" for the candidate closest to key by edit distance (Levenshtein, with a swap of two
// adjacent letters counting as one edit; a case-only difference
// counts as closest), when that distance is <= max(1, key.size() / 3); otherwise "".
std::string did_you_mean(const std::string& key, const std::vector<std::string>& candidates);

// A path written in a config: absolute paths are kept; a relative one resolves against the folder of the
// file it was written in, or against cwd when it came from the command line (--set), from a string
// without a file name ("<...>"), or from nowhere known. cwd "" means the process's working directory.
std::string resolve_path(const ConfigNode& node_with_value, const std::string& value, const std::string& cwd);

}  // namespace xfr
