// KV-cache update for incremental decoding: writes the new keys (or values) of one step into the cache
// at a position given at run time.
//   cache: (B, H, S, D), new: (B, H, 1, D), position: (1) i32 in [0, S)  ->  (B, H, S, D), the cache with
//   row `position` replaced. Inference only (no backward).
#pragma once
#include "runtime/graph.h"

namespace xfr {

class KvCacheWriteOp final : public Op {
 public:
  std::string name() const override { return "kv_cache_write"; }
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
};

Value kv_cache_write(Value cache, Value update, Value position, const std::string& name = {});

}  // namespace xfr
