// Host side of TMA: encoding the tensor maps (CUtensorMap) that cp.async.bulk.tensor reads, for production's
// Hopper attention (ops/cuda/flash_attention_sm90*.cu) and the attention labs (tools/lab/attention_wgmma*.cu).
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

// The 4-D map (D, S, heads, B) of an attention tensor whose element (b, h, i, d) is at
// base + b batch_stride + h head_stride + i seq_stride + d (bhsd or bshd, any strides TMA can address), read in boxes
// of (64, box_rows, 1, 1): production's Hopper attention (forward and backward) and the labs' b3. Rows past S read as
// zeros. An axis of extent 1 is only read at index 0, so its stride is replaced by 16 bytes (TMA wants one, and a
// broadcast tensor may have stride 0 there).
inline bool encode_head_map(CUtensorMap* map, bool f16, const void* base, int D, int S, int heads, int B,
                            int64_t batch_stride, int64_t head_stride, int64_t seq_stride, uint32_t box_rows,
                            std::string* why) {
  const uint64_t es = 2;  // bytes of a bf16 / f16 element
  const uint64_t dims[4] = {static_cast<uint64_t>(D), static_cast<uint64_t>(S), static_cast<uint64_t>(heads),
                            static_cast<uint64_t>(B)};
  auto stride = [&](int64_t elems, int extent) { return extent == 1 ? uint64_t{16} : static_cast<uint64_t>(elems) * es; };
  const uint64_t strides[3] = {stride(seq_stride, S), stride(head_stride, heads), stride(batch_stride, B)};
  return encode_sw128_map(map, f16, base, 4, dims, strides, box_rows, why);
}

}  // namespace xfr::cuda::sm90
