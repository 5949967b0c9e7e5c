#include "factory/weight_init.h"

#include <cmath>

#include "runtime/error.h"
#include "runtime/rng.h"

namespace xfr {

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
// weight_init.py's name predicates.
bool is_ffn(const std::string& n) { return contains(n, "feedforward") || (contains(n, "wrap_ff") && !ends_with(n, "norm")); }
// (weight_init.py's is_mha_input_projection has no counterpart: it only selects q/k projections for deepnorm's
// gain 1, and the factory never passes deepnorm_style (docs/xformers_reference.md), so it never changes a rule.)
// Modules inside the xFormer itself are named from the block index ("0.wrap_att..."); the rest (token
// embedding, LM head, classifier) lie outside it and keep their own rules whatever the scheme.
bool inside_xformer(const std::string& path) { return !path.empty() && std::isdigit(static_cast<unsigned char>(path[0])); }

struct Filler {
  float* p;
  size_t n;
  uint64_t seed, offset;  // Philox stream position of this parameter (2 numbers per element: normals use two)
  void constant(float v) const { std::fill(p, p + n, v); }
  void uniform(double a) const { philox_fill_uniform(seed, offset, p, n, static_cast<float>(-a), static_cast<float>(a)); }
  void normal(double std) const { philox_fill_normal(seed, offset, p, n, 0.0f, static_cast<float>(std)); }
  void trunc_normal(double std, double a, double b) const {
    philox_fill_trunc_normal(seed, offset, p, n, 0.0f, static_cast<float>(std), static_cast<float>(a), static_cast<float>(b));
  }
};

// A component's own rule: "normal(std=S)", "uniform(1/sqrt(fan_in))", "constant(V)", "ones", "zeros".
std::string apply_component_rule(const std::string& rule, const InitInfo& info, double gain, const Filler& f) {
  if (rule.rfind("normal(std=", 0) == 0) {
    const double std = std::stod(rule.substr(11)) * gain;
    f.normal(std);
    return str_cat("normal(0, ", std, ")");
  }
  if (rule == "uniform(1/sqrt(fan_in))") {
    const double a = 1.0 / std::sqrt(static_cast<double>(info.fan_in));
    f.uniform(a);
    return str_cat("uniform(+-", a, ") (torch nn.Linear default)");
  }
  if (rule.rfind("constant(", 0) == 0) {
    f.constant(std::stof(rule.substr(9)));
    return rule;
  }
  if (rule == "ones") { f.constant(1.0f); return "ones"; }
  if (rule == "zeros") { f.constant(0.0f); return "zeros"; }
  throw Error("weight_init", "unknown component rule '" + rule + "'");
}

std::string apply(const std::string& scheme, const InitInfo& info, double gain, const Filler& f) {
  const bool is_bias = info.attr == "bias";
  // vit and small test is_ffn on the dotted name before anything else, and their ffn branch writes any
  // tensor named `bias` (_maybe_init_tensor), so a component inside the feed-forward (FusedMLP's
  // FusedDropoutBias, mlp.1 and mlp.3) gets N(0, 1e-6) there, not its own init_weights' zeros.
  if (info.kind == ModuleKind::component && is_bias && (scheme == "vit" || scheme == "small") && is_ffn(info.module)) {
    f.normal(1e-6);
    return scheme + ": normal(0, 1e-6) [" + info.module + ", ffn branch before init_weights]";
  }
  if (info.kind == ModuleKind::component) {
    // Recursion stops at modules with their own init_weights; vit and small call it without the gain.
    const double g = inside_xformer(info.module) && (scheme == "timm" || scheme == "moco") ? gain : 1.0;
    return apply_component_rule(info.component_rule, info, g, f) + " [" + info.module + " init_weights]";
  }
  if (info.kind == ModuleKind::layernorm) {
    f.constant(is_bias ? 0.0f : 1.0f);
    return std::string(is_bias ? "zeros" : "ones") + " [" + info.module + ", norm: torch default, untouched by " + scheme + "]";
  }
  if (info.kind != ModuleKind::linear) return "";
  const double fan_in = static_cast<double>(info.fan_in), fan_out = static_cast<double>(info.fan_out);
  const std::string where = " [" + info.module + "]";
  auto xavier = [&] {
    const double a = gain * std::sqrt(6.0 / (fan_in + fan_out));
    f.uniform(a);
    return str_cat(scheme, ": xavier_uniform(gain=", gain, ") = U(+-", a, ")", where);
  };
  auto zeros = [&] {
    f.constant(0.0f);
    return scheme + ": zeros" + where;
  };
  auto tiny_normal = [&] {
    f.normal(1e-6);  // ViT/JAX's MLP bias init
    return scheme + ": normal(0, 1e-6)" + where;
  };
  if (scheme == "vit" || scheme == "small") {
    const std::string& name = info.module;  // dotted paths
    if (is_ffn(name)) return is_bias ? tiny_normal() : xavier();
    if (is_bias) return zeros();
    if (scheme == "vit") return xavier();
    // small_init: std = gain sqrt(2 / (fan_in + 4 fan_out)), uniform with the same std.
    const double a = std::sqrt(3.0) * gain * std::sqrt(2.0 / (fan_in + 4.0 * fan_out));
    f.uniform(a);
    return str_cat("small: small_init(gain=", gain, ") = U(+-", a, ")", where);
  }
  if (scheme == "timm") {
    if (is_bias) return zeros();
    const double std = 0.02 * gain, bound = std::sqrt(3.0) * std;  // xFormers' bounds: +-sqrt(3) std
    f.trunc_normal(std, -bound, bound);
    return str_cat("timm: trunc_normal(std=", std, ", +-", bound, ")", where);
  }
  if (scheme == "moco") {
    // Child names only: is_ffn matches just "wrap_ff", which owns no tensors, so every linear takes the
    // Linear branch: U(+-gain sqrt(6 / (out + in))), bias 0.
    if (is_bias) return zeros();
    const double a = gain * std::sqrt(6.0 / (fan_out + fan_in));
    f.uniform(a);
    return str_cat("moco: uniform(+-", a, ")", where);
  }
  throw Error("weight_init", "unknown scheme '" + scheme + "' (known: vit, timm, moco, small)");
}

}  // namespace

