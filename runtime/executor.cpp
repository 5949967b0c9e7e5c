#include "runtime/executor.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <regex>

#include "runtime/cpu/threadpool.h"
#include "runtime/device_context.h"
#include "runtime/env.h"
#include "runtime/error.h"

namespace xfr {

Executor::Executor(Graph& g, std::vector<Value> outputs, const Gradients& grads, std::shared_ptr<ParamStore> store,
                   ExecutorOptions options)
    : g_(g), opt_(options), store_(std::move(store)) {
  XF_CHECK(store_ != nullptr, "executor", "no parameter store");
  if (opt_.device_ctx) opt_.device = opt_.device_ctx->device();
  XF_CHECK(opt_.device.is_cpu() || opt_.device_ctx, "executor", "a ", opt_.device.str(),
           " executor needs a device context (ExecutorOptions::device_ctx)");
  XF_CHECK(store_->device() == opt_.device, "executor", "the parameter store is on ", store_->device().str(),
           ", the executor on ", opt_.device.str());
  const int nv = g.num_values();
  tensors_.resize(static_cast<size_t>(nv));
  view_root_.resize(static_cast<size_t>(nv));
  for (int i = 0; i < nv; ++i) view_root_[static_cast<size_t>(i)] = i;
  view_offset_.assign(static_cast<size_t>(nv), 0);

  // 1. Which nodes are needed: everything the outputs and the parameter gradients depend on.
  std::unordered_map<int, int> grad_to_slot;  // gradient value id -> slot index
  std::vector<int> roots;
  for (const auto& o : outputs) {
    XF_CHECK(o.defined() && o.graph == &g, "executor", "an output is not a value of this graph");
    roots.push_back(o.id);
    outputs_.push_back(o.id);
  }
  for (const auto& [leaf, gid] : grads.of) {
    const auto& info = g.value(leaf);
    if (info.kind != ValueKind::param) continue;
    const auto& slot = store_->slot(info.name);
    grad_to_slot[gid] = static_cast<int>(&slot - store_->slots().data());
    roots.push_back(gid);
  }
  std::vector<bool> needed(static_cast<size_t>(g.num_nodes()), false);
  std::vector<int> stack = roots;
  while (!stack.empty()) {
    const int v = stack.back();
    stack.pop_back();
    const int p = g.value(v).producer;
    if (p < 0 || needed[static_cast<size_t>(p)]) continue;
    needed[static_cast<size_t>(p)] = true;
    for (int in : g.node(p).inputs) stack.push_back(in);
  }

  // 2. Schedule in node order (a topological order: nodes only consume earlier values).
  const auto& registry = KernelRegistry::builtin();
  std::vector<int> def_step(static_cast<size_t>(nv), -1), last_use(static_cast<size_t>(nv), -1);
  std::vector<bool> constant(static_cast<size_t>(nv), false);  // constant_params: computed from parameters alone
  for (int n = 0; n < g.num_nodes(); ++n) {
    if (!needed[static_cast<size_t>(n)]) continue;
    const Node& node = g.node(n);
    Step s;
    s.node = n;
    s.in = node.inputs;
    s.out = node.outputs;
    std::vector<TensorMeta> in_meta;
    for (int in : node.inputs) in_meta.push_back(g.value(in).meta);
    int views = 0;
    for (size_t k = 0; k < node.outputs.size(); ++k) {
      const Op::ViewOf vo = node.op->view_of(static_cast<int>(k), in_meta);
      if (vo.input >= 0) {
        const auto out = static_cast<size_t>(node.outputs[k]);
        const auto src = static_cast<size_t>(node.inputs.at(static_cast<size_t>(vo.input)));
        view_root_[out] = view_root_[src];
        view_offset_[out] = view_offset_[src] + vo.offset;
        ++views;
      }
      auto it = grad_to_slot.find(node.outputs[k]);
      s.grad_slot_out.push_back(it == grad_to_slot.end() ? -1 : it->second);
    }
    // A kernel would write its outputs: none of them may be a view of an input's bytes.
    XF_CHECK(views == 0 || views == static_cast<int>(node.outputs.size()), "executor", "op ", node.op->name(),
             " (node '", node.name, "') has ", views, " of ", node.outputs.size(), " outputs as views: all or none");
    const bool all_views = views == static_cast<int>(node.outputs.size());
    s.kernel = all_views ? nullptr : registry.get(node.op->name(), opt_.device);
    const int step = static_cast<int>(schedule_.size());
    for (int out : node.outputs) def_step[static_cast<size_t>(out)] = step;
    if (opt_.constant_params && s.kernel && node.rng_offset < 0 && !node.inputs.empty()) {
      s.params_only = std::all_of(node.inputs.begin(), node.inputs.end(), [&](int in) {
        return g.value(in).kind == ValueKind::param || constant[static_cast<size_t>(in)];
      });
      if (s.params_only)
        for (int out : node.outputs) constant[static_cast<size_t>(out)] = true;
    }
    for (int in : node.inputs) {
      const int r = view_root_[static_cast<size_t>(in)];
      last_use[static_cast<size_t>(r)] = std::max(last_use[static_cast<size_t>(r)], step);
    }
    for (int out : node.outputs) {  // a value is live at least where it is written
      const int r = view_root_[static_cast<size_t>(out)];
      last_use[static_cast<size_t>(r)] = std::max(last_use[static_cast<size_t>(r)], step);
    }
    schedule_.push_back(std::move(s));
  }
  for (int o : outputs_) last_use[static_cast<size_t>(view_root_[static_cast<size_t>(o)])] = INT_MAX;
  // Constants keep their memory from the first run on: live over every step of every later run, before their own
  // step too (a buffer of an earlier step must not share their bytes).
  for (const auto& st : schedule_)
    if (st.params_only)
      for (int o : st.out) {
        const auto r = static_cast<size_t>(view_root_[static_cast<size_t>(o)]);
        last_use[r] = INT_MAX;
        def_step[r] = 0;
      }

  // grads_overwrite: the slots no scheduled node writes (zeroed by each run instead).
  if (opt_.grads_overwrite) {
    std::vector<bool> written(store_->slots().size(), false);
    for (const auto& st : schedule_)
      for (int slot : st.grad_slot_out)
        if (slot >= 0) written[static_cast<size_t>(slot)] = true;
    for (size_t i = 0; i < written.size(); ++i)
      if (!written[i]) unwritten_grad_slots_.push_back(static_cast<int>(i));
  }
  // Mixed precision on a device: the per-parameter casts of the forward (f32 -> the compute dtype) become
  // views of one 16-bit mirror of the flat parameter buffer, filled by a single conversion at the start of
  // each run (one launch instead of one per parameter; once in all with constant_params), and each
  // backward cast of a 16-bit parameter gradient to f32, when the gradient slot is its only use, is folded
  // into the slot's accumulation (dst += float(src): one pass, no f32 copy in between).
  // Which values a scheduled node reads, and which the executor hands out (the layouts below, the inputs' use).
  std::vector<int> readers(static_cast<size_t>(nv), 0);        // per value: scheduled steps that read it
  std::vector<int> producer_step(static_cast<size_t>(nv), -1);  // per value: the step that writes it
  for (size_t i = 0; i < schedule_.size(); ++i) {
    for (int in : schedule_[i].in) ++readers[static_cast<size_t>(in)];
    for (int o : schedule_[i].out) producer_step[static_cast<size_t>(o)] = static_cast<int>(i);
  }
  const auto read_by_node = [&](int v) { return readers[static_cast<size_t>(v)] > 0; };
  std::vector<bool> is_output(static_cast<size_t>(nv), false);
  for (int o : outputs_) is_output[static_cast<size_t>(o)] = true;
  std::vector<bool> unmaterialized(static_cast<size_t>(nv), false);  // values with no buffer of their own
  if (opt_.device_ctx && opt_.fuse_param_casts) {
    // A cast step of a 16-bit value to f32 that is still to run (a gradient's way into its f32 slot).
    const auto widens_to_f32 = [&](const Step& c) {
      if (!c.kernel || g.node(c.node).op->name() != "cast" || c.in.size() != 1 || c.out.size() != 1) return false;
      const DType from = g.value(c.in[0]).meta.dtype;
      return (from == DType::bf16 || from == DType::f16) && g.value(c.out[0]).meta.dtype == DType::f32;
    };
    DType mirror_dtype = DType::f32;
    for (auto& st : schedule_) {
      const Node& node = g.node(st.node);
      if (!st.kernel || node.op->name() != "cast" || st.in.size() != 1 || st.out.size() != 1) continue;
      const auto& src = g.value(st.in[0]);
      const DType to = g.value(st.out[0]).meta.dtype;
      const bool to16 = to == DType::bf16 || to == DType::f16;
      if (src.kind == ValueKind::param && src.meta.dtype == DType::f32 && to16 &&
          (mirror_dtype == DType::f32 || mirror_dtype == to)) {
        mirror_dtype = to;
        st.mirror_offset = static_cast<int64_t>(store_->slot(src.name).offset);
      } else if (widens_to_f32(st) && st.grad_slot_out[0] >= 0 && !read_by_node(st.out[0]) &&
                 !is_output[static_cast<size_t>(st.out[0])]) {
        st.grad_cast_accumulate = true;
      } else {
        continue;
      }
      st.kernel = nullptr;
      unmaterialized[static_cast<size_t>(st.out[0])] = true;
    }
    // A concatenation along the first axis of mirror views that lie next to each other, in order (parameters the
    // store keeps adjacent: Graph::store_adjacent, a packed q/k/v projection's weights and biases) is itself a view.
    for (auto& st : schedule_) {
      const Node& node = g.node(st.node);
      if (!st.kernel || node.op->name() != "concat" || node.op->attrs() != "axis=0" || st.in.empty() ||
          st.out.size() != 1 || g.value(st.out[0]).meta.dtype != mirror_dtype)
        continue;
      int64_t start = -1, next = -1;  // the first input's view's element, and where the next one's must start
      bool adjacent = true;
      for (int in : st.in) {
        const int p = producer_step[static_cast<size_t>(in)];
        const int64_t at = p < 0 ? -1 : schedule_[static_cast<size_t>(p)].mirror_offset;
        if (at < 0 || (next >= 0 && at != next)) {
          adjacent = false;
          break;
        }
        if (start < 0) start = at;
        next = at + numel_of(g.value(in).meta.shape);
      }
      if (!adjacent) continue;
      st.mirror_offset = start;
      st.kernel = nullptr;
      unmaterialized[static_cast<size_t>(st.out[0])] = true;
    }
    // A parameter read through two casts (a tied embedding: the lookup's and the output layer's) gets the sum of two
    // 16-bit gradients, each cast to f32 and then added. With grads_overwrite both casts fold into the slot instead
    // (the first write stores, the second adds: the same f32 addition), and the add and the f32 copies go (GPT-2's
    // 50304 x 768 embedding: two casts and an add over 155 MB f32 tensors).
    const auto folds_into_slot = [&](int v) {  // v: a gradient cast to f32 that only the add reads
      if (!opt_.grads_overwrite) return false;  // (adding both into a running sum would round differently)
      const int p = producer_step[static_cast<size_t>(v)];
      if (p < 0 || readers[static_cast<size_t>(v)] != 1 || is_output[static_cast<size_t>(v)]) return false;
      return widens_to_f32(schedule_[static_cast<size_t>(p)]);
    };
    for (auto& st : schedule_) {
      const Node& node = g.node(st.node);
      if (!st.kernel || node.op->name() != "binary" || node.op->attrs() != "add" || st.in.size() != 2 ||
          st.out.size() != 1 || st.grad_slot_out[0] < 0 || st.in[0] == st.in[1] ||
          read_by_node(st.out[0]) || is_output[static_cast<size_t>(st.out[0])] ||
          !(g.value(st.in[0]).meta == g.value(st.out[0]).meta) || !(g.value(st.in[1]).meta == g.value(st.out[0]).meta) ||
          !folds_into_slot(st.in[0]) || !folds_into_slot(st.in[1]))
        continue;
      for (int in : st.in) {
        Step& c = schedule_[static_cast<size_t>(producer_step[static_cast<size_t>(in)])];
        c.grad_cast_accumulate = true;
        c.grad_slot_out[0] = st.grad_slot_out[0];
        c.kernel = nullptr;
        unmaterialized[static_cast<size_t>(c.out[0])] = true;
      }
      st.grad_slot_out[0] = -1;
      st.kernel = nullptr;
      unmaterialized[static_cast<size_t>(st.out[0])] = true;
    }
    if (mirror_dtype != DType::f32 && opt_.allocate)
      param_mirror_ = Tensor::empty({static_cast<int64_t>(store_->flat_size())}, mirror_dtype, opt_.device_ctx.get());
  }
  // Which write of a slot comes first in a run (grads_overwrite: it stores, any later one adds), and how many there are.
  std::vector<int> writes(store_->slots().size(), 0);
  for (auto& st : schedule_) {
    st.grad_first_write.assign(st.out.size(), false);
    for (size_t k = 0; k < st.out.size(); ++k)
      if (const int slot = st.grad_slot_out[k]; slot >= 0) st.grad_first_write[k] = writes[static_cast<size_t>(slot)]++ == 0;
  }
  // Mixed precision on a device: a 16-bit gradient that only its slot's cast reads, written by an op that can store
  // f32 (Op::stores_f32: the weight-gradient GEMMs, the embedding backward), is written by that op into the f32 slot
  // itself when that is the slot's first write of a run (grads_overwrite), or added there by an op that can add
  // (Op::adds_f32: a tied embedding's lookup gradient after the output layer's GEMM): no 16-bit buffer, no conversion
  // launch, and no rounding to 16 bits.
  struct BatchedGrad {
    int src;   // the gradient's value id (live to the end of the run)
    int slot;  // its slot in the store
  };
  std::vector<BatchedGrad> batched_grads;  // the table's entries, built below once the buffers have addresses
  // Per value: where in the flat f32 gradients its producer writes it (an element: its slot's, or the first of the
  // adjacent slots it spans below), or -1.
  std::vector<int64_t> f32_grad_at(static_cast<size_t>(nv), -1);
  if (opt_.device_ctx && opt_.fuse_param_casts && opt_.grads_overwrite)
    for (auto& c : schedule_) {
      if (!c.grad_cast_accumulate || c.grad_slot_out[0] < 0) continue;
      const int v = c.in[0], p = producer_step[static_cast<size_t>(v)];
      if (p < 0 || readers[static_cast<size_t>(v)] != 1 || is_output[static_cast<size_t>(v)] ||
          view_root_[static_cast<size_t>(v)] != v || !schedule_[static_cast<size_t>(p)].kernel)
        continue;
      Step& ps = schedule_[static_cast<size_t>(p)];
      const int k = static_cast<int>(std::find(ps.out.begin(), ps.out.end(), v) - ps.out.begin());
      const Op& op = *g.node(ps.node).op;
      // (one flag a step: an op that adds does so for every f32 output it is handed, so it writes that one only)
      const bool first = c.grad_first_write[0];
      if (!op.stores_f32(k) || (!first && (!op.adds_f32(k) || ps.out.size() != 1))) continue;
      ps.adds_f32 = !first;
      f32_grad_at[static_cast<size_t>(v)] =
          static_cast<int64_t>(store_->slots()[static_cast<size_t>(c.grad_slot_out[0])].offset);
      c.grad_slot_out[0] = -1;  // the producer writes the slot; the cast step has nothing left to do
      unmaterialized[static_cast<size_t>(v)] = true;
    }
  // The same for a packed gradient split along its first axis into parts, each only its own slot's first write, whose
  // slots lie next to each other in that order (Graph::store_adjacent: a packed q/k/v projection's weights): the
  // producer writes it whole in f32 across the slots (GPT-2: no 16-bit dW of the q/k/v weights, and no three casts a
  // layer). The parts, views no step reads now, are left over the f32 bytes unused.
  if (opt_.device_ctx && opt_.fuse_param_casts && opt_.grads_overwrite) {
    std::vector<int> cast_of(static_cast<size_t>(nv), -1);  // per value: the step casting it into its slot
    for (size_t i = 0; i < schedule_.size(); ++i)
      if (schedule_[i].grad_cast_accumulate && schedule_[i].grad_slot_out[0] >= 0 && schedule_[i].grad_first_write[0])
        cast_of[static_cast<size_t>(schedule_[i].in[0])] = static_cast<int>(i);
    for (const auto& sp : schedule_) {
      const Node& node = g.node(sp.node);
      if (sp.kernel || node.op->name() != "split" || node.op->attrs().rfind("axis=0,", 0) != 0 || sp.in.size() != 1)
        continue;
      const int v = sp.in[0], p = producer_step[static_cast<size_t>(v)];
      if (p < 0 || readers[static_cast<size_t>(v)] != 1 || is_output[static_cast<size_t>(v)] ||
          view_root_[static_cast<size_t>(v)] != v || !schedule_[static_cast<size_t>(p)].kernel)
        continue;
      const Step& ps = schedule_[static_cast<size_t>(p)];
      const int k = static_cast<int>(std::find(ps.out.begin(), ps.out.end(), v) - ps.out.begin());
      if (!g.node(ps.node).op->stores_f32(k)) continue;
      int64_t start = -1, next = -1;
      bool adjacent = true;
      for (int part : sp.out) {
        const int c = cast_of[static_cast<size_t>(part)];
        const ParamSlot* slot = c < 0 ? nullptr : &store_->slots()[static_cast<size_t>(schedule_[static_cast<size_t>(c)].grad_slot_out[0])];
        if (!slot || readers[static_cast<size_t>(part)] != 1 || is_output[static_cast<size_t>(part)] ||
            static_cast<int64_t>(slot->numel) != numel_of(g.value(part).meta.shape) ||
            (next >= 0 && static_cast<int64_t>(slot->offset) != next)) {
          adjacent = false;
          break;
        }
        if (start < 0) start = static_cast<int64_t>(slot->offset);
        next = static_cast<int64_t>(slot->offset + slot->numel);
      }
      if (!adjacent) continue;
      for (int part : sp.out) schedule_[static_cast<size_t>(cast_of[static_cast<size_t>(part)])].grad_slot_out[0] = -1;
      f32_grad_at[static_cast<size_t>(v)] = start;
      unmaterialized[static_cast<size_t>(v)] = true;
    }
  }
  // Small gradients on a device (biases, norm weights: at most kBatchedGradMaxElems elements) are not written into
  // their slots by a launch each where they are computed: their sources stay live to the end of the run, where one
  // launch writes them all (accumulate_f32_batch; GPT-2: 122 of its 196 slots). Only slots written once a run: the
  // batch's entries run in parallel.
  if (opt_.device_ctx)
    for (auto& st : schedule_) {
      st.grad_batched.assign(st.out.size(), false);
      for (size_t k = 0; k < st.out.size(); ++k) {
        const int slot = st.grad_slot_out[k];
        if (slot < 0 || store_->slots()[static_cast<size_t>(slot)].numel > kBatchedGradMaxElems ||
            writes[static_cast<size_t>(slot)] != 1)
          continue;
        const int src = st.grad_cast_accumulate ? st.in[0] : st.out[k];
        // (a view keeps its whole root live: only of a small one, as the packed biases' gradient of 3 slots)
        const int root = view_root_[static_cast<size_t>(src)];
        if (numel_of(g.value(root).meta.shape) > 4 * static_cast<int64_t>(kBatchedGradMaxElems)) continue;
        st.grad_batched[k] = true;
        batched_grads.push_back({src, slot});
        last_use[static_cast<size_t>(root)] = INT_MAX;
      }
    }
  // Optional outputs (Op::output_optional) that no node reads and the executor does not hand out: no buffer, and
  // the kernel gets an undefined tensor (flash_attention's lse in inference).
  for (const auto& st : schedule_) {
    if (!st.kernel) continue;
    const Node& node = g.node(st.node);
    for (size_t k = 0; k < st.out.size(); ++k) {
      const int v = st.out[k];
      if (node.op->output_optional(static_cast<int>(k)) && !read_by_node(v) &&
          !is_output[static_cast<size_t>(v)] && view_root_[static_cast<size_t>(v)] == v && st.grad_slot_out[k] < 0)
        unmaterialized[static_cast<size_t>(v)] = true;
    }
  }

  // Row-padded outputs (Op::writes_padded_rows): on a device, a graph output that no node reads, in a float
  // dtype, whose rows are not a multiple of 16 bytes, is written with rows rounded up to 16 bytes and handed
  // out as a strided view (as torch.compile pads the MiniLM encoder's 30522-wide logits): no consumer
  // needs it packed, and the GEMM's fast kernels need aligned rows.
  stored_ld_.assign(static_cast<size_t>(nv), 0);
  if (opt_.device_ctx) {
    for (const auto& st : schedule_) {
      const Node& node = g.node(st.node);
      for (size_t k = 0; k < st.out.size(); ++k) {
        const int v = st.out[k];
        const TensorMeta& m = g.value(v).meta;
        if (!is_output[static_cast<size_t>(v)] || read_by_node(v) || !st.kernel || view_root_[static_cast<size_t>(v)] != v ||
            !node.op->writes_padded_rows(static_cast<int>(k)) || m.shape.size() < 2 || !is_floating(m.dtype))
          continue;
        const int64_t es = static_cast<int64_t>(dtype_size(m.dtype)), n = m.shape.back();
        const int64_t per_row = 16 / es;  // elements in 16 bytes
        if (n % per_row != 0) stored_ld_[static_cast<size_t>(v)] = (n + per_row - 1) / per_row * per_row;
      }
    }
  }
  if (opt_.device_ctx && env_flag_default_on("XF_ONES_COLUMN")) plan_ones_columns(is_output);
  if (opt_.device_ctx && (opt_.side_stream || env_flag("XF_SIDE_STREAM")) && !opt_.profile &&
      opt_.device_ctx->has_side_stream())
    plan_side_work(is_output, f32_grad_at, last_use);
  // The shape of a value's bytes: its own, or with the last axis padded.
  auto stored_shape = [&](int v) {
    Shape s = g.value(v).meta.shape;
    if (stored_ld_[static_cast<size_t>(v)] > 0) s.back() = stored_ld_[static_cast<size_t>(v)];
    return s;
  };

  // 3. Storage: params from the store, inputs bound per run, activations planned into one arena.
  std::vector<BufferRequest> requests;
  std::vector<int> request_value;
  for (int v = 0; v < nv; ++v) {
    const auto& info = g.value(v);
    if (info.kind == ValueKind::param) {
      XF_CHECK(store_->has(info.name) && store_->shape(info.name) == info.meta.shape, "executor", "parameter '",
               info.name, "' ", info.meta.str(), " is not in the store with that shape");
      tensors_[static_cast<size_t>(v)] = store_->param(info.name);
    } else if (info.kind == ValueKind::input) {
      input_ids_.push_back(v);
    } else if (def_step[static_cast<size_t>(v)] >= 0 && view_root_[static_cast<size_t>(v)] == v &&
               !unmaterialized[static_cast<size_t>(v)]) {
      const int last = std::max(last_use[static_cast<size_t>(v)], def_step[static_cast<size_t>(v)]);
      requests.push_back(BufferRequest{TensorMeta{stored_shape(v), info.meta.dtype}.bytes(), def_step[static_cast<size_t>(v)],
                                       opt_.plan_memory ? last : INT_MAX});
      request_value.push_back(v);
    }
  }
  bound_.assign(input_ids_.size(), false);
  // Which inputs the schedule reads (decided once here, not on every run).
  input_used_.assign(input_ids_.size(), false);
  for (size_t i = 0; i < input_ids_.size(); ++i) input_used_[i] = read_by_node(input_ids_[i]);
  // On a device every activation starts on 256 bytes: the GEMM plans are keyed by their operands' alignment class
  // (ops/cuda/matmul.cu), so two memory plans of one graph (side work's longer lifetimes, the ones column) pick the same
  // algorithms, and their results agree bit for bit.
  plan_ = xfr::plan_memory(requests, opt_.device_ctx ? 256 : 64);
  if (num_side_ > 0) plan_side_joins(requests, request_value);
  if (!opt_.allocate) return;
  arena_ = Tensor::empty({static_cast<int64_t>(std::max<size_t>(plan_.arena_bytes, 1))}, DType::u8,
                         opt_.device_ctx.get());
  for (size_t i = 0; i < requests.size(); ++i) {
    const int v = request_value[i];
    const auto& m = g.value(v).meta;
    tensors_[static_cast<size_t>(v)] = arena_.carve(plan_.offsets[i], stored_shape(v), m.dtype);
    if (stored_ld_[static_cast<size_t>(v)] > 0)  // the strided view of the first m.shape.back() columns
      tensors_[static_cast<size_t>(v)] =
          tensors_[static_cast<size_t>(v)].slice(static_cast<int64_t>(m.shape.size()) - 1, 0, m.shape.back());
  }
  for (int v = 0; v < nv; ++v)  // gradients their producers write into the f32 slots (Op::stores_f32)
    if (const int64_t at = f32_grad_at[static_cast<size_t>(v)]; at >= 0)
      tensors_[static_cast<size_t>(v)] =
          store_->grads_flat().carve(static_cast<size_t>(at) * sizeof(float), g.value(v).meta.shape, DType::f32);
  for (const auto& st : schedule_)  // the parameter casts' outputs and their adjacent concatenations: mirror views
    if (st.mirror_offset >= 0) {
      const auto& m = g.value(st.out[0]).meta;
      tensors_[static_cast<size_t>(st.out[0])] =
          param_mirror_.carve(static_cast<size_t>(st.mirror_offset) * dtype_size(m.dtype), m.shape, m.dtype);
    }
  if (opt_.device_ctx) {  // fixed device buffers for the inputs (stable addresses for graph replay)
    input_buffers_.resize(input_ids_.size());
    for (size_t i = 0; i < input_ids_.size(); ++i) {
      if (!input_used_[i]) continue;
      const auto& m = g.value(input_ids_[i]).meta;
      input_buffers_[i] = Tensor::empty(m.shape, m.dtype, opt_.device_ctx.get());
      tensors_[static_cast<size_t>(input_ids_[i])] = input_buffers_[i];
    }
  }
  if (opt_.logger)
    opt_.logger->debug("executor: {} steps, activation arena {} bytes (one buffer each would take {})",
                       schedule_.size(), plan_.arena_bytes, plan_.unplanned_bytes);
  // Views of params and activations are fixed now; views of inputs are made when inputs are bound.
  for (const auto& s : schedule_)
    for (int out : s.out) {
      const int r = view_root_[static_cast<size_t>(out)];
      if (r != out && tensors_[static_cast<size_t>(r)].defined())
        tensors_[static_cast<size_t>(out)] = view_of_root(out);
    }
  if (!batched_grads.empty()) {  // the batched gradients' table, in device memory (its addresses are fixed now)
    for (const auto& [src, slot] : batched_grads) {
      const Tensor& t = tensors_[static_cast<size_t>(src)];
      XF_CHECK(t.defined() && t.is_contiguous(), "executor", "the gradient '", g.value(src).name,
               "' has no contiguous buffer of its own to batch");
      const ParamSlot& ps = store_->slots()[static_cast<size_t>(slot)];
      batched_grad_entries_.push_back(
          F32Accumulation{t.raw_data(), store_->grads() + ps.offset, ps.numel, static_cast<uint32_t>(t.dtype()), 0});
      batched_grad_max_n_ = std::max(batched_grad_max_n_, ps.numel);
    }
    const size_t bytes = batched_grad_entries_.size() * sizeof(F32Accumulation);
    batched_grad_table_ = Tensor::empty({static_cast<int64_t>(bytes)}, DType::u8, opt_.device_ctx.get());
    opt_.device_ctx->copy(batched_grad_table_.raw_data(), batched_grad_entries_.data(), bytes, CopyKind::host_to_device);
    opt_.device_ctx->synchronize();  // (the host entries may change no more, but the copy reads them now)
  }
}

void Executor::bind(Value input, const Tensor& t) {
  auto it = std::find(input_ids_.begin(), input_ids_.end(), input.id);
  XF_CHECK(input.graph == &g_ && it != input_ids_.end(), "executor", "'", input.defined() ? input.name() : "?",
           "' is not an input of this graph");
  const auto& m = g_.value(input.id).meta;
  XF_CHECK(t.shape() == m.shape && t.dtype() == m.dtype, "executor", "input '", g_.value(input.id).name, "' expects ",
           m.str(), ", got ", t.desc());
  const size_t k = static_cast<size_t>(it - input_ids_.begin());
  if (opt_.device_ctx) {
    if (input_buffers_[k].defined()) input_buffers_[k].copy_from(t);
  } else {
    XF_CHECK(t.device() == opt_.device, "executor", "input '", g_.value(input.id).name, "' is on ",
             t.device().str(), ", the executor on ", opt_.device.str());
    tensors_[static_cast<size_t>(input.id)] = t.contiguous();
  }
  bound_[k] = true;
}

void Executor::bind(const std::string& input_name, const Tensor& t) {
  Value v = g_.find(input_name);
  XF_CHECK(v.defined(), "executor", "no input named '", input_name, "'");
  bind(v, t);
}

void Executor::accumulate_grad(const Tensor& gt, const ParamSlot& slot, bool first_write) {
  float* dst = store_->grads() + slot.offset;
  const bool overwrite = opt_.grads_overwrite && first_write;
  if (opt_.device_ctx) {
    opt_.device_ctx->accumulate_f32(dst, gt.raw_data(), gt.dtype(), slot.numel, overwrite);
    return;
  }
  const float* src = gt.data<float>();
  auto body = [&](int64_t b, int64_t e) {
    if (overwrite) std::copy(src + b, src + e, dst + b);
    else
      for (int64_t i = b; i < e; ++i) dst[i] += src[i];
  };
  const int64_t n = static_cast<int64_t>(slot.numel);
  if (opt_.pool) {
    opt_.pool->parallel_for(n, 1 << 14, body);  // 16k floats per chunk: enough work to beat dispatch cost
  } else {
    body(0, n);
  }
}

void Executor::begin_run() {
  XF_CHECK(opt_.allocate, "executor", "this executor was compiled to plan memory only (allocate = false)");
  for (size_t i = 0; i < input_ids_.size(); ++i)
    XF_CHECK(bound_[i] || !input_used_[i], "executor", "input '", g_.value(input_ids_[i]).name, "' was not bound");
  if (opt_.device_ctx) {
    // Kernels read the run's stream position from device memory, so a replayed graph advances it.
    const uint64_t base = runs_ * static_cast<uint64_t>(g_.random_numbers_per_run());
    if (!rng_base_dev_.defined()) rng_base_dev_ = Tensor::empty({1}, DType::i64, opt_.device_ctx.get());
    rng_base_host_ = base;
    opt_.device_ctx->copy(rng_base_dev_.raw_data(), &rng_base_host_, sizeof base, CopyKind::host_to_device);
  }
}

void Executor::run() {
  begin_run();
  const bool graphs = opt_.device_ctx && opt_.cuda_graph && !opt_.profile && !graph_broken_;
  if (graphs && !graph_ && warm_) {
    try {
      graph_ = capture_graph(*opt_.device_ctx, [&] { enqueue(); });
    } catch (const Error& e) {
      graph_broken_ = true;
      if (opt_.logger) opt_.logger->warn("executor: CUDA graph capture failed, running eagerly: {}", e.what());
    }
  }
  if (graph_) {
    opt_.device_ctx->replay(graph_);
  } else {
    enqueue();
  }
  constants_ready_ = opt_.constant_params;
  end_run();
}

void Executor::profiled(const std::string& name, const std::function<void()>& work) {
  if (!opt_.profile) return work();
  if (opt_.device_ctx) {  // events around the work, read later (no wait here)
    auto e0 = opt_.device_ctx->record_event();
    work();
    (opt_.device_ctx->capturing() ? graph_events_ : pending_events_)
        .push_back({name, std::move(e0), opt_.device_ctx->record_event()});
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  work();
  auto& p = profile_[name];
  p.ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  ++p.calls;
}

void Executor::collect_profile() const {
  for (auto& e : pending_events_) {
    auto& p = profile_[e.op];
    p.ms += opt_.device_ctx->elapsed_ms(e.start, e.stop);
    ++p.calls;
  }
  pending_events_.clear();
}

void Executor::collect_graph_profile() {
  collect_profile();
  for (size_t i = 0; i < graph_events_.size(); ++i) {
    const PendingEvent& e = graph_events_[i];
    auto& p = profile_[e.op];
    p.ms += opt_.device_ctx->elapsed_ms(e.start, e.stop);
    ++p.calls;
    if (i == 0) continue;
    auto& gap = profile_["(between kernels, in the graph)"];
    gap.ms += opt_.device_ctx->elapsed_ms(graph_events_[i - 1].stop, e.start);
    ++gap.calls;
  }
}

void Executor::reset_profile() {
  pending_events_.clear();  // (not read: their times would be dropped)
  profile_.clear();
}

const std::map<std::string, Executor::OpTime>& Executor::profile() const {
  collect_profile();
  return profile_;
}

void Executor::refresh_param_mirror() {  // every parameter in the compute dtype, one pass
  if (!param_mirror_.defined()) return;
  profiled("cast (parameter mirror)", [&] {
    opt_.device_ctx->convert(param_mirror_.raw_data(), param_mirror_.dtype(), store_->params(), DType::f32,
                             store_->flat_size());
  });
}

namespace {
// XF_PROFILE_NODES=1: the profile keys kernels by node (its name with the layer numbers folded to '#', so the
// twelve layers of a model share a row) and output shape, not by op name alone: where each op's time goes.
bool profile_nodes() {
  static const bool on = env_flag("XF_PROFILE_NODES");
  return on;
}
}  // namespace

std::string Executor::profile_key(const Node& node, const std::vector<Tensor>& out) const {
  if (!profile_nodes()) return node.op->name();
  static const std::regex digits("[0-9]+");
  const std::string name = std::regex_replace(node.name, digits, "#");
  return str_cat(node.op->name(), " ", name, out.empty() ? "" : " " + shape_str(out[0].shape()));
}

void Executor::enqueue() {
  KernelContext ctx;
  ctx.pool = opt_.pool;
  ctx.rng_seed = opt_.seed;
  ctx.device = opt_.device;
  ctx.device_ctx = opt_.device_ctx.get();
  // Host: the stream position is passed by value; device: kernels add *rng_offset_device themselves.
  const uint64_t rng_base =
      opt_.device_ctx ? 0 : runs_ * static_cast<uint64_t>(g_.random_numbers_per_run());
  if (opt_.device_ctx) ctx.rng_offset_device = static_cast<const uint64_t*>(rng_base_dev_.raw_data());
  if (param_mirror_.defined() && !constants_ready_ && !opt_.param_mirror_by_caller) refresh_param_mirror();
  for (int slot : unwritten_grad_slots_) {  // grads_overwrite: a gradient no node writes is this run's zero
    const ParamSlot& ps = store_->slots()[static_cast<size_t>(slot)];
    float* dst = store_->grads() + ps.offset;
    if (opt_.device_ctx) opt_.device_ctx->memset_zero(dst, ps.numel * sizeof(float));
    else std::fill(dst, dst + ps.numel, 0.0f);
  }
  // Side work from the second run on (the first runs alone: autotuning times its kernels one at a time). At the end of
  // the run, and if a step throws, the main stream waits for all of it.
  const bool side = num_side_ > 0 && warm_;
  DeviceContext* const dc = opt_.device_ctx.get();
  side_tickets_.assign(static_cast<size_t>(num_side_), -1);
  struct JoinAtExit {
    DeviceContext* dc;
    int64_t last = -1;  // the last side work's ticket not joined yet
    void join() {
      if (last >= 0) dc->join_side_work(last);
      last = -1;
    }
    ~JoinAtExit() {  // (only when a step threw: the error in flight is the one to report)
      try {
        join();
      } catch (...) {
      }
    }
  } join_at_exit{dc};
  std::vector<Tensor> in, out;
  for (const auto& s : schedule_) {
    in.clear();
    out.clear();
    if (side && s.join_side >= 0) dc->join_side_work(side_tickets_[static_cast<size_t>(s.join_side)]);
    struct SideWork {  // issues the step as side work, ended (its ticket kept) however the step is left
      DeviceContext* dc;
      int64_t* ticket;
      int64_t* last;
      void end() {
        if (dc) *ticket = *last = dc->end_side_work();
        dc = nullptr;
      }
      ~SideWork() {  // (only when the step threw)
        try {
          end();
        } catch (...) {
        }
      }
    } side_work{side && s.side >= 0 ? dc : nullptr, s.side >= 0 ? &side_tickets_[static_cast<size_t>(s.side)] : nullptr,
                &join_at_exit.last};
    if (side_work.dc) dc->begin_side_work();
    for (int v : s.in) in.push_back(tensors_[static_cast<size_t>(v)]);
    for (int v : s.out) {
      const int r = view_root_[static_cast<size_t>(v)];
      if (r != v) tensors_[static_cast<size_t>(v)] = view_of_root(v);
      out.push_back(tensors_[static_cast<size_t>(v)]);
    }
    if (s.kernel && !(s.params_only && constants_ready_)) {
      const Node& node = g_.node(s.node);
      ctx.rng_offset = rng_base + static_cast<uint64_t>(std::max<int64_t>(node.rng_offset, 0));
      ctx.add_f32_outputs = s.adds_f32;
      ctx.ones_column = s.ones_column;
      try {
        if (opt_.profile) profiled(profile_key(node, out), [&] { s.kernel(*node.op, ctx, in, out); });
        else s.kernel(*node.op, ctx, in, out);
      } catch (const Error& e) {
        throw Error(e.op(), e.message() + " (node '" + node.name + "')", e.config_path());
      }
    }
    for (size_t k = 0; k < s.out.size(); ++k)
      if (s.grad_slot_out[k] >= 0 && !(k < s.grad_batched.size() && s.grad_batched[k]))
        profiled(profile_nodes() ? "gradient into its f32 slot: " + store_->slots()[static_cast<size_t>(s.grad_slot_out[k])].name
                                 : std::string("gradient into its f32 slot"), [&] {
          accumulate_grad(s.grad_cast_accumulate ? in[0] : out[k],
                          store_->slots()[static_cast<size_t>(s.grad_slot_out[k])], s.grad_first_write[k]);
        });
    side_work.end();
  }
  join_at_exit.join();  // the side work is done before the batch (which reads side steps' outputs) and the run's end
  if (!batched_grad_entries_.empty())
    profiled("small gradients into their f32 slots", [&] {
      opt_.device_ctx->accumulate_f32_batch(static_cast<const F32Accumulation*>(batched_grad_table_.raw_data()),
                                            batched_grad_entries_.size(), batched_grad_max_n_, opt_.grads_overwrite);
    });
  // The run's events (their memory is not held from run to run); a captured run's are read after its replays. (Asked
  // only with events pending: an unprofiled run makes no capture query.)
  if (!pending_events_.empty() && (!opt_.device_ctx || !opt_.device_ctx->capturing())) collect_profile();
}

Tensor Executor::view_of_root(int v) const {
  const TensorMeta& m = g_.value(v).meta;
  const int r = view_root_[static_cast<size_t>(v)];
  const Tensor& root = tensors_[static_cast<size_t>(r)];
  const int64_t ld = stored_ld_[static_cast<size_t>(r)];
  if (ld == 0)
    return root.carve(static_cast<size_t>(view_offset_[static_cast<size_t>(v)]) * dtype_size(m.dtype), m.shape, m.dtype);
  // A root stored in padded rows (plan_ones_columns admits only views that keep its rows whole, from the first).
  const int64_t K = g_.value(r).meta.shape.back();
  XF_CHECK(view_offset_[static_cast<size_t>(v)] == 0 && !m.shape.empty() && m.shape.back() == K, "executor", "value '",
           g_.value(v).name, "' is a view of padded rows that does not keep them whole");
  Shape stored = m.shape;
  stored.back() = ld;
  return root.carve(0, stored, m.dtype).slice(static_cast<int64_t>(m.shape.size()) - 1, 0, K);
}

int Executor::ones_columns() const {
  return static_cast<int>(std::count_if(schedule_.begin(), schedule_.end(), [&](const Step& s) {
    return s.ones_column && g_.node(s.node).op->name() == "layernorm";
  }));
}

// The ones column (KernelContext::ones_column): a layernorm's 16-bit y, K a multiple of 8, that no one but the executor's
// steps reads, read only by linear layers (as x) and by reshapes that keep its rows, which only linear_weight_grad reads
// (as x), and by at least one of those: y is stored in rows of ones_column_ld(K), the layernorm writes the ones column
// after each row, and the weight gradients get the bias gradients out of their GEMMs (GPT-2: the q/k/v and fc layers'
// 2304- and 3072-wide bias gradients, a column sum over g each before). XF_ONES_COLUMN=0 turns it off.
void Executor::plan_ones_columns(const std::vector<bool>& is_output) {
  const Graph& g = g_;
  std::vector<std::vector<std::pair<int, int>>> reads(static_cast<size_t>(g.num_values()));  // (step, input index)
  for (size_t i = 0; i < schedule_.size(); ++i)
    for (size_t j = 0; j < schedule_[i].in.size(); ++j)
      reads[static_cast<size_t>(schedule_[i].in[j])].emplace_back(static_cast<int>(i), static_cast<int>(j));
  const auto op_of = [&](int step) { return g.node(schedule_[static_cast<size_t>(step)].node).op->name(); };
  for (Step& ps : schedule_) {
    if (!ps.kernel || g.node(ps.node).op->name() != "layernorm") continue;
    const int y = ps.out[0];
    const TensorMeta& m = g.value(y).meta;
    if ((m.dtype != DType::bf16 && m.dtype != DType::f16) || m.shape.size() < 2 || m.shape.back() % 8 != 0 ||
        view_root_[static_cast<size_t>(y)] != y || is_output[static_cast<size_t>(y)] || stored_ld_[static_cast<size_t>(y)] > 0)
      continue;
    const int64_t K = m.shape.back();
    std::vector<int> weight_grads;
    bool ok = true;
    for (const auto& [step, j] : reads[static_cast<size_t>(y)]) {
      const Step& rs = schedule_[static_cast<size_t>(step)];
      if (op_of(step) == "linear" && rs.kernel && j == 0) continue;
      const int w = rs.out.empty() ? -1 : rs.out[0];
      ok = op_of(step) == "reshape" && !rs.kernel && rs.out.size() == 1 && view_root_[static_cast<size_t>(w)] == y &&
           view_offset_[static_cast<size_t>(w)] == 0 && g.value(w).meta.shape.back() == K &&
           !is_output[static_cast<size_t>(w)];
      if (!ok) break;
      for (const auto& [s2, j2] : reads[static_cast<size_t>(w)]) {
        ok = ok && op_of(s2) == "linear_weight_grad" && schedule_[static_cast<size_t>(s2)].kernel && j2 == 1;
        weight_grads.push_back(s2);
      }
      if (!ok) break;
    }
    if (!ok || weight_grads.empty()) continue;
    stored_ld_[static_cast<size_t>(y)] = ones_column_ld(K, static_cast<int64_t>(dtype_size(m.dtype)));
    ps.ones_column = true;
    for (int s2 : weight_grads) schedule_[static_cast<size_t>(s2)].ones_column = true;
  }
}

namespace {
// How many side steps the side stream may trail the main one by before the memory plan may give a side step's bytes to
// a later step (XF_SIDE_STREAM_LAG, at least 1): its buffers live until the side step that many later is issued.
int side_lag() {
  static const int lag = std::max(1, env_int("XF_SIDE_STREAM_LAG", 1));
  return lag;
}
}  // namespace

// Side work (ExecutorOptions::side_stream). A step feeds nothing else of the run when it has a kernel and
// - each of its outputs is a parameter gradient that its kernel writes into the f32 slots (f32_grad_at) or that its
//   slot takes (grad_slot_out), and is not handed out;
// - no later step reads it (a step that does device work: a kernel, or a gradient added into its slot where it is
//   computed; the end-of-run batch reads after the last join);
// - no later step writes any of the f32 gradient elements it writes.
// Such a step (GPT-2: the weight gradients' GEMMs, 4.4 ms of a 27 ms step) runs as side work, beside the steps that
// follow it. Its buffers (the roots of its inputs and outputs) live until side_lag() side steps later, or to the end
// of the run after the last ones; plan_side_joins() then finds where the main stream has to wait for it.
void Executor::plan_side_work(const std::vector<bool>& is_output, const std::vector<int64_t>& f32_grad_at,
                              std::vector<int>& last_use) {
  const Graph& g = g_;
  const int n = static_cast<int>(schedule_.size());
  const auto root = [&](int v) { return static_cast<size_t>(view_root_[static_cast<size_t>(v)]); };
  const auto accumulates = [](const Step& st, size_t k) {  // adds output k into its slot where it is computed
    return st.grad_slot_out[k] >= 0 && !(k < st.grad_batched.size() && st.grad_batched[k]);
  };
  // Per root value: the last step that reads it while the run is issued. Per step: the f32 gradient elements it writes
  // ([begin, end) in the flat buffer).
  std::vector<int> last_read(static_cast<size_t>(g.num_values()), -1);
  std::vector<std::vector<std::pair<int64_t, int64_t>>> f32_writes(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const Step& st = schedule_[static_cast<size_t>(i)];
    if (st.kernel)
      for (int v : st.in) last_read[root(v)] = i;
    for (size_t k = 0; k < st.out.size(); ++k) {
      const int v = st.out[k];
      if (st.kernel && f32_grad_at[static_cast<size_t>(v)] >= 0)
        f32_writes[static_cast<size_t>(i)].emplace_back(f32_grad_at[static_cast<size_t>(v)],
                                                        f32_grad_at[static_cast<size_t>(v)] + numel_of(g.value(v).meta.shape));
      if (accumulates(st, k)) {
        last_read[root(st.grad_cast_accumulate ? st.in[0] : v)] = i;
        const ParamSlot& ps = store_->slots()[static_cast<size_t>(st.grad_slot_out[k])];
        f32_writes[static_cast<size_t>(i)].emplace_back(static_cast<int64_t>(ps.offset),
                                                        static_cast<int64_t>(ps.offset + ps.numel));
      }
    }
  }
  const auto overlaps_later_write = [&](int i) {
    for (const auto& [b, e] : f32_writes[static_cast<size_t>(i)])
      for (int j = i + 1; j < n; ++j)
        for (const auto& [b2, e2] : f32_writes[static_cast<size_t>(j)])
          if (b < e2 && b2 < e) return true;
    return false;
  };
  std::vector<int> side_at;  // the side steps' places in the schedule
  for (int i = 0; i < n; ++i) {
    Step& st = schedule_[static_cast<size_t>(i)];
    if (!st.kernel || st.params_only || st.out.empty()) continue;
    bool ok = true;
    for (size_t k = 0; k < st.out.size() && ok; ++k) {
      const int v = st.out[k];
      ok = !is_output[static_cast<size_t>(v)] && (f32_grad_at[static_cast<size_t>(v)] >= 0 || st.grad_slot_out[k] >= 0) &&
           last_read[root(v)] <= i;
    }
    if (!ok || overlaps_later_write(i)) continue;
    st.side = static_cast<int>(side_at.size());
    side_at.push_back(i);
  }
  num_side_ = static_cast<int>(side_at.size());
  for (int k = 0; k < num_side_; ++k) {
    const Step& st = schedule_[static_cast<size_t>(side_at[static_cast<size_t>(k)])];
    const size_t until = static_cast<size_t>(k + side_lag());
    const int live_to = until < side_at.size() ? side_at[until] : n - 1;
    for (const auto* values : {&st.in, &st.out})
      for (int v : *values) last_use[root(v)] = std::max(last_use[root(v)], live_to);
  }
}

// Where the main stream waits for each side step: before the first later step whose kernel writes arena bytes that
// the side step reads or writes (the plan may give them to it once they are dead), or at the end of the run.
void Executor::plan_side_joins(const std::vector<BufferRequest>& requests, const std::vector<int>& request_value) {
  std::vector<std::pair<size_t, size_t>> bytes_of(static_cast<size_t>(g_.num_values()), {0, 0});  // [begin, end)
  for (size_t i = 0; i < requests.size(); ++i)
    bytes_of[static_cast<size_t>(request_value[i])] = {plan_.offsets[i], plan_.offsets[i] + requests[i].bytes};
  const auto bytes = [&](int v) { return bytes_of[static_cast<size_t>(view_root_[static_cast<size_t>(v)])]; };
  const int n = static_cast<int>(schedule_.size());
  for (int i = 0; i < n; ++i) {
    const Step& st = schedule_[static_cast<size_t>(i)];
    if (st.side < 0) continue;
    std::vector<std::pair<size_t, size_t>> mine;
    for (const auto* values : {&st.in, &st.out})
      for (int v : *values)
        if (bytes(v).second > bytes(v).first) mine.push_back(bytes(v));
    for (int j = i + 1; j < n; ++j) {
      Step& later = schedule_[static_cast<size_t>(j)];
      if (!later.kernel) continue;
      const bool clash = std::any_of(later.out.begin(), later.out.end(), [&](int v) {
        const auto [b, e] = bytes(v);
        return std::any_of(mine.begin(), mine.end(), [&](const auto& m) { return b < m.second && m.first < e; });
      });
      if (clash) {
        later.join_side = std::max(later.join_side, st.side);
        break;
      }
    }
  }
}

Tensor Executor::get(Value v) const {
  XF_CHECK(v.graph == &g_ && std::find(outputs_.begin(), outputs_.end(), v.id) != outputs_.end(), "executor", "'",
           v.defined() ? v.name() : "?", "' is not an output of this executor");
  return tensors_[static_cast<size_t>(v.id)];
}

}  // namespace xfr
