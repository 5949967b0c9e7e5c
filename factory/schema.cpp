#include "factory/schema.h"

#include <cmath>
#include <sstream>

#include "runtime/error.h"

namespace xfr {

const Field* Section::find(const std::string& name) const {
  for (const auto& f : fields)
    if (f.name == name) return &f;
  return nullptr;
}

std::string ConfigIssue::str() const {
  std::string where = to_string(loc);
  std::string s = where.empty() ? "" : where + ": ";
  if (!path.empty()) s += path + ": ";
  return s + message;
}

std::string field_type_name(const Field& f) {
  switch (f.type) {
    case FieldType::boolean: return "bool";
    case FieldType::integer: return "int";
    case FieldType::number: return "float";
    case FieldType::string: return "string";
    case FieldType::choice: {
      std::string s;
      for (const auto& c : f.choices) s += (s.empty() ? "" : " | ") + c;
      return s;
    }
    case FieldType::path: return "path";
    case FieldType::section: return "section";
    case FieldType::section_list: return "list of sections";
    case FieldType::component: return "component (" + f.family + ")";
    case FieldType::any: return "any";
  }
  return "?";
}

namespace {

std::string range_text(const Field& f) {
  const bool lo = std::isfinite(f.min), hi = std::isfinite(f.max);
  if (!lo && !hi) return "";
  std::ostringstream os;
  if (lo) os << (f.min_exclusive ? "(" : "[") << f.min;
  else os << "(-inf";
  os << ", ";
  if (hi) os << f.max << (f.max_exclusive ? ")" : "]");
  else os << "inf)";
  return os.str();
}

struct Validator {
  const ComponentLookup& lookup;
  std::vector<ConfigIssue>& issues;

  void issue(const std::string& path, const SourceLoc& loc, const std::string& msg) {
    issues.push_back(ConfigIssue{path, loc, msg});
  }

  // Parses a default's YAML text into a node.
  static ConfigNode default_node(const Field& f) {
    ConfigNode root = ConfigNode::make_map();
    apply_override(root, "v=" + *f.default_value, "<default>");
    return *root.find("v");
  }

  bool check_range(const Field& f, double v, const std::string& path, const SourceLoc& loc) {
    const bool below = f.min_exclusive ? !(v > f.min) : !(v >= f.min);
    const bool above = f.max_exclusive ? !(v < f.max) : !(v <= f.max);
    if (below || above || std::isnan(v)) {
      issue(path, loc, str_cat(v, " is outside ", range_text(f)));
      return false;
    }
    return true;
  }

  ConfigNode value(const Field& f, const ConfigNode& n, const std::string& path) {
    const SourceLoc& loc = n.loc();
    auto want = [&](const char* what) {
      issue(path, loc, str_cat("expected ", what, ", got ", n.is_scalar() ? "'" + n.text() + "'" : n.kind_name()));
      return n;
    };
    switch (f.type) {
      case FieldType::boolean:
        if (!n.is_scalar() || !n.as_bool()) return want("true or false");
        return n;
      case FieldType::integer: {
        if (!n.is_scalar() || !n.as_int()) return want("an integer");
        check_range(f, static_cast<double>(*n.as_int()), path, loc);
        return n;
      }
      case FieldType::number: {
        if (!n.is_scalar() || !n.as_double()) return want("a number");
        check_range(f, *n.as_double(), path, loc);
        return n;
      }
      case FieldType::string:
      case FieldType::path:
        if (!n.is_scalar()) return want("a string");
        return n;
      case FieldType::choice: {
        if (!n.is_scalar()) return want("a name");
        for (const auto& c : f.choices)
          if (c == n.text()) return n;
        std::string known;
        for (const auto& c : f.choices) known += (known.empty() ? "" : ", ") + c;
        const std::string hint = did_you_mean(n.text(), f.choices);
        issue(path, loc, "'" + n.text() + "' is not one of: " + known + (hint.empty() ? "" : "; " + hint));
        return n;
      }
      case FieldType::section:
        if (!n.is_map()) return want("a map");
        return section(n, *f.section, path);
      case FieldType::section_list: {
        if (!n.is_list()) return want("a list");
        ConfigNode out = ConfigNode::make_list(loc);
        for (size_t i = 0; i < n.size(); ++i) {
          const std::string p = path_join(path, i);
          if (!n.at(i).is_map()) {
            issue(p, n.at(i).loc(), str_cat("expected a map, got ", n.at(i).kind_name()));
            out.push_back(n.at(i));
          } else {
            out.push_back(section(n.at(i), *f.section, p));
          }
        }
        return out;
      }
      case FieldType::component: {
        if (!n.is_map()) return want("a map with a 'name'");
        const ConfigNode* name = n.find("name");
        if (!name || !name->is_scalar()) {
          issue(path, loc, "a " + f.family + " needs a 'name'");
          return n;
        }
        std::vector<std::string> known;
        const Section* params = lookup(f.family, name->text(), &known);
        if (!params) {
          std::string list;
          for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
          const std::string hint = did_you_mean(name->text(), known);
          issue(path_join(path, "name"), name->loc(),
                "unknown " + f.family + " '" + name->text() + "' (known: " + list + ")" + (hint.empty() ? "" : "; " + hint));
          return n;
        }
        ConfigNode rest = n;
        rest.erase("name");
        ConfigNode out = section(rest, *params, path);
        ConfigNode with_name = ConfigNode::make_map(loc);
        with_name.set("name", *name, *n.key_loc("name"));
        for (const auto& e : out.entries()) with_name.set(e.key, e.value, e.key_loc);
        return with_name;
      }
      case FieldType::any:
        return n;
    }
    return n;
  }

