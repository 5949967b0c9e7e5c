// CUDA kernel of ops/matmul.h and the GEMM launcher of ops/cuda/gemm.h, through cuBLASLt.
//
// Row-major to column-major: cuBLASLt is column-major, and a row-major (r, c) matrix with leading dimension
// ld is, byte for byte, a column-major (c, r) matrix with the same ld. So row-major C = op(A) op(B) is
// computed as column-major C^T = op(B)^T op(A)^T: cuBLASLt's A is our B (transa = trans_b), its B is our A
// (transb = trans_a), its m is our n and its n our m. A bias over C's columns (one per output feature) is
// then a bias over cuBLASLt's rows, which is what its BIAS epilogues take.
//
// The matmul op: a 2-D B shared by a batched A (a linear layer) is one GEMM over batch * M rows; otherwise
// a strided-batched GEMM with A's and B's batch axes flattened (the op refuses trans_a with a shared B, the
// one case that cannot fold). The launcher itself folds a shared B (stride 0) whenever A's and C's batches
// are consecutive rows, and otherwise runs it as a strided batch with B's stride 0.
#include <cublasLt.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.h"
#include "ops/cuda/gemm_algo_config.h"
#include "ops/matmul.h"
#include "runtime/cuda/autotune.h"
#include "runtime/cuda/stream.h"
#include "runtime/tune_cache.h"

namespace xfr::cuda {

const char* gemm_epilogue_name(GemmEpilogue e) {
  switch (e) {
    case GemmEpilogue::none: return "none";
    case GemmEpilogue::bias: return "bias";
    case GemmEpilogue::gelu_tanh: return "gelu_tanh";
    case GemmEpilogue::bias_gelu_tanh: return "bias_gelu_tanh";
    case GemmEpilogue::dgelu: return "dgelu";
    case GemmEpilogue::dgelu_bgrad: return "dgelu_bgrad";
    case GemmEpilogue::bgrad_a: return "bgrad_a";
    case GemmEpilogue::bgrad_b: return "bgrad_b";
  }
  return "?";
}

namespace {

cudaDataType_t cuda_dtype(DType t) {
  switch (t) {
    case DType::f32: return CUDA_R_32F;
    case DType::f16: return CUDA_R_16F;
    case DType::bf16: return CUDA_R_16BF;
    default: throw Error("gemm", str_cat("the CUDA GEMM takes f32, f16 or bf16, not ", dtype_name(t)));
  }
}

// The cuBLASLt epilogue of ours, and whether it reads or writes `bias` and `aux`. Our operands are swapped
// (see the top of the file), so our bias gradient of B (per column of C) is cuBLASLt's BGRADA and ours
// of A its BGRADB.
cublasLtEpilogue_t lt_epilogue(GemmEpilogue e, bool with_aux) {
  switch (e) {
    case GemmEpilogue::none: return CUBLASLT_EPILOGUE_DEFAULT;
    case GemmEpilogue::bias: return CUBLASLT_EPILOGUE_BIAS;
    case GemmEpilogue::gelu_tanh: return with_aux ? CUBLASLT_EPILOGUE_GELU_AUX : CUBLASLT_EPILOGUE_GELU;
    case GemmEpilogue::bias_gelu_tanh: return with_aux ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_BIAS;
    case GemmEpilogue::dgelu: return CUBLASLT_EPILOGUE_DGELU;
    case GemmEpilogue::dgelu_bgrad: return CUBLASLT_EPILOGUE_DGELU_BGRAD;
    case GemmEpilogue::bgrad_a: return CUBLASLT_EPILOGUE_BGRADB;
    case GemmEpilogue::bgrad_b: return CUBLASLT_EPILOGUE_BGRADA;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}
bool uses_bias(GemmEpilogue e) {
  return e == GemmEpilogue::bias || e == GemmEpilogue::bias_gelu_tanh || e == GemmEpilogue::dgelu_bgrad ||
         e == GemmEpilogue::bgrad_a || e == GemmEpilogue::bgrad_b;
}
bool is_bgrad(GemmEpilogue e) {
  return e == GemmEpilogue::dgelu_bgrad || e == GemmEpilogue::bgrad_a || e == GemmEpilogue::bgrad_b;
}
bool needs_aux(GemmEpilogue e) { return e == GemmEpilogue::dgelu || e == GemmEpilogue::dgelu_bgrad; }
bool takes_aux(GemmEpilogue e) {
  return needs_aux(e) || e == GemmEpilogue::gelu_tanh || e == GemmEpilogue::bias_gelu_tanh;
}

// The alignment cuBLASLt may assume of a pointer: its largest power-of-two divisor, capped at 256 (the
// alignment cuBLASLt assumes by default, so nothing is gained above it). Part of the plan key: a plan is
// chosen for pointers at least this aligned.
int align_class(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  for (int a = 256; a > 1; a >>= 1)
    if (v % static_cast<uintptr_t>(a) == 0) return a;
  return 1;
}

// One cached GEMM: descriptor, layouts and the heuristic's algorithm for one key.
struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;  // cuBLASLt's A (our B), B (our A), C = D
  cublasLtMatmulAlgo_t algo{};
  // The bias and aux pointers are attributes of the descriptor, set per call; a context may be driven by
  // several threads, so setting them and enqueueing the GEMM is one critical section.
  std::mutex mu;
  GemmPlan() = default;
  GemmPlan(const GemmPlan&) = delete;
  GemmPlan& operator=(const GemmPlan&) = delete;
  ~GemmPlan() {  // no throwing from a destructor: statuses are ignored
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

struct PreferenceGuard {
  cublasLtMatmulPreference_t p = nullptr;
  ~PreferenceGuard() {
    if (p) cublasLtMatmulPreferenceDestroy(p);
  }
};

template <class V>
void set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const V& v) {
  XF_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v)));
}
template <class V>
void set_layout(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr, const V& v) {
  XF_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, attr, &v, sizeof(v)));
}

