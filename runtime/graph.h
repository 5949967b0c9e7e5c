// The graph: named values and op nodes. Components build subgraphs under name scopes
// ("encoder.3.mha.q_proj"), autodiff appends backward nodes, the executor compiles and runs it.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/op.h"
#include "runtime/param.h"

namespace xfr {

enum class ValueKind : uint8_t { input, param, activation };

struct ValueInfo {
  TensorMeta meta;
  std::string name;
  ValueKind kind = ValueKind::activation;
  int producer = -1;         // node id (activations)
  int producer_output = 0;   // which output of the producer
  ParamKind param_kind = ParamKind::weight;  // params only
  InitInfo init;                             // params only: how init schemes see it
  bool requires_grad = false;  // params, and inputs a test differentiates against
};

struct Node {
  std::shared_ptr<const Op> op;
  std::vector<int> inputs, outputs;  // value ids
  std::string name;
  int64_t rng_offset = -1;  // this node's slice of the per-step random stream (-1: consumes none)
};

// A handle to a value of a graph. Cheap to copy; valid while its graph lives.
struct Value {
  Graph* graph = nullptr;
  int id = -1;
  bool defined() const { return graph != nullptr && id >= 0; }
  const TensorMeta& meta() const;
  const Shape& shape() const { return meta().shape; }
  DType dtype() const { return meta().dtype; }
  size_t rank() const { return shape().size(); }
  int64_t dim(int64_t axis) const;
  const std::string& name() const;
};

class Graph {
 public:
  Graph() = default;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  // A value supplied at each run (token ids, targets, a test's input).
  Value input(const std::string& name, TensorMeta meta, bool requires_grad = false);
  // A trainable f32 parameter, named under the current scope ("<scope>.<name>"). With a parameter
  // transform set, returns the transform of it (mixed precision: the parameter cast to the compute dtype).
  Value param(const std::string& name, const Shape& shape, ParamKind kind = ParamKind::weight, InitInfo init = {});

  // Mixed precision. compute_dtype: the dtype the model computes activations in (f32 unless the
  // builder says otherwise); param_transform: applied to each parameter param() returns, so builders
  // never see the fp32 master value (the factory sets "cast to the compute dtype"; the runtime knows no
  // op, so it is a function).
  void set_compute_dtype(DType d) { compute_dtype_ = d; }
  DType compute_dtype() const { return compute_dtype_; }
  void set_param_transform(std::function<Value(const Value&)> f) { param_transform_ = std::move(f); }
  // Parameters a ParamStore keeps next to each other, in this order (each group placed where its first member is
  // declared), so that their concatenation along the first axis is a view of the flat buffers (a packed q/k/v
  // projection's weights: no copy; see Executor). `params`: values as param() returned them (the parameters, or
  // their transforms).
  void store_adjacent(const std::vector<Value>& params);
  const std::vector<std::vector<int>>& adjacent_params() const { return adjacent_params_; }

  // Appends a node; validates through op->infer (errors also name the node). Returns its outputs.
  std::vector<Value> add(std::shared_ptr<const Op> op, const std::vector<Value>& inputs,
                         const std::string& name = {}, int64_t rng_offset = -1);
  Value add1(std::shared_ptr<const Op> op, const std::vector<Value>& inputs, const std::string& name = {}) {
    return add(std::move(op), inputs, name)[0];
  }
  // Replaces node `node_id`'s op by `op`, which takes the node's inputs and yields its outputs first, unchanged
  // (validated through op->infer), and consumes no random numbers; the outputs past those become new values of
  // the node, which are returned. For a backward rule that asks a node already built for more of what it computes.
  std::vector<Value> extend(int node_id, std::shared_ptr<const Op> op);
  // The sum of v over all its axes but the last, (v.dim(-1)) in v's dtype, as an output of the node that writes v
  // when that node's op can write it (Op::with_row_sum: the node is extended the first time), else undefined (the
  // caller sums v itself). A linear layer's bias gradient from the layernorm backward that wrote its output gradient.
  Value row_sum_of(const Value& v);
  // The node that wrote v when v is its only output and no node reads v yet, else null: an intermediate that the
  // node about to read it may absorb (a gradient sum into the matmul that produced one side, a norm's input add
  // into the norm). Readers come after the producer (nodes are appended in order), so only those are looked at.
  const Node* fresh_producer(const Value& v) const;

