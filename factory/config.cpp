#include "factory/config.h"

#include "factory/registry.h"
#include "factory/schema.h"
#include "runtime/error.h"

#ifndef XF_SOURCE_DIR
#define XF_SOURCE_DIR "."
#endif
#ifndef XF_VERSION
#define XF_VERSION "0.0.0"
#endif

namespace xfr {

namespace {

void cross_check(ConfigNode& root, std::vector<ConfigIssue>& issues) {
  ConfigNode& model = root.at("model");
  const ConfigNode& data = root.at("data");
  const ConfigNode& train = root.at("train");
  auto issue = [&](const std::string& path, const ConfigNode* at, const std::string& msg) {
    issues.push_back(ConfigIssue{path, at ? at->loc() : SourceLoc{}, msg});
  };
  const int64_t seq_len = get_int(data, "seq_len");
  const ConfigNode& stacks = model.at("stack_configs");
  if (!stacks.is_list() || stacks.size() == 0) {
    issue("model.stack_configs", &stacks, "needs at least one stack");
    return;
  }
  std::optional<int64_t> pos_vocab;
  std::string first_style;
  int64_t width = 0;
  for (size_t i = 0; i < stacks.size(); ++i) {
    const ConfigNode& st = stacks.at(i);
    if (!st.is_map() || !has_value(st, "dim_model") || !st.find("multi_head_config")) continue;
    const std::string p = path_join("model.stack_configs", i);
    const int64_t D = get_int(st, "dim_model");
    if (i == 0) width = D;
    else if (D != width)
      issue(path_join(p, "dim_model"), st.find("dim_model"),
            str_cat("dim_model ", D, " differs from the first stack's ", width, " (stacks share the model width)"));
    const std::string style = get_string(st, "residual_norm_style");
    if (i == 0) first_style = style;
    else if ((style == "deepnorm") != (first_style == "deepnorm"))
      issue(path_join(p, "residual_norm_style"), st.find("residual_norm_style"),
            "every stack must agree on deepnorm (xFormers asserts the same)");
    const ConfigNode& mh = st.at("multi_head_config");
    auto same_dim = [&](const ConfigNode& sub, const std::string& sp) {
      if (sub.is_map() && has_value(sub, "dim_model") && get_int(sub, "dim_model") != D)
        issue(path_join(sp, "dim_model"), sub.find("dim_model"),
              str_cat(get_int(sub, "dim_model"), " differs from the block's dim_model ", D));
    };
    same_dim(mh, path_join(p, "multi_head_config"));
    if (const ConfigNode* ff = st.find("feedforward_config")) same_dim(*ff, path_join(p, "feedforward_config"));
    if (has_value(mh, "num_heads")) {
      const int64_t H = get_int(mh, "num_heads");
      const int64_t dk = has_value(mh, "dim_key") ? get_int(mh, "dim_key") : D;
      const int64_t dv = has_value(mh, "dim_value") ? get_int(mh, "dim_value") : D;
      if (dk % H != 0 || dv % H != 0)
        issue(path_join(path_join(p, "multi_head_config"), "num_heads"), mh.find("num_heads"),
              str_cat("dim_model/dim_key/dim_value (", dk, ", ", dv, ") must be divisible by num_heads ", H));
      if (!get_bool(mh, "use_separate_proj_weight") && dk != dv)
        issue(path_join(path_join(p, "multi_head_config"), "use_separate_proj_weight"), mh.find("use_separate_proj_weight"),
              "a shared projection weight needs dim_key == dim_value");
    }
    if (const ConfigNode* att = mh.find("attention"); att && att->is_map()) {
      for (const char* k : {"seq_len", "to_seq_len"})
        if (has_value(*att, k) && get_int(*att, k) < seq_len)
          issue(path_join(path_join(path_join(p, "multi_head_config"), "attention"), k), att->find(k),
                str_cat(k, " ", get_int(*att, k), " is shorter than data.seq_len ", seq_len));
      same_dim(*att, path_join(path_join(p, "multi_head_config"), "attention"));
      // causal already hides every key after the aligned one (ops/flash_attention.h).
      if (has_value(*att, "causal") && has_value(*att, "window_right") && get_bool(*att, "causal") &&
          get_int(*att, "window_right") > 0)
        issue(path_join(path_join(path_join(p, "multi_head_config"), "attention"), "window_right"),
              att->find("window_right"),
              str_cat("window_right ", get_int(*att, "window_right"), " must be -1 or 0 with causal"));
    }
    if (const ConfigNode* pos = st.find("position_encoding_config"); pos && pos->is_map()) {
      const std::string pp = path_join(p, "position_encoding_config");
      same_dim(*pos, pp);
      if (i > 0)
        issue(pp, pos, "only the first stack's positional embedding is used (xFormers builds it on the first block)");
      if (has_value(*pos, "seq_len") && get_int(*pos, "seq_len") < seq_len)
        issue(path_join(pp, "seq_len"), pos->find("seq_len"),
              str_cat("seq_len ", get_int(*pos, "seq_len"), " is shorter than data.seq_len ", seq_len));
      if (has_value(*pos, "vocab_size")) pos_vocab = get_int(*pos, "vocab_size");
    }
  }
  // vocab_size: the model's, else the vocab embedding's; they must agree.
  if (pos_vocab) {
    if (has_value(model, "vocab_size") && get_int(model, "vocab_size") != *pos_vocab)
      issue("model.vocab_size", model.find("vocab_size"),
            str_cat(get_int(model, "vocab_size"), " differs from the vocab embedding's vocab_size ", *pos_vocab));
    else if (!has_value(model, "vocab_size"))
      model.set("vocab_size", ConfigNode::make_scalar(std::to_string(*pos_vocab)));
  }
  const std::string task = get_string(model, "task");
  if (task == "classification" && !has_value(model, "num_classes"))
    issue("model.num_classes", nullptr, "classification needs num_classes");
  if (task != "causal_lm" && get_bool(model, "tie_embedding_weights"))
    issue("model.tie_embedding_weights", model.find("tie_embedding_weights"), "tied embeddings apply to causal_lm");
  const std::string kind = get_string(data, "kind");
  if ((task == "classification") != (kind == "majority"))
    issue("data.kind", data.find("kind"),
          task == "classification" ? "classification needs labelled data (kind: majority)"
                                   : "kind majority is labelled data for task: classification");
  if (kind == "majority" && has_value(model, "num_classes") && get_int(model, "num_classes") != get_int(data, "num_symbols"))
    issue("model.num_classes", model.find("num_classes"),
          str_cat("majority has ", get_int(data, "num_symbols"), " classes (data.num_symbols)"));
  if ((kind == "text" || kind == "tokens") && !has_value(data, "path"))
    issue("data.path", nullptr, "data.kind " + kind + " needs a path");
  if (kind == "tokens" && !has_value(model, "vocab_size"))
    issue("model.vocab_size", nullptr, "token files need model.vocab_size (the ids' range)");
  const ConfigNode& betas = train.at("optimizer").at("betas");
  bool betas_ok = betas.is_list() && betas.size() == 2;
  for (size_t i = 0; betas_ok && i < 2; ++i) {
    const auto v = betas.at(i).is_scalar() ? betas.at(i).as_double() : std::nullopt;
    betas_ok = v && *v >= 0.0 && *v < 1.0;
  }
  if (!betas_ok) issue("train.optimizer.betas", &betas, "expected [beta1, beta2], each in [0, 1)");
  const ConfigNode& sched = train.at("schedule");
  const std::string sname = get_string(sched, "name");
  if ((sname == "cosine" || sname == "linear") && get_int(sched, "warmup_steps") >= get_int(train, "steps"))
    issue("train.schedule.warmup_steps", sched.find("warmup_steps"),
          str_cat("warmup_steps ", get_int(sched, "warmup_steps"), " must be below train.steps ", get_int(train, "steps"),
                  " for a ", sname, " schedule"));
  if ((sname == "cosine" || sname == "linear") && get_number(sched, "min_lr") > get_number(train.at("optimizer"), "lr"))
    issue("train.schedule.min_lr", sched.find("min_lr"), "min_lr is above train.optimizer.lr");
  const std::string device = get_string(root.at("runtime"), "device");
  const bool device_ok = device == "auto" || device == "cpu" || device == "cuda" ||
                         (device.rfind("cuda:", 0) == 0 && device.size() > 5 &&
                          device.find_first_not_of("0123456789", 5) == std::string::npos);
  if (!device_ok)
    issue("runtime.device", root.at("runtime").find("device"), "'" + device + "' is not auto, cpu, cuda or cuda:N");
}

}  // namespace

Config resolve_config(const ConfigNode& raw, const std::string& source) {
  const Registry& reg = Registry::builtin();
  std::vector<ConfigIssue> issues;
  Config c;
  c.source = source;
  c.root = validate_section(raw, reg.root(), "", reg.lookup(), issues);
  if (issues.empty()) cross_check(c.root, issues);
  throw_if_issues(issues);
  return c;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  ConfigNode raw = load_config_file(path);
  for (const auto& o : overrides) apply_override(raw, o, "--set");
  return resolve_config(raw, path);
}

Config parse_config(const std::string& text, const std::string& format, const std::string& name,
                    const std::vector<std::string>& overrides) {
  ConfigNode raw = parse_config_string(text, format, name);
  for (const auto& o : overrides) apply_override(raw, o, "--set");
  return resolve_config(raw, name);
}

std::string config_path_value(const ConfigNode& section, const std::string& key) {
  const ConfigNode* n = section.find(key);
  XF_CHECK(n && !n->is_null_like(), "config", "missing path '", key, "'");
  return resolve_path(*n, n->text(), "");
}

Config load_default_config(const std::vector<std::string>& overrides) {
  return parse_config(default_config_text(), "yaml", std::string(XF_SOURCE_DIR) + "/configs/default.yaml", overrides);
}

const char* xfrun_version() { return XF_VERSION; }

std::string default_data_path() { return std::string(XF_SOURCE_DIR) + "/configs/data/shakespeare.txt"; }

}  // namespace xfr
