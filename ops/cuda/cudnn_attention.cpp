// cuDNN fused attention (ops/cuda/cudnn_attention.h) through the cuDNN frontend's graph API. The frontend is
// header-only and heavy to compile: it is included by this file alone, with its JSON serialisation compiled
// out (CUDNN_FRONTEND_SKIP_JSON_LIB, set by CMake for this source).
#include "ops/cuda/cudnn_attention.h"

#include <cudnn.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <cudnn_frontend.h>
#include <cudnn_frontend_version.h>

#include "runtime/cuda/autotune.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/stream.h"
#include "runtime/error.h"

namespace fe = cudnn_frontend;

namespace xfr::cuda {


int cudnn_runtime_version() { return static_cast<int>(cudnnGetVersion()); }
int cudnn_compiled_version() { return CUDNN_VERSION; }

std::string cudnn_version_string(int v) {
  // cuDNN 9 numbers its versions major * 10000 + minor * 100 + patch (91400 is 9.14.0).
  return str_cat(v / 10000, ".", (v % 10000) / 100, ".", v % 100);
}

std::string cudnn_frontend_version() {
  return str_cat(CUDNN_FRONTEND_MAJOR_VERSION, ".", CUDNN_FRONTEND_MINOR_VERSION, ".", CUDNN_FRONTEND_PATCH_VERSION);
}

std::string cudnn_runtime_problem() {
  const int rt = cudnn_runtime_version(), ct = cudnn_compiled_version();
  // The backend API is stable within a major version (cuDNN's compatibility rule); the frontend gates newer
  // features on the loaded version itself.
  if (rt / 10000 != ct / 10000)
    return str_cat("the loaded cuDNN ", cudnn_version_string(rt), " is not of major version ", ct / 10000,
                   " (compiled against ", cudnn_version_string(ct), ")");
  if (rt < 90000) return str_cat("cuDNN ", cudnn_version_string(rt), " is older than 9.0");
  return {};
}

namespace {

// UIDs of the graphs' user tensors: the variant pack names tensors by these.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV, kBias, kDBias };

// Sets the current device for a scope and restores the caller's (the frontend queries the current device
// for the architecture; cuDNN works on it).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&prev_) != cudaSuccess) {
      cudaGetLastError();
      prev_ = -1;
    }
    if (prev_ != device) set_ = cudaSetDevice(device) == cudaSuccess;
  }
  ~DeviceGuard() {
    if (set_ && prev_ >= 0) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
  bool set_ = false;
};

// One per CudaContext (in its plan cache): the cuDNN handle, bound to the context's stream, and the plan
// statistics. A cuDNN handle may be used by one thread at a time (cuDNN's thread-safety rule): building and
// executing take `mu`.
struct CudnnState {
  cudnnHandle_t handle = nullptr;
  std::string failure;  // why no handle could be made (cached: cuDNN is then unsupported in this context)
  std::mutex mu;
  std::atomic<int64_t> graphs_built{0}, graphs_unsupported{0};
  CudnnState() = default;
  CudnnState(const CudnnState&) = delete;
  CudnnState& operator=(const CudnnState&) = delete;
  ~CudnnState() {
    if (handle) cudnnDestroy(handle);  // no throwing from a destructor: the status is ignored
  }
};

// The context's state. A handle cuDNN cannot make (a missing sub-library, no usable device) is not an error here:
// the state records why, and every call then runs natively (or fails naming it when cuDNN was forced).
std::shared_ptr<CudnnState> state_of(CudaContext& ctx) {
  return ctx.plan<CudnnState>("cudnn/state", [&] {
    auto s = std::make_shared<CudnnState>();
    DeviceGuard guard(ctx.device().index);
    const cudnnStatus_t st = cudnnCreate(&s->handle);
    if (st != CUDNN_STATUS_SUCCESS) {
      s->handle = nullptr;
      s->failure = str_cat("cudnnCreate failed: ", cudnnGetErrorString(st));
      return s;
    }
    const cudnnStatus_t ss = cudnnSetStream(s->handle, ctx.stream());
    if (ss != CUDNN_STATUS_SUCCESS) {
      cudnnDestroy(s->handle);
      s->handle = nullptr;
      s->failure = str_cat("cudnnSetStream failed: ", cudnnGetErrorString(ss));
    }
    return s;
  });
}

