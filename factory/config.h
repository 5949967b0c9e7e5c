// A whole xfrun config: loaded (YAML or JSON), overridden (--set), validated against the registry's
// schema with every error reported at once, defaults filled in, and cross-checked.
#pragma once
#include <string>
#include <vector>

#include "factory/config_tree.h"

namespace xfr {

struct Config {
  ConfigNode root;     // validated; every default filled in
  std::string source;  // the file it came from ("<embedded default>" for the built-in one)
};

// Throws xfr::Error("config", ...) listing every problem, each with its config path and file:line:col.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
Config parse_config(const std::string& text, const std::string& format, const std::string& name,
                    const std::vector<std::string>& overrides = {});
// Validates an already-loaded tree (overrides applied).
Config resolve_config(const ConfigNode& raw, const std::string& source);

// The embedded default: a small character-level GPT on the text the repository ships.
const std::string& default_config_text();
// The embedded default, validated; its relative paths resolve against the source tree's configs/.
Config load_default_config(const std::vector<std::string>& overrides = {});
// The file path the embedded default's data.path points at, resolved when the binary was built.
std::string default_data_path();
// "0.1.0"
const char* xfrun_version();

// The section's absolute path value, resolved as config paths are (relative to the config file's
// folder, or to the working directory for --set values).
std::string config_path_value(const ConfigNode& section, const std::string& key);

}  // namespace xfr