// Fills in defaults, validates, and folds a shared B over consecutive rows into one GEMM.
GemmArgs normalise(GemmArgs g) {
  const char* op = "gemm";
  (void)cuda_dtype(g.dtype);
  (void)cuda_dtype(g.out_dtype);
  XF_CHECK(g.out_dtype == g.dtype || (g.out_dtype == DType::f32 && g.dtype != DType::f32), op, "A/B in ",
           dtype_name(g.dtype), " cannot write C in ", dtype_name(g.out_dtype), " (C is A's dtype, or f32 for 16-bit A/B)");
  XF_CHECK(g.m >= 0 && g.n >= 0 && g.k >= 0 && g.batch >= 0, op, "negative size: m=", g.m, " n=", g.n, " k=", g.k,
           " batch=", g.batch);
  const int64_t a_row = g.trans_a ? g.m : g.k, b_row = g.trans_b ? g.k : g.n;
  if (g.lda == 0) g.lda = std::max<int64_t>(1, a_row);
  if (g.ldb == 0) g.ldb = std::max<int64_t>(1, b_row);
  if (g.ldc == 0) g.ldc = std::max<int64_t>(1, g.n);
  XF_CHECK(g.lda >= a_row && g.ldb >= b_row && g.ldc >= g.n, op, "leading dimensions lda=", g.lda, " ldb=", g.ldb,
           " ldc=", g.ldc, " are shorter than the rows (", a_row, ", ", b_row, ", ", g.n, ")");
  XF_CHECK(g.batch <= INT32_MAX, op, "batch ", g.batch, " exceeds cuBLASLt's int32 batch count");
  if (g.batch > 1) {
    XF_CHECK(g.stride_a >= 0 && g.stride_b >= 0, op, "negative batch stride");
    XF_CHECK(g.stride_c >= (g.m - 1) * g.ldc + g.n, op, "C's batch stride ", g.stride_c,
             " makes batches overlap (m=", g.m, ", ldc=", g.ldc, ", n=", g.n, ")");
  } else {
    g.stride_a = g.stride_b = g.stride_c = 0;
  }
  const bool bias = uses_bias(g.epilogue);
  XF_CHECK(!bias || g.bias != nullptr, op, "epilogue ", gemm_epilogue_name(g.epilogue), " needs a bias pointer");
  XF_CHECK(!needs_aux(g.epilogue) || g.aux != nullptr, op, "epilogue ", gemm_epilogue_name(g.epilogue),
           " needs the GELU pre-activation (aux)");
  if (!bias) g.bias = nullptr;
  if (!takes_aux(g.epilogue)) g.aux = nullptr;
  if (g.beta == 0.0f) g.c_in = nullptr;  // nothing is read
  if (g.aux) {
    if (g.aux_ld == 0) g.aux_ld = g.ldc;
    if (g.aux_stride == 0) g.aux_stride = g.stride_c;
    // cuBLASLt: the GELU input matrix's leading dimension and batch stride must be multiples of 8.
    XF_CHECK(g.aux_ld >= g.n && g.aux_ld % 8 == 0, op, "aux leading dimension ", g.aux_ld,
             " must be >= n (", g.n, ") and a multiple of 8 (cuBLASLt)");
    XF_CHECK(g.batch <= 1 || g.aux_stride % 8 == 0, op, "aux batch stride ", g.aux_stride, " must be a multiple of 8 (cuBLASLt)");
    if (g.batch <= 1) g.aux_stride = 0;
  } else {
    g.aux_ld = g.aux_stride = 0;
  }
  if (is_bgrad(g.epilogue))
    XF_CHECK(g.batch == 1 && g.m > 0 && g.n > 0 && g.k > 0, op, "bias-gradient epilogue ",
             gemm_epilogue_name(g.epilogue), " needs batch 1 and m, n, k > 0, got batch=", g.batch, " m=", g.m, " n=", g.n,
             " k=", g.k);
  // A shared B over batches whose rows follow each other in A, C (and aux): one GEMM of batch * m rows.
  if (g.batch > 1 && g.stride_b == 0 && !g.trans_a && g.stride_a == g.m * g.lda && g.stride_c == g.m * g.ldc &&
      (g.aux == nullptr || g.aux_stride == g.m * g.aux_ld)) {
    g.m *= g.batch;
    g.batch = 1;
    g.stride_a = g.stride_b = g.stride_c = g.aux_stride = 0;
  }
  return g;
}