// One way to run a key: a built execution plan of one of its graphs.
struct SdpaCandidate {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t plan_index = 0;  // in the graph's execution plans (heuristic order)
  int64_t workspace = 0;   // this plan's scratch bytes
  std::string name;        // "implementation unified, plan 0"
};

// One cached key: its candidates, built and ready to execute, or the reason cuDNN cannot run it.
struct SdpaPlan {
  std::shared_ptr<CudnnState> state;  // keeps the handle alive as long as the plan
  std::string key;                    // plan_key(): also the key of the process-wide tuned choice
  std::vector<SdpaCandidate> candidates;
  // The candidate that runs: -1 until the first call times them (or takes the first when tuning is off or the
  // stream is capturing); written under state->mu, which every execution holds.
  int chosen = -1;
  std::string unsupported;
  std::string engine;
  int64_t max_workspace() const {
    int64_t w = 0;
    for (const auto& c : candidates) w = std::max(w, c.workspace);
    return w;
  }
};

// Plan tuning (runtime/cuda/autotune.h): every plan heuristic mode A returns, of the unified and the composite SDPA
// implementation, is built and the first call times them all on its own operands. Measured on the H200 (cuDNN
// 9.14), implementation auto's first pick ran the MiniLM encoder's attention (B 256, H 12, S 128, D 32) at twice
// the time torch's cuDNN kernel takes. XF_CUDNN_AUTOTUNE=0 builds implementation auto's first plan only (the
// choice then never depends on timing noise); XF_CUDNN_AUTOTUNE_LOG=1 prints each candidate's time to stderr.
constexpr int kTuneRuns = 3;  // timed runs per candidate (the minimum is kept), after one warm-up
bool cudnn_autotune_enabled() {
  static const bool on = env_flag_default_on("XF_CUDNN_AUTOTUNE");
  return on;
}
bool cudnn_autotune_log() {
  static const bool on = env_flag("XF_CUDNN_AUTOTUNE_LOG");
  return on;
}
AutotuneChoices<int>& sdpa_choices() {
  static AutotuneChoices<int> c;
  return c;
}

fe::DataType_t fe_dtype(DType t) { return t == DType::f16 ? fe::DataType_t::HALF : fe::DataType_t::BFLOAT16; }

std::shared_ptr<fe::graph::Tensor_attributes> io_tensor(fe::graph::Graph& g, const char* name, int64_t uid,
                                                         int64_t B, int64_t H, int64_t S, int64_t D,
                                                         const HeadStrides& st) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim({B, H, S, D})
                      .set_stride({st.batch, st.head, st.seq, 1}));
}

// lse: packed (B, H, Sq) f32, cuDNN's (B, H, Sq, 1) Stats.
void as_stats(fe::graph::Tensor_attributes& t, const CudnnSdpaArgs& a) {
  t.set_uid(kStats).set_dim({a.B, a.H, a.Sq, 1}).set_stride({a.H * a.Sq, a.Sq, 1, 1}).set_data_type(
      fe::DataType_t::FLOAT);
}

// The bias (Bb, Hb, Sq, Sk), contiguous (a broadcast axis has extent 1), or its gradient of the same shape.
void as_bias(fe::graph::Tensor_attributes& t, const CudnnSdpaArgs& a, int64_t uid) {
  t.set_uid(uid).set_dim({a.bias_batch, a.bias_heads, a.Sq, a.Sk}).set_stride(
      {a.bias_heads * a.Sq * a.Sk, a.Sq * a.Sk, a.Sk, 1});
}
std::shared_ptr<fe::graph::Tensor_attributes> bias_tensor(fe::graph::Graph& g, const CudnnSdpaArgs& a) {
  auto t = g.tensor(fe::graph::Tensor_attributes().set_name("bias"));
  as_bias(*t, a, kBias);
  return t;
}

