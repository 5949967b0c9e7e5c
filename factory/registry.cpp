#include "factory/registry.h"

#include "runtime/error.h"

namespace xfr {

const Registry& Registry::builtin() {
  static const Registry registry = [] {
    Registry r;
    register_builtin(r);
    return r;
  }();
  return registry;
}

void Registry::add(ComponentEntry entry) {
  XF_CHECK(!find(entry.family, entry.name), "registry", entry.family, " '", entry.name, "' registered twice");
  entries_.push_back(std::move(entry));
}

const ComponentEntry* Registry::find(const std::string& family, const std::string& name) const {
  for (const auto& e : entries_)
    if (e.family == family && e.name == name) return &e;
  return nullptr;
}

std::vector<std::string> Registry::names(const std::string& family) const {
  std::vector<std::string> r;
  for (const auto& e : entries_)
    if (e.family == family) r.push_back(e.name);
  return r;
}

std::vector<std::string> Registry::families() const {
  std::vector<std::string> r;
  for (const auto& e : entries_) {
    bool seen = false;
    for (const auto& f : r) seen |= f == e.family;
    if (!seen) r.push_back(e.family);
  }
  return r;
}

ComponentLookup Registry::lookup() const {
  return [this](const std::string& family, const std::string& name, std::vector<std::string>* known) -> const Section* {
    if (const ComponentEntry* e = find(family, name)) return &e->params;
    if (known) *known = names(family);
    return nullptr;
  };
}

Section& Registry::new_section(const std::string& name) {
  auto& slot = sections_[name];
  XF_CHECK(slot == nullptr, "registry", "section '", name, "' declared twice");
  slot = std::make_unique<Section>();
  slot->name = name;
  return *slot;
}

std::vector<std::string> Registry::section_names() const {
  std::vector<std::string> r;
  for (const auto& [k, v] : sections_) r.push_back(k);
  return r;
}

std::string config_reference_markdown(const Registry& r) {
  std::string md =
      "# Config reference\n\nGenerated from the component registry (`xfrun config-reference`); "
      "tests/test_docs.cpp fails when this file and the registry disagree.\n\n"
      "A config has the sections `model`, `data`, `train`, `infer` and `runtime`. Keys are validated: "
      "unknown keys are errors with a \"did you mean\", each error names its config path and, for YAML, "
      "file:line:col. `--set a.b.c=value` overrides any key (`model.stack_configs.0.num_layers=2`).\n";
  for (const char* name : {"model", "block", "multi_head_config", "data", "train", "optimizer", "schedule", "infer", "runtime"}) {
    const Section& s = r.section(name);
    md += std::string("\n## `") + name + "`\n\n" + s.doc + "\n\n" + section_markdown(s);
  }
  md += "\n# Components\n";
  for (const auto& family : r.families()) {
    md += "\n## " + family + "\n";
    for (const auto& n : r.names(family)) {
      const ComponentEntry* e = r.find(family, n);
      md += "\n### `" + n + "`\n\n" + e->doc + "\n";
      if (!e->params.fields.empty()) md += "\n" + section_markdown(e->params);
    }
  }
  return md;
}

}  // namespace xfr
