#include "ops/cross_entropy.h"

#include "ops/elementwise.h"
#include "runtime/error.h"

namespace xfr {

namespace {

void check_logits_targets(const char* op, const TensorMeta& logits, const TensorMeta& targets) {
  XF_CHECK(is_floating(logits.dtype) && logits.shape.size() == 2, op, "logits must be floating (N, V), got ",
           logits.str());
  XF_CHECK(logits.shape[1] > 0, op, "logits ", logits.str(), " have no classes");
  XF_CHECK(targets.dtype == DType::i32 || targets.dtype == DType::i64, op, "targets must be i32 or i64, got ",
           targets.str());
  XF_CHECK(targets.shape == Shape{logits.shape[0]}, op, "targets ", shape_str(targets.shape),
           " must be (N,) for logits ", shape_str(logits.shape));
}

void check_smoothing(const char* op, double ls) {
  XF_CHECK(ls >= 0.0 && ls <= 1.0, op, "label_smoothing must be in [0, 1], got ", ls);  // also refuses NaN
}

}  // namespace

std::string CrossEntropyOp::attrs() const {
  return str_cat("ignore_index=", ignore_index, ", label_smoothing=", label_smoothing);
}

std::vector<TensorMeta> CrossEntropyOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 2, "cross_entropy", "takes 2 inputs (logits, targets), got ", in.size());
  check_logits_targets("cross_entropy", in[0], in[1]);
  check_smoothing("cross_entropy", label_smoothing);
  const DType st = cross_entropy_loss_dtype(in[0].dtype);
  return {TensorMeta{{1}, st}, TensorMeta{{in[0].shape[0]}, st}, in[0]};
}

std::vector<Value> CrossEntropyOp::backward(const BackwardContext& ctx) const {
  std::vector<Value> grads(2);
  if (!ctx.needs_grad(0)) return grads;
  Value dloss = ctx.grad(0);
  const Value dlse = ctx.grad(1);
  // The seed of 1 (autodiff's, when the loss is what is differentiated): the forward's own dlogits output.
  if (dloss.defined() && !dlse.defined() && !ctx.grad(2).defined()) {
    const int p = ctx.graph.value(dloss.id).producer;
    const auto* seed = p >= 0 ? dynamic_cast<const FillOp*>(ctx.graph.node(p).op.get()) : nullptr;
    if (seed && seed->value == 1.0) {
      grads[0] = ctx.output(2);
      return grads;
    }
  }
  if (!dloss.defined()) dloss = fill(ctx.graph, ctx.output(0).meta(), 0.0, ctx.name("dloss_zero"));
  std::vector<Value> in{ctx.input(0), ctx.output(1), ctx.input(1), dloss};
  if (dlse.defined()) in.push_back(dlse);
  grads[0] = ctx.graph.add(std::make_shared<CrossEntropyBackwardOp>(ignore_index, label_smoothing, dlse.defined()),
                           in, ctx.name("cross_entropy"))[0];
  return grads;
}

std::string CrossEntropyBackwardOp::attrs() const {
  return str_cat("ignore_index=", ignore_index, ", label_smoothing=", label_smoothing, ", dlse=", has_dlse);
}

std::vector<TensorMeta> CrossEntropyBackwardOp::infer(const std::vector<TensorMeta>& in) const {
  const char* op = "cross_entropy_backward";
  XF_CHECK(in.size() == 4u + has_dlse, op, "takes ", 4 + has_dlse, " inputs (logits, lse, targets, dloss",
           has_dlse ? ", dlse" : "", "), got ", in.size());
  check_logits_targets(op, in[0], in[2]);
  check_smoothing(op, label_smoothing);
  const DType st = cross_entropy_loss_dtype(in[0].dtype);
  const TensorMeta rows{{in[0].shape[0]}, st};
  XF_CHECK(in[1] == rows, op, "lse ", in[1].str(), " must be ", rows.str(), " for logits ", in[0].str());
  XF_CHECK(in[3] == (TensorMeta{{1}, st}), op, "dloss ", in[3].str(), " must be ", dtype_name(st), "(1,) for logits ",
           in[0].str());
  if (has_dlse) XF_CHECK(in[4] == rows, op, "dlse ", in[4].str(), " must be ", rows.str());
  return {in[0]};
}

Value cross_entropy(Value logits, Value targets, int64_t ignore_index, double label_smoothing,
                    const std::string& name) {
  XF_CHECK(logits.defined() && targets.defined(), "cross_entropy", "logits and targets are required");
  return logits.graph->add(std::make_shared<CrossEntropyOp>(ignore_index, label_smoothing), {logits, targets},
                           name)[0];
}

}  // namespace xfr