template <class Attrs>
void set_mask(Attrs& attrs, const AttentionBand& band) {
  if (band.full()) return;
  // Relative to the chosen diagonal d(i): cuDNN keeps key j when j <= d(i) + right bound and j > d(i) - left
  // bound; AttentionBand's keys are [d(i) - left, d(i) + right], so the left bound is left + 1.
  attrs.set_diagonal_alignment(band.bottom_right ? fe::DiagonalAlignment_t::BOTTOM_RIGHT
                                                 : fe::DiagonalAlignment_t::TOP_LEFT);
  if (band.right >= 0) attrs.set_diagonal_band_right_bound(static_cast<int>(band.right));
  if (band.left >= 0) attrs.set_diagonal_band_left_bound(static_cast<int>(band.left + 1));
}

std::shared_ptr<fe::graph::Graph> new_graph(const CudnnSdpaArgs& a) {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_name("flash_attention")
      .set_io_data_type(fe_dtype(a.dtype))
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return g;
}

std::shared_ptr<fe::graph::Graph> forward_graph(const CudnnSdpaArgs& a, fe::AttentionImplementation_t impl) {
  auto g = new_graph(a);
  auto q = io_tensor(*g, "q", kQ, a.B, a.H, a.Sq, a.D, a.q);
  auto k = io_tensor(*g, "k", kK, a.B, a.Hk, a.Sk, a.D, a.k);
  auto v = io_tensor(*g, "v", kV, a.B, a.Hk, a.Sk, a.D, a.v);
  auto attrs = fe::graph::SDPA_attributes()
                   .set_name("sdpa")
                   .set_generate_stats(a.stats)
                   .set_attn_scale(static_cast<float>(a.scale))
                   .set_implementation(impl);
  set_mask(attrs, a.band);
  if (a.bias) attrs.set_bias(bias_tensor(*g, a));
  auto [o, stats] = g->sdpa(q, k, v, attrs);
  o->set_output(true).set_uid(kO).set_dim({a.B, a.H, a.Sq, a.D}).set_stride({a.o.batch, a.o.head, a.o.seq, 1});
  if (a.stats) {
    stats->set_output(true);
    as_stats(*stats, a);
  }
  return g;
}

std::shared_ptr<fe::graph::Graph> backward_graph(const CudnnSdpaArgs& a) {
  auto g = new_graph(a);
  auto q = io_tensor(*g, "q", kQ, a.B, a.H, a.Sq, a.D, a.q);
  auto k = io_tensor(*g, "k", kK, a.B, a.Hk, a.Sk, a.D, a.k);
  auto v = io_tensor(*g, "v", kV, a.B, a.Hk, a.Sk, a.D, a.v);
  auto o = io_tensor(*g, "o", kO, a.B, a.H, a.Sq, a.D, a.o);
  auto dout = io_tensor(*g, "dO", kDO, a.B, a.H, a.Sq, a.D, a.o);
  auto stats = g->tensor(fe::graph::Tensor_attributes().set_name("stats"));
  as_stats(*stats, a);
  auto attrs = fe::graph::SDPA_backward_attributes()
                   .set_name("sdpa_backward")
                   .set_attn_scale(static_cast<float>(a.scale))
                   .set_deterministic_algorithm(a.deterministic);
  set_mask(attrs, a.band);
  if (a.bias) attrs.set_bias(bias_tensor(*g, a));
  std::shared_ptr<fe::graph::Tensor_attributes> dbias;
  if (a.bias_grad) {
    dbias = g->tensor(fe::graph::Tensor_attributes().set_name("dbias"));
    as_bias(*dbias, a, kDBias);
    dbias->set_output(true);
    attrs.set_dbias(dbias);
  }
  auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, attrs);
  dq->set_output(true).set_uid(kDQ).set_dim({a.B, a.H, a.Sq, a.D}).set_stride({a.q.batch, a.q.head, a.q.seq, 1});
  dk->set_output(true).set_uid(kDK).set_dim({a.B, a.Hk, a.Sk, a.D}).set_stride({a.k.batch, a.k.head, a.k.seq, 1});
  dv->set_output(true).set_uid(kDV).set_dim({a.B, a.Hk, a.Sk, a.D}).set_stride({a.v.batch, a.v.head, a.v.seq, 1});
  return g;
}

