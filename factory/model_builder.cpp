#include "factory/model_builder.h"

#include <cmath>

#include "components/linear.h"
#include "components/multi_head_dispatch.h"
#include "factory/registry.h"
#include "ops/attention.h"
#include "ops/cast.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/kv_cache.h"
#include "ops/linear.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/reduce.h"
#include "ops/shape_ops.h"
#include "runtime/env.h"
#include "runtime/error.h"

namespace xfr {

DeepNormCoefficients deepnorm_encoder_coefficients(int64_t n, int64_t m) {
  const double N = static_cast<double>(n), M = static_cast<double>(m);
  if (m == 0) return {std::pow(2 * N, 0.25), std::pow(8 * N, -0.25)};
  return {0.81 * std::pow(std::pow(N, 4) * M, 1.0 / 16), 0.87 * std::pow(std::pow(N, 4) * M, -1.0 / 16)};
}

namespace {

// LayerNorm eps 1e-5 (torch's default; xFormers' PyTorch path), RMSNorm eps 1e-6 (LLaMA, T5).
constexpr double kLayerNormEps = 1e-5;
constexpr double kRmsNormEps = 1e-6;

// A normalization layer of x, or of x + residual (a block's residual add) when residual is defined: one fused
// layernorm (ops/norm.h) for layernorm, an add then the norm otherwise. *sum, when given, receives x + residual
// (the residual stream of a pre-norm model goes on from it). Parameters "<name>.weight" (and ".bias"), init
// module `init_path`. `training`: the fused layernorm writes x + residual even when no one asks for it (a post-norm
// block's norms, a pre-norm model's final norm), because its backward needs it: recomputing it there is an add
// kernel reading two tensors and writing one (GPT-2's final norm: 21 us on the H200, 2026-12-01), against one more
// tensor written by the forward pass that already has it in registers.
// A layernorm's input that is a fresh add (Graph::fresh_producer: no node reads it yet) of x-shaped a and b whose
// shape is a suffix of a's (the positional encoding's embeddings + positions, (B, T, C) + (T, C)) is taken in as the
// norm's x and its (broadcast) residual: the first block's norm then writes the sum the add would have, bit for bit,
// and its backward adds the residual stream's gradient in its pass (no add kernel either way, 2 x 21 us a GPT-2 step
// on the H200). The add node is then read by nothing and the executor skips it.
Value normalize(Value x, const std::string& kind, const std::string& name, const std::string& init_path,
                bool training, Value residual = {}, Value* sum = nullptr) {
  Graph& g = *x.graph;
  if (!residual.defined() && kind == "layernorm" && sum) {
    const Node* n = g.fresh_producer(x);
    const auto* op = n ? dynamic_cast<const BinaryOp*>(n->op.get()) : nullptr;
    if (op && op->kind == BinaryKind::add) {
      const Value a{&g, n->inputs[0]}, b{&g, n->inputs[1]};
      for (const auto& [full, part] : {std::pair<Value, Value>{a, b}, std::pair<Value, Value>{b, a}}) {
        if (full.meta() != x.meta() || part.dtype() != x.dtype() || !residual_broadcasts(part.shape(), x.shape()))
          continue;
        x = full;
        residual = part;
        break;
      }
    }
  }
  if (residual.defined() && kind != "layernorm") {
    x = add(x, residual, name + "_residual");
    residual = Value{};
    if (sum) *sum = x;
  }
  if (kind == "skip") return x;
  auto s = g.scope(name);
  const int64_t C = x.dim(-1);
  InitInfo info;
  info.module = init_path;
  info.kind = ModuleKind::layernorm;
  info.attr = "weight";
  const Value w = g.param("weight", {C}, ParamKind::norm, info);
  if (kind == "rmsnorm") return rmsnorm(x, w, kRmsNormEps, "rmsnorm");
  info.attr = "bias";
  const Value b = g.param("bias", {C}, ParamKind::norm, info);
  if (!residual.defined()) return layernorm(x, w, b, kLayerNormEps, "layernorm");
  const ResidualLayerNorm r = add_layernorm(x, residual, w, b, sum != nullptr || training, kLayerNormEps, "layernorm");
  if (sum) *sum = r.sum;
  return r.y;
}

struct BlockPlan {
  const ConfigNode* stack;
  int64_t global_index;  // index among all encoder blocks: the xFormers module name
  bool first, last;      // first block of the model (positional embedding), last block of the last stack
};

}  // namespace

bool supports_kv_cache(const ConfigNode& model) {
  if (get_string(model, "task") != "causal_lm") return false;
  const ConfigNode& stacks = model.at("stack_configs");
  for (size_t s = 0; s < stacks.size(); ++s) {
    const ConfigNode& mh = stacks.at(s).at("multi_head_config");
    const ConfigNode& att = mh.at("attention");
    if (get_string(att, "name") != "scaled_dot_product" || !get_bool(att, "causal")) return false;
    // The decode step's mask covers every cached position: a sliding window recomputes instead.
    if (const ConfigNode* w = att.find("window_left"); w && w->as_int().value_or(-1) >= 0) return false;
    if (const ConfigNode* r = mh.find("use_rotary_embeddings"); r && r->as_bool().value_or(false)) return false;
  }
  return true;
}

DType compute_dtype_of(const std::string& precision) {
  if (precision == "fp32") return DType::f32;
  if (precision == "bf16-mixed") return DType::bf16;
  if (precision == "fp16-mixed") return DType::f16;
  throw Error("config", "unknown precision '" + precision + "' (known: fp32, bf16-mixed, fp16-mixed)", "train.precision");
}

BuiltModel build_model(const ConfigNode& model, int64_t B, int64_t T, bool training, DecodeGraph* decode,
                       DType compute_dtype) {
  const Registry& reg = Registry::builtin();
  BuiltModel m;
  m.graph = std::make_unique<Graph>();
  Graph& g = *m.graph;
  if (compute_dtype != DType::f32) {  // mixed precision: every parameter is used through a cast
    g.set_compute_dtype(compute_dtype);
    g.set_param_transform([compute_dtype](const Value& p) { return cast(p, compute_dtype, "cast"); });
  }
  const std::string task = get_string(model, "task");
  XF_CHECK(has_value(model, "vocab_size"), "model", "vocab_size is not known (set model.vocab_size)");
  const int64_t V = get_int(model, "vocab_size");
  m.vocab_size = V;
  const int64_t S = T;  // positions the model is built for (the cache length when decoding)
  if (decode) {
    XF_CHECK(supports_kv_cache(model) && !training && B == 1, "model",
             "KV-cache decoding needs a causal_lm with causal scaled_dot_product attention, no window_left and no "
             "rotary embeddings");
    T = 1;
    decode->cache_len = S;
    decode->position = g.input("position", TensorMeta{{1, 1}, DType::i32});
    decode->cache_position = g.input("cache_position", TensorMeta{{1}, DType::i32});
    decode->mask = g.input("mask", TensorMeta{{1, S}, DType::f32});

  }
  m.tokens = g.input("tokens", TensorMeta{{B, T}, DType::i32});
  const ConfigNode& stacks = model.at("stack_configs");
  XF_CHECK(stacks.size() > 0, "model", "stack_configs is empty");

  std::vector<BlockPlan> plan;
  int64_t total = 0;
  for (size_t s = 0; s < stacks.size(); ++s) total += get_int(stacks.at(s), "num_layers");
  for (size_t s = 0, idx = 0; s < stacks.size(); ++s)
    for (int64_t i = 0; i < get_int(stacks.at(s), "num_layers"); ++i, ++idx)
      plan.push_back(BlockPlan{&stacks.at(s), static_cast<int64_t>(idx), idx == 0, static_cast<int64_t>(idx) == total - 1});
  const bool deepnorm = get_string(stacks.at(0), "residual_norm_style") == "deepnorm";
  if (deepnorm) m.init_gain = deepnorm_encoder_coefficients(total, 0).beta;

  // ---- embeddings: the first block's positional encoding, or a token embedding in front of it ----
  const ConfigNode& first = *plan[0].stack;
  const int64_t D0 = get_int(first, "dim_model");
  Value x;
  Value word_embeddings;
  const ConfigNode* pos = first.find("position_encoding_config");
  const ComponentEntry* pos_entry = nullptr;
  if (pos && !pos->is_null()) pos_entry = reg.find("position_encoding", get_string(*pos, "name"));
  BuildContext ctx{g, "0.pose_encoding", D0, S, V, training, decode ? decode->position : Value{}};
  if (!pos_entry || !pos_entry->consumes_token_ids) {
    // Not in xFormers (its encoder takes embeddings): tokens need an embedding first; N(0, 0.02) as GPT-2.
    auto s = g.scope("token_embedding");
    InitInfo info;
    info.module = "token_embedding";
    info.kind = ModuleKind::component;
    info.attr = "weight";
    info.component_rule = "normal(std=0.02)";
    word_embeddings = g.param("weight", {V, D0}, ParamKind::embedding, info);
    x = embedding(word_embeddings, m.tokens, "lookup");
  }
  if (pos_entry) {
    auto s = g.scope("pose_encoding");
    x = pos_entry->position(*pos, m.tokens, x, ctx);
    if (pos_entry->consumes_token_ids)  // the f32 parameter: cast like every parameter use
      word_embeddings = cast(g.find("pose_encoding.word_embeddings.weight"), compute_dtype, "word_embeddings_cast");
  }

  // ---- blocks ----
  Value pending;  // pre-norm: the last sublayer's output, not yet added to the residual stream x
  // The residual add of a sublayer that ends in a linear layer (the attention's and the MLP's output projections),
  // done by that layer's GEMM (its C input): the norm that reads the sum next then reads one tensor and writes one,
  // where taking the add in it reads two and writes two (the sum goes on as the residual stream). Its backward takes
  // the stream's other gradient in as its dadd (LayerNormOp::backward). XF_RESIDUAL_IN_GEMM=0 keeps the add in the
  // norm (A/B comparisons).
  const bool residual_in_gemm = env_flag_default_on("XF_RESIDUAL_IN_GEMM");
  for (const auto& b : plan) {
    const ConfigNode& st = *b.stack;
    const int64_t D = get_int(st, "dim_model");
    XF_CHECK(x.dim(-1) == D, "model", "block ", b.global_index, " has dim_model ", D, " but its input has width ",
             x.dim(-1), " (stacks must share dim_model)");
    const std::string style = get_string(st, "residual_norm_style");
    const std::string norm = get_string(st, "normalization");
    const std::string idx = std::to_string(b.global_index);
    auto scope = g.scope("blocks." + idx);
    const ConfigNode& mh = st.at("multi_head_config");
    const ConfigNode& att = mh.at("attention");
    const ComponentEntry* att_entry = reg.find("attention", get_string(att, "name"));
    const ConfigNode& ff = st.at("feedforward_config");
    const ComponentEntry* ff_entry = reg.find("feedforward", get_string(ff, "name"));
    XF_CHECK(att_entry && ff_entry, "model", "unknown component in block ", idx);
    const double alpha = style == "deepnorm" ? deepnorm_encoder_coefficients(get_int(st, "num_layers"), 0).alpha : 1.0;

    // xFormers' wrapper paths: pre = Residual(PreNorm(norm, sublayer)); post/deepnorm = PostNorm(norm, Residual(sublayer)).
    const bool pre = style == "pre";
    const bool final_norm = pre && b.last;  // the fixed quirk: a pre-norm model always ends normalised
    const std::string att_path = idx + (pre ? ".wrap_att.layer" : ".wrap_att.sublayer.layer");
    const std::string ff_wrap = idx + (final_norm ? ".wrap_ff.sublayer" : ".wrap_ff");
    const std::string ff_path = ff_wrap + (pre ? ".layer.sublayer" : ".sublayer.layer");

    MultiHeadSpec spec;
    spec.dim_model = D;
    spec.num_heads = get_int(mh, "num_heads");
    spec.dim_key = has_value(mh, "dim_key") ? get_int(mh, "dim_key") : D;
    spec.dim_value = has_value(mh, "dim_value") ? get_int(mh, "dim_value") : D;
    spec.bias = get_bool(mh, "bias");
    spec.residual_dropout = training ? get_number(mh, "residual_dropout") : 0.0;
    spec.use_separate_proj_weight = get_bool(mh, "use_separate_proj_weight");
    spec.use_rotary_embeddings = get_bool(mh, "use_rotary_embeddings");
    spec.init_prefix = pre ? att_path + ".sublayer" : att_path;
    BuildContext actx{g, spec.init_prefix + ".attention", D, T, V, training, Value{}};
    // Training and whole-sequence inference hand multi_head_dispatch the bshd builder when the attention has one
    // (no head permutes); decoding keeps (B, H, S, D) heads, the KV caches' layout.
    AttentionFn bshd;
    if (!decode && att_entry->attention_bshd)
      bshd = [&](Value q, Value k, Value v) { return att_entry->attention_bshd(att, q, k, v, actx); };
    // And the packed builder: one GEMM for the q, k and v projections, read in place. XF_ATTENTION_QKV_PACKED=0
    // keeps the three projections (A/B comparisons).
    PackedAttentionFn packed;
    if (!decode && att_entry->attention_qkvpacked && env_flag_default_on("XF_ATTENTION_QKV_PACKED"))
      packed = [&](Value qkv) { return att_entry->attention_qkvpacked(att, qkv, actx); };
    auto attention_sublayer = [&](Value in) {
      return multi_head_dispatch(in, spec, [&](Value q, Value k, Value v) {
        if (!decode) return att_entry->attention(att, q, k, v, actx);
        // One new token: write its key and value into the caches, attend over the cached positions.
        auto cs = g.scope("cache");
        const Value kc = g.input("k", TensorMeta{{1, k.dim(1), S, k.dim(3)}, k.dtype()});
        const Value vc = g.input("v", TensorMeta{{1, v.dim(1), S, v.dim(3)}, v.dtype()});
        const Value k_all = kv_cache_write(kc, k, decode->cache_position, "k_write");
        const Value v_all = kv_cache_write(vc, v, decode->cache_position, "v_write");
        decode->k_in.push_back(kc);
        decode->v_in.push_back(vc);
        decode->k_out.push_back(k_all);
        decode->v_out.push_back(v_all);
        return scaled_dot_product_attention(q, k_all, v_all, cast(decode->mask, q.dtype(), "mask_cast"),
                                            AttentionOptions{}, "attention");
      }, "mha", bshd, packed);
    };
    BuildContext fctx{g, ff_path, D, S, V, training, Value{}};
    auto ff_sublayer = [&](Value in) {
      auto s = g.scope("feedforward");
      return ff_entry->feedforward(ff, in, fctx);
    };
    auto add_to_stream = [&](Value& stream, Value& sublayer_out) {
      if (!residual_in_gemm) return;
      if (const Value sum = fold_residual_into_linear(sublayer_out, stream); sum.defined()) {
        stream = sum;
        sublayer_out = Value{};
      }
    };
    if (pre) {
      // x + sublayer(norm(x)) twice. Each residual add is done by the sublayer's last GEMM, or left pending and fused
      // into the norm that reads its sum next (norm2, or the next block's norm1 / the final norm), which also writes
      // the sum out.
      const Value h1 = normalize(x, norm, "norm1", idx + ".wrap_att.layer.norm", training, pending, &x);
      pending = attention_sublayer(h1);
      add_to_stream(x, pending);
      const Value h2 = normalize(x, norm, "norm2", ff_wrap + ".layer.norm", training, pending, &x);
      pending = ff_sublayer(h2);
      add_to_stream(x, pending);
      if (final_norm) {
        x = normalize(x, norm, "final_norm", idx + ".wrap_ff.norm", training, pending);
        pending = Value{};
      }
    } else {
      if (pending.defined()) x = add(x, pending, "residual");  // a pre-norm stack before this one
      pending = Value{};
      const Value r1 = alpha == 1.0 ? x : scale(x, alpha, "residual_scale1");
      x = normalize(r1, norm, "norm1", idx + ".wrap_att.norm", training, attention_sublayer(x));
      const Value r2 = alpha == 1.0 ? x : scale(x, alpha, "residual_scale2");
      x = normalize(r2, norm, "norm2", idx + ".wrap_ff.norm", training, ff_sublayer(x));
    }
  }
  if (pending.defined()) x = add(x, pending, "residual");
  m.hidden = x;
  const int64_t C = x.dim(-1);

  // ---- heads ----
  auto head_info = [](const std::string& module, const std::string& rule, int64_t fan_in, int64_t fan_out) {
    InitInfo info;
    info.module = module;
    info.kind = ModuleKind::component;
    info.component_rule = rule;
    info.fan_in = fan_in;
    info.fan_out = fan_out;
    return info;
  };
  if (task == "causal_lm" || task == "embedding") {
    Value w;
    if (get_bool(model, "tie_embedding_weights")) {
      XF_CHECK(word_embeddings.defined() && word_embeddings.dim(1) == C, "model",
               "tie_embedding_weights needs a token embedding of width ", C);
      w = word_embeddings;
    } else {
      // Outside xFormers' factory: microGPT's wrapper (and GPT-2) initialise the head N(0, 0.02).
      auto s = g.scope("lm_head");
      InitInfo info = head_info("lm_head", "normal(std=0.02)", C, V);
      info.attr = "weight";
      w = g.param("weight", {V, C}, ParamKind::weight, info);
    }
    m.logits = matmul(x, w, false, true, "logits");  // (B, T, V)
    m.targets = g.input("targets", TensorMeta{{B, T}, DType::i32});
    m.loss = cross_entropy(reshape(m.logits, {B * T, V}, "logits_2d"), reshape(m.targets, {B * T}, "targets_1d"),
                           -100, 0.0, "loss");
  }
  if (task == "classification" || task == "embedding") {
    m.pooled = get_string(model, "pooling") == "mean" ? reduce_mean(x, {1}, false, "pool")
                                                      : reshape(slice(x, 1, 0, 1, "cls"), {B, C}, "pool");
  }
  if (task == "classification") {
    XF_CHECK(has_value(model, "num_classes"), "model", "classification needs model.num_classes");
    const int64_t K = get_int(model, "num_classes");
    auto s = g.scope("classifier");
    // torch's nn.Linear default (kaiming-uniform(a=sqrt 5)): U(+-1/sqrt(fan_in)) for weight and bias; LRA's
    // wrapper keeps it.
    InitInfo info = head_info("classifier", "uniform(1/sqrt(fan_in))", C, K);
    info.attr = "weight";
    const Value w = g.param("weight", {K, C}, ParamKind::weight, info);
    info.attr = "bias";
    const Value bias = g.param("bias", {K}, ParamKind::bias, info);
    m.logits = add(matmul(m.pooled, w, false, true, "matmul"), bias, "logits");  // (B, K)
    m.targets = g.input("targets", TensorMeta{{B}, DType::i32});
    m.loss = cross_entropy(m.logits, m.targets, -100, 0.0, "loss");
  }
  if (task == "embedding") {
    // x / ||x||: rmsnorm divides by sqrt(mean(x^2)), i.e. ||x|| / sqrt(C).
    m.embedding = scale(rmsnorm(m.pooled, Value{}, 1e-12, "l2"), 1.0 / std::sqrt(static_cast<double>(C)), "embedding");
  }
  return m;
}

}  // namespace xfr