InitReport initialize_weights(const Graph& g, ParamStore& store, const std::string& scheme, double gain, uint64_t seed) {
  XF_CHECK(scheme == "vit" || scheme == "timm" || scheme == "moco" || scheme == "small", "weight_init",
           "unknown scheme '", scheme, "' (known: vit, timm, moco, small)");
  InitReport report;
  report.rules.assign(store.slots().size(), "");
  for (int v = 0; v < g.num_values(); ++v) {
    const auto& info = g.value(v);
    if (info.kind != ValueKind::param) continue;
    const ParamSlot& slot = store.slot(info.name);
    const size_t index = static_cast<size_t>(&slot - store.slots().data());
    Filler f{store.params() + slot.offset, slot.numel, seed, 2 * static_cast<uint64_t>(slot.stream_offset)};
    const std::string rule = apply(scheme, info.init, gain, f);
    report.rules[index] = rule;
    if (rule.empty()) report.uninitialised.push_back(info.name);
  }
  return report;
}

void check_initialised(const InitReport& report, const std::string& mode, const Logger& logger) {
  if (report.uninitialised.empty() || mode == "off") return;
  std::string list;
  for (const auto& n : report.uninitialised) list += "\n  " + n;
  const std::string msg = str_cat(report.uninitialised.size(), " parameter(s) were not written by any init rule:", list);
  if (mode == "error") throw Error("weight_init", msg + "\n(set model.check_init: warn or off to proceed)", "model.check_init");
  if (logger) logger->warn("{}", msg);
}

}  // namespace xfr
