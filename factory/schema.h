// The config schema, declared once: every section and every component lists its parameters (name, type,
// default, range, one-line doc). The same declarations validate configs, fill in defaults, drive
// `xfrun components` and generate the config reference in the docs, so they cannot drift apart.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "factory/config_tree.h"

namespace xfr {

enum class FieldType : uint8_t {
  boolean,
  integer,
  number,
  string,
  choice,        // one of `choices`
  path,          // a file path; relative paths resolve against the config file's folder
  section,       // a map validated by `section`
  section_list,  // a list of maps, each validated by `section`
  component,     // a map {name: <registered in `family`>, ...that component's parameters}
  any,           // free-form (validated by whoever reads it)
};

struct Section;

struct Field {
  std::string name;
  FieldType type = FieldType::string;
  std::string doc;
  std::optional<std::string> default_value;  // YAML text of the default; nullopt: required unless `optional`
  bool optional = false;                     // may be absent with no default (null)
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_exclusive = false, max_exclusive = false;
  std::vector<std::string> choices;
  const Section* section = nullptr;  // section / section_list
  std::string family;                // component
  std::vector<std::string> aliases;  // legacy names accepted for this field (e.g. layer_norm_style)
  // Values this build accepts only at their default; anything else is refused, naming what brings it.
  std::string refused_unless_default;
};

struct Section {
  std::string name;
  std::string doc;
  std::vector<Field> fields;
  const Field* find(const std::string& name) const;
};

// One problem found in a config: where (config path and file:line:col) and what.
struct ConfigIssue {
  std::string path;  // stack_configs[1].multi_head_config.attention.name
  SourceLoc loc;
  std::string message;
  std::string str() const;  // "file:line:col: path: message"
};

// Resolves component names of a family into their parameter sections (the registry implements it).
using ComponentLookup = std::function<const Section*(const std::string& family, const std::string& name,
                                                     std::vector<std::string>* known)>;

// Validates `node` against `section`: unknown keys (with a "did you mean"), types, ranges, choices,
// required fields, aliases (renamed to the field's name), components. Appends every problem to `issues`
// (all of a file's problems are reported at once) and returns the node with every default filled in.
ConfigNode validate_section(const ConfigNode& node, const Section& section, const std::string& path,
                            const ComponentLookup& lookup, std::vector<ConfigIssue>& issues);

// Throws xfr::Error("config", every issue, one per line) when `issues` is not empty.
void throw_if_issues(const std::vector<ConfigIssue>& issues);

// Typed reads of a validated node (a missing or null optional field gives the fallback).
bool get_bool(const ConfigNode& section, const std::string& key);
int64_t get_int(const ConfigNode& section, const std::string& key);
double get_number(const ConfigNode& section, const std::string& key);
std::string get_string(const ConfigNode& section, const std::string& key);
bool has_value(const ConfigNode& section, const std::string& key);  // present and not null

// Markdown reference of a section (a table of its fields), for the docs and `xfrun components`.
std::string section_markdown(const Section& section);
std::string field_type_name(const Field& f);

}  // namespace xfr