// validate, build the operation graph, heuristic mode A's plans, check support, build (the first plan that
// builds, or every one with `all`): "" or cuDNN's reason.
std::string finalize(fe::graph::Graph& g, cudnnHandle_t handle, bool all) {
  try {
    const char* step = "validate";
    auto err = g.validate();
    if (err.is_good()) {
      step = "build_operation_graph";
      err = g.build_operation_graph(handle);
    }
    if (err.is_good()) {
      step = "create_execution_plans";
      err = g.create_execution_plans({fe::HeurMode_t::A});
    }
    if (err.is_good()) {
      step = "check_support";
      err = g.check_support();
    }
    if (err.is_good()) {
      step = "build_plans";
      err = g.build_plans(all ? fe::BuildPlanPolicy_t::ALL : fe::BuildPlanPolicy_t::HEURISTICS_CHOICE);
    }
    if (err.is_bad()) return str_cat(step, ": ", err.get_message());
    return {};
  } catch (const std::exception& e) {  // the frontend's legacy parts throw cudnn_frontend::cudnnException
    return e.what();
  }
}

std::string plan_key(const CudnnSdpaArgs& a, bool backward) {
  // The scale as cuDNN receives it: the bits of the float.
  const float scale = static_cast<float>(a.scale);
  uint32_t bits = 0;
  std::memcpy(&bits, &scale, sizeof bits);
  const auto st = [](const HeadStrides& s) { return str_cat(s.batch, ",", s.head, ",", s.seq); };
  return str_cat("cudnn_sdpa/", backward ? "bwd" : "fwd", "/", dtype_name(a.dtype), "/B", a.B, "/H", a.H, "/Hk", a.Hk,
                 "/Sq", a.Sq, "/Sk", a.Sk, "/D", a.D, "/q", st(a.q), "/k", st(a.k), "/v", st(a.v), "/o", st(a.o),
                 "/scale", bits, "/band", a.band.left, ",", a.band.right, a.band.bottom_right ? ",br" : ",tl",
                 a.bias ? str_cat("/bias", a.bias_batch, ",", a.bias_heads, backward && a.bias_grad ? ",grad" : "")
                        : std::string(),
                 backward ? (a.deterministic ? "/deterministic" : "/atomic") : (a.stats ? "/stats" : "/nostats"));
}

const char* implementation_name(fe::AttentionImplementation_t impl) {
  switch (impl) {
    case fe::AttentionImplementation_t::AUTO: return "auto";
    case fe::AttentionImplementation_t::COMPOSITE: return "composite";
    case fe::AttentionImplementation_t::UNIFIED: return "unified";
  }
  return "?";
}

