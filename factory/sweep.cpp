#include "factory/sweep.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

#include <nlohmann/json.hpp>

#include "factory/registry.h"
#include "runtime/error.h"
#include "runtime/rng.h"

namespace xfr {

namespace fs = std::filesystem;

namespace {

Field field(const std::string& name, FieldType t, std::optional<std::string> def, const std::string& doc) {
  Field f;
  f.name = name;
  f.type = t;
  f.default_value = std::move(def);
  f.optional = !f.default_value;
  f.doc = doc;
  return f;
}

struct SweepSchema {
  Section sweep, metric, parameter;
  SweepSchema() {
    metric.name = "sweep.metric";
    metric.doc = "what the sweep compares";
    metric.fields = {
        field("name", FieldType::string, std::string("\"val_loss\""), "a metrics.jsonl field (val_loss, loss, tokens_per_s, ...)"),
        field("goal", FieldType::choice, std::string("minimize"), "minimize | maximize"),
    };
    metric.fields[1].choices = {"minimize", "maximize"};

    parameter.name = "sweep.parameters.<key>";
    parameter.doc = "one swept config key: a list of values, or a range to draw from (method: random)";
    parameter.fields = {
        field("values", FieldType::any, std::nullopt, "the values to try (any YAML values)"),
        field("min", FieldType::number, std::nullopt, "range: lower bound"),
        field("max", FieldType::number, std::nullopt, "range: upper bound"),
        field("distribution", FieldType::choice, std::string("uniform"),
              "range: uniform | log_uniform (min > 0) | int_uniform (integers, both bounds included)"),
    };
    parameter.fields[3].choices = {"uniform", "log_uniform", "int_uniform"};

    sweep.name = "sweep";
    sweep.doc = "a sweep over config keys (xfrun sweep)";
    sweep.fields = {
        field("method", FieldType::choice, std::string("grid"), "grid (every combination) | random (num_trials draws)"),
        field("num_trials", FieldType::integer, std::nullopt, "random: number of trials"),
        field("seed", FieldType::integer, std::string("0"), "random: seed of the Philox draws"),
        field("run_cap", FieldType::integer, std::nullopt, "at most this many trials (the first ones)"),
        field("metric", FieldType::section, std::string("{}"), "the metric to compare trials by"),
        field("parameters", FieldType::any, std::nullopt, "dotted config keys -> {values: [...]} or {min, max, distribution}"),
    };
    sweep.fields[0].choices = {"grid", "random"};
    sweep.fields[1].min = 1;
    sweep.fields[2].min = 0;
    sweep.fields[3].min = 1;
    sweep.fields[4].section = &metric;
    sweep.fields[5].optional = false;  // required
  }
};

const SweepSchema& schema() {
  static const SweepSchema s;
  return s;
}

ConfigIssue issue_at(const std::string& path, const ConfigNode* node, const std::string& msg) {
  return ConfigIssue{path, node ? node->loc() : SourceLoc{}, msg};
}

// Shortest text that reads back as the same double (up to 17 significant digits), in YAML float syntax.
std::string number_text(double v) {
  char buf[64];
  for (int prec = 6; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s = buf;
  // YAML 1.2 core floats need digits before an exponent's mantissa dot; %g writes e.g. 1e-05: fine.
  return s;
}

// 53-bit uniform in [0, 1) from two Philox stream elements.
double uniform53(uint64_t seed, uint64_t element) {
  const uint64_t a = philox_u32(seed, element) >> 5, b = philox_u32(seed, element + 1) >> 6;
  return (static_cast<double>(a) * 67108864.0 + static_cast<double>(b)) * (1.0 / 9007199254740992.0);
}

void absolute_paths(ConfigNode& node, const Section& s) {
  for (const auto& f : s.fields) {
    ConfigNode* v = node.find(f.name);
    if (!v || v->is_null_like()) continue;
    if (f.type == FieldType::path && v->is_scalar()) {
      *v = ConfigNode::make_scalar(resolve_path(*v, v->text(), ""), v->quoted(), v->loc());
    } else if (f.type == FieldType::section && v->is_map() && f.section) {
      absolute_paths(*v, *f.section);
    } else if (f.type == FieldType::section_list && v->is_list() && f.section) {
      for (size_t i = 0; i < v->size(); ++i)
        if (v->at(i).is_map()) absolute_paths(v->at(i), *f.section);
    } else if (f.type == FieldType::component && v->is_map() && v->find("name") && v->at("name").is_scalar()) {
      if (const ComponentEntry* e = Registry::builtin().find(f.family, v->at("name").text())) absolute_paths(*v, e->params);
    }
  }
}

}  // namespace

const Section& sweep_section() { return schema().sweep; }
const Section& sweep_metric_section() { return schema().metric; }
const Section& sweep_parameter_section() { return schema().parameter; }

SweepSpec parse_sweep_spec(const ConfigNode& sweep) {
  std::vector<ConfigIssue> issues;
  const ComponentLookup lookup = Registry::builtin().lookup();
  if (!sweep.is_map()) {
    issues.push_back(issue_at("sweep", &sweep, std::string("expected a map, got a ") + sweep.kind_name()));
    throw_if_issues(issues);
  }
  const ConfigNode s = validate_section(sweep, sweep_section(), "sweep", lookup, issues);
  SweepSpec spec;
  if (!issues.empty()) throw_if_issues(issues);
  spec.method = get_string(s, "method");
  spec.seed = static_cast<uint64_t>(get_int(s, "seed"));
  if (has_value(s, "num_trials")) spec.num_trials = get_int(s, "num_trials");
  if (has_value(s, "run_cap")) spec.run_cap = get_int(s, "run_cap");
  spec.metric = get_string(s.at("metric"), "name");
  spec.goal = get_string(s.at("metric"), "goal");
  if (spec.method == "random" && spec.num_trials == 0)
    issues.push_back(issue_at("sweep.num_trials", &s, "method random needs num_trials"));
  if (spec.method == "grid" && spec.num_trials != 0)
    issues.push_back(issue_at("sweep.num_trials", s.find("num_trials"),
                              "num_trials applies to method random (a grid runs every combination; see run_cap)"));
  const ConfigNode& params = s.at("parameters");
  if (!params.is_map() || params.size() == 0) {
    issues.push_back(issue_at("sweep.parameters", &params, "expected a map of dotted config keys to {values: [...]} or {min, max}"));
    throw_if_issues(issues);
  }
  for (const auto& e : params.entries()) {
    const std::string path = path_join("sweep.parameters", e.key);
    if (!e.value.is_map()) {
      issues.push_back(issue_at(path, &e.value, std::string("expected {values: [...]} or {min, max, distribution}, got a ") +
                                                    e.value.kind_name()));
      continue;
    }
    const size_t before = issues.size();
    const ConfigNode p = validate_section(e.value, sweep_parameter_section(), path, lookup, issues);
    if (issues.size() != before) continue;
    SweepParameter sp;
    sp.key = e.key;
    sp.loc = e.value.loc();
    const bool has_values = p.find("values") && !p.at("values").is_null_like();
    const bool has_min = has_value(p, "min"), has_max = has_value(p, "max");
    if (has_values == (has_min || has_max)) {
      issues.push_back(issue_at(path, &e.value, "give either values: [...] or min and max"));
      continue;
    }
    if (has_values) {
      const ConfigNode& v = p.at("values");
      if (!v.is_list() || v.size() == 0) {
        issues.push_back(issue_at(path_join(path, "values"), &v, "expected a non-empty list"));
        continue;
      }
      if (e.value.find("distribution"))
        issues.push_back(issue_at(path_join(path, "distribution"), e.value.find("distribution"), "applies to a range (min, max)"));
      sp.values = v.items();
    } else {
      if (!(has_min && has_max)) {
        issues.push_back(issue_at(path, &e.value, "a range needs both min and max"));
        continue;
      }
      sp.is_range = true;
      sp.min = get_number(p, "min");
      sp.max = get_number(p, "max");
      sp.distribution = get_string(p, "distribution");
      if (!(sp.min <= sp.max)) issues.push_back(issue_at(path_join(path, "max"), e.value.find("max"), "max is below min"));
      if (sp.distribution == "log_uniform" && !(sp.min > 0))
        issues.push_back(issue_at(path_join(path, "min"), e.value.find("min"), "log_uniform needs min > 0"));
      if (sp.distribution == "int_uniform" && (sp.min != std::floor(sp.min) || sp.max != std::floor(sp.max)))
        issues.push_back(issue_at(path, &e.value, "int_uniform needs integer min and max"));
      if (spec.method == "grid")
        issues.push_back(issue_at(path, &e.value, "method grid needs values: [...] (ranges are drawn by method random)"));
    }
    spec.parameters.push_back(std::move(sp));
  }
  throw_if_issues(issues);
  return spec;
}

std::string SweepTrial::label() const {
  std::string s;
  for (const auto& [k, v] : overrides) {
    if (!s.empty()) s += ", ";
    s += k + "=" + (v.is_scalar() ? v.text() : to_json(v).dump());
  }
  return s;
}

std::vector<SweepTrial> expand_sweep(const SweepSpec& spec) {
  std::vector<SweepTrial> trials;
  const size_t P = spec.parameters.size();
  const size_t cap = spec.run_cap > 0 ? static_cast<size_t>(spec.run_cap) : std::numeric_limits<size_t>::max();
  if (spec.method == "grid") {
    size_t total = 1;
    for (const auto& p : spec.parameters) {
      XF_CHECK(!p.is_range, "config", "sweep.parameters.", p.key, ": method grid needs values");
      XF_CHECK(total <= (size_t(1) << 24) / std::max<size_t>(1, p.values.size()), "config",
               "the grid has more than 2^24 trials");
      total *= p.values.size();
    }
    total = std::min(total, cap);
    for (size_t t = 0; t < total; ++t) {
      SweepTrial tr;
      tr.index = t;
      size_t rest = t;
      std::vector<size_t> idx(P);
      for (size_t j = P; j-- > 0;) {  // the last parameter varies fastest
        idx[j] = rest % spec.parameters[j].values.size();
        rest /= spec.parameters[j].values.size();
      }
      for (size_t j = 0; j < P; ++j) tr.overrides.emplace_back(spec.parameters[j].key, spec.parameters[j].values[idx[j]]);
      trials.push_back(std::move(tr));
    }
    return trials;
  }
  const size_t n = std::min(static_cast<size_t>(spec.num_trials), cap);
  for (size_t t = 0; t < n; ++t) {
    SweepTrial tr;
    tr.index = t;
    for (size_t j = 0; j < P; ++j) {
      const SweepParameter& p = spec.parameters[j];
      const double u = uniform53(spec.seed, 2 * (static_cast<uint64_t>(t) * P + j));
      if (!p.is_range) {
        const size_t k = std::min(p.values.size() - 1, static_cast<size_t>(u * static_cast<double>(p.values.size())));
        tr.overrides.emplace_back(p.key, p.values[k]);
        continue;
      }
      std::string text;
      if (p.distribution == "int_uniform") {
        const double span = p.max - p.min + 1;
        const double v = std::min(p.max, p.min + std::floor(u * span));
        text = std::to_string(static_cast<int64_t>(v));
      } else if (p.distribution == "log_uniform") {
        const double lo = std::log(p.min), hi = std::log(p.max);
        text = number_text(std::min(p.max, std::max(p.min, std::exp(lo + u * (hi - lo)))));
      } else {
        text = number_text(p.min + u * (p.max - p.min));
      }
      tr.overrides.emplace_back(p.key, ConfigNode::make_scalar(text, false, p.loc));
    }
    trials.push_back(std::move(tr));
  }
  return trials;
}

ConfigNode apply_trial(const ConfigNode& base, const SweepTrial& trial, const std::string& origin) {
  ConfigNode root = base;
  for (const auto& [key, value] : trial.overrides) {
    apply_override(root, key + "=", origin);  // creates the path (or names the bad index)
    ConfigNode* n = const_cast<ConfigNode*>(root.find_path(key));
    XF_CHECK(n != nullptr, "config", origin, ": sweep key '", key, "' does not address a config node");
    *n = value;
  }
  return root;
}

void make_paths_absolute(ConfigNode& root) { absolute_paths(root, Registry::builtin().root()); }

SweepPlan plan_sweep(const ConfigNode& template_root, const std::string& template_path) {
  SweepPlan plan;
  plan.template_path = template_path;
  XF_CHECK(template_root.is_map(), "config", template_path, ": a sweep template is a config map with a sweep: section");
  const ConfigNode* sweep = template_root.find("sweep");
  XF_CHECK(sweep != nullptr, "config", template_path, ": no sweep: section (see docs/sweeps.md)");
  plan.spec = parse_sweep_spec(*sweep);
  plan.base = template_root;
  plan.base.erase("sweep");
  plan.trials = expand_sweep(plan.spec);
  XF_CHECK(!plan.trials.empty(), "config", template_path, ": the sweep has no trials");
  std::string failures;
  size_t n_bad = 0;
  for (const auto& t : plan.trials) {
    try {
      Config c = resolve_config(apply_trial(plan.base, t, template_path), template_path);
      make_paths_absolute(c.root);
      plan.configs.push_back(std::move(c));
    } catch (const Error& e) {
      ++n_bad;
      if (n_bad <= 10) failures += str_cat("\ntrial ", t.index, " (", t.label(), "): ", e.message());
    }
  }
  if (n_bad > 0) {
    if (n_bad > 10) failures += str_cat("\n... and ", n_bad - 10, " more");
    throw Error("config", str_cat(n_bad, " of ", plan.trials.size(), " trials are invalid; nothing was run:", failures));
  }
  return plan;
}

SweepPlan load_sweep(const std::string& template_path) {
  std::error_code ec;
  fs::path p = fs::absolute(template_path, ec);
  const std::string abs = ec ? template_path : p.lexically_normal().string();
  return plan_sweep(load_config_file(abs), abs);
}

}  // namespace xfr
