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

std::vector<TensorMeta> Graph::infer_node(const Op& op, const std::vector<TensorMeta>& in, const std::string& node) const {
  try {
    return op.infer(in);
  } catch (const Error& e) {
    throw Error(e.op(), e.message() + " (node '" + node + "')", e.config_path());
  }
}

int Graph::new_output(int node_id, const std::string& node, size_t k, size_t outputs, const TensorMeta& meta,
                      bool inputs_require_grad) {
  ValueInfo v;
  v.meta = meta;
  v.name = outputs == 1 ? node : node + ":" + std::to_string(k);
  v.producer = node_id;
  v.producer_output = static_cast<int>(k);
  v.requires_grad = inputs_require_grad && is_floating(meta.dtype);
  return new_value(std::move(v));
}

std::vector<Value> Graph::add(std::shared_ptr<const Op> op, const std::vector<Value>& inputs,
                              const std::string& name, int64_t rng_offset) {
  std::vector<TensorMeta> in_meta;
  Node n;
  n.op = op;
  n.name = qualified(name.empty() ? op->name() + "_" + std::to_string(nodes_.size()) : name);
  bool any_input_requires_grad = false;
  for (const auto& v : inputs) {
    XF_CHECK(v.defined() && v.graph == this, op->name(), "node '", n.name, "' got a value of another graph");
    in_meta.push_back(v.meta());
    n.inputs.push_back(v.id);
    any_input_requires_grad |= value(v.id).requires_grad;
  }
  const std::vector<TensorMeta> out_meta = infer_node(*op, in_meta, n.name);
  const int64_t randoms = op->random_numbers(in_meta);
  if (rng_offset >= 0) {
    n.rng_offset = rng_offset;  // a backward node replaying its forward node's random numbers
  } else if (randoms > 0) {
    n.rng_offset = rng_cursor_;
    rng_cursor_ += (randoms + 3) / 4 * 4;  // whole Philox blocks, so every node starts at lane 0
  }
  const int node_id = static_cast<int>(nodes_.size());
  std::vector<Value> outs;
  for (size_t k = 0; k < out_meta.size(); ++k) {
    const int id = new_output(node_id, n.name, k, out_meta.size(), out_meta[k], any_input_requires_grad);
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
  const std::vector<TensorMeta> out_meta = infer_node(*op, in_meta, n.name);
  XF_CHECK(op->random_numbers(in_meta) == 0 && n.rng_offset < 0, op->name(), "extend: node '", n.name,
           "' consumes random numbers");
  XF_CHECK(out_meta.size() >= n.outputs.size(), op->name(), "extend: node '", n.name, "' would lose outputs");
  for (size_t k = 0; k < n.outputs.size(); ++k)
    XF_CHECK(out_meta[k] == value(n.outputs[k]).meta, op->name(), "extend: node '", n.name, "' output ", k,
             " would change from ", value(n.outputs[k]).meta.str(), " to ", out_meta[k].str());
  n.op = std::move(op);
  std::vector<Value> outs;
  for (size_t k = n.outputs.size(); k < out_meta.size(); ++k) {
    const int id = new_output(node_id, n.name, k, out_meta.size(), out_meta[k], any_input_requires_grad);
    n.outputs.push_back(id);  // (n stays valid: new_output grows values_, not nodes_)
    outs.push_back(Value{this, id});
  }
  return outs;
}

const Node* Graph::fresh_producer(const Value& v) const {
  const int p = value(v.id).producer;
  if (p < 0) return nullptr;
  const Node& n = node(p);
  if (n.outputs.size() != 1) return nullptr;
  for (int i = p + 1; i < num_nodes(); ++i)
    for (int in : node(i).inputs)
      if (in == v.id) return nullptr;
  return &n;
}

Value Graph::row_sum_of(const Value& v) {
  XF_CHECK(v.defined() && v.graph == this, "graph", "row_sum_of: a value of another graph");
  const int node_id = value(v.id).producer, k = value(v.id).producer_output;
  if (node_id < 0) return {};
  int at = node(node_id).op->row_sum_output(k);
  if (at < 0) {
    std::shared_ptr<const Op> op = node(node_id).op->with_row_sum(k);
    if (!op) return {};
    at = op->row_sum_output(k);
    extend(node_id, std::move(op));
  }
  const Value sum{this, node(node_id).outputs.at(static_cast<size_t>(at))};
  XF_CHECK(sum.meta() == (TensorMeta{{v.dim(-1)}, v.dtype()}), node(node_id).op->name(), "row_sum_of: node '",
           node(node_id).name, "' gave ", sum.meta().str(), " for the row sum of ", v.meta().str());
  return sum;
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