  ConfigNode section(const ConfigNode& node, const Section& s, const std::string& path) {
    ConfigNode out = ConfigNode::make_map(node.loc());
    std::vector<std::string> names;
    for (const auto& f : s.fields) {
      names.push_back(f.name);
      for (const auto& a : f.aliases) names.push_back(a);
    }
    // Unknown keys first, in the order written.
    for (const auto& e : node.entries()) {
      bool known = false;
      for (const auto& n : names) known |= n == e.key;
      if (!known) {
        std::vector<std::string> canonical;
        for (const auto& f : s.fields) canonical.push_back(f.name);
        const std::string hint = did_you_mean(e.key, canonical);
        issue(path_join(path, e.key), e.key_loc, "unknown key '" + e.key + "'" + (hint.empty() ? "" : "; " + hint));
      }
    }
    for (const auto& f : s.fields) {
      const ConfigNode* v = node.find(f.name);
      SourceLoc key_loc = v ? *node.key_loc(f.name) : SourceLoc{};
      for (const auto& a : f.aliases) {
        if (const ConfigNode* av = node.find(a)) {
          if (v) {
            issue(path_join(path, a), *node.key_loc(a), "'" + a + "' is an alias of '" + f.name + "', which is also set");
          } else {
            v = av;
            key_loc = *node.key_loc(a);
          }
        }
      }
      const std::string p = path_join(path, f.name);
      if (!v || v->is_null_like()) {
        if (f.default_value) {
          ConfigNode d = default_node(f);
          if (f.type == FieldType::section || f.type == FieldType::section_list || f.type == FieldType::component) {
            // An absent (or null) section takes the place of the map that lacks it, so that a problem
            // found inside it (a required key) points into the user's file, not at "<default>".
            d.set_loc(v ? v->loc() : node.loc());
            d = value(f, d, p);  // fill nested defaults
          }
          out.set(f.name, d, key_loc);
        } else if (!f.optional) {
          issue(p, v ? v->loc() : node.loc(), "required");
        } else {
          out.set(f.name, ConfigNode::make_null(v ? v->loc() : SourceLoc{}), key_loc);
        }
        continue;
      }
      ConfigNode checked = value(f, *v, p);
      const auto differs_from_default = [&] {
        const ConfigNode d = default_node(f);
        if (f.type == FieldType::boolean) return checked.as_bool() != d.as_bool();
        return checked.is_null_like() != d.is_null_like() || (checked.is_scalar() && checked.text() != d.text());
      };
      if (!f.refused_unless_default.empty() && f.default_value && differs_from_default()) {
        issue(p, v->loc(), "'" + f.name + ": " + (v->is_scalar() ? v->text() : std::string("...")) +
                               "' is not supported in this build (" +
                               f.refused_unless_default + ")");
      }
      out.set(f.name, checked, key_loc);
    }
    return out;
  }
};

const ConfigNode& required_field(const ConfigNode& section, const std::string& key) {
  const ConfigNode* n = section.find(key);
  if (!n || n->is_null_like()) throw Error("config", "missing value for '" + key + "'");
  return *n;
}

}  // namespace

ConfigNode validate_section(const ConfigNode& node, const Section& section, const std::string& path,
                            const ComponentLookup& lookup, std::vector<ConfigIssue>& issues) {
  Validator v{lookup, issues};
  if (node.is_null()) return v.section(ConfigNode::make_map(node.loc()), section, path);
  if (!node.is_map()) {
    issues.push_back(ConfigIssue{path, node.loc(), str_cat("expected a map, got ", node.kind_name())});
    return node;
  }
  return v.section(node, section, path);
}

void throw_if_issues(const std::vector<ConfigIssue>& issues) {
  if (issues.empty()) return;
  std::string msg = issues.size() == 1 ? "1 error:" : str_cat(issues.size(), " errors:");
  for (const auto& i : issues) msg += "\n  " + i.str();
  throw Error("config", msg);
}

bool get_bool(const ConfigNode& s, const std::string& key) { return *required_field(s, key).as_bool(); }
int64_t get_int(const ConfigNode& s, const std::string& key) { return *required_field(s, key).as_int(); }
double get_number(const ConfigNode& s, const std::string& key) { return *required_field(s, key).as_double(); }
std::string get_string(const ConfigNode& s, const std::string& key) { return required_field(s, key).text(); }
bool has_value(const ConfigNode& s, const std::string& key) {
  const ConfigNode* n = s.find(key);
  return n && !n->is_null_like();
}

std::string section_markdown(const Section& s) {
  std::ostringstream os;
  os << "| key | type | default | range | meaning |\n| --- | --- | --- | --- | --- |\n";
  for (const auto& f : s.fields) {
    std::string def = f.default_value ? "`" + *f.default_value + "`" : (f.optional ? "(none)" : "required");
    if (f.type == FieldType::section || f.type == FieldType::section_list) def = "see below";
    std::string doc = f.doc;
    if (!f.aliases.empty()) {
      doc += " (alias:";
      for (const auto& a : f.aliases) doc += " `" + a + "`";
      doc += ")";
    }
    if (!f.refused_unless_default.empty()) doc += " Only the default is supported yet: " + f.refused_unless_default + ".";
    os << "| `" << f.name << "` | " << field_type_name(f) << " | " << def << " | " << range_text(f) << " | " << doc
       << " |\n";
  }
  return os.str();
}

}  // namespace xfr