std::shared_ptr<SdpaPlan> make_plan(CudaContext& ctx, const std::shared_ptr<CudnnState>& st, const CudnnSdpaArgs& a,
                                    bool backward, const std::string& key) {
  auto p = std::make_shared<SdpaPlan>();
  p->state = st;
  p->key = key;
  if (!st->failure.empty()) {
    p->unsupported = st->failure;
    return p;
  }
  DeviceGuard guard(ctx.device().index);
  std::lock_guard<std::mutex> lock(st->mu);
  st->graphs_built.fetch_add(1);
  const bool tune = cudnn_autotune_enabled();
  std::string reasons;
  // One graph: made and finalized, its built plans added as candidates; or the reason it could not be.
  const auto add_graph = [&](const std::string& label, const std::function<std::shared_ptr<fe::graph::Graph>()>& make) {
    std::shared_ptr<fe::graph::Graph> g;
    std::string why;
    try {
      g = make();
    } catch (const std::exception& e) {
      why = std::string("building the graph: ") + e.what();
    }
    if (why.empty()) why = finalize(*g, st->handle, tune);
    if (why.empty()) {
      const int64_t n = g->get_execution_plan_count();
      for (int64_t i = 0; i < n; ++i) {
        int64_t ws = 0;
        if (g->get_workspace_size_plan_at_index(i, ws).is_bad()) continue;  // a plan that did not build
        p->candidates.push_back({g, i, ws, str_cat(label, ", plan ", i)});
        if (!tune) break;  // the heuristic's first plan that builds (HEURISTICS_CHOICE built only that one)
      }
    }
    if (!why.empty()) reasons += str_cat(reasons.empty() ? "" : "; ", label, ": ", why);
  };
  if (backward) {
    add_graph("sdpa_backward", [&] { return backward_graph(a); });
    p->engine = str_cat("sdpa_backward, ", a.deterministic ? "deterministic" : "atomic dq", ", heuristic mode A");
  } else if (tune) {
    // Both implementations' plans compete (auto would pick unified whenever it supports the graph).
    for (auto impl : {fe::AttentionImplementation_t::UNIFIED, fe::AttentionImplementation_t::COMPOSITE})
      add_graph(str_cat("implementation ", implementation_name(impl)), [&] { return forward_graph(a, impl); });
    p->engine = str_cat("sdpa", a.stats ? "" : " (no stats)", ", heuristic mode A");
  } else {
    // AUTO lets the frontend pick its unified or composite SDPA node; a cuDNN older than the unified node's
    // needs may still accept the composite one, so that is tried when AUTO is refused.
    add_graph("implementation auto", [&] { return forward_graph(a, fe::AttentionImplementation_t::AUTO); });
    if (p->candidates.empty())
      add_graph("implementation composite", [&] { return forward_graph(a, fe::AttentionImplementation_t::COMPOSITE); });
    p->engine = str_cat("sdpa", a.stats ? "" : " (no stats)", ", heuristic mode A");
  }
  if (p->candidates.empty()) {
    st->graphs_unsupported.fetch_add(1);
    p->unsupported = "cuDNN refused the graph (" + reasons + ")";
    return p;
  }
  p->engine += tune ? str_cat(", ", p->candidates.size(), " plans timed on the first call") : ", first plan";
  if (!tune) p->chosen = 0;
  return p;
}

// Why cuDNN cannot run `a` without asking it, or "".
std::string static_problem(const CudnnSdpaArgs& a) {
  const std::string rt = cudnn_runtime_problem();
  if (!rt.empty()) return rt;
  if (a.dtype != DType::bf16 && a.dtype != DType::f16)
    return str_cat("cuDNN attention runs bf16 and f16, not ", dtype_name(a.dtype),
                   " (f32 runs natively, in full fp32)");
  if (a.B <= 0 || a.H <= 0 || a.Hk <= 0 || a.Sq <= 0 || a.Sk <= 0 || a.D <= 0)
    return str_cat("an empty attention (B=", a.B, " H=", a.H, " Hk=", a.Hk, " Sq=", a.Sq, " Sk=", a.Sk, " D=", a.D,
                   ")");
  if (a.H % a.Hk != 0) return str_cat("H ", a.H, " is not a multiple of Hk ", a.Hk);
  // cuDNN SDPA (fp16/bf16): head dims that are multiples of 8, up to 256 on sm_80/sm_90.
  if (a.D % 8 != 0 || a.D > 256) return str_cat("head dim ", a.D, " is not a multiple of 8 up to 256");
  if (!std::isfinite(a.scale)) return str_cat("scale ", a.scale, " is not finite");
  if (a.band.bottom_right && a.band.right >= 0 && a.Sq > a.Sk)
    return str_cat("a bottom-right causal mask with Sq ", a.Sq, " > Sk ", a.Sk, " hides every key from some rows");
  if (a.band.left > INT32_MAX - 1 || a.band.right > INT32_MAX)
    return str_cat("window (", a.band.left, ", ", a.band.right, ") past cuDNN's 32-bit bounds");
  if (a.bias && ((a.bias_batch != 1 && a.bias_batch != a.B) || (a.bias_heads != 1 && a.bias_heads != a.H)))
    return str_cat("a bias of extents (", a.bias_batch, ", ", a.bias_heads, ") over (B ", a.B, ", H ", a.H, ")");
  // cuDNN loads the bias's rows with 16-byte vectors and does not check their alignment (kCudnnSdpaAlignment).
  if (a.bias && a.Sk % 8 != 0) return str_cat("a bias whose rows of Sk = ", a.Sk, " keys are not 16-byte aligned");
  if (a.bias_grad && !a.bias) return "a bias gradient without a bias";
  return {};
}

