// The component registry: one explicit list (factory/register_builtin.cpp) of every attention,
// feed-forward, positional embedding, residual style, normalization, activation and init scheme, each
// with its typed parameters (factory/schema.h) and, for graph components, a builder.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "factory/schema.h"
#include "runtime/graph.h"

namespace xfr {

// What a component builder gets besides its own validated parameters.
struct BuildContext {
  Graph& graph;
  std::string init_prefix;  // the xFormers-equivalent module path of the component, for init rules
  int64_t dim_model = 0;
  int64_t seq_len = 0;      // the current sequence length (tokens per example)
  int64_t vocab_size = 0;
  bool training = true;     // dropout is only built into training graphs
  // Incremental decoding: (B, T) i32 absolute positions of the tokens being built (undefined: 0..T-1).
  Value positions;
};

// q, k, v: (B, H, S, D) -> (B, H, Sq, Dv); or, for an entry's attention_bshd, (B, S, H, D) -> (B, Sq, H, Dv).
using AttentionBuilder = std::function<Value(const ConfigNode& params, Value q, Value k, Value v, const BuildContext&)>;
// qkv: (B, S, 3, H, D) packed self-attention heads -> (B, S, H, D).
using PackedAttentionBuilder = std::function<Value(const ConfigNode& params, Value qkv, const BuildContext&)>;
// x: (B, T, C) -> (B, T, C).
using FeedforwardBuilder = std::function<Value(const ConfigNode& params, Value x, const BuildContext&)>;
// ids: (B, T) token ids (i32); x: (B, T, C) token embeddings or undefined -> (B, T, C).
using PositionBuilder = std::function<Value(const ConfigNode& params, Value ids, Value x, const BuildContext&)>;

struct ComponentEntry {
  std::string family;  // "attention", "feedforward", "position_encoding", "residual_norm_style", ...
  std::string name;
  std::string doc;
  Section params;      // the component's own parameters (its config keys besides `name`)
  AttentionBuilder attention;
  // Optional: the same attention on (B, S, H, D) heads, returning (B, Sq, H, Dv). multi_head_dispatch uses it when
  // present, so the (B, T, H*D) projections reach the attention without a head permute (and leave it without one).
  AttentionBuilder attention_bshd;
  // Optional: the same attention on a packed qkv (B, S, 3, H, D). multi_head_dispatch then runs the three input
  // projections as one GEMM whose output the attention reads in place (components/multi_head_dispatch.h).
  PackedAttentionBuilder attention_qkvpacked;
  FeedforwardBuilder feedforward;
  PositionBuilder position;
  bool consumes_token_ids = false;  // position encodings that embed tokens themselves (vocab)
};

class Registry {
 public:
  // Every builtin component and every config section (immutable once built).
  static const Registry& builtin();

  void add(ComponentEntry entry);
  const ComponentEntry* find(const std::string& family, const std::string& name) const;
  std::vector<std::string> names(const std::string& family) const;
  std::vector<std::string> families() const;
  const std::vector<ComponentEntry>& entries() const { return entries_; }
  ComponentLookup lookup() const;

  // The top-level config schema (model, data, train, infer, runtime), owned by the registry so that
  // sections can point at each other.
  const Section& root() const { return *sections_.at("root"); }
  const Section& section(const std::string& name) const { return *sections_.at(name); }
  Section& new_section(const std::string& name);
  std::vector<std::string> section_names() const;

 private:
  std::vector<ComponentEntry> entries_;
  std::map<std::string, std::unique_ptr<Section>> sections_;
};

void register_builtin(Registry& registry);

// The config reference (docs/config.md): every section's keys, then every component family with each
// component's parameters; generated from the registry so the docs cannot drift.
std::string config_reference_markdown(const Registry& registry);

}  // namespace xfr
