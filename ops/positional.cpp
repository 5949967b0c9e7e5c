#include "ops/positional.h"

#include "runtime/error.h"

namespace xfr {

std::string SinePositionsOp::attrs() const { return str_cat("seq_len=", seq_len, ", dim=", dim); }

std::vector<TensorMeta> SinePositionsOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.empty(), "sine_positions", "takes no inputs, got ", in.size());
  XF_CHECK(seq_len >= 1 && dim >= 1, "sine_positions", "needs seq_len >= 1 and dim >= 1, got ", seq_len, " and ", dim);
  XF_CHECK(is_floating(dtype), "sine_positions", "dtype must be floating point, got ", dtype_name(dtype));
  return {TensorMeta{{seq_len, dim}, dtype}};
}

Value sine_positions(Graph& g, int64_t seq_len, int64_t dim, DType dtype, const std::string& name) {
  return g.add1(std::make_shared<SinePositionsOp>(seq_len, dim, dtype), {}, name);
}

}  // namespace xfr