std::string plan_key(const GemmArgs& g) {
  return str_cat("matmul/", dtype_name(g.dtype), "->", dtype_name(g.out_dtype), "/t", int(g.trans_a), int(g.trans_b),
                 "/m", g.m, "/n", g.n, "/k", g.k, "/ld", g.lda, ",", g.ldb, ",", g.ldc, "/batch", g.batch, "/stride",
                 g.stride_a, ",", g.stride_b, ",", g.stride_c, "/ep-", gemm_epilogue_name(g.epilogue),
                 g.aux ? "+aux" : "", "/auxld", g.aux_ld, ",", g.aux_stride, "/align", align_class(g.a), ",",
                 align_class(g.b), ",", align_class(g.c), ",", align_class(g.bias), ",", align_class(g.aux),
                 // A C that is read (beta != 0: matmul_add, a linear layer's residual) moves as many bytes again as
                 // D: its own tuned choice.
                 g.beta != 0.0f ? str_cat("/beta", g.beta, g.c_in ? ",cin" : "", align_class(g.c_in ? g.c_in : g.c))
                                : std::string());
}

// The C a GEMM reads (with beta != 0): c_in, or C itself.
const void* c_read(const GemmArgs& g) { return g.c_in ? g.c_in : g.c; }

// Whether running g twice gives another result than running it once: it reads the C it writes (beta != 0 without a
// separate c_in). Such a call is not timed (each timing run would add into C again).
bool rerun_accumulates(const GemmArgs& g) { return g.beta != 0.0f && g.c_in == nullptr; }

// ---- autotuning ---------------------------------------------------------------------------------------
// cuBLASLt's heuristic ranks algorithms by a model, and its first pick is not always the fastest: measured on
// the H200, the MiniLM encoder's 32768 x 30522 x 384 logits GEMM (rows 4 bytes off 16-byte alignment) ran at
// about 200 TFLOP/s with the first pick. So a new plan times the heuristic's top candidates on its own
// operands and keeps the fastest, as torch.compile's max-autotune and cuDNN's benchmark mode do.
// XF_GEMM_AUTOTUNE=0 keeps the heuristic's first pick (the choice then never depends on timing noise);
// XF_GEMM_AUTOTUNE_LOG=1 prints every candidate's time to stderr; XF_GEMM_AUTOTUNE_CANDIDATES=n times the top n.
//
// When tuning is skipped: during CUDA-graph capture (nothing can be timed; executors and the training step
// run their first step eagerly, so plans normally exist before capture), and when beta != 0 without c_in (each timing run
// would add into C again).
//
// The choice is kept per process and device under the plan key, so every context of a process (a resumed
// run, API sessions) computes a shape with the same algorithm: results agree bit for bit within a process.
constexpr int kTuneCandidates = 8;      // cuBLASLt rarely ranks the winner below 8th; each costs a few runs once
constexpr int kMaxTuneCandidates = 64;  // XF_GEMM_AUTOTUNE_CANDIDATES=n (the lab) asks for up to this many
constexpr int kTuneRuns = 3;         // timed runs per candidate (the minimum is kept), after one warm-up

bool autotune_enabled() {
  static const bool on = env_flag_default_on("XF_GEMM_AUTOTUNE");
  return on;
}
int tune_candidates() {
  static const int n =
      std::max(1, std::min(env_int("XF_GEMM_AUTOTUNE_CANDIDATES", kTuneCandidates), kMaxTuneCandidates));
  return n;
}
bool autotune_log() {
  static const bool on = env_flag("XF_GEMM_AUTOTUNE_LOG");
  return on;
}

AutotuneChoices<cublasLtMatmulAlgo_t>& tuned_choices() {
  static AutotuneChoices<cublasLtMatmulAlgo_t> t;
  return t;
}

