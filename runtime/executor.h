// Executor: compiles a graph once for its shapes (schedule, kernel lookup, liveness-based memory plan)
// and then runs it step after step. Parameter gradients are summed into the store's flat gradient
// buffer (+=), so several runs between zero_grads() accumulate micro-batches; or, with grads_overwrite, each run
// stores its own (no zero_grads() needed).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/autodiff.h"
#include "runtime/device_context.h"
#include "runtime/graph.h"
#include "runtime/kernel_registry.h"
#include "runtime/logging.h"
#include "runtime/memory_plan.h"
#include "runtime/param_store.h"
#include "runtime/tensor.h"

namespace xfr {

class ThreadPool;

struct ExecutorOptions {
  Device device = Device::cpu();  // a CUDA device also needs device_ctx (the store's, or one on its device)
  std::shared_ptr<DeviceContext> device_ctx;  // stream, allocator and handles for a non-CPU device
  ThreadPool* pool = nullptr;  // CPU kernels parallelise over it (null: serial)
  uint64_t seed = 0;           // Philox key for dropout and other random ops
  bool plan_memory = true;     // false: one buffer per value (for tests comparing the plan)
  Logger logger;               // compile summary at debug level; null: silent
  bool profile = false;        // time every kernel by op name (adds a clock read per step)
  bool allocate = true;        // false: schedule and plan only (memory estimates); run() is refused
  // CUDA: the first run() runs eagerly (plans, caches), the second captures the kernels as a CUDA graph,
  // and every later run() replays it. Ignored on the CPU and with `profile`.
  bool cuda_graph = false;
  // Inference over parameters that do not change between runs: nodes computed from parameters alone (the
  // casts of mixed precision) run in the first run only and keep their outputs. Never for training.
  bool constant_params = false;
  // Mixed precision on a device: parameter casts as views of one flat 16-bit mirror, and 16-bit parameter
  // gradients accumulated without an f32 copy (see Executor). false keeps one cast kernel per use (tests
  // compare the two).
  bool fuse_param_casts = true;
  // With that mirror: true when the caller keeps it current (TrainStep: the device optimizer rewrites it with each
  // update, DeviceOptimizer::ParamMirror). A run then does not convert it; refresh_param_mirror() does, once the
  // parameters changed any other way (initial values, a loaded checkpoint).
  bool param_mirror_by_caller = false;
  // Each run stores its parameter gradients instead of adding them to the store's: a slot's gradient (one value a
  // run: autodiff sums a parameter's paths; where the executor folds such a sum into the slot, its first part is
  // stored and the rest added) is converted into it, and a slot no node writes is zeroed. A training
  // step without gradient accumulation then needs no zero_grads(): one pass over the f32 gradients less, and the
  // gradient's own pass writes f32 without reading it.
  bool grads_overwrite = false;
  // Device: steps whose outputs only gradient slots take (a weight gradient's GEMM) run as side work
  // (DeviceContext::begin_side_work) on the context's side stream, beside the rest of the backward, from the second run
  // on (the first runs alone: autotuning times kernels one at a time). See Executor::plan_side_work. Off by default:
  // GPT-2's step measured no faster with it (docs/gpu.md); XF_SIDE_STREAM=1 turns it on for every executor.
  bool side_stream = false;
};

class Executor {
 public:
  // outputs: values to keep after run(). grads: parameter gradients to accumulate into the store
  // (from build_backward; may be empty for inference).
  Executor(Graph& g, std::vector<Value> outputs, const Gradients& grads, std::shared_ptr<ParamStore> store,
           ExecutorOptions options = {});

  // Checks shape and dtype; on the host keeps a reference, on a device copies into the executor's own
  // buffer for that input (from host or device memory), so its address never changes between runs.
  void bind(Value input, const Tensor& t);
  void bind(const std::string& input_name, const Tensor& t);
  void run();
  // run() in three parts, for a caller that captures more than this executor's kernels in one CUDA graph
  // (a whole training step): begin_run() checks inputs and sets this run's random-stream position (on
  // the device, outside any capture); enqueue() issues every kernel (capturable: no host sync, no
  // host-side read of device data); end_run() counts the run.
  void begin_run();
  void enqueue();
  void end_run() {
    ++runs_;
    warm_ = true;
  }
  // An output on the executor's device (valid until the next run). On a GPU, an output that no node reads
  // may be a row-padded strided view (Op::writes_padded_rows): to_host() and contiguous() pack it.
  Tensor get(Value v) const;
  Device device() const { return opt_.device; }
  DeviceContext* device_ctx() const { return opt_.device_ctx.get(); }

