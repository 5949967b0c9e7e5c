#include "ops/kv_cache.h"

#include "runtime/error.h"

namespace xfr {

std::vector<TensorMeta> KvCacheWriteOp::infer(const std::vector<TensorMeta>& in) const {
  XF_CHECK(in.size() == 3, "kv_cache_write", "takes (cache, new, position), got ", in.size(), " inputs");
  const auto &c = in[0], &n = in[1], &p = in[2];
  XF_CHECK(c.shape.size() == 4 && n.shape.size() == 4, "kv_cache_write", "cache ", c.str(), " and new ", n.str(),
           " must be (B, H, S, D) and (B, H, 1, D)");
  XF_CHECK(n.shape[0] == c.shape[0] && n.shape[1] == c.shape[1] && n.shape[2] == 1 && n.shape[3] == c.shape[3],
           "kv_cache_write", "new ", n.str(), " does not fit cache ", c.str());
  XF_CHECK(c.dtype == n.dtype, "kv_cache_write", "dtypes differ: ", c.str(), " and ", n.str());
  XF_CHECK(p.dtype == DType::i32 && numel_of(p.shape) == 1, "kv_cache_write", "position must be one i32, got ", p.str());
  return {c};
}

Value kv_cache_write(Value cache, Value update, Value position, const std::string& name) {
  return cache.graph->add1(std::make_shared<KvCacheWriteOp>(), {cache, update, position}, name);
}

}  // namespace xfr
