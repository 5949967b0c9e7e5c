// Fused softmax cross-entropy over class logits, as torch.nn.functional.cross_entropy(logits, targets,
// ignore_index=..., label_smoothing=..., reduction="mean") with class-index targets.
//
//   cross_entropy  inputs  (logits (N, V), targets (N) i32 or i64)
//                  outputs (loss (1,), lse (N))   in cross_entropy_loss_dtype(logits): f32 for 16-bit logits
//                          (dlogits (N, V))       optional: d loss / d logits for d loss = 1, in the logits' dtype
//     lse[n]  = log sum_v exp(logits[n, v])
//     logp    = logits - lse
//     loss    = mean over rows n with targets[n] != ignore_index of
//               -( (1 - ls) * logp[n, targets[n]] + ls / V * sum_v logp[n, v] )       ls = label_smoothing
//
// When every row is ignored, loss is 0 (and so is its gradient); torch returns NaN (0 / 0) there, which
// would poison a whole training run because of one fully padded batch.
// A target outside [0, V) that is not ignore_index is an xfr::Error naming the row, raised when the kernel
// runs (targets are data). lse is saved for the backward; a gradient reaching it (e.g. a z-loss on lse) is
// supported: d lse[n] / d logits[n, v] = softmax(logits[n])[v].
// The third output is the backward's dlogits for a gradient of 1 reaching the loss, computed in the forward's pass
// over the logits when something reads it (Op::output_optional: an inference graph plans no buffer for it). The
// backward rule hands it out when the loss's gradient is autodiff's seed of 1 (a training step in bf16 or f32; fp16
// loss scaling seeds with the scale and runs cross_entropy_backward): one pass over the logits instead of two
// (reading 2 x N x V, writing N x V: GPT-2's are 1.65 GB in bf16), as llm.c's fused classifier does.
// Mixed precision (GPU): with bf16/f16 logits the loss and lse are f32 (computed in fp32; an lse rounded to
// 16 bits would put a relative error of ~|lse| * 2^-8 on every probability of the backward), dloss and dlse
// are f32 too, and dlogits has the logits' dtype. The CUDA kernels cannot throw on a bad target while running;
// there a target outside [0, V) that is not ignore_index makes the loss (and the gradient) NaN.
#pragma once
#include <cstdint>
#include <memory>

#include "runtime/graph.h"

namespace xfr {

// The dtype of loss and lse (and of their gradients) for logits of dtype `logits`: f32 for f16/bf16, else logits.
inline DType cross_entropy_loss_dtype(DType logits) {
  return logits == DType::f16 || logits == DType::bf16 ? DType::f32 : logits;
}

class CrossEntropyOp final : public Op {
 public:
  CrossEntropyOp(int64_t ignore_index, double label_smoothing)
      : ignore_index(ignore_index), label_smoothing(label_smoothing) {}
  std::string name() const override { return "cross_entropy"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  bool output_optional(int output) const override { return output == 2; }  // dlogits, when something reads it
  int64_t ignore_index;
  double label_smoothing;
};

// inputs  (logits (N, V), lse (N), targets (N), dloss (1,), [dlse (N) when has_dlse])
//         lse, dloss, dlse in cross_entropy_loss_dtype(logits)
// outputs (dlogits (N, V)) in the logits' dtype
//   dlogits[n, v] = dloss / n_valid * (p[n, v] - (1 - ls) [v == targets[n]] - ls / V)   for non-ignored rows
//                 + dlse[n] * p[n, v],            p = exp(logits - lse),  n_valid = number of non-ignored rows
class CrossEntropyBackwardOp final : public Op {
 public:
  CrossEntropyBackwardOp(int64_t ignore_index, double label_smoothing, bool has_dlse)
      : ignore_index(ignore_index), label_smoothing(label_smoothing), has_dlse(has_dlse) {}
  std::string name() const override { return "cross_entropy_backward"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  int64_t ignore_index;
  double label_smoothing;
  bool has_dlse;
};

// ---- front end ----------------------------------------------------------------------------------------
// logits: (N, V) f32/f64 (bf16/f16 on the GPU); targets: (N) i32/i64. Returns the mean loss, shape (1,).
// ignore_index -100 and label_smoothing 0: torch's defaults.
Value cross_entropy(Value logits, Value targets, int64_t ignore_index = -100, double label_smoothing = 0.0,
                    const std::string& name = {});

}  // namespace xfr
