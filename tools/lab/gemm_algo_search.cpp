// Kernel lab: cuBLASLt's algorithm space beyond its heuristic, for GPT-2's GEMMs (bf16, 16384 rows).
//
// The autotuner (ops/cuda/matmul.cu) times the heuristic's top candidates, at most 8 for these shapes and 5 for the
// bias + GELU + aux epilogue. This lab enumerates every configuration cuBLASLt accepts for a case instead: each
// algorithm id (cublasLtMatmulAlgoGetIds) x its tiles x its stage counts x cluster shapes x CTA swizzling x custom
// options, unsplit, each checked (cublasLtMatmulAlgoCheck), timed once briefly, and the fastest ten timed again as
// the heuristic's are. A case prints the heuristic's best, the search's best and their ratio; the search's best output
// is held against the heuristic's (max |difference| relative to the largest element: two algorithms' fp32 orders).
//
// Cases (M = 16384 tokens, the model's call shapes; our row-major operands, cuBLASLt's column-major view swapped):
//   fc_gelu_aux  y (M, 3072) = gelu(x (M, 768) W1^T + b1), aux = the pre-activation  (the MLP's first layer)
//   fc_bias      the same GEMM with the bias alone                                     (the epilogue's floor)
//   dgelu        dpre (M, 3072) = (g (M, 768) W2 (768, 3072)) * gelu'(aux)             (its backward)
//   qkv_bias     y (M, 2304) = x (M, 768; rows 832 apart, the ones column) Wqkv^T + b
// XF_LAB_SEARCH_CASES=a,b picks cases; XF_LAB_SEARCH_LIMIT=n caps the accepted configurations timed per case
// (default 4000).
#define LAB_NAME "lab gemm_algo_search"
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ops/cuda/gemm_algo_config.h"
#include "tools/lab/lab_cublaslt.h"

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // the production context's (kCudaWorkspaceBytes)
constexpr int64_t kTokens = 16384;                    // GPT-2's B 16 x T 1024

struct Case {
  const char* name;
  int64_t m, n, k;       // our C (m, n) = A (m, k) B
  bool b_transposed;     // B stored (n, k) (a linear layer's weight) rather than (k, n)
  int64_t lda;           // A's row length
  cublasLtEpilogue_t epilogue;
  bool has_aux;          // gelu: written; dgelu: read
};

struct Operands {
  lab::DeviceBuffer<__nv_bfloat16> a, b, c, bias, aux;
  explicit Operands(const Case& cs)
      : a(static_cast<size_t>(cs.m * cs.lda)), b(static_cast<size_t>(cs.n * cs.k)), c(static_cast<size_t>(cs.m * cs.n)),
        bias(static_cast<size_t>(cs.n)), aux(static_cast<size_t>(cs.m * cs.n)) {}
};

void fill_uniform(__nv_bfloat16* dst, size_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<__nv_bfloat16> h(n);
  for (auto& v : h) v = __float2bfloat16(u(rng));
  LAB_CHECK(cudaMemcpy(dst, h.data(), n * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
}

std::vector<float> download(const __nv_bfloat16* src, size_t n) {
  std::vector<__nv_bfloat16> h(n);
  LAB_CHECK(cudaMemcpy(h.data(), src, n * sizeof(__nv_bfloat16), cudaMemcpyDeviceToHost));
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = __bfloat162float(h[i]);
  return f;
}

// The operation and layouts as ops/cuda/matmul.cu builds them: cuBLASLt computes our C^T = B^T A^T column-major, so its
// A is our B as stored and its B is our A.
struct Problem {
  cublasLtMatmulDesc_t desc{};
  cublasLtMatrixLayout_t la{}, lb{}, lc{};
  Problem(const Case& cs, Operands& ops) {
    LAB_LT_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const int32_t ta = cs.b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
    LAB_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LAB_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    LAB_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &cs.epilogue, sizeof cs.epilogue));
    if (cs.epilogue == CUBLASLT_EPILOGUE_BIAS || cs.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
      const void* bias = ops.bias.get();
      LAB_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    }
    if (cs.has_aux) {
      const void* aux = ops.aux.get();
      const int64_t ld = cs.n;
      LAB_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux));
      LAB_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld));
    }
    const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
    LAB_LT_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, u(cs.b_transposed ? cs.k : cs.n),
                                            u(cs.b_transposed ? cs.n : cs.k), cs.b_transposed ? cs.k : cs.n));
    LAB_LT_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, u(cs.k), u(cs.m), cs.lda));
    LAB_LT_CHECK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, u(cs.n), u(cs.m), cs.n));
  }
  ~Problem() {
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatmulDescDestroy(desc);
  }
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;
};

