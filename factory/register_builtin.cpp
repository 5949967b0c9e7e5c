// Every builtin component and config section: the one explicit list (DESIGN.md, Principle 4). Each
// entry declares its parameters once; validation, `xfrun components` and docs/config.md come from here.
#include <cmath>

#include "components/linear.h"
#include "factory/registry.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/bias_add.h"
#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/positional.h"
#include "ops/shape_ops.h"
#include "runtime/error.h"

namespace xfr {

namespace {

// ---- field constructors ----------------------------------------------------------------------------
Field f_bool(const std::string& name, bool def, const std::string& doc) {
  Field f;
  f.name = name;
  f.type = FieldType::boolean;
  f.default_value = def ? "true" : "false";
  f.doc = doc;
  return f;
}
Field f_int(const std::string& name, std::optional<int64_t> def, double lo, double hi, const std::string& doc) {
  Field f;
  f.name = name;
  f.type = FieldType::integer;
  if (def) f.default_value = std::to_string(*def);
  f.min = lo;
  f.max = hi;
  f.doc = doc;
  return f;
}
Field f_opt_int(const std::string& name, double lo, const std::string& doc) {
  Field f = f_int(name, std::nullopt, lo, std::numeric_limits<double>::infinity(), doc);
  f.optional = true;
  return f;
}
Field f_num(const std::string& name, std::optional<double> def, double lo, double hi, const std::string& doc,
            bool hi_exclusive = false, bool lo_exclusive = false) {
  Field f;
  f.name = name;
  f.type = FieldType::number;
  if (def) f.default_value = str_cat(*def);
  f.min = lo;
  f.max = hi;
  f.max_exclusive = hi_exclusive;
  f.min_exclusive = lo_exclusive;
  f.doc = doc;
  return f;
}
Field f_str(const std::string& name, std::optional<std::string> def, const std::string& doc, FieldType t = FieldType::string) {
  Field f;
  f.name = name;
  f.type = t;
  if (def) f.default_value = "\"" + *def + "\"";
  f.optional = !def;
  f.doc = doc;
  return f;
}
Field f_choice(const std::string& name, const std::string& def, std::vector<std::string> choices, const std::string& doc) {
  Field f;
  f.name = name;
  f.type = FieldType::choice;
  f.default_value = def;
  f.choices = std::move(choices);
  f.doc = doc;
  return f;
}
Field f_section(const std::string& name, const Section& s, const std::string& doc, FieldType t = FieldType::section) {
  Field f;
  f.name = name;
  f.type = t;
  f.section = &s;
  if (t == FieldType::section) f.default_value = "{}";
  f.doc = doc;
  return f;
}
Field f_component(const std::string& name, const std::string& family, bool optional, const std::string& doc) {
  Field f;
  f.name = name;
  f.type = FieldType::component;
  f.family = family;
  f.optional = optional;
  f.doc = doc;
  return f;
}
Field f_any(const std::string& name, const std::string& def, const std::string& doc) {
  Field f;
  f.name = name;
  f.type = FieldType::any;
  f.default_value = def;
  f.doc = doc;
  return f;
}
Field f_refused(const std::string& name, const std::string& why, const std::string& doc) {
  Field f;
  f.name = name;
  f.type = FieldType::any;
  f.default_value = "null";
  f.refused_unless_default = why;
  f.doc = doc;
  return f;
}
const double kInf = std::numeric_limits<double>::infinity();
// dim_model may be repeated in sub-configs (xFormers fills it in from the block); it must then agree.
Field f_dim_model() { return f_opt_int("dim_model", 1, "model width; filled in from the block when absent (must match it)"); }
const std::string kSeqLenDoc = "sequence length this component is built for";

// A probability of dropping.
Field f_dropout(const std::string& name, const std::string& doc) { return f_num(name, 0.0, 0.0, 1.0, doc, true); }

// ---- components --------------------------------------------------------------------------------------

void register_attention(Registry& r) {
  ComponentEntry e;
  e.family = "attention";
  e.name = "scaled_dot_product";
  e.doc = "softmax(q k^T / sqrt(d) + mask) v, exact, fused (flash_attention: O(S) memory); causal and sliding-window "
          "masks around the key each query is aligned with (causal_alignment)";
  e.params.name = "attention.scaled_dot_product";
  e.params.fields = {
      f_dropout("dropout", "dropout on the attention probabilities (training only)"),
      f_bool("causal", false, "mask keys after the query (autoregressive)"),
      f_choice("causal_alignment", "top_left", {"top_left", "bottom_right"},
               "the key query i is aligned with for causal and the window: top_left key i (torch's is_causal), "
               "bottom_right key i + Sk - Sq (FlashAttention's); the same when Sq = Sk (self-attention)"),
      f_int("window_left", -1, -1, kInf,
            "sliding window: keys before the aligned key each query sees (-1: unbounded); local attention costs "
            "O(S W)"),
      f_int("window_right", -1, -1, kInf,
            "sliding window: keys after the aligned key each query sees (-1: unbounded; with causal only -1 or 0)"),
      f_opt_int("seq_len", 1, "maximum query length (checked against the data's seq_len)"),
      f_opt_int("to_seq_len", 1, "maximum key length (checked against the data's seq_len)"),
      f_opt_int("num_heads", 1, "filled in from multi_head_config (xFormers passes it down)"),
      f_opt_int("dim_features", 1, "filled in from multi_head_config (xFormers passes it down)"),
      f_dim_model(),
  };
  auto options = [](const ConfigNode& p, const BuildContext& ctx, AttentionLayout layout) {
    AttentionOptions o;
    o.causal = get_bool(p, "causal");
    o.dropout = ctx.training ? get_number(p, "dropout") : 0.0;
    o.layout = layout;
    o.alignment = get_string(p, "causal_alignment") == "bottom_right" ? CausalAlignment::bottom_right
                                                                      : CausalAlignment::top_left;
    o.window_left = get_int(p, "window_left");
    o.window_right = get_int(p, "window_right");
    XF_CHECK(!o.causal || o.window_right <= 0, "scaled_dot_product",
             "causal hides every key after the aligned one, so window_right must be -1 or 0 with causal, got ",
             o.window_right);
    return o;
  };
  // The fused op takes either head layout and a packed qkv (ops/flash_attention.h), so the builders are one call.
  auto build = [options](AttentionLayout layout) {
    return [options, layout](const ConfigNode& p, Value q, Value k, Value v, const BuildContext& ctx) {
      return scaled_dot_product_attention(q, k, v, Value{}, options(p, ctx, layout), "attention");
    };
  };
  e.attention = build(AttentionLayout::bhsd);
  e.attention_bshd = build(AttentionLayout::bshd);
  e.attention_qkvpacked = [options](const ConfigNode& p, Value qkv, const BuildContext& ctx) {
    return scaled_dot_product_attention_qkvpacked(qkv, Value{}, options(p, ctx, AttentionLayout::bshd), "attention");
  };
  r.add(std::move(e));
}

// MLP and FusedMLP: Linear(D, F) -> +bias -> activation -> Dropout -> Linear(F, D) -> +bias -> Dropout,
// F = hidden_layer_multiplier * D. One builder for both; only the module layout (parameter names and the
// xFormers module paths the init rules match on) differs:
//   MLP       mlp = Sequential(0: Linear(D, F, bias), 1: act, 2: Dropout, 3: Linear(F, D, bias), 4: Dropout)
//   FusedMLP  mlp = Sequential(0: Linear(D, F, bias=False), 1: FusedDropoutBias(p, bias F, act),
//                              2: Linear(F, D, bias=False), 3: FusedDropoutBias(p, bias D))
// FusedDropoutBias's bias starts at zero (its init_weights; timm and moco call it), but vit and small reach
// it through their is_ffn branch first, which draws it N(0, 1e-6); here it is a trained parameter
// (upstream it is not an nn.Parameter, so upstream's optimizer never updates it).
Value build_mlp(const ConfigNode& p, Value x, const BuildContext& ctx, bool fused) {
  const char* who = fused ? "FusedMLP" : "MLP";
  Graph& g = *x.graph;
  auto s = g.scope("mlp");
  const int64_t D = ctx.dim_model;
  const double mult = get_number(p, "hidden_layer_multiplier");
  const auto F = static_cast<int64_t>(std::llround(mult * static_cast<double>(D)));
  XF_CHECK(F >= 1, who, "hidden_layer_multiplier ", mult, " gives no hidden units for dim_model ", D);
  const bool bias = fused || get_bool(p, "bias");  // FusedMLP has no bias field: always on
  const double p_drop = ctx.training ? get_number(p, "dropout") : 0.0;
  const std::string act = get_string(p, "activation");
  const std::string mlp = ctx.init_prefix + ".mlp.";
  // FusedDropoutBias's bias: parameter "<k>.bias", zeros, init module mlp.<k>.
  auto fused_bias = [&](Value t, int64_t width, const std::string& k) {
    auto bs = g.scope(k);
    InitInfo info;
    info.module = mlp + k;
    info.kind = ModuleKind::component;
    info.attr = "bias";
    info.component_rule = "zeros";
    return bias_add(t, g.param("bias", {width}, ParamKind::bias, info), "bias_add");
  };
  Value h;
  // GELU (tanh) folds into the first linear (the GEMM's epilogue on a GPU); FusedMLP keeps its bias op.
  const bool gelu_in_linear = !fused && act == "gelu_tanh";
  if (fused) {
    h = fused_bias(linear(x, D, F, false, "0", mlp + "0"), F, "1");
  } else {
    h = linear(x, D, F, bias, "0", mlp + "0", gelu_in_linear);
  }
  const std::string act_name = fused ? "1.activation" : "1";
  if (gelu_in_linear) {
    // applied above
  } else if (act == "star_relu") {
    // xFormers' StarReLU: 0.8944 relu(x)^2 - 0.4472, fixed constants (MetaFormer's derivation: unit
    // variance and zero mean of relu(x)^2 for x ~ N(0, 1)).
    const TensorMeta one{{1}, x.dtype()};
    h = star_relu(h, fill(g, one, 0.8944, "star_scale"), fill(g, one, -0.4472, "star_bias"), act_name);
  } else if (act != "none") {
    h = activation(h, activation_by_name(act), act_name);
  }
  if (p_drop > 0) h = dropout(h, p_drop, fused ? "1.dropout" : "2");
  Value y;
  if (fused) {
    y = fused_bias(linear(h, F, D, false, "2", mlp + "2"), D, "3");
  } else {
    y = linear(h, F, D, bias, "3", mlp + "3");
  }
  if (p_drop > 0) y = dropout(y, p_drop, fused ? "3.dropout" : "4");
  return y;
}

void register_feedforward(Registry& r) {
  std::vector<std::string> acts = {"relu", "gelu", "gelu_tanh", "leaky_relu", "squared_relu", "smelu", "star_relu",
                                   "silu", "sigmoid", "none"};
  const std::vector<Field> common = {
      f_dim_model(),
      f_dropout("dropout", "dropout after the activation and after the second linear (training only)"),
      f_choice("activation", "gelu", acts, "activation between the two linears"),
      f_num("hidden_layer_multiplier", 4.0, 0.0, kInf, "hidden width = hidden_layer_multiplier * dim_model", false, true),
  };
  {
    ComponentEntry e;
    e.family = "feedforward";
    e.name = "MLP";
    e.doc = "Linear -> activation -> Dropout -> Linear -> Dropout (xFormers' MLP)";
    e.params.name = "feedforward.MLP";
    e.params.fields = common;
    e.params.fields.push_back(f_bool("bias", true, "biases in both linears"));
    e.feedforward = [](const ConfigNode& p, Value x, const BuildContext& ctx) { return build_mlp(p, x, ctx, false); };
    r.add(e);
  }
  {
    ComponentEntry e;
    e.family = "feedforward";
    e.name = "FusedMLP";
    e.doc = "the same math as MLP, biases always on, xFormers' FusedMLP layout (mlp.0 Linear, mlp.1 bias, mlp.2 "
            "Linear, mlp.3 bias; biases start at zero); here the biases are trained (upstream's FusedDropoutBias "
            "bias is not an nn.Parameter, so it stays zero)";
    e.params.name = "feedforward.FusedMLP";
    e.params.fields = common;
    e.feedforward = [](const ConfigNode& p, Value x, const BuildContext& ctx) { return build_mlp(p, x, ctx, true); };
    r.add(e);
  }
}

// Parameters a positional-embedding component initialises itself (its own init_weights).
InitInfo component_param(const BuildContext& ctx, const std::string& attr, const std::string& rule) {
  InitInfo info;
  info.module = ctx.init_prefix;
  info.kind = ModuleKind::component;
  info.attr = attr;
  info.component_rule = rule;
  return info;
}

// Rows of a (S, D) position table for the tokens being built: the first T rows, or, when decoding, the
// rows of ctx.positions (B, T) -> (B, T, D).
Value position_rows(Value table, const BuildContext& ctx, const std::string& name) {
  if (ctx.positions.defined()) return embedding(table, ctx.positions, name);
  return slice(table, 0, 0, ctx.seq_len, name);
}

void check_seq_len(const ConfigNode& p, const BuildContext& ctx, const char* who) {
  if (has_value(p, "seq_len"))
    XF_CHECK(ctx.seq_len <= get_int(p, "seq_len"), who, "sequence length ", ctx.seq_len,
             " exceeds the positional embedding's seq_len ", get_int(p, "seq_len"));
}

void register_positions(Registry& r) {
  {
    ComponentEntry e;
    e.family = "position_encoding";
    e.name = "vocab";
    e.doc = "learned token embeddings + learned position embeddings, then dropout (xFormers' VocabEmbedding)";
    e.params.name = "position_encoding.vocab";
    e.params.fields = {f_dim_model(), f_opt_int("seq_len", 1, kSeqLenDoc + " (default: data.seq_len)"),
                       f_opt_int("vocab_size", 1, "number of token ids (default: model.vocab_size or the data's)"),
                       f_dropout("dropout", "dropout on the summed embeddings (training only)")};
    e.consumes_token_ids = true;
    e.position = [](const ConfigNode& p, Value ids, Value, const BuildContext& ctx) {
      Graph& g = *ids.graph;
      check_seq_len(p, ctx, "vocab");
      const int64_t S = has_value(p, "seq_len") ? get_int(p, "seq_len") : ctx.seq_len;
      const int64_t V = has_value(p, "vocab_size") ? get_int(p, "vocab_size") : ctx.vocab_size;
      const int64_t D = ctx.dim_model;
      // VocabEmbedding.init_weights: position, then word embeddings ~ N(0, 0.02 gain).
      Value pos, word;
      {
        auto s = g.scope("position_embeddings");
        pos = g.param("weight", {S, D}, ParamKind::embedding, component_param(ctx, "position_embeddings.weight", "normal(std=0.02)"));
      }
      {
        auto s = g.scope("word_embeddings");
        word = g.param("weight", {V, D}, ParamKind::embedding, component_param(ctx, "word_embeddings.weight", "normal(std=0.02)"));
      }
      Value x = embedding(word, ids, "embed");  // (B, T, D)
      x = add(x, position_rows(pos, ctx, "positions"), "add_positions");
      const double p_drop = ctx.training ? get_number(p, "dropout") : 0.0;
      if (p_drop > 0) x = dropout(x, p_drop, "dropout");
      return x;
    };
    r.add(e);
  }
  {
    ComponentEntry e;
    e.family = "position_encoding";
    e.name = "sine";
    e.doc = "x + fixed sinusoidal table (sin on even, cos on odd features), no scaling of x";
    e.params.name = "position_encoding.sine";
    e.params.fields = {f_dim_model(), f_opt_int("seq_len", 1, kSeqLenDoc + " (unused by the formula)")};
    e.position = [](const ConfigNode& p, Value, Value x, const BuildContext& ctx) {
      XF_CHECK(x.defined(), "sine", "needs token embeddings");
      const int64_t rows = ctx.positions.defined() ? (has_value(p, "seq_len") ? get_int(p, "seq_len") : ctx.seq_len)
                                                   : ctx.seq_len;
      const Value table = sine_positions(*x.graph, rows, ctx.dim_model, x.dtype(), "table");
      return add(x, position_rows(table, ctx, "positions"), "add_positions");
    };
    r.add(e);
  }
  {
    ComponentEntry e;
    e.family = "position_encoding";
    e.name = "learnable";
    e.doc = "x + a learned (1, seq_len, D) table, initialised N(0, 0.02) (xFormers' LearnablePositionalEmbedding)";
    e.params.name = "position_encoding.learnable";
    e.params.fields = {f_dim_model(), f_opt_int("seq_len", 1, kSeqLenDoc + " (default: data.seq_len)"),
                       f_bool("add_class_token", false, "prepend a learned class token (comes with ViT-style tasks)")};
    e.params.fields.back().refused_unless_default = "class tokens come with the ViT/patch-embedding work";
    e.position = [](const ConfigNode& p, Value, Value x, const BuildContext& ctx) {
      XF_CHECK(x.defined(), "learnable", "needs token embeddings");
      check_seq_len(p, ctx, "learnable");
      Graph& g = *x.graph;
      const int64_t S = has_value(p, "seq_len") ? get_int(p, "seq_len") : ctx.seq_len;
      const Value table = g.param("pos_emb", {1, S, ctx.dim_model}, ParamKind::embedding,
                                  component_param(ctx, "pos_emb", "normal(std=0.02)"));
      return add(x, position_rows(reshape(table, {table.dim(1), ctx.dim_model}), ctx, "positions"), "add_positions");
    };
    r.add(e);
  }
}

void register_named(Registry& r, const std::string& family, const std::vector<std::pair<std::string, std::string>>& items) {
  for (const auto& [name, doc] : items) {
    ComponentEntry e;
    e.family = family;
    e.name = name;
    e.doc = doc;
    e.params.name = family + "." + name;
    r.add(e);
  }
}

// ---- config sections -----------------------------------------------------------------------------------

void register_sections(Registry& r) {
  Section& mha = r.new_section("multi_head_config");
  mha.doc = "multi-head attention around an attention mechanism (xFormers' MultiHeadDispatch)";
  mha.fields = {
      f_dim_model(),
      f_int("num_heads", std::nullopt, 1, kInf, "attention heads; dim_key and dim_value must be divisible by it"),
      f_component("attention", "attention", false, "the attention mechanism: {name: ..., its parameters}"),
      f_bool("bias", true, "biases in the q/k/v and output projections"),
      f_dropout("residual_dropout", "dropout after the output projection (training only)"),
      f_opt_int("dim_key", 1, "width of the q and k projections (default dim_model)"),
      f_opt_int("dim_value", 1, "width of the v projection (default dim_model)"),
      f_bool("use_separate_proj_weight", true,
             "q, k, v projections have their own weights; false shares one weight (biases stay separate). With own "
             "weights, no rotary and dim_key = dim_value, an attention with a packed form (scaled_dot_product) runs "
             "the three as one GEMM on the concatenated weights (docs/attention.md); the parameters are the same"),
      f_bool("use_rotary_embeddings", false,
             "rotary position embeddings (GPT-NeoX half-split) on the q and k heads; needs dim_key / num_heads even"),
  };

  Section& block = r.new_section("block");
  block.doc = "one stack of identical blocks (xFormers' xFormerEncoderConfig)";
  block.fields = {
      f_choice("block_type", "encoder", {"encoder", "decoder"}, "encoder (self-attention) or decoder (self + cross attention)"),
      f_int("num_layers", 1, 1, kInf, "how many blocks this stack repeats"),
      f_int("dim_model", std::nullopt, 1, kInf, "model width"),
      f_choice("residual_norm_style", "post", r.names("residual_norm_style"), "where the normalization sits"),
      f_choice("normalization", "layernorm", r.names("normalization"), "normalization layer"),
      f_component("position_encoding_config", "position_encoding", true,
                  "positional embedding of the first block: {name: vocab | sine | learnable, ...}"),
      f_section("multi_head_config", mha, "multi-head attention"),
      f_component("feedforward_config", "feedforward", false, "feed-forward: {name: MLP, ...}"),
      f_bool("use_triton", true, "accepted for xFormers compatibility; has no effect here"),
      f_bool("reversible", false, "reversible layers (RevNet-style memory saving)"),
      f_refused("simplicial_embeddings", "simplicial embeddings come with the component work", "{L, temperature} on the last layer"),
      f_refused("patch_embedding_config", "patch embeddings come with the ViT/MetaFormer work", "image patch embedding"),
  };
  block.fields[0].refused_unless_default = "decoder blocks with cross-attention come with the component work";
  block.fields[3].aliases = {"layer_norm_style"};
  block.fields[9].refused_unless_default = "reversible layers come with the component work";

  Section& model = r.new_section("model");
  model.doc = "the model: xFormers' factory config plus the task head";
  model.fields = {
      f_choice("task", "causal_lm", {"causal_lm", "classification", "embedding"},
               "causal_lm: next-token LM head; classification: pooled classifier; embedding: pooled L2-normalised output"),
      f_opt_int("vocab_size", 1, "token vocabulary; default: the data's (char tokenizer) or the vocab embedding's"),
      f_opt_int("num_classes", 2, "classes (classification)"),
      f_choice("weight_init", "vit", r.names("weight_init"), "initialisation scheme (xFormers' weight_init.py rules)"),
      f_choice("check_init", "error", {"error", "warn", "off"}, "what to do with parameters that no init rule wrote"),
      f_bool("tie_embedding_weights", false, "causal_lm: the LM head reuses the token embedding matrix"),
      f_choice("pooling", "mean", {"mean", "cls"}, "classification and embedding: mean over tokens, or the first token"),
      f_section("stack_configs", block, "the stacks of blocks, in order", FieldType::section_list),
  };

  Section& data = r.new_section("data");
  data.doc = "training data";
  data.fields = {
      f_choice("kind", "text", {"text", "tokens", "copy", "reverse", "majority"},
               "text: a UTF-8 file; tokens: flat little-endian token ids; copy/reverse: synthetic sequence tasks; "
               "majority: labelled sequences (classification: the most frequent symbol)"),
      f_str("path", std::nullopt, "the text or token file; relative paths resolve against the config file's folder", FieldType::path),
      f_int("seq_len", 128, 1, kInf, "tokens per training example"),
      f_num("val_fraction", 0.1, 0.0, 1.0, "the last fraction of the data held out for validation", true),
      f_choice("tokenizer", "char", {"char", "byte"}, "text: char (the text's distinct bytes) or byte (256 ids)"),
      f_choice("token_dtype", "uint16", {"uint16", "uint32"}, "tokens: width of each id"),
      f_int("num_symbols", 16, 2, 65536, "copy/reverse/majority: alphabet size (majority: also the number of classes)"),
      f_int("num_examples", 20000, 1, kInf, "copy/reverse: examples generated"),
  };

  Section& opt = r.new_section("optimizer");
  opt.doc = "optimizer over the flat parameter buffer";
  opt.fields = {
      f_choice("name", "adamw", {"adamw", "sgd"}, "AdamW (decoupled weight decay) or SGD with momentum"),
      f_num("lr", 1e-3, 0.0, kInf, "peak learning rate"),
      f_any("betas", "[0.9, 0.999]", "AdamW [beta1, beta2], each in [0, 1)"),
      f_num("eps", 1e-8, 0.0, kInf, "AdamW epsilon", false, true),
      f_num("weight_decay", 0.01, 0.0, kInf, "decay of weights (not biases, norms, embeddings unless enabled)"),
      f_num("momentum", 0.9, 0.0, 1.0, "SGD momentum", true),
      f_bool("nesterov", false, "SGD Nesterov momentum"),
      f_bool("decay_biases", false, "also decay biases"),
      f_bool("decay_norms", false, "also decay normalization gains"),
      f_bool("decay_embeddings", false, "also decay embeddings"),
  };

  Section& sched = r.new_section("schedule");
  sched.doc = "learning-rate schedule";
  sched.fields = {
      f_choice("name", "cosine", {"constant", "warmup", "cosine", "linear"}, "shape after warmup"),
      f_int("warmup_steps", 0, 0, kInf, "linear warmup from 0"),
      f_num("min_lr", 0.0, 0.0, kInf, "floor of cosine/linear decay"),
  };

  Section& train = r.new_section("train");
  train.doc = "the training loop";
  train.fields = {
      f_int("steps", 1000, 1, kInf, "optimizer steps"),
      f_int("batch_size", 16, 1, kInf, "examples per micro-batch"),
      f_int("grad_accum", 1, 1, kInf, "micro-batches per optimizer step"),
      f_section("optimizer", opt, "optimizer"),
      f_section("schedule", sched, "learning-rate schedule"),
      f_num("grad_clip", 1.0, 0.0, kInf, "global gradient-norm clip (0: off)"),
      f_choice("precision", "fp32", {"fp32", "bf16-mixed", "fp16-mixed"}, "compute precision (CPU: fp32)"),
      f_int("eval_every", 100, 0, kInf, "steps between validation passes (0: only at the end)"),
      f_int("eval_steps", 10, 1, kInf, "validation batches per pass"),
      f_int("log_every", 10, 1, kInf, "steps between log lines and metrics.jsonl records"),
      f_int("checkpoint_every", 0, 0, kInf, "steps between checkpoints (0: only the last step)"),
      f_int("keep_checkpoints", 3, 0, kInf, "newest checkpoints kept (0: all)"),
  };

  Section& infer = r.new_section("infer");
  infer.doc = "inference and generation";
  infer.fields = {
      f_int("max_new_tokens", 200, 0, kInf, "tokens generated after the prompt"),
      f_num("temperature", 1.0, 0.0, kInf, "sampling temperature (0: greedy)"),
      f_int("top_k", 0, 0, kInf, "sample among the k most likely tokens (0: all)"),
      f_num("top_p", 1.0, 0.0, 1.0, "nucleus sampling mass", false, true),
      f_str("prompt", std::string(""), "text the generation continues"),
  };

  Section& runtime = r.new_section("runtime");
  runtime.doc = "where and how the job runs";
  runtime.fields = {
      f_str("device", std::string("auto"), "auto | cpu | cuda | cuda:N"),
      f_int("seed", 1337, 0, kInf, "seed of initial weights, data order and dropout"),
      f_str("out_dir", std::string("out"), "metrics, checkpoints and samples go here", FieldType::path),
      f_int("threads", 0, 0, kInf, "CPU threads (0: every core)"),
      f_bool("cuda_graph", true, "CUDA: capture the training step (and evaluation) as a CUDA graph and replay it"),
  };

  Section& root = r.new_section("root");
  root.doc = "an xfrun config file";
  root.fields = {f_section("model", model, "the model"), f_section("data", data, "training data"),
                 f_section("train", train, "training"), f_section("infer", infer, "inference"),
                 f_section("runtime", runtime, "runtime")};
}

}  // namespace

void register_builtin(Registry& r) {
  register_attention(r);
  register_feedforward(r);
  register_positions(r);
  register_named(r, "residual_norm_style",
                 {{"pre", "x + f(norm(x)); the last block of the last stack adds a final norm"},
                  {"post", "norm(x + f(x))"},
                  {"deepnorm", "norm(alpha x + f(x)), init gain beta (DeepNet; xFormers' coefficients)"}});
  register_named(r, "normalization",
                 {{"layernorm", "LayerNorm with learned gain and bias (eps 1e-5)"},
                  {"rmsnorm", "RMSNorm with learned gain (eps 1e-6)"},
                  {"skip", "no normalization"}});
  register_named(r, "activation",
                 {{"relu", "max(x, 0)"}, {"gelu", "x Phi(x) (erf)"}, {"gelu_tanh", "tanh approximation of gelu"},
                  {"leaky_relu", "x or 0.01 x"}, {"squared_relu", "relu(x)^2"},
                  {"smelu", "smooth relu, beta 2"}, {"star_relu", "0.8944 relu(x)^2 - 0.4472"},
                  {"silu", "x sigmoid(x)"}, {"sigmoid", "1 / (1 + exp(-x))"}});
  register_named(r, "weight_init",
                 {{"vit", "ViT/JAX: xavier-uniform linears, ffn biases N(0, 1e-6)"},
                  {"timm", "timm: linears truncated-normal std 0.02 (bounds +-sqrt(3) std)"},
                  {"moco", "MoCo v3: linears uniform +-sqrt(6 / (fan_in + fan_out))"},
                  {"small", "Transformer Without Tears: attention linears U(+-sqrt(6 / (fan_in + 4 fan_out)))"}});
  register_sections(r);
}

}  // namespace xfr
