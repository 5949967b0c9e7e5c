#include "runtime/graph.h"

#include <algorithm>

#include "runtime/error.h"

namespace xfr {

const TensorMeta& Value::meta() const { return graph->value(id).meta; }
int64_t Value::dim(int64_t axis) const { return shape()[normalize_axis(axis, rank(), "value")]; }
const std::string& Value::name() const { return graph->value(id).name; }

std::vector<Value> Op::backward(const BackwardContext& ctx) const {
  throw Error(name(), "has no backward rule (node '" + ctx.node.name + "')");
}

int Graph::new_value(ValueInfo info) {
  values_.push_back(std::move(info));
  return static_cast<int>(values_.size()) - 1;
}

Value Graph::input(const std::string& name, TensorMeta meta, bool requires_grad) {
  ValueInfo v;
  v.meta = std::move(meta);
  v.name = qualified(name);
  v.kind = ValueKind::input;
  v.requires_grad = requires_grad;
  return Value{this, new_value(std::move(v))};
}

Value Graph::param(const std::string& name, const Shape& shape, ParamKind kind, InitInfo init) {
  ValueInfo v;
  v.meta = TensorMeta{shape, DType::f32};
  v.name = qualified(name);
  for (const auto& other : values_)
    XF_CHECK(other.kind != ValueKind::param || other.name != v.name, "graph", "parameter '", v.name,
             "' declared twice");
  v.kind = ValueKind::param;
  v.param_kind = kind;
  v.init = std::move(init);
  v.requires_grad = true;
  const Value p{this, new_value(std::move(v))};
  if (!param_transform_) return p;
  auto scope = this->scope(name);  // the transform's nodes are named under the parameter ("<p>.cast")
  const Value t = param_transform_(p);
  transformed_params_.emplace_back(t.id, p.id);
  return t;
}

void Graph::store_adjacent(const std::vector<Value>& params) {
  std::vector<int> group;
  for (const Value& v : params) {
    XF_CHECK(v.defined() && v.graph == this, "graph", "store_adjacent: a value of another graph");
    int id = v.id;
    for (const auto& [t, p] : transformed_params_)
      if (t == id) id = p;
    XF_CHECK(value(id).kind == ValueKind::param, "graph", "store_adjacent: '", value(v.id).name, "' is not a parameter");
    for (const auto& other : adjacent_params_)
      XF_CHECK(std::find(other.begin(), other.end(), id) == other.end(), "graph", "store_adjacent: '", value(id).name,
               "' is in another group");
    group.push_back(id);
  }
  adjacent_params_.push_back(std::move(group));
}

std::vector<Value> Graph::add(std::shared_ptr<const Op> op, const std::vector<Value>& inputs,
                              const std::string& name, int64_t rng_offset) {
  std::vector<TensorMeta> in_meta;
  Node n;
  n.op = op;
  n.name = qualified(name.empty() ? op->name() + "_" + std::to_string(nodes_.size()) : name);
  for (const auto& v : inputs) {
    XF_CHECK(v.defined() && v.graph == this, op->name(), "node '", n.name, "' got a value of another graph");
    in_meta.push_back(v.meta());
    n.inputs.push_back(v.id);
  }
  std::vector<TensorMeta> out_meta;
  try {
    out_meta = op->infer(in_meta);
  } catch (const Error& e) {
    throw Error(e.op(), e.message() + " (node '" + n.name + "')", e.config_path());
  }
  const int64_t randoms = op->random_numbers(in_meta);
  if (rng_offset >= 0) {
    n.rng_offset = rng_offset;  // a backward node replaying its forward node's random numbers
  } else if (randoms > 0) {
    n.rng_offset = rng_cursor_;
    rng_cursor_ += (randoms + 3) / 4 * 4;  // whole Philox blocks, so every node starts at lane 0
  }
  const int node_id = static_cast<int>(nodes_.size());
  bool any_input_requires_grad = false;
  for (const auto& v : inputs) any_input_requires_grad |= value(v.id).requires_grad;
  std::vector<Value> outs;
  for (size_t k = 0; k < out_meta.size(); ++k) {
    ValueInfo v;
    v.meta = out_meta[k];
    v.name = out_meta.size() == 1 ? n.name : n.name + ":" + std::to_string(k);
    v.producer = node_id;
    v.producer_output = static_cast<int>(k);
    v.requires_grad = any_input_requires_grad && is_floating(v.meta.dtype);
    const int id = new_value(std::move(v));
    n.outputs.push_back(id);
    outs.push_back(Value{this, id});
  }
  nodes_.push_back(std::move(n));
  return outs;
}

std::vector<Value> Graph::extend(int node_id, std::shared_ptr<const Op> op) {
  XF_CHECK(node_id >= 0 && node_id < num_nodes(), op->name(), "extend: no node ", node_id);
  Node& n = nodes_[static_cast<size_t>(node_id)];
  XF_CHECK(op->name() == n.op->name(), op->name(), "extend: node '", n.name, "' runs ", n.op->name());
  std::vector<TensorMeta> in_meta;
  bool any_input_requires_grad = false;
  for (int v : n.inputs) {
    in_meta.push_back(value(v).meta);
    any_input_requires_grad |= value(v).requires_grad;
  }
  std::vector<TensorMeta> out_meta;
  try {
    out_meta = op->infer(in_meta);
  } catch (const Error& e) {
    throw Error(e.op(), e.message() + " (node '" + n.name + "')", e.config_path());
  }
  XF_CHECK(op->random_numbers(in_meta) == 0 && n.rng_offset < 0, op->name(), "extend: node '", n.name,
           "' consumes random numbers");
  XF_CHECK(out_meta.size() >= n.outputs.size(), op->name(), "extend: node '", n.name, "' would lose outputs");
  for (size_t k = 0; k < n.outputs.size(); ++k)
    XF_CHECK(out_meta[k] == value(n.outputs[k]).meta, op->name(), "extend: node '", n.name, "' output ", k,
             " would change from ", value(n.outputs[k]).meta.str(), " to ", out_meta[k].str());
  n.op = std::move(op);
  std::vector<Value> outs;
  for (size_t k = n.outputs.size(); k < out_meta.size(); ++k) {
    ValueInfo v;
    v.meta = out_meta[k];
    v.name = n.name + ":" + std::to_string(k);
    v.producer = node_id;
    v.producer_output = static_cast<int>(k);
    v.requires_grad = any_input_requires_grad && is_floating(v.meta.dtype);
    const int id = new_value(std::move(v));
    nodes_[static_cast<size_t>(node_id)].outputs.push_back(id);
    outs.push_back(Value{this, id});
  }
  return outs;
}

Graph::Scope Graph::scope(const std::string& name) {
  scopes_.push_back(name);
  return Scope(*this);
}

std::string Graph::qualified(const std::string& name) const {
  std::string q;
  for (const auto& s : scopes_) {
    if (s.empty()) continue;
    q += s + ".";
  }
  return q + name;
}

std::vector<Value> Graph::params() {
  std::vector<Value> r;
  for (int i = 0; i < num_values(); ++i)
    if (values_[i].kind == ValueKind::param) r.push_back(Value{this, i});
  return r;
}

std::vector<Value> Graph::inputs() {
  std::vector<Value> r;
  for (int i = 0; i < num_values(); ++i)
    if (values_[i].kind == ValueKind::input) r.push_back(Value{this, i});
  return r;
}

Value Graph::find(const std::string& name) {
  for (int i = 0; i < num_values(); ++i)
    if (values_[i].name == name) return Value{this, i};
  return {};
}

bool BackwardContext::needs_grad(int input_index) const {
  return graph.value(node.inputs.at(static_cast<size_t>(input_index))).requires_grad;
}

}  // namespace xfr
