// Op: the one declaration of an operation. Each op (ops/<op>.h) subclasses Op with its typed
// parameters, validates inputs and infers outputs in `infer` (throwing xfr::Error("[op] ...") that names
// the shapes), and gives its backward rule as more graph nodes. Backends only supply kernels
// (ops/cpu/*.cpp, ops/cuda/*.cu), registered by op name in runtime/kernel_registry.h.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/dtype.h"
#include "runtime/shape.h"

namespace xfr {

struct TensorMeta {
  Shape shape;
  DType dtype = DType::f32;
  bool operator==(const TensorMeta& o) const { return shape == o.shape && dtype == o.dtype; }
  bool operator!=(const TensorMeta& o) const { return !(*this == o); }
  std::string str() const { return std::string(dtype_name(dtype)) + shape_str(shape); }
  size_t bytes() const { return static_cast<size_t>(numel_of(shape)) * dtype_size(dtype); }
};

class Graph;
struct Node;
struct Value;
struct BackwardContext;

class Op {
 public:
  virtual ~Op() = default;
  // The op's name, also the key its kernels are registered under ("softmax").
  virtual std::string name() const = 0;
  // Validates the inputs and returns the outputs' metadata. Throws xfr::Error naming the op and shapes.
  virtual std::vector<TensorMeta> infer(const std::vector<TensorMeta>& inputs) const = 0;
  // Backward rule: one Value per input, the gradient of the loss with respect to it, built from more
  // graph nodes; an undefined Value where no gradient flows. The default says the op has no backward.
  virtual std::vector<Value> backward(const BackwardContext& ctx) const;
  // Where output `output`'s bytes are: its own (input -1: the op's kernel writes them), or input `input`'s, read as
  // a contiguous tensor of the output's shape and dtype starting `offset` elements in (a reshape; a split along the
  // outermost axis). No kernel runs for an op whose outputs are all views. `in`: the inputs' metadata.
  struct ViewOf {
    int input = -1;
    int64_t offset = 0;  // elements
  };
  virtual ViewOf view_of(int output, const std::vector<TensorMeta>& in) const { return {}; }
  // Whether this op's device kernels can write output `output` as a row-padded strided view: the last axis
  // contiguous, consecutive rows `ld` elements apart with ld >= the last dim (a 2-D-foldable layout, as
  // torch.compile's padded outputs). Device executors use it for a graph output that no node reads when its
  // rows are not a multiple of 16 bytes (see Executor): cuBLASLt's fast GEMM kernels store 16-byte-aligned
  // rows only, and a padded row costs a few bytes where a packing copy would cost a pass over the output.
  virtual bool writes_padded_rows(int output) const { return false; }
  // Whether every backend's kernel can skip output `output`: an executor whose graph neither reads it nor hands
  // it out allocates nothing for it and passes an undefined Tensor in its place (flash_attention's lse in an
  // inference graph: cuDNN then runs its forward without the statistics, as torch's inference SDPA does).
  virtual bool output_optional(int output) const { return false; }
  // Whether this op's device kernels, given 16-bit inputs, can write output `output` as f32 (their fp32 sums stored
  // without the rounding to the 16-bit dtype) when the tensor passed for it is f32: a device executor hands them a
  // parameter's f32 gradient slot in place of a 16-bit gradient that only that slot's cast reads (mixed precision:
  // a weight gradient GEMM then writes the slot itself; see Executor).
  virtual bool stores_f32(int output) const { return false; }
  // Whether such a kernel can also add its fp32 sums into the f32 tensor it is handed (KernelContext::add_f32_outputs)
  // instead of storing them: the executor then hands it the slot for a write that is not the run's first (a tied
  // embedding's lookup gradient, added to what the output layer's GEMM stored; only the rows it touches).
  virtual bool adds_f32(int output) const { return false; }
  // This op extended to also write the sum of output `output` over all its axes but the last (one more output, after
  // its own), or null when it cannot (the default). For a backward rule that wants the column sum of a gradient another
  // node computes anyway: a linear layer's bias gradient from the layernorm backward that wrote its output's gradient,
  // summed while dx is in registers, instead of a pass over it (Graph::row_sum_of).
  virtual std::shared_ptr<const Op> with_row_sum(int output) const { return nullptr; }
  // Which output of this op is output `output`'s row sum (an op that with_row_sum returned), or -1.
  virtual int row_sum_output(int output) const { return -1; }
  // Random numbers one execution consumes from the Philox stream (dropout); the graph gives each such
  // node its own slice of the per-step stream.
  virtual int64_t random_numbers(const std::vector<TensorMeta>& inputs) const { return 0; }
  // Typed parameters as text, for describe/debug output ("axis=-1, causal=true").
  virtual std::string attrs() const { return {}; }
};

}  // namespace xfr