struct Config {
  cublasLtMatmulAlgo_t algo;
  int id = 0, tile = 0, stages = 0, cluster = 0, swizzle = 0, custom = 0;
  double us = 0;
  std::string str() const {
    char buf[128];
    std::snprintf(buf, sizeof buf, "id %d tile %d stages %d cluster %d swizzle %d custom %d", id, tile, stages, cluster,
                  swizzle, custom);
    return buf;
  }
};

Config describe(const cublasLtMatmulAlgo_t& algo) {
  Config c;
  c.algo = algo;
  c.id = xfr::cuda::algo_config<int32_t>(algo, CUBLASLT_ALGO_CONFIG_ID);
  c.tile = static_cast<int>(xfr::cuda::algo_config<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_TILE_ID));
  c.stages = static_cast<int>(xfr::cuda::algo_config<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID));
  c.cluster = static_cast<int>(xfr::cuda::algo_config<uint16_t>(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID));
  c.swizzle = static_cast<int>(xfr::cuda::algo_config<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING));
  c.custom = static_cast<int>(xfr::cuda::algo_config<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION));
  return c;
}

struct Search {
  cublasLtHandle_t lt{};
  cudaStream_t stream{};
  lab::DeviceBuffer<char> workspace{kWorkspaceBytes};
  Search() {
    LAB_LT_CHECK(cublasLtCreate(&lt));
    LAB_CHECK(cudaStreamCreate(&stream));
  }
  ~Search() {
    cudaStreamDestroy(stream);
    cublasLtDestroy(lt);
  }

  bool run(const Case&, Problem& p, Operands& ops, const cublasLtMatmulAlgo_t& algo) {
    const float alpha = 1.f, beta = 0.f;
    return cublasLtMatmul(lt, p.desc, &alpha, ops.b.get(), p.la, ops.a.get(), p.lb, &beta, ops.c.get(), p.lc, ops.c.get(),
                          p.lc, &algo, workspace.get(), kWorkspaceBytes, stream) == CUBLAS_STATUS_SUCCESS;
  }
  double time(const Case& cs, Problem& p, Operands& ops, const cublasLtMatmulAlgo_t& algo, int batch, int reps) {
    if (!run(cs, p, ops, algo)) return -1;
    if (cudaStreamSynchronize(stream) != cudaSuccess) {
      cudaGetLastError();
      return -1;
    }
    return lab::time_us(stream, [&] { run(cs, p, ops, algo); }, batch, reps);
  }
};

bool case_on(const char* name) {
  const char* sel = std::getenv("XF_LAB_SEARCH_CASES");
  if (!sel || !*sel) return true;
  const std::string s = std::string(",") + sel + ",";
  return s.find(std::string(",") + name + ",") != std::string::npos;
}