std::shared_ptr<SdpaPlan> plan_of(CudaContext& ctx, const CudnnSdpaArgs& a, bool backward) {
  // The state first, outside the plan cache's lock that make_plan runs under.
  const auto st = state_of(ctx);
  const std::string key = plan_key(a, backward);
  return ctx.plan<SdpaPlan>(key, [&] { return make_plan(ctx, st, a, backward, key); });
}

bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kCudnnSdpaAlignment == 0; }

void check_pointers(const char* what, std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    XF_CHECK(p != nullptr, "flash_attention", "cuDNN SDPA ", what, ": null pointer");
    XF_CHECK(aligned(p), "flash_attention", "cuDNN SDPA ", what, ": pointer ", p, " is not ", kCudnnSdpaAlignment,
             "-byte aligned");
  }
}

// The bias pointer (and dbias's) must come exactly when the arguments ask for one.
void check_bias_pointer(const char* what, bool wanted, const void* p, const char* name) {
  XF_CHECK(wanted == (p != nullptr), "flash_attention", "cuDNN SDPA ", what, ": ",
           wanted ? str_cat("the arguments ask for ", name, " but no ", name, " pointer was given")
                  : str_cat("a ", name, " pointer was given but the arguments ask for none"));
  if (p) check_pointers(what, {p});
}

// The plan for a call that must run, or an error naming why it cannot.
std::shared_ptr<SdpaPlan> runnable_plan(CudaContext& ctx, const CudnnSdpaArgs& a, bool backward) {
  const std::string why = static_problem(a);
  XF_CHECK(why.empty(), "flash_attention", "cuDNN SDPA cannot run this call: ", why);
  auto p = plan_of(ctx, a, backward);
  XF_CHECK(p->unsupported.empty(), "flash_attention", "cuDNN SDPA cannot run this call: ", p->unsupported);
  return p;
}

// Scratch for `bytes`: the context's workspace (the GEMMs', free between kernels of the one stream) when it is
// large enough, else a block of the caching allocator freed (stream-ordered) after the launch (held by `owned`).
void* scratch(CudaContext& ctx, int64_t bytes, std::shared_ptr<void>& owned) {
  if (bytes <= 0) return nullptr;
  if (static_cast<size_t>(bytes) <= ctx.workspace_bytes()) return ctx.workspace();
  owned = ctx.allocate(static_cast<size_t>(bytes));
  return owned.get();
}

// Times every candidate on this call's operands (the outputs are overwritten on each run; nothing accumulates
// into them) and returns the fastest; the first when the stream is being captured (not stored: a later eager
// call tunes). Called with state->mu held.
int choose(CudaContext& ctx, SdpaPlan& p, std::unordered_map<int64_t, void*>& pack) {
  if (p.candidates.size() == 1) return 0;
  const std::string& key = p.key;
  const std::string choice_key = str_cat(ctx.device().str(), "/", key);
  int chosen = -1;
  if (sdpa_choices().find(choice_key, chosen) && chosen < static_cast<int>(p.candidates.size())) return chosen;
  if (stream_capturing(ctx.stream())) return -1;
  std::shared_ptr<void> owned;
  void* ws = scratch(ctx, p.max_workspace(), owned);
  int best = 0;
  float best_ms = -1.0f;
  for (size_t i = 0; i < p.candidates.size(); ++i) {
    const SdpaCandidate& c = p.candidates[i];
    const float ms = min_time_ms(ctx.stream(), kTuneRuns, [&] {
      return c.graph->execute_plan_at_index(p.state->handle, pack, ws, c.plan_index).is_good();
    });
    if (cudnn_autotune_log())
      std::fprintf(stderr, "[cudnn autotune] %s %s: %s\n", key.c_str(), c.name.c_str(),
                   ms >= 0.0f ? str_cat(ms * 1e3f, " us").c_str() : "failed");
    if (ms >= 0.0f && (best_ms < 0.0f || ms < best_ms)) {
      best = static_cast<int>(i);
      best_ms = ms;
    }
  }
  if (cudnn_autotune_log())
    std::fprintf(stderr, "[cudnn autotune] %s: %s (%.1f us)\n", key.c_str(), p.candidates[static_cast<size_t>(best)].name.c_str(),
                 best_ms * 1e3f);
  return sdpa_choices().store(choice_key, best);
}