  // Name scopes: `auto s = g.scope("encoder.3");` qualifies names until `s` is destroyed.
  class Scope {
   public:
    explicit Scope(Graph& g) : g_(&g) {}
    Scope(Scope&& o) noexcept : g_(o.g_) { o.g_ = nullptr; }
    Scope(const Scope&) = delete;
    ~Scope() {
      if (g_) g_->scopes_.pop_back();
    }

   private:
    Graph* g_;
  };
  Scope scope(const std::string& name);
  std::string qualified(const std::string& name) const;

  const ValueInfo& value(int id) const { return values_.at(static_cast<size_t>(id)); }
  ValueInfo& value_mut(int id) { return values_.at(static_cast<size_t>(id)); }
  const Node& node(int id) const { return nodes_.at(static_cast<size_t>(id)); }
  int num_values() const { return static_cast<int>(values_.size()); }
  int num_nodes() const { return static_cast<int>(nodes_.size()); }
  Value handle(int id) { return Value{this, id}; }
  std::vector<Value> params();
  std::vector<Value> inputs();
  Value find(const std::string& name);  // undefined Value when absent
  // Random numbers one run of the whole graph consumes (sum of nodes' slices).
  int64_t random_numbers_per_run() const { return rng_cursor_; }

 private:
  int new_value(ValueInfo info);
  // op.infer(in), its errors naming the node.
  std::vector<TensorMeta> infer_node(const Op& op, const std::vector<TensorMeta>& in, const std::string& node) const;
  // Output k (of `outputs`) of node `node_id` as a new value: named "<node>" when it is the only one, else "<node>:k";
  // it requires grad when an input does and it is floating.
  int new_output(int node_id, const std::string& node, size_t k, size_t outputs, const TensorMeta& meta,
                 bool inputs_require_grad);
  std::vector<ValueInfo> values_;
  std::vector<Node> nodes_;
  std::vector<std::string> scopes_;
  int64_t rng_cursor_ = 0;
  DType compute_dtype_ = DType::f32;
  std::function<Value(const Value&)> param_transform_;
  std::vector<std::pair<int, int>> transformed_params_;  // (the transform's value, its parameter)
  std::vector<std::vector<int>> adjacent_params_;        // store_adjacent's groups of parameter ids
};

// Given to an op's backward rule.
struct BackwardContext {
  Graph& graph;
  const Node& node;
  std::vector<Value> out_grads;  // per output; undefined where no gradient flows
  Value input(int i) const { return Value{&graph, node.inputs.at(static_cast<size_t>(i))}; }
  Value output(int i) const { return Value{&graph, node.outputs.at(static_cast<size_t>(i))}; }
  Value grad(int i) const { return out_grads.at(static_cast<size_t>(i)); }
  bool needs_grad(int input_index) const;  // whether input i is on a path to something differentiated
  std::string name(const std::string& suffix) const { return node.name + ".grad." + suffix; }
  // The gradient input i has gathered so far from the nodes after this one (its other readers), or undefined. A rule
  // that adds it into its own gradient for input i in the same pass (a layernorm backward's dadd) calls absorb(i):
  // the autodiff then takes the rule's gradient as input i's whole gradient instead of adding the two.
  std::vector<Value> accumulated_grads;  // per input; empty: none known
  Value accumulated(int i) const {
    return static_cast<size_t>(i) < accumulated_grads.size() ? accumulated_grads[static_cast<size_t>(i)] : Value{};
  }
  void absorb(int i) const { absorbed.at(static_cast<size_t>(i)) = true; }
  mutable std::vector<bool> absorbed;  // per input (sized with accumulated_grads)
};

}  // namespace xfr