void search_case(Search& S, const Case& cs) {
  Operands ops(cs);
  fill_uniform(ops.a.get(), ops.a.size(), 1, -1, 1);
  fill_uniform(ops.b.get(), ops.b.size(), 2, -0.05f, 0.05f);
  fill_uniform(ops.bias.get(), ops.bias.size(), 3, -0.1f, 0.1f);
  fill_uniform(ops.aux.get(), ops.aux.size(), 4, -3, 3);  // dgelu reads it (gelu's overwrites it)
  Problem p(cs, ops);
  const double flops = 2.0 * static_cast<double>(cs.m) * static_cast<double>(cs.n) * static_cast<double>(cs.k);

  // The heuristic's candidates, as the autotuner times them.
  cublasLtMatmulPreference_t pref{};
  LAB_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspaceBytes;
  LAB_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  cublasLtMatmulHeuristicResult_t results[16] = {};
  int found = 0;
  LAB_LT_CHECK(cublasLtMatmulAlgoGetHeuristic(S.lt, p.desc, p.la, p.lb, p.lc, p.lc, pref, 16, results, &found));
  cublasLtMatmulPreferenceDestroy(pref);
  Config heuristic_best;
  heuristic_best.us = 1e30;
  for (int i = 0; i < found; ++i) {
    Config c = describe(results[i].algo);
    c.us = S.time(cs, p, ops, results[i].algo, 10, 15);
    std::printf("%s: %s heuristic %d: %s: %.1f us\n", LAB_NAME, cs.name, i, c.str().c_str(), c.us);
    if (c.us > 0 && c.us < heuristic_best.us) heuristic_best = c;
  }
  S.run(cs, p, ops, heuristic_best.algo);
  LAB_CHECK(cudaStreamSynchronize(S.stream));
  const std::vector<float> ref = download(ops.c.get(), ops.c.size());

  // Every configuration cuBLASLt accepts, unsplit.
  int ids[256];
  int nids = 0;
  LAB_LT_CHECK(cublasLtMatmulAlgoGetIds(S.lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF,
                                        CUDA_R_16BF, 256, ids, &nids));
  const char* lim = std::getenv("XF_LAB_SEARCH_LIMIT");
  const int limit = lim ? std::atoi(lim) : 4000;
  int checked = 0;
  std::vector<cublasLtMatmulAlgo_t> configs;  // the accepted ones, up to the limit (ops/cuda/gemm_algo_config.h)
  const auto accept = [&](const cublasLtMatmulAlgo_t& algo) {
    ++checked;
    cublasLtMatmulHeuristicResult_t r{};
    return cublasLtMatmulAlgoCheck(S.lt, p.desc, p.la, p.lb, p.lc, p.lc, &algo, &r) == CUBLAS_STATUS_SUCCESS &&
           r.workspaceSize <= kWorkspaceBytes;
  };
  for (int a = 0; a < nids; ++a) {
    cublasLtMatmulAlgo_t base;
    if (cublasLtMatmulAlgoInit(S.lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF,
                               ids[a], &base) == CUBLAS_STATUS_SUCCESS)
      xfr::cuda::add_whole_space(base, static_cast<size_t>(limit), accept, configs);
  }
  const int accepted = static_cast<int>(configs.size());
  std::vector<Config> timed;
  for (const cublasLtMatmulAlgo_t& algo : configs) {
    Config c = describe(algo);
    c.us = S.time(cs, p, ops, algo, 2, 3);  // a first look; the fastest are timed again below
    if (c.us > 0) timed.push_back(c);
  }
  std::sort(timed.begin(), timed.end(), [](const Config& x, const Config& y) { return x.us < y.us; });
  if (timed.size() > 10) timed.resize(10);
  for (Config& c : timed) c.us = S.time(cs, p, ops, c.algo, 10, 15);
  std::sort(timed.begin(), timed.end(), [](const Config& x, const Config& y) { return x.us < y.us; });
  std::printf("%s: %s: %d algorithm ids, %d configurations checked, %d accepted\n", LAB_NAME, cs.name, nids, checked,
              accepted);
  for (const Config& c : timed)
    std::printf("%s: %s search: %s: %.1f us (%.0f TFLOP/s)\n", LAB_NAME, cs.name, c.str().c_str(), c.us,
                flops / (c.us * 1e6));
  if (timed.empty()) return;
  // The search's best against the heuristic's output (dgelu and gelu: both written from the same aux / into c).
  S.run(cs, p, ops, timed[0].algo);
  LAB_CHECK(cudaStreamSynchronize(S.stream));
  const std::vector<float> got = download(ops.c.get(), ops.c.size());
  double largest = 0, diff = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    largest = std::max(largest, std::abs(static_cast<double>(ref[i])));
    diff = std::max(diff, std::abs(static_cast<double>(got[i]) - ref[i]));
  }
  // Two fp32 summation orders over k = 768 products, rounded to bf16 once each: within two bf16 ulps of the largest.
  const bool ok = std::isfinite(diff) && diff <= 2 * 0x1p-8 * largest;
  std::printf("%s: %s: heuristic best %.1f us (%s), search best %.1f us (%s): %.3fx; max |diff| %.3g of largest %.3g: %s\n",
              LAB_NAME, cs.name, heuristic_best.us, heuristic_best.str().c_str(), timed[0].us, timed[0].str().c_str(),
              heuristic_best.us / timed[0].us, diff, largest, ok ? "ok" : "MISMATCH");
}

}  // namespace

int main() {
  const Case cases[] = {
      {"fc_gelu_aux", kTokens, 3072, 768, true, 768, CUBLASLT_EPILOGUE_GELU_AUX_BIAS, true},
      {"fc_bias", kTokens, 3072, 768, true, 768, CUBLASLT_EPILOGUE_BIAS, false},
      {"dgelu", kTokens, 3072, 768, false, 768, CUBLASLT_EPILOGUE_DGELU, true},
      {"qkv_bias", kTokens, 2304, 768, true, 832, CUBLASLT_EPILOGUE_BIAS, false},
  };
  Search S;
  for (const Case& cs : cases)
    if (case_on(cs.name)) search_case(S, cs);
  return 0;
}