void execute(CudaContext& ctx, SdpaPlan& p, std::unordered_map<int64_t, void*>& pack, const char* what) {
  DeviceGuard guard(ctx.device().index);
  std::lock_guard<std::mutex> lock(p.state->mu);
  if (p.chosen < 0) {
    const int c = choose(ctx, p, pack);
    if (c >= 0) p.chosen = c;
  }
  const SdpaCandidate& c = p.candidates[static_cast<size_t>(std::max(p.chosen, 0))];
  std::shared_ptr<void> owned;
  void* ws = scratch(ctx, c.workspace, owned);
  auto err = c.graph->execute_plan_at_index(p.state->handle, pack, ws, c.plan_index);
  if (err.is_bad()) throw Error("flash_attention", str_cat("cuDNN SDPA ", what, " failed: ", err.get_message()));
}

}  // namespace

CudnnSdpaSupport cudnn_sdpa_support(CudaContext& ctx, const CudnnSdpaArgs& a, bool backward) {
  CudnnSdpaSupport s;
  s.unsupported = static_problem(a);
  if (!s.unsupported.empty()) return s;
  const auto p = plan_of(ctx, a, backward);
  s.unsupported = p->unsupported;
  s.workspace_bytes = static_cast<size_t>(p->max_workspace());
  s.engine = p->engine;
  return s;
}

void cudnn_sdpa_forward(CudaContext& ctx, const CudnnSdpaArgs& a, const void* q, const void* k, const void* v,
                        void* out, float* lse, const void* bias) {
  XF_CHECK(a.stats == (lse != nullptr), "flash_attention", "cuDNN SDPA forward: ",
           a.stats ? "the arguments ask for lse (stats) but no lse pointer was given"
                   : "an lse pointer was given but the arguments ask for no lse (stats = false)");
  check_pointers("forward", {q, k, v, out});
  if (lse) check_pointers("forward", {lse});
  check_bias_pointer("forward", a.bias, bias, "bias");
  const auto p = runnable_plan(ctx, a, false);
  std::unordered_map<int64_t, void*> pack{{kQ, const_cast<void*>(q)}, {kK, const_cast<void*>(k)},
                                          {kV, const_cast<void*>(v)}, {kO, out}};
  if (lse) pack.emplace(kStats, lse);
  if (bias) pack.emplace(kBias, const_cast<void*>(bias));
  execute(ctx, *p, pack, "forward");
}

void cudnn_sdpa_backward(CudaContext& ctx, const CudnnSdpaArgs& a, const void* q, const void* k, const void* v,
                         const void* out, const void* dout, const float* lse, void* dq, void* dk, void* dv,
                         const void* bias, void* dbias) {
  check_pointers("backward", {q, k, v, out, dout, lse, dq, dk, dv});
  check_bias_pointer("backward", a.bias, bias, "bias");
  check_bias_pointer("backward", a.bias_grad, dbias, "dbias");
  const auto p = runnable_plan(ctx, a, true);
  std::unordered_map<int64_t, void*> pack{
      {kQ, const_cast<void*>(q)},      {kK, const_cast<void*>(k)},     {kV, const_cast<void*>(v)},
      {kO, const_cast<void*>(out)},    {kDO, const_cast<void*>(dout)}, {kStats, const_cast<float*>(lse)},
      {kDQ, dq},                       {kDK, dk},                      {kDV, dv}};
  if (bias) pack.emplace(kBias, const_cast<void*>(bias));
  if (dbias) pack.emplace(kDBias, dbias);
  execute(ctx, *p, pack, "backward");
}

CudnnSdpaStats cudnn_sdpa_stats(CudaContext& ctx) {
  const auto st = state_of(ctx);
  return {st->graphs_built.load(), st->graphs_unsupported.load()};
}

}  // namespace xfr::cuda
