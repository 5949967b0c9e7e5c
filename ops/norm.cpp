#include "ops/norm.h"

#include <algorithm>
#include <cmath>

#include "ops/elementwise.h"
#include "runtime/error.h"

namespace xfr {

namespace {

// Validates x (..., C) and the optional per-channel vectors that follow it; returns C.
int64_t check_norm_inputs(const char* op, const std::vector<TensorMeta>& in, size_t expected,
                          const std::vector<const char*>& names) {
  std::string list = "x";
  for (const char* n : names) list += std::string(", ") + n;
  XF_CHECK(in.size() == expected, op, "takes ", expected, " inputs (", list, "), got ", in.size());
  const TensorMeta& x = in[0];
  XF_CHECK(is_floating(x.dtype), op, "x must be floating point, got ", x.str());
  XF_CHECK(!x.shape.empty(), op, "x needs at least one axis (the normalised one), got ", x.str());
  const int64_t c = x.shape.back();
  XF_CHECK(c > 0, op, "normalised axis of x ", shape_str(x.shape), " is empty");
  for (size_t i = 0; i < names.size(); ++i) {
    const TensorMeta& p = in[i + 1];
    XF_CHECK(p.shape == Shape{c} && p.dtype == x.dtype, op, names[i], " ", p.str(), " must be ",
             dtype_name(x.dtype), "(", c, ",) to match x ", x.str());
  }
  return c;
}

void check_eps(const char* op, double eps) {
  XF_CHECK(std::isfinite(eps) && eps >= 0, op, "eps must be finite and >= 0, got ", eps);
}

Shape rows_shape(const Shape& x) { return Shape{numel_of(x) / x.back()}; }

// The saved statistics (mean, rstd) of x: f32 for 16-bit x (GPU mixed precision), else x's dtype.
TensorMeta stat_meta(const TensorMeta& x) { return TensorMeta{rows_shape(x.shape), norm_stat_dtype(x.dtype)}; }

// Outputs [first_stat, end_stat) are saved statistics (end_stat -1: to the last output).
void refuse_stat_grads(const char* op, const BackwardContext& ctx, int first_stat, const char* stats,
                       int end_stat = -1) {
  const int end = end_stat < 0 ? static_cast<int>(ctx.out_grads.size()) : end_stat;
  for (int k = first_stat; k < end; ++k)
    XF_CHECK(!ctx.grad(k).defined(), op, "no gradient flows through the saved statistics (", stats,
             "); output ", k, " of node '", ctx.node.name, "' is used in a differentiated path");
}

}  // namespace

bool residual_broadcasts(const Shape& residual, const Shape& x) {
  auto first = residual.begin();
  while (first != residual.end() && *first == 1 && residual.end() - first > 1) ++first;  // leading 1s (keep one axis)
  const auto n = residual.end() - first;
  return n >= 1 && static_cast<size_t>(n) <= x.size() && std::equal(first, residual.end(), x.end() - n);
}

// ---- layernorm ------------------------------------------------------------------------------------------

std::string LayerNormOp::attrs() const {
  return str_cat("eps=", eps, ", gamma=", has_gamma, ", beta=", has_beta,
                 has_residual ? str_cat(", residual=1, write_sum=", write_sum) : std::string());
}

std::vector<TensorMeta> LayerNormOp::infer(const std::vector<TensorMeta>& in) const {
  const char* op = "layernorm";
  check_eps(op, eps);
  XF_CHECK(has_residual || !write_sum, op, "write_sum needs a residual input");
  XF_CHECK(in.size() == 1u + has_residual + has_gamma + has_beta, op, "takes ", 1 + has_residual + has_gamma + has_beta,
           " inputs (x", has_residual ? ", residual" : "", has_gamma ? ", gamma" : "", has_beta ? ", beta" : "",
           "), got ", in.size());
  if (has_residual) {
    XF_CHECK(in[1].dtype == in[0].dtype && residual_broadcasts(in[1].shape, in[0].shape), op, "residual ", in[1].str(),
             " must match x ", in[0].str(), " or broadcast over its leading axes (a suffix of its shape)");
  }
  std::vector<TensorMeta> norm_in{in[0]};
  std::vector<const char*> names;
  if (has_gamma) {
    names.push_back("gamma");
    norm_in.push_back(in[static_cast<size_t>(gamma_index())]);
  }
  if (has_beta) {
    names.push_back("beta");
    norm_in.push_back(in[static_cast<size_t>(beta_index())]);
  }
  check_norm_inputs(op, norm_in, 1 + names.size(), names);
  const TensorMeta stat = stat_meta(in[0]);
  std::vector<TensorMeta> out{in[0], stat, stat};
  if (write_sum) out.push_back(in[0]);
  return out;
}

std::vector<Value> LayerNormOp::backward(const BackwardContext& ctx) const {
  refuse_stat_grads("layernorm", ctx, 1, "mean, rstd", 3);
  std::vector<Value> grads(ctx.node.inputs.size());
  const Value dy = ctx.grad(0);
  Value dsum = write_sum ? ctx.grad(3) : Value{};
  if (!dy.defined() && !dsum.defined()) return grads;
  // A plain norm whose input has other readers (a pre-norm residual stream that a later GEMM adds in: x read by
  // this norm and by the next projection's residual input) takes their gradient in as its dadd, in the same pass,
  // where the autodiff would add it to dx in a separate pass.
  bool absorbs_x = false;
  if (!has_residual && dy.defined() && ctx.needs_grad(0)) {
    const Value other = ctx.accumulated(0);
    absorbs_x = other.defined() && other.meta() == ctx.input(0).meta();
    if (absorbs_x) dsum = other;
  }
  const int gi = gamma_index(), bi = beta_index();
  const bool want_dgamma = gi >= 0 && ctx.needs_grad(gi), want_dbeta = bi >= 0 && ctx.needs_grad(bi);
  Value ds;  // the gradient reaching s
  if (dy.defined()) {
    // The norm's input s: x itself, the saved sum, or x + residual recomputed (post-norm saves only y).
    Value s = ctx.input(0);
    if (has_residual) s = write_sum ? ctx.output(3) : add(ctx.input(0), ctx.input(1), ctx.name("layernorm_sum"));
    std::vector<Value> in{s, ctx.output(1), ctx.output(2)};
    if (has_gamma) in.push_back(ctx.input(gi));
    in.push_back(dy);
    if (dsum.defined()) in.push_back(dsum);  // the sum's own gradient (or x's other readers'), in the same pass
    const auto outs = ctx.graph.add(
        std::make_shared<LayerNormBackwardOp>(has_gamma, want_dgamma, want_dbeta, dsum.defined()), in,
        ctx.name("layernorm"));
    ds = outs[0];
    size_t k = 1;
    if (want_dgamma) grads[static_cast<size_t>(gi)] = outs[k++];
    if (want_dbeta) grads[static_cast<size_t>(bi)] = outs[k++];
  } else {
    ds = dsum;
  }
  if (ctx.needs_grad(0)) grads[0] = ds;
  if (absorbs_x) ctx.absorb(0);
  // d(x + residual) / d residual = 1, summed over the axes a broadcast residual was added along.
  if (has_residual && ctx.needs_grad(1)) grads[1] = sum_to(ds, ctx.input(1).shape(), ctx.name("sum_residual"));
  return grads;
}

std::string LayerNormBackwardOp::attrs() const {
  return str_cat("gamma=", has_gamma, ", dgamma=", want_dgamma, ", dbeta=", want_dbeta, has_dadd ? ", dadd=1" : "",
                 want_dx_sum ? ", dx_sum=1" : "");
}

std::vector<TensorMeta> LayerNormBackwardOp::infer(const std::vector<TensorMeta>& in) const {
  const char* op = "layernorm_backward";
  XF_CHECK(!want_dgamma || has_gamma, op, "dgamma requested without gamma");
  XF_CHECK(in.size() == 4u + has_gamma + has_dadd, op, "takes ", 4 + has_gamma + has_dadd, " inputs (x, mean, rstd, ",
           has_gamma ? "gamma, " : "", "dy", has_dadd ? ", dadd" : "", "), got ", in.size());
  const TensorMeta& x = in[0];
  XF_CHECK(is_floating(x.dtype) && !x.shape.empty() && x.shape.back() > 0, op, "bad x ", x.str());
  const int64_t c = x.shape.back();
  const TensorMeta stat = stat_meta(x);
  XF_CHECK(in[1] == stat && in[2] == stat, op, "mean ", in[1].str(), " and rstd ", in[2].str(), " must be ",
           stat.str(), " for x ", x.str());
  if (has_gamma)
    XF_CHECK(in[3] == (TensorMeta{{c}, x.dtype}), op, "gamma ", in[3].str(), " does not match x ", x.str());
  XF_CHECK(in[static_cast<size_t>(dy_index())] == x, op, "dy ", in[static_cast<size_t>(dy_index())].str(),
           " must match x ", x.str());
  if (has_dadd) XF_CHECK(in.back() == x, op, "dadd ", in.back().str(), " must match x ", x.str());
  std::vector<TensorMeta> out{x};
  if (want_dgamma) out.push_back(TensorMeta{{c}, x.dtype});
  if (want_dbeta) out.push_back(TensorMeta{{c}, x.dtype});
  if (want_dx_sum) out.push_back(TensorMeta{{c}, x.dtype});
  return out;
}

std::shared_ptr<const Op> LayerNormBackwardOp::with_row_sum(int output) const {
  if (output != 0 || want_dx_sum) return nullptr;
  auto op = std::make_shared<LayerNormBackwardOp>(*this);
  op->want_dx_sum = true;
  return op;
}

// ---- rmsnorm --------------------------------------------------------------------------------------------

std::string RMSNormOp::attrs() const { return str_cat("eps=", eps, ", gamma=", has_gamma); }

std::vector<TensorMeta> RMSNormOp::infer(const std::vector<TensorMeta>& in) const {
  check_eps("rmsnorm", eps);
  std::vector<const char*> names;
  if (has_gamma) names.push_back("gamma");
  check_norm_inputs("rmsnorm", in, 1 + names.size(), names);
  return {in[0], stat_meta(in[0])};
}

std::vector<Value> RMSNormOp::backward(const BackwardContext& ctx) const {
  refuse_stat_grads("rmsnorm", ctx, 1, "rstd");
  std::vector<Value> grads(ctx.node.inputs.size());
  const Value dy = ctx.grad(0);
  if (!dy.defined()) return grads;
  const bool want_dgamma = has_gamma && ctx.needs_grad(1);
  std::vector<Value> in{ctx.input(0), ctx.output(1)};
  if (has_gamma) in.push_back(ctx.input(1));
  in.push_back(dy);
  const auto outs =
      ctx.graph.add(std::make_shared<RMSNormBackwardOp>(has_gamma, want_dgamma), in, ctx.name("rmsnorm"));
  if (ctx.needs_grad(0)) grads[0] = outs[0];
  if (want_dgamma) grads[1] = outs[1];
  return grads;
}

std::string RMSNormBackwardOp::attrs() const { return str_cat("gamma=", has_gamma, ", dgamma=", want_dgamma); }

std::vector<TensorMeta> RMSNormBackwardOp::infer(const std::vector<TensorMeta>& in) const {
  const char* op = "rmsnorm_backward";
  XF_CHECK(!want_dgamma || has_gamma, op, "dgamma requested without gamma");
  XF_CHECK(in.size() == 3u + has_gamma, op, "takes ", 3 + has_gamma, " inputs (x, rstd, ", has_gamma ? "gamma, " : "",
           "dy), got ", in.size());
  const TensorMeta& x = in[0];
  XF_CHECK(is_floating(x.dtype) && !x.shape.empty() && x.shape.back() > 0, op, "bad x ", x.str());
  const int64_t c = x.shape.back();
  const TensorMeta stat = stat_meta(x);
  XF_CHECK(in[1] == stat, op, "rstd ", in[1].str(), " must be ", stat.str(), " for x ", x.str());
  if (has_gamma)
    XF_CHECK(in[2] == (TensorMeta{{c}, x.dtype}), op, "gamma ", in[2].str(), " does not match x ", x.str());
  XF_CHECK(in.back() == x, op, "dy ", in.back().str(), " must match x ", x.str());
  std::vector<TensorMeta> out{x};
  if (want_dgamma) out.push_back(TensorMeta{{c}, x.dtype});
  return out;
}

// ---- front end ----------------------------------------------------------------------------------------

Value layernorm(Value x, Value gamma, Value beta, double eps, const std::string& name) {
  XF_CHECK(x.defined(), "layernorm", "undefined x");
  std::vector<Value> in{x};
  if (gamma.defined()) in.push_back(gamma);
  if (beta.defined()) in.push_back(beta);
  return x.graph->add(std::make_shared<LayerNormOp>(eps, gamma.defined(), beta.defined()), in, name)[0];
}

ResidualLayerNorm add_layernorm(Value x, Value residual, Value gamma, Value beta, bool want_sum, double eps,
                                const std::string& name) {
  XF_CHECK(x.defined() && residual.defined(), "layernorm", "add_layernorm needs x and residual");
  std::vector<Value> in{x, residual};
  if (gamma.defined()) in.push_back(gamma);
  if (beta.defined()) in.push_back(beta);
  const auto outs = x.graph->add(
      std::make_shared<LayerNormOp>(eps, gamma.defined(), beta.defined(), true, want_sum), in, name);
  return {outs[0], want_sum ? outs[3] : Value{}};
}

Value rmsnorm(Value x, Value gamma, double eps, const std::string& name) {
  XF_CHECK(x.defined(), "rmsnorm", "undefined x");
  std::vector<Value> in{x};
  if (gamma.defined()) in.push_back(gamma);
  return x.graph->add(std::make_shared<RMSNormOp>(eps, gamma.defined()), in, name)[0];
}

}  // namespace xfr