// ---- the configuration search ----
// cuBLASLt's heuristic proposes few candidates for GPT-2's shapes (8; 5 for bias + GELU + aux) and misses faster
// configurations of the same kernels: other tiles (128 x 168, 128 x 160, 96 x 128, which divide the 16384 x 3072 and
// x 2304 outputs into waves of 132 SMs better), cluster shapes and custom options. tools/lab/gemm_algo_search.cpp, which
// times every configuration cuBLASLt accepts, found on the H200 (2026-12-01, us a call, the heuristic's best -> the
// search's): the fc layer's bias + GELU + aux 148.6 -> 138.2, with the bias alone 112.6 -> 101.0, the q/k/v projection
// 88.8 -> 78.8, the dgelu 144.1 -> 142.4; bit for bit the same outputs (the same k order). So a GEMM of kSearchMinFlops
// to kSearchMaxFlops also times, for each algorithm the heuristic proposed, every tile it offers x cluster shapes (2x1,
// 1x2 and the heuristic's) x custom options (0, 1 and the heuristic's), at the heuristic's stage counts and CTA
// swizzling, unsplit: each accepted by cublasLtMatmulAlgoCheck within the workspace (the lab's winners all had such
// clusters and options; the whole space took GPT-2's first step from seconds to minutes, 2026-12-01 run 3). A first
// pass times each once; the fastest kTuneCandidates and every heuristic candidate are then timed in batches of
// kTuneBatch launches, and a searched configuration is taken only when it beats the heuristic's best by kSearchMargin
// (the fastest of hundreds of noisy first looks is biased low: run 3 took a searched fc2 forward at 106.0 us in the
// step against the heuristic's 102.9). GPT-2's step, interleaved in one job (run 4): 598,562 and 596,789 tok/s against
// 586,898 and 589,299 with XF_GEMM_SEARCH=0 (+1.6%), for about 45 s more at the first step (its 15 GEMM shapes are
// tuned once a process; the tuning cache, runtime/tune_cache.h, keeps each choice for later processes on the same
// GPU model and cuBLASLt). XF_GEMM_SEARCH=0: the heuristic's candidates only; XF_GEMM_SEARCH=full: the whole space
// (below).
constexpr double kSearchMinFlops = 1e10;  // GPT-2's smallest GEMM (16384 x 768 x 768) is 1.9e10; a test's are < 1e9
// GPT-2's logits GEMMs (1.3e12, 1.5 ms each) gained nothing in run 3 and cost seconds a shape to search.
constexpr double kSearchMaxFlops = 5e11;
constexpr int kTuneBatch = 5;             // launches per timed run in the final round
constexpr float kSearchMargin = 0.98f;    // a searched configuration must run in 98% of the heuristic's best time
// XF_GEMM_SEARCH=full: the lab's whole space (every algorithm id cuBLASLt lists for the types, each tile, stage count,
// cluster shape, CTA swizzle and custom option 0-7, unsplit), for a machine whose choices the tuning cache keeps
// (runtime/tune_cache.h): it costs minutes once. kFullSearchMaxConfigs caps the configurations timed a shape (the
// lab's cap: its largest case accepted 3,664 of 122,548 checked).
constexpr int kFullSearchMaxConfigs = 4000;

enum class SearchSpace { none, narrow, full };
SearchSpace search_space() {
  static const SearchSpace s = [] {
    const char* v = std::getenv("XF_GEMM_SEARCH");
    if (v && std::strcmp(v, "0") == 0) return SearchSpace::none;
    if (v && std::strcmp(v, "full") == 0) return SearchSpace::full;
    return SearchSpace::narrow;
  }();
  return s;
}
const char* search_space_name(SearchSpace s) {
  return s == SearchSpace::none ? "heuristic" : s == SearchSpace::full ? "full" : "search";
}

// Whether cuBLASLt accepts `algo` for plan p within the context's workspace.
bool algo_accepted(CudaContext& ctx, const GemmPlan& p, const cublasLtMatmulAlgo_t& algo) {
  cublasLtMatmulHeuristicResult_t r{};
  return cublasLtMatmulAlgoCheck(ctx.lt(), p.desc, p.la, p.lb, p.lc, p.lc, &algo, &r) == CUBLAS_STATUS_SUCCESS &&
         r.workspaceSize <= ctx.workspace_bytes();
}

// The configurations beyond the heuristic's candidates for plan p (see above), each accepted by cuBLASLt.
std::vector<cublasLtMatmulAlgo_t> searched_configs(CudaContext& ctx, const GemmPlan& p, const GemmArgs& g,
                                                   const cublasLtMatmulHeuristicResult_t* results, int found,
                                                   SearchSpace space) {
  std::vector<cublasLtMatmulAlgo_t> out;
  const cudaDataType_t ab = cuda_dtype(g.dtype), cd = cuda_dtype(g.out_dtype);
  const auto init = [&](int32_t id, cublasLtMatmulAlgo_t& base) {
    return cublasLtMatmulAlgoInit(ctx.lt(), CUBLAS_COMPUTE_32F, CUDA_R_32F, ab, ab, cd, cd, id, &base) ==
           CUBLAS_STATUS_SUCCESS;
  };
  const auto accepted = [&](const cublasLtMatmulAlgo_t& algo) { return algo_accepted(ctx, p, algo); };
  if (space == SearchSpace::full) {
    int ids[256];
    int nids = 0;
    if (cublasLtMatmulAlgoGetIds(ctx.lt(), CUBLAS_COMPUTE_32F, CUDA_R_32F, ab, ab, cd, cd, 256, ids, &nids) !=
        CUBLAS_STATUS_SUCCESS)
      return out;
    for (int a = 0; a < nids; ++a) {
      cublasLtMatmulAlgo_t base;
      if (init(ids[a], base)) add_whole_space(base, kFullSearchMaxConfigs, accepted, out);
    }
    return out;
  }
  std::vector<int32_t> ids_done;
  for (int i = 0; i < found; ++i) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
    const int32_t id = algo_config<int32_t>(results[i].algo, CUBLASLT_ALGO_CONFIG_ID);
    if (std::find(ids_done.begin(), ids_done.end(), id) != ids_done.end()) continue;
    ids_done.push_back(id);
    // The heuristic's own stage counts, swizzles, clusters and custom options for this algorithm, with the 2x1 and 1x2
    // clusters and the options 0 and 1.
    std::vector<uint32_t> stages, swizzles, customs;
    std::vector<uint16_t> clusters = {CUBLASLT_CLUSTER_SHAPE_2x1x1, CUBLASLT_CLUSTER_SHAPE_1x2x1};
    const auto add = [](auto& v, auto x) {
      if (std::find(v.begin(), v.end(), x) == v.end()) v.push_back(x);
    };
    for (int j = 0; j < found; ++j) {
      if (results[j].state != CUBLAS_STATUS_SUCCESS || algo_config<int32_t>(results[j].algo, CUBLASLT_ALGO_CONFIG_ID) != id)
        continue;
      add(stages, algo_config<uint32_t>(results[j].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID));
      add(swizzles, algo_config<uint32_t>(results[j].algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING));
      add(clusters, algo_config<uint16_t>(results[j].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID));
      add(customs, algo_config<uint32_t>(results[j].algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION));
    }
    cublasLtMatmulAlgo_t base;
    if (!init(id, base)) continue;
    add_configs(base, algo_cap_ids(base, CUBLASLT_ALGO_CAP_TILE_IDS), stages, swizzles, clusters,
                custom_options_up_to(base, customs, 1), SIZE_MAX, accepted, out);
  }
  return out;
}

