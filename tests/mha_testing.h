// A multi_head_dispatch run for tests that compare two ways of building the same attention sublayer (bhsd against
// bshd heads, three projections against the packed one): one graph, the loss sum(y * w), parameters drawn from one
// seed, so equal parameters whatever the graph's other nodes are.
#pragma once
#include <algorithm>
#include <map>
#include <memory>
#include <string>

#include "components/multi_head_dispatch.h"
#include "ops/attention.h"
#include "runtime/executor.h"
#include "runtime/param_store.h"
#include "tests/testing.h"

namespace xfr::testing {

struct MhaRun {
  Tensor y, dx, grads;               // y, dx and the parameter gradients, flat in declaration order
  std::map<std::string, int> ops;    // the graph's nodes by op name
  int packed_attention = 0;          // flash_attention nodes with qkv_packed
  int count(const std::string& op) const {
    const auto it = ops.find(op);
    return it == ops.end() ? 0 : it->second;
  }
};

// scaled_dot_product attention in `layout` (causal, dropout p) as multi_head_dispatch takes it.
inline AttentionFn sdpa_fn(AttentionLayout layout, bool causal, double p) {
  return [layout, causal, p](Value q, Value k, Value v) {
    AttentionOptions o;
    o.causal = causal;
    o.dropout = p;
    o.layout = layout;
    return scaled_dot_product_attention(q, k, v, Value{}, o, "attention");
  };
}
inline PackedAttentionFn sdpa_packed_fn(bool causal, double p) {
  return [causal, p](Value qkv) {
    AttentionOptions o;
    o.causal = causal;
    o.dropout = p;
    return scaled_dot_product_attention_qkvpacked(qkv, Value{}, o, "attention");
  };
}

// multi_head_dispatch on x (B, T, C) with the given attentions (multi_head_dispatch's arguments).
inline MhaRun run_mha(const Tensor& x, const MultiHeadSpec& spec, const AttentionFn& bhsd, const AttentionFn& bshd,
                      const PackedAttentionFn& packed = {}) {
  Graph g;
  const Value xin = g.input("x", TensorMeta{x.shape(), x.dtype()}, true);
  const Value y = multi_head_dispatch(xin, spec, bhsd, "mha", bshd, packed);
  const Value w = g.input("w", y.meta());
  const Gradients grads = gradients(y, w);
  auto store = std::make_shared<ParamStore>(g);
  // Each parameter's values (and below its gradient) by its place in declaration order (ParamSlot::stream_offset), not
  // in the store: graphs that store their parameters in another order (the packed projection's store_adjacent groups)
  // get and give the same values per parameter.
  const Tensor init = random_tensor({static_cast<int64_t>(store->flat_size())}, 31, -0.3, 0.3);
  for (const ParamSlot& s : store->slots())
    std::copy(init.data<float>() + s.stream_offset, init.data<float>() + s.stream_offset + s.numel,
              store->params() + s.offset);
  ExecutorOptions opt;
  opt.seed = 5;
  Executor ex(g, {y, grads.get(xin)}, grads, store, opt);
  ex.bind(xin, x);
  ex.bind(w, random_tensor(y.shape(), 32));
  ex.run();
  Tensor param_grads = Tensor::zeros({static_cast<int64_t>(store->flat_size())});
  for (const ParamSlot& s : store->slots())
    std::copy(store->grads() + s.offset, store->grads() + s.offset + s.numel, param_grads.data<float>() + s.stream_offset);
  MhaRun r{ex.get(y).clone(), ex.get(grads.get(xin)).clone(), param_grads, {}, 0};
  for (int n = 0; n < g.num_nodes(); ++n) {
    const Op& op = *g.node(n).op;
    ++r.ops[op.name()];
    if (op.name() == "flash_attention") r.packed_attention += static_cast<const FlashAttentionOp&>(op).a.qkv_packed;
  }
  return r;
}

}  // namespace xfr::testing
