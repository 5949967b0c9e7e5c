// Host side of TMA: encoding the tensor maps (CUtensorMap) that cp.async.bulk.tensor reads, for production's
// Hopper attention forward (ops/cuda/flash_attention_sm90.cu) and the attention lab (tools/lab/attention_wgmma.cu).
// cuTensorMapEncodeTiled is a driver function; it is reached through the runtime's driver entry point, so nothing
// links libcuda. Header-only (the lab links the CUDA runtime alone).
#pragma once
#include <cuda.h>  // CUtensorMap and the encoder's types
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

namespace xfr::cuda::sm90 {

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's cuTensorMapEncodeTiled (looked up once), or null when the driver has none (`why` says so).
inline EncodeTiledFn tensor_map_encoder(std::string* why = nullptr) {
  static const EncodeTiledFn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    // 12000: the ABI of CUDA 12.0, the first with tensor maps.
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return static_cast<EncodeTiledFn>(nullptr);
    }
    return reinterpret_cast<EncodeTiledFn>(p);
  }();
  if (!fn && why) *why = "the CUDA driver has no cuTensorMapEncodeTiled";
  return fn;
}

// A map over a row-major tensor of 16-bit elements with `rank` dims (innermost first: dims[0] the contiguous one,
// strides_bytes[i] the byte stride of dim i + 1), read in boxes of 64 x box_rows (x 1 x ...) elements with the
// 128-byte swizzle: a box lands in shared memory as the sw128 layout of ops/cuda/device/sm90/ptx.cuh (64 elements
// = 128 bytes = the swizzle width). Out-of-range elements of a box read as zeros. TMA's own rules: base 16-byte
// aligned, strides multiples of 16 bytes below 2^40. False (and `why`) when the driver refuses.
inline bool encode_sw128_map(CUtensorMap* map, bool f16, const void* base, int rank, const uint64_t* dims,
                             const uint64_t* strides_bytes, uint32_t box_rows, std::string* why) {
  const EncodeTiledFn enc = tensor_map_encoder(why);
  if (!enc) return false;
  cuuint64_t d[5], st[4];
  cuuint32_t box[5], es[5];
  for (int i = 0; i < rank; ++i) {
    d[i] = dims[i];
    box[i] = i == 0 ? 64u : (i == 1 ? box_rows : 1u);
    es[i] = 1;
    if (i + 1 < rank) st[i] = strides_bytes[i];
  }
  const CUresult r =
      enc(map, f16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, static_cast<cuuint32_t>(rank),
          const_cast<void*>(base), d, st, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    if (why) *why = "cuTensorMapEncodeTiled failed (CUresult " + std::to_string(static_cast<int>(r)) + ")";
    return false;
  }
  return true;
}

}  // namespace xfr::cuda::sm90
