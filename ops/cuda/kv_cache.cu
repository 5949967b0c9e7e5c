// CUDA kernel of ops/kv_cache.h: copy the cache (skipped when the output is the cache itself), then one
// kernel writes the new row of every (batch, head). The position is read on the device, so a captured CUDA
// graph replays correctly as the position advances, and nothing waits for the host.
//
// A position outside [0, S): the CPU kernel throws; the GPU kernel cannot without stopping the stream, so
// it writes nothing (the cache is returned unchanged, never written out of bounds).
#include "ops/cuda/common.cuh"
#include "ops/kv_cache.h"

namespace xfr::cuda {

namespace {

// cache: (BH, S, D) -> row *pos of each bh replaced by update: (BH, 1, D); U is the copy unit (row_units
// units of U per row).
template <class U>
__global__ void kv_cache_write_rows(U* __restrict__ cache, const U* __restrict__ update, const int32_t* __restrict__ pos,
                                    int64_t BH, int64_t S, int64_t row_units) {
  const int32_t p = *pos;
  if (p < 0 || p >= S) return;
  const int64_t total = BH * row_units;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < total;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t z = u / row_units, c = u - z * row_units;
    cache[(z * S + p) * row_units + c] = update[u];
  }
}

// cache: (B, H, S, D), update: (B, H, 1, D), position: (1) i32 on the device -> (B, H, S, D)
void kv_cache_write_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in,
                           const std::vector<Tensor>& out) {
  const Tensor &cache = in[0], &update = in[1];
  const cudaStream_t s = stream_of(ctx);
  const int64_t BH = cache.dim(0) * cache.dim(1), S = cache.dim(2);
  const int64_t row_bytes = cache.dim(3) * static_cast<int64_t>(dtype_size(cache.dtype()));
  void* dst = out[0].raw_data();
  if (dst != cache.raw_data() && cache.nbytes() > 0)
    XF_CUDA_CHECK(cudaMemcpyAsync(dst, cache.raw_data(), cache.nbytes(), cudaMemcpyDeviceToDevice, s));
  if (BH * row_bytes == 0) return;
  const auto* pos = static_cast<const int32_t*>(in[2].raw_data());
  const void* src = update.raw_data();
  // The widest unit dividing the row and both base addresses: 16-byte vectors for the usual head sizes.
  const auto divides = [&](int64_t u) {
    return row_bytes % u == 0 && reinterpret_cast<uintptr_t>(dst) % u == 0 && reinterpret_cast<uintptr_t>(src) % u == 0;
  };
  const int64_t unit = divides(16) ? 16 : divides(8) ? 8 : divides(4) ? 4 : divides(2) ? 2 : 1;
  const int64_t row_units = row_bytes / unit;
  const unsigned grid = grid_1d(BH * row_units);
  switch (unit) {
    case 16: kv_cache_write_rows<uint4><<<grid, kBlock, 0, s>>>(static_cast<uint4*>(dst), static_cast<const uint4*>(src), pos, BH, S, row_units); break;
    case 8: kv_cache_write_rows<uint64_t><<<grid, kBlock, 0, s>>>(static_cast<uint64_t*>(dst), static_cast<const uint64_t*>(src), pos, BH, S, row_units); break;
    case 4: kv_cache_write_rows<uint32_t><<<grid, kBlock, 0, s>>>(static_cast<uint32_t*>(dst), static_cast<const uint32_t*>(src), pos, BH, S, row_units); break;
    case 2: kv_cache_write_rows<uint16_t><<<grid, kBlock, 0, s>>>(static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src), pos, BH, S, row_units); break;
    default: kv_cache_write_rows<uint8_t><<<grid, kBlock, 0, s>>>(static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), pos, BH, S, row_units); break;
  }
  XF_CUDA_CHECK_LAUNCH("kv_cache_write_rows");
}

}  // namespace

void register_kv_cache(KernelRegistry& r) { r.add("kv_cache_write", Device::Kind::cuda, kv_cache_write_kernel); }

}  // namespace xfr::cuda