  ParamStore& store() { return *store_; }
  const MemoryPlan& memory_plan() const { return plan_; }
  // Device: how many activations the executor stores with the ones column (KernelContext::ones_column).
  int ones_columns() const;
  // Device: how many steps run as side work (ExecutorOptions::side_stream; 0 without a side stream).
  int side_steps() const { return num_side_; }
  int num_steps() const { return static_cast<int>(schedule_.size()); }
  uint64_t runs() const { return runs_; }
  // With options.profile: total milliseconds and calls per op name (backward ops have their own names).
  struct OpTime {
    double ms = 0;
    int64_t calls = 0;
  };
  const std::map<std::string, OpTime>& profile() const;
  // Runs `work` and, with options.profile, adds its time to profile() under `name`: the device work it enqueues
  // (CUDA events, read when profile() is next asked or a run ends) or, on the host, its wall time. A training step
  // times its optimizer work here beside the graph's ops.
  void profiled(const std::string& name, const std::function<void()>& work);
  // The profile inside a captured graph (TrainStepOptions::profile_in_graph): the events `profiled` records while the
  // stream captures are nodes of the graph, recorded at every replay. begin_graph_profile() before a capture forgets
  // an earlier capture's; collect_graph_profile() after a replay of the graph adds each pair's time to profile(), and
  // the time from each pair's end to the next's start under "(between kernels, in the graph)" (launch latency and
  // the event nodes' own). reset_profile() forgets every time collected so far.
  void begin_graph_profile() { graph_events_.clear(); }
  void collect_graph_profile();
  void reset_profile();
  // Mixed precision on a device: the flat 16-bit copy of the parameters the forward reads (undefined without one;
  // see fuse_param_casts), and its conversion from the store's f32 parameters, enqueued on the device's stream.
  // Each run does that conversion itself unless options.param_mirror_by_caller.
  const Tensor& param_mirror() const { return param_mirror_; }
  void refresh_param_mirror();
  void set_runs(uint64_t r) { runs_ = r; }  // restores the random stream position (checkpoint resume)

 private:
  struct Step {
    int node;
    KernelFn kernel;                 // null for pure views
    std::vector<int> in, out;        // value ids
    std::vector<int> grad_slot_out;  // per output: index into store slots to accumulate into, or -1
    bool params_only = false;        // every input is a parameter or another params_only output
    // Mixed precision on a device (see Executor's constructor): the step's output is a view of the 16-bit parameter
    // mirror starting at this element (no kernel, no buffer), or -1. Such a step is a cast of an f32 parameter (at its
    // slot's offset), or a concatenation along the first axis of such views that lie next to each other in the
    // mirror, in order (Graph::store_adjacent: a packed q/k/v projection's weights and biases).
    int64_t mirror_offset = -1;
    // A cast of a 16-bit gradient to f32 whose only use is its parameter's gradient slot, accumulated straight from
    // the 16-bit input (no kernel, no buffer).
    bool grad_cast_accumulate = false;
    std::vector<bool> grad_batched;  // per output (device): its gradient is written by the run's batched launch
    std::vector<bool> grad_first_write;  // per output: the run's first write of its slot
    bool adds_f32 = false;  // its kernel adds into the f32 slot it is handed (KernelContext::add_f32_outputs)
    bool ones_column = false;  // KernelContext::ones_column: it writes or reads an activation with the ones column
    int side = -1;       // issued as side work: its number among the run's side steps (plan_side_work)
    int join_side = -1;  // before it runs, the main stream waits for the side work up to this number, or -1
  };
  // Small gradients on a device, written into their slots by one launch at the end of each run: at most this many
  // elements (64 KB of f32: biases and norm weights of widths up to 16k; GPT-2's weights, 590k and more, are not).
  static constexpr size_t kBatchedGradMaxElems = 16384;
  std::vector<F32Accumulation> batched_grad_entries_;  // their table (host copy)
  Tensor batched_grad_table_;                          // ... and on the device
  size_t batched_grad_max_n_ = 0;
  Tensor& tensor(int value_id) { return tensors_[static_cast<size_t>(value_id)]; }
  // += or, with grads_overwrite and the run's first write of the slot, =
  void accumulate_grad(const Tensor& g, const ParamSlot& slot, bool first_write);
  std::vector<int> unwritten_grad_slots_;  // grads_overwrite: slots no scheduled node writes, zeroed by each run