// The key a tuned choice is kept under in the tuning cache file (runtime/tune_cache.h): everything that decides
// which algorithm wins beside the plan key: the GPU model (name, compute capability, SM count), cuBLASLt's
// version and the search space.
std::string persisted_key(CudaContext& ctx, const std::string& key) {
  const DeviceProps& d = ctx.props();
  return str_cat("gemm/v1/", d.name, "/sm", d.major, d.minor, "x", d.sm_count, "/cublasLt", cublasLtGetVersion(), "/",
                 search_space_name(search_space()), "/tune", tune_candidates(), "/", key);
}

// The fastest of `found` heuristic candidates for plan p on g's operands, and with the search (above) of the
// configurations it adds (not rerun_accumulates: reruns are idempotent).
cublasLtMatmulAlgo_t tuned_algo(CudaContext& ctx, const GemmPlan& p, const GemmArgs& g, const std::string& key,
                                const cublasLtMatmulHeuristicResult_t* results, int found) {
  const std::string choice_key = str_cat(ctx.device().str(), "/", key);
  cublasLtMatmulAlgo_t chosen;
  if (tuned_choices().find(choice_key, chosen)) return chosen;
  // A choice an earlier process tuned on this GPU model and cuBLASLt (runtime/tune_cache.h), if cuBLASLt still
  // accepts it for this plan.
  const std::string disk_key = persisted_key(ctx, key);
  std::vector<uint8_t> bytes;
  if (TuneCache::instance().lookup(disk_key, bytes) && bytes.size() == sizeof chosen) {
    std::memcpy(&chosen, bytes.data(), sizeof chosen);
    if (algo_accepted(ctx, p, chosen)) return tuned_choices().store(choice_key, chosen);
  }
  if (stream_capturing(ctx.stream()) || rerun_accumulates(g)) return results[0].algo;
  const auto tune_start = std::chrono::steady_clock::now();
  struct Candidate {
    cublasLtMatmulAlgo_t algo;
    int index;  // the heuristic's rank, or found + the searched configuration's
    float ms;
  };
  std::vector<Candidate> cands;
  for (int i = 0; i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) cands.push_back({results[i].algo, i, -1.0f});
  const size_t heuristic = cands.size();  // cands[0, heuristic): the heuristic's; then the searched ones
  const double flops = 2.0 * static_cast<double>(g.m) * static_cast<double>(g.n) * static_cast<double>(g.k) *
                       static_cast<double>(g.batch);
  if (search_space() != SearchSpace::none && flops >= kSearchMinFlops && flops <= kSearchMaxFlops) {
    const std::vector<cublasLtMatmulAlgo_t> more = searched_configs(ctx, p, g, results, found, search_space());
    for (size_t j = 0; j < more.size(); ++j) cands.push_back({more[j], found + static_cast<int>(j), -1.0f});
  }
  const size_t searched_count = cands.size() - heuristic;
  const auto time = [&](Candidate& c, int runs, int batch) {
    c.ms = min_time_ms(
        ctx.stream(), runs,
        [&] {
          return cublasLtMatmul(ctx.lt(), p.desc, &g.alpha, g.b, p.la, g.a, p.lb, &g.beta, c_read(g), p.lc, g.c, p.lc,
                                &c.algo, ctx.workspace(), ctx.workspace_bytes(), ctx.stream()) == CUBLAS_STATUS_SUCCESS;
        },
        batch);
  };
  const auto faster = [](const Candidate& a, const Candidate& b) {  // failed ones (negative times) last
    return (a.ms >= 0.0f) != (b.ms >= 0.0f) ? a.ms >= 0.0f : a.ms < b.ms;
  };
  if (cands.size() == 1) return cands[0].algo;  // nothing to choose from
  const bool searched = cands.size() > heuristic;
  if (searched) {  // the first pass: one timed run each; then the fastest searched ones beside every heuristic one
    for (size_t i = heuristic; i < cands.size(); ++i) time(cands[i], 1, 1);
    std::stable_sort(cands.begin() + static_cast<std::ptrdiff_t>(heuristic), cands.end(), faster);
    cands.resize(std::min(cands.size(), heuristic + kTuneCandidates));
  }
  for (Candidate& c : cands) {
    time(c, kTuneRuns, searched ? kTuneBatch : 1);
    if (autotune_log())
      std::fprintf(stderr, "[gemm autotune] %s candidate %d: %s\n", key.c_str(), c.index,
                   c.ms >= 0.0f ? str_cat(c.ms * 1e3f, " us").c_str() : "failed");
  }
  // The heuristic's best, unless a searched configuration beats it by the margin.
  const auto best_of = [&](size_t begin, size_t end) {  // the fastest of cands[begin, end), or null
    const Candidate* best = nullptr;
    for (size_t i = begin; i < end; ++i)
      if (cands[i].ms >= 0.0f && (!best || cands[i].ms < best->ms)) best = &cands[i];
    return best;
  };
  const Candidate* win = best_of(0, heuristic);
  if (const Candidate* s = best_of(heuristic, cands.size()); s && (!win || s->ms < kSearchMargin * win->ms)) win = s;
  if (!win) return results[0].algo;
  const double tune_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - tune_start).count();
  if (autotune_log())
    std::fprintf(stderr, "[gemm autotune] %s: candidate %d (%s) of %d heuristic + %zu searched (%.1f us; tuned in %.2f s)\n",
                 key.c_str(), win->index, win->index < found ? "heuristic" : "searched", found,
                 searched_count, win->ms * 1e3f, tune_s);
  TuneCache::instance().record(disk_key, &win->algo, sizeof win->algo,
                               str_cat(win->ms * 1e3f, " us, ", win->index < found ? "heuristic" : "searched"));
  return tuned_choices().store(choice_key, win->algo);
}

