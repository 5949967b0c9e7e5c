// Dropout with a counter-based (Philox4x32-10, runtime/rng.h) mask, identical on every backend.
//
//   dropout  inputs (x (...)) -> outputs (y (...), x's shape)
//            y[i] = x[i] / (1 - p)  if philox_uniform(seed, offset + i) >= p,  else 0
//
// where (seed, offset) are the kernel context's rng_seed and rng_offset: the executor gives each dropout
// node its own slice of the per-step Philox stream (random_numbers() = numel(x)), so every run draws a
// fresh mask, and the same (seed, step) draws the same mask on the CPU and on a GPU.
// The backward is dropout of the gradient with the SAME numbers: the backward node is added with the
// forward node's rng_offset, so it replays the forward's mask (and forward + backward is exactly linear).
// p must be in [0, 1); p = 0 is the identity (the front end then adds no node).
#pragma once
#include <cstdint>
#include <memory>

#include "runtime/graph.h"

namespace xfr {

class DropoutOp final : public Op {
 public:
  explicit DropoutOp(double p) : p(p) {}
  std::string name() const override { return "dropout"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  int64_t random_numbers(const std::vector<TensorMeta>& in) const override;
  double p;
};

// Whether stream element `index` keeps its value at drop probability p: philox_uniform(seed, index) >= p,
// evaluated exactly as an integer compare of the uniform's 24 bits with ceil(p * 2^24).
uint32_t dropout_keep_threshold(double p);

// ---- front end ----------------------------------------------------------------------------------------
// x: any shape. Returns y (x's shape); x itself when p == 0.
Value dropout(Value x, double p, const std::string& name = {});

}  // namespace xfr