  Graph& g_;
  ExecutorOptions opt_;
  std::shared_ptr<ParamStore> store_;
  std::vector<Step> schedule_;
  std::vector<Tensor> tensors_;     // per value id (undefined for values not in the schedule)
  std::vector<int64_t> view_offset_;  // per value id: where its bytes start in its view root's, in its elements
  // Per value id: the row length its bytes are stored with when longer than its last axis (device: row-padded outputs,
  // the ones column), else 0 (packed). A view of such a root keeps the root's row stride.
  std::vector<int64_t> stored_ld_;
  // Value v (a view: view_root_[v] != v) over its root's tensor.
  Tensor view_of_root(int v) const;
  // Device: which layernorm outputs get the ones column (KernelContext::ones_column); sets stored_ld_ and the steps'
  // ones_column. is_output: per value, handed out by the executor.
  void plan_ones_columns(const std::vector<bool>& is_output);
  // Device: which steps run as side work and how long their buffers must live (last_use, per value id: extended); sets
  // the steps' side. f32_grad_at: per value, where its producer writes it in the flat f32 gradients, or -1.
  void plan_side_work(const std::vector<bool>& is_output, const std::vector<int64_t>& f32_grad_at,
                      std::vector<int>& last_use);
  // ... and, once the buffers have their places in the arena, where the main stream waits for each: before the first
  // later step that writes bytes the side step reads or writes (else at the end of the run); sets the steps' join_side.
  void plan_side_joins(const std::vector<BufferRequest>& requests, const std::vector<int>& request_value);
  int num_side_ = 0;
  std::vector<int64_t> side_tickets_;  // per side step: this run's ticket (DeviceContext::end_side_work)
  std::vector<int> view_root_;      // per value id: the value whose bytes it shares (itself if none)
  std::vector<int> input_ids_;
  std::vector<bool> bound_;
  std::vector<bool> input_used_;    // per input: read by some step (unbound unused inputs are fine)
  std::vector<Tensor> input_buffers_;  // device executors: one owned buffer per input
  Tensor rng_base_dev_;                // device executors: this run's random-stream start (1 x u64)
  std::shared_ptr<void> graph_;        // cuda_graph: the captured run
  bool graph_broken_ = false;          // capture failed once: stay eager
  bool warm_ = false;                  // one run done (plans built, caches filled): capture may start
  bool constants_ready_ = false;       // constant_params: the params_only steps have run
  uint64_t rng_base_host_ = 0;         // source of the stream-position copy (alive until it is done)
  std::vector<int> outputs_;
  Tensor arena_;
  Tensor param_mirror_;  // device mixed precision: every parameter in the compute dtype (one flat cast a run)
  MemoryPlan plan_;
  uint64_t runs_ = 0;
  // Adds the pending events' times to profile_ (a wait for the device).
  void collect_profile() const;
  // The profile's row for one kernel: the op name, or with XF_PROFILE_NODES=1 the node and its output shape.
  std::string profile_key(const Node& node, const std::vector<Tensor>& out) const;
  mutable std::map<std::string, OpTime> profile_;
  struct PendingEvent {
    std::string op;
    std::shared_ptr<void> start, stop;
  };
  mutable std::vector<PendingEvent> pending_events_;  // device profiling: events not yet read into profile_
  std::vector<PendingEvent> graph_events_;            // ... and the captured graph's, read after each replay
};

}  // namespace xfr
