// Reading a cuBLASLt algorithm's configuration and capabilities, and enumerating its configurations (header only: the GEMM autotuner's configuration
// search in ops/cuda/matmul.cu and the kernel lab tools/lab/gemm_algo_search.cpp, which links cuBLASLt alone).
#pragma once
#include <cublasLt.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
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

// Custom options 0 to min(limit, the algorithm's largest), after those already in `customs` that it allows.
inline std::vector<uint32_t> custom_options_up_to(const cublasLtMatmulAlgo_t& base, std::vector<uint32_t> customs,
                                                  uint32_t limit) {
  int32_t custom_max = 0;
  size_t written = 0;
  cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_CUSTOM_OPTION_MAX, &custom_max, sizeof custom_max, &written);
  const uint32_t largest = static_cast<uint32_t>(std::max(custom_max, 0));
  for (uint32_t c = 0; c <= std::min(limit, largest); ++c)
    if (std::find(customs.begin(), customs.end(), c) == customs.end()) customs.push_back(c);
  customs.erase(std::remove_if(customs.begin(), customs.end(), [&](uint32_t c) { return c > largest; }), customs.end());
  return customs;
}

// Every configuration of algorithm `base` over tiles x stages x swizzles x clusters x custom options, unsplit, that
// `accept(algo)` takes (cublasLtMatmulAlgoCheck on the caller's problem), appended to `out` up to `cap` in all.
template <class Accept>
void add_configs(const cublasLtMatmulAlgo_t& base, const std::vector<uint32_t>& tiles,
                 const std::vector<uint32_t>& stages, const std::vector<uint32_t>& swizzles,
                 const std::vector<uint16_t>& clusters, const std::vector<uint32_t>& customs, size_t cap,
                 Accept&& accept, std::vector<cublasLtMatmulAlgo_t>& out) {
  const int32_t unsplit = 1;
  const auto set = [](cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr, const auto& v) {
    return cublasLtMatmulAlgoConfigSetAttribute(&algo, attr, &v, sizeof v) == CUBLAS_STATUS_SUCCESS;
  };
  for (uint32_t tile : tiles)
    for (uint32_t stage : stages)
      for (uint32_t swizzle : swizzles)
        for (uint16_t cluster : clusters)
          for (uint32_t custom : customs) {
            if (out.size() >= cap) return;
            cublasLtMatmulAlgo_t algo = base;
            if (set(algo, CUBLASLT_ALGO_CONFIG_TILE_ID, tile) && set(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, stage) &&
                set(algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, swizzle) &&
                set(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, cluster) &&
                set(algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, custom) &&
                set(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, unsplit) && accept(algo))
              out.push_back(algo);
          }
}

// The whole space of algorithm `base` (the GEMM tuner's XF_GEMM_SEARCH=full and the lab): each tile and stage count
// it lists (0, "the algorithm picks", when it lists none), CTA swizzling 0 and 1 where supported, the clusters auto,
// 1x1, 2x1 and 1x2, custom options 0 to 7.
template <class Accept>
void add_whole_space(const cublasLtMatmulAlgo_t& base, size_t cap, Accept&& accept,
                     std::vector<cublasLtMatmulAlgo_t>& out) {
  const auto or_auto = [](std::vector<uint32_t> v) { return v.empty() ? std::vector<uint32_t>{0} : v; };
  int32_t swizzle_support = 0;
  size_t written = 0;
  cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT, &swizzle_support,
                                    sizeof swizzle_support, &written);
  add_configs(base, or_auto(algo_cap_ids(base, CUBLASLT_ALGO_CAP_TILE_IDS)),
              or_auto(algo_cap_ids(base, CUBLASLT_ALGO_CAP_STAGES_IDS)),
              swizzle_support ? std::vector<uint32_t>{0, 1} : std::vector<uint32_t>{0},
              {CUBLASLT_CLUSTER_SHAPE_AUTO, CUBLASLT_CLUSTER_SHAPE_1x1x1, CUBLASLT_CLUSTER_SHAPE_2x1x1,
               CUBLASLT_CLUSTER_SHAPE_1x2x1},
              custom_options_up_to(base, {}, 7), cap, std::forward<Accept>(accept), out);
}

}  // namespace xfr::cuda
