// Reading a cuBLASLt algorithm's configuration and capabilities (header only: the GEMM autotuner's configuration
// search in ops/cuda/matmul.cu and the kernel lab tools/lab/gemm_algo_search.cpp, which links cuBLASLt alone).
#pragma once
#include <cublasLt.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace xfr::cuda {

// One configuration attribute of `algo` (its type as cublasLt.h documents it: int32_t for the id, uint16_t for the
// cluster shape, uint32_t for the tile, stages, swizzling and custom option); a value-initialised T if unreadable.
template <class T>
T algo_config(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr) {
  T v{};
  size_t written = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &v, sizeof v, &written);
  return v;
}

// An algorithm's capability list of uint32 ids (CUBLASLT_ALGO_CAP_TILE_IDS, _STAGES_IDS); empty when it has none.
inline std::vector<uint32_t> algo_cap_ids(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoCapAttributes_t attr) {
  size_t bytes = 0;
  if (cublasLtMatmulAlgoCapGetAttribute(&algo, attr, nullptr, 0, &bytes) != CUBLAS_STATUS_SUCCESS || bytes == 0) return {};
  std::vector<uint32_t> ids(bytes / sizeof(uint32_t));
  if (cublasLtMatmulAlgoCapGetAttribute(&algo, attr, ids.data(), bytes, &bytes) != CUBLAS_STATUS_SUCCESS) return {};
  return ids;
}

}  // namespace xfr::cuda