std::shared_ptr<GemmPlan> make_plan(CudaContext& ctx, const GemmArgs& g, const std::string& key) {
  auto p = std::make_shared<GemmPlan>();
  const cudaDataType_t ab = cuda_dtype(g.dtype), cd = cuda_dtype(g.out_dtype);
  // fp32 accumulation and fp32 alpha/beta for every dtype; CUBLAS_COMPUTE_32F (not _FAST_TF32) keeps f32
  // GEMMs in full fp32.
  XF_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const int32_t ta = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
  const int32_t tb = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_desc(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, ta);
  set_desc(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, tb);
  const uint32_t epi = lt_epilogue(g.epilogue, g.aux != nullptr);
  set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, epi);
  // The heuristic reads the bias and aux pointers' values for their alignment (never dereferences them):
  // set the first call's, whose alignment class is in the key.
  if (g.bias) set_desc(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(g.bias));
  if (g.aux) {
    set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<const void*>(g.aux));
    set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.aux_ld);
    if (g.batch > 1) set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, g.aux_stride);
  }
  // Layouts as cuBLASLt sees them (column-major, operands swapped): its A = our B as stored, its B = our A.
  const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
  XF_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, ab, u(g.trans_b ? g.k : g.n), u(g.trans_b ? g.n : g.k), g.ldb));
  XF_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, ab, u(g.trans_a ? g.m : g.k), u(g.trans_a ? g.k : g.m), g.lda));
  XF_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lc, cd, u(g.n), u(g.m), g.ldc));
  if (g.batch > 1) {
    const int32_t count = static_cast<int32_t>(g.batch);
    set_layout(p->la, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, count);
    set_layout(p->lb, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, count);
    set_layout(p->lc, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, count);
    set_layout(p->la, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, g.stride_b);
    set_layout(p->lb, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, g.stride_a);
    set_layout(p->lc, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, g.stride_c);
  }
  PreferenceGuard pref;
  XF_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.p));
  const uint64_t ws = ctx.workspace_bytes();
  XF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  // cuBLASLt assumes 256-byte-aligned A, B, C unless told otherwise; tell it what these pointers guarantee.
  const uint32_t al_a = static_cast<uint32_t>(align_class(g.b)), al_b = static_cast<uint32_t>(align_class(g.a));
  const uint32_t al_c = static_cast<uint32_t>(align_class(g.c));
  XF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)));
  XF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)));
  XF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c)));
  XF_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c)));
  // Split-K partial sums are added in fp32 (or not split): cuBLASLt may otherwise add them in the output's 16-bit type
  // (REDUCTION_SCHEME_OUTPUT_TYPE / INPLACE), an error of about one 16-bit ulp of the partial sums, not of the result.
  // Found on the H200 (2026-11-30): the autotuner picked such an algorithm for a misaligned f16 1000-row weight
  // gradient, and an element of 0.0625 came back as 0.0703 (partial sums near 10, whose f16 ulp is 0.0078).
  const uint32_t reductions = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  XF_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reductions, sizeof(reductions)));
  cublasLtMatmulHeuristicResult_t results[kMaxTuneCandidates] = {};
  int found = 0;
  const int asked = autotune_enabled() ? tune_candidates() : 1;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(ctx.lt(), p->desc, p->la, p->lb, p->lc, p->lc, pref.p, asked, results, &found);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0 || results[0].state != CUBLAS_STATUS_SUCCESS)
    throw Error("gemm", str_cat("cuBLASLt has no algorithm for ", key, " (", cublasLtGetStatusName(st), ", ", found,
                                " found)"));
  p->algo = results[0].algo;
  if (autotune_enabled()) p->algo = tuned_algo(ctx, *p, g, key, results, found);
  return p;
}

