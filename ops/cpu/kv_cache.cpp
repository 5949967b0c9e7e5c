// CPU kernel of ops/kv_cache.h: copy the cache, then overwrite one row per (batch, head).
#include <cstring>

#include "ops/kv_cache.h"
#include "runtime/error.h"
#include "runtime/kernel_registry.h"

namespace xfr::cpu {

namespace {

void kv_cache_write_kernel(const Op&, const KernelContext&, const std::vector<Tensor>& in,
                           const std::vector<Tensor>& out) {
  const Tensor &cache = in[0], &update = in[1];  // (B, H, S, D), (B, H, 1, D)
  const int64_t BH = cache.dim(0) * cache.dim(1), S = cache.dim(2), D = cache.dim(3);
  const int32_t pos = in[2].data<int32_t>()[0];
  XF_CHECK(pos >= 0 && pos < S, "kv_cache_write", "position ", pos, " outside the cache of length ", S);
  const size_t row = static_cast<size_t>(D) * dtype_size(cache.dtype());
  auto* dst = static_cast<char*>(out[0].raw_data());
  if (out[0].raw_data() != cache.raw_data()) std::memcpy(dst, cache.raw_data(), cache.nbytes());
  const auto* src = static_cast<const char*>(update.raw_data());
  for (int64_t z = 0; z < BH; ++z) std::memcpy(dst + (z * S + pos) * row, src + z * row, row);
}

}  // namespace

void register_kv_cache(KernelRegistry& r) { r.add("kv_cache_write", Device::Kind::cpu, kv_cache_write_kernel); }

}  // namespace xfr::cpu