// Least n for the aligned-head / tail split in gemm(): below it the tail GEMM's launch is not worth it.
constexpr int64_t kSplitMinColumns = 256;

// k == 0: C = beta * C (or beta * C_in), with no epilogue: zeros (beta 0), C unchanged or a copy of C_in (beta 1).
//   c, c_in: (batch, m, ldc) rows of n elements
void gemm_empty_k(CudaContext& ctx, const GemmArgs& g) {
  XF_CHECK(g.epilogue == GemmEpilogue::none && (g.beta == 0.0f || g.beta == 1.0f), "gemm",
           "k = 0 is supported without an epilogue and with beta 0 or 1, got epilogue ", gemm_epilogue_name(g.epilogue),
           ", beta ", g.beta);
  const size_t es = dtype_size(g.out_dtype);
  if (g.beta == 1.0f) {
    if (g.c_in)
      for (int64_t b = 0; b < g.batch; ++b) {
        const size_t off = static_cast<size_t>(b * g.stride_c) * es, pitch = static_cast<size_t>(g.ldc) * es;
        XF_CUDA_CHECK(cudaMemcpy2DAsync(static_cast<char*>(g.c) + off, pitch, static_cast<const char*>(g.c_in) + off,
                                        pitch, static_cast<size_t>(g.n) * es, static_cast<size_t>(g.m),
                                        cudaMemcpyDeviceToDevice, ctx.stream()));
      }
    return;
  }
  for (int64_t b = 0; b < g.batch; ++b)
    XF_CUDA_CHECK(cudaMemset2DAsync(static_cast<char*>(g.c) + static_cast<size_t>(b * g.stride_c) * es,
                                    static_cast<size_t>(g.ldc) * es, 0, static_cast<size_t>(g.n) * es,
                                    static_cast<size_t>(g.m), ctx.stream()));
}

}  // namespace

void gemm(CudaContext& ctx, const GemmArgs& args) {
  const GemmArgs g = normalise(args);
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  XF_CHECK(g.a && g.b && g.c, "gemm", "null operand pointer (a=", g.a, ", b=", g.b, ", c=", g.c, ")");
  if (g.k == 0) {
    gemm_empty_k(ctx, g);
    return;
  }
  // Columns that end off 16 bytes in rows that start on them (C's rows padded, as the executor writes an
  // unread graph output: Op::writes_padded_rows): cuBLASLt's fast kernels need n itself to be a multiple of
  // 16 bytes. Measured on the H200 (2026-11-29, tools/lab/head_gemm): the encoder's 32768 x 30522 x 384
  // logits GEMM ran at ~210 TFLOP/s with n = 30522 whatever the padding, and at ~700 with n = 30528. So the
  // aligned columns run as one GEMM and the few (< 8) tail columns as another. Not for bgrad_a, whose bias
  // gradient sums whole rows of C.
  const int64_t per16 = 16 / static_cast<int64_t>(dtype_size(g.out_dtype));  // elements of C in 16 bytes
  const int64_t in16 = 16 / static_cast<int64_t>(dtype_size(g.dtype));
  if (g.n % per16 != 0 && g.n >= kSplitMinColumns && g.ldc % per16 == 0 && g.ldb % in16 == 0 &&
      g.epilogue != GemmEpilogue::bgrad_a) {
    const int64_t n0 = g.n / per16 * per16;
    GemmArgs head = g, tail = g;
    head.n = n0;
    tail.n = g.n - n0;
    const size_t es = dtype_size(g.out_dtype), ein = dtype_size(g.dtype);
    tail.c = static_cast<char*>(g.c) + static_cast<size_t>(n0) * es;
    if (g.c_in) tail.c_in = static_cast<const char*>(g.c_in) + static_cast<size_t>(n0) * es;
    tail.b = static_cast<const char*>(g.b) + static_cast<size_t>(g.trans_b ? n0 * g.ldb : n0) * ein;
    if (g.bias) tail.bias = static_cast<char*>(g.bias) + static_cast<size_t>(n0) * es;
    if (g.aux) tail.aux = static_cast<char*>(g.aux) + static_cast<size_t>(n0) * es;
    gemm(ctx, head);
    gemm(ctx, tail);
    return;
  }
  const std::string key = plan_key(g);
  const auto plan = ctx.plan<GemmPlan>(key, [&] { return make_plan(ctx, g, key); });
  std::lock_guard<std::mutex> lock(plan->mu);
  if (g.bias) set_desc(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(g.bias));
  if (g.aux) set_desc(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<const void*>(g.aux));
  // cuBLASLt's A is our B and its B our A (see the top of the file); C and D are the same matrix.
  XF_CUBLAS_CHECK(cublasLtMatmul(ctx.lt(), plan->desc, &g.alpha, g.b, plan->la, g.a, plan->lb, &g.beta, c_read(g), plan->lc,
                                 g.c, plan->lc, &plan->algo, ctx.workspace(), ctx.workspace_bytes(), ctx.stream()));
}

namespace {

AutotuneChoices<bool>& split_choices() {
  static AutotuneChoices<bool> t;
  return t;
}

}  // namespace

void gemm_fused_or_split(CudaContext& ctx, const GemmArgs& fused, const std::function<void()>& split) {
  // The fused GEMM; false when cuBLASLt has no algorithm for it (gemm() throws naming the plan).
  const auto run_fused = [&] {
    try {
      gemm(ctx, fused);
      return true;
    } catch (const Error&) {
      return false;
    }
  };
  const auto run = [&](bool split_way) {
    if (split_way || !run_fused()) split();
  };
  const char* forced = std::getenv("XF_GEMM_EPILOGUE");
  if (forced && *forced && std::strcmp(forced, "auto") != 0) {
    XF_CHECK(std::strcmp(forced, "fused") == 0 || std::strcmp(forced, "split") == 0, "gemm",
             "XF_GEMM_EPILOGUE must be fused, split or auto, got '", forced, "'");
    return run(std::strcmp(forced, "split") == 0);
  }
  const GemmArgs g = normalise(fused);
  const std::string key = str_cat(ctx.device().str(), "/", plan_key(g));
  bool split_wins = false;
  if (split_choices().find(key, split_wins)) return run(split_wins);
  if (!autotune_enabled() || stream_capturing(ctx.stream()) || rerun_accumulates(g)) return run(false);
  const float fused_ms = min_time_ms(ctx.stream(), kTuneRuns, run_fused);
  const float split_ms = min_time_ms(ctx.stream(), kTuneRuns, [&] {
    split();
    return true;
  });
  split_wins = fused_ms < 0.0f || split_ms < fused_ms;
  if (autotune_log())
    std::fprintf(stderr, "[gemm autotune] %s: fused epilogue %s, split %.1f us: %s\n", key.c_str(),
                 fused_ms < 0.0f ? "failed" : str_cat(fused_ms * 1e3f, " us").c_str(), split_ms * 1e3f,
                 split_wins ? "split" : "fused");
  // The timing's last run was split's: its outputs stand; the fused way runs once more.
  if (!split_choices().store(key, split_wins)) run(false);
}

namespace {

// The GEMM of matmul op `op` on A, B into C (d_in: null, or a tensor laid out as C that is added: beta 1).
GemmArgs matmul_gemm(const MatMulOp& op, const Tensor& A, const Tensor& B, const Tensor& C, const Tensor* d_in) {
  const MatMulDims d = matmul_dims(op, A.shape(), B.shape());
  GemmArgs g;
  g.dtype = A.dtype();
  g.out_dtype = C.dtype();
  g.trans_a = op.trans_a;
  g.trans_b = op.trans_b;
  g.m = d.m;
  g.n = d.n;
  g.k = d.k;
  g.a = A.raw_data();
  g.b = B.raw_data();
  g.c = C.raw_data();
  g.batch = d.batch;
  // Packed A and B: the leading dimensions are the row lengths (the launcher's defaults). C is packed, or
  // row-padded by the executor (MatMulOp::writes_padded_rows: consecutive rows ldc apart).
  g.ldc = C.is_contiguous() ? d.n : C.strides()[C.rank() - 2];
  g.stride_a = d.m * d.k;
  g.stride_b = d.shared_b ? 0 : d.k * d.n;  // a shared B folds into one GEMM of batch * M rows (see gemm())
  g.stride_c = d.m * g.ldc;
  if (d_in) {
    XF_CHECK(C.is_contiguous() && d_in->is_contiguous(), "matmul_add", "needs packed c and d, got ", C.desc(), " and ",
             d_in->desc());
    g.c_in = d_in->raw_data();
    g.beta = 1.0f;
  }
  return g;
}

// a: (*, M, K) or (*, K, M) with trans_a; b: (K, N) / (N, K) shared, or (*, K, N) / (*, N, K) -> c: (*, M, N)
void matmul_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                   const std::vector<Tensor>& out) {
  gemm(context_of(ctx), matmul_gemm(static_cast<const MatMulOp&>(op_), in[0], in[1], out[0], nullptr));
}

// a, b as matmul; d: (*, M, N) -> c = a b + d, the sum in the GEMM (cuBLASLt's C input, D output)
void matmul_add_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                       const std::vector<Tensor>& out) {
  gemm(context_of(ctx), matmul_gemm(static_cast<const MatMulAddOp&>(op_).mm, in[0], in[1], out[0], &in[2]));
}

}  // namespace

void register_matmul(KernelRegistry& r) {
  r.add("matmul", Device::Kind::cuda, matmul_kernel);
  r.add("matmul_add", Device::Kind::cuda, matmul_add_kernel);
}

}  // namespace xfr::cuda
