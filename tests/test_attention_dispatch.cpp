// The attention backends (ops/attention_backend.h, ops/cuda/attention_dispatch.h, ops/cuda/cudnn_attention.h).
// CPU: XF_ATTENTION_BACKEND parsing (also at graph build), the backend choice as a table of cases, the info
// list. CUDA (XF_CUDA_TEST_CASE: skipped without XF_TEST_DEVICE=cuda and a GPU): cuDNN's forward (out, lse) and
// backward (dq, dk, dv) against the CPU flash_attention op in f32 on the same rounded inputs, bf16 and f16,
// head dims 64 and 128, S = 1, 17, 127, 257, 1000, Sq != Sk, GQA and MQA, causal (top-left, and bottom-right
// through a top-left oracle on padded queries), packed (B, H, S, D) and (B, S, H, D); outputs poisoned with NaN;
// cuDNN's lse equal to the native kernel's (and a native backward of a cuDNN forward); the dispatcher's
// choices and its errors for forced backends; the plan cache (a second call builds nothing, a refused shape is
// probed once); a CUDA-graph replay; a deterministic backward.
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "ops/attention_backend.h"
#include "ops/flash_attention.h"
#include "runtime/device_context.h"
#include "tests/cuda_testing.h"
#include "testing.h"

#ifdef XF_WITH_CUDA
#include "ops/cuda/attention_dispatch.h"
#include "ops/cuda/cudnn_attention.h"
#include "runtime/cuda/context.h"
#endif

using namespace xfr;
using namespace xfr::testing;

namespace {

// The error `f` throws (FAIL when none).
template <class F>
Error error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  FAIL("no xfr::Error thrown");
  return Error("", "");
}

AttentionCallSupport call(bool backward, BackendSupport native, BackendSupport cudnn,
                          BackendSupport cudnn_forward = BackendSupport::yes(), std::string veto = {}) {
  AttentionCallSupport s;
  s.call = backward ? "backward bf16 test" : "forward bf16 test";
  s.backward = backward;
  s.native = std::move(native);
  s.cudnn = std::move(cudnn);
  s.cudnn_forward = std::move(cudnn_forward);
  s.cudnn_auto_veto = std::move(veto);
  return s;
}

}  // namespace

// =========================================================================================================
// CPU: parsing, the choice, the info list
// =========================================================================================================

TEST_CASE("attention backend: XF_ATTENTION_BACKEND values, the default, and errors naming the known values") {
  using R = AttentionBackendRequest;
  CHECK(parse_attention_backend("") == R::automatic);
  CHECK(parse_attention_backend("auto") == R::automatic);
  CHECK(parse_attention_backend("native") == R::native);
  CHECK(parse_attention_backend("cudnn") == R::cudnn);
  CHECK(parse_attention_backend("composite") == R::composite);
  for (const char* bad : {"cuDNN", "flash", "auto ", "native,cudnn"}) {
    const Error e = error_of([&] { parse_attention_backend(bad); });
    CHECK(e.op() == "flash_attention");
    CHECK_MESSAGE(contains(e.message(), std::string("XF_ATTENTION_BACKEND='") + bad + "'"), e.what());
    CHECK_MESSAGE(contains(e.message(), "auto (the default), native, cudnn, composite"), e.what());
  }
  for (R r : {R::automatic, R::native, R::cudnn, R::composite})
    CHECK(parse_attention_backend(attention_backend_request_name(r)) == r);
  {
    ScopedEnv env("XF_ATTENTION_BACKEND", nullptr);
    CHECK(attention_backend_from_env() == R::automatic);
  }
  {
    ScopedEnv env("XF_ATTENTION_BACKEND", "cudnn");
    CHECK(attention_backend_from_env() == R::cudnn);
  }
  {
    ScopedEnv env("XF_ATTENTION_BACKEND", "nope");
    CHECK_THROWS_AS(attention_backend_from_env(), Error);
    // At graph build, before anything runs.
    Graph g;
    const Value q = g.input("q", TensorMeta{{1, 2, 4, 8}, DType::f32});
    CHECK_THROWS_AS(scaled_dot_product_attention(q, q, q, Value{}, AttentionOptions{}), Error);
  }
  {
    // composite keeps the composite: no flash_attention node in the graph.
    ScopedEnv env("XF_ATTENTION_BACKEND", "composite");
    Graph g;
    const Value q = g.input("q", TensorMeta{{1, 2, 4, 8}, DType::f32});
    scaled_dot_product_attention(q, q, q, Value{}, AttentionOptions{});
    bool fused = false, composite = false;
    for (int i = 0; i < g.num_nodes(); ++i) {
      fused |= g.node(i).op->name() == "flash_attention";
      composite |= g.node(i).op->name() == "softmax";
    }
    CHECK_FALSE(fused);
    CHECK(composite);
  }
}

TEST_CASE("attention backend: XF_ATTENTION_DETERMINISTIC values, the default, and errors") {
  CHECK(parse_attention_deterministic(""));
  CHECK(parse_attention_deterministic("1"));
  CHECK_FALSE(parse_attention_deterministic("0"));
  for (const char* bad : {"true", "no", " 0"}) {
    const Error e = error_of([&] { parse_attention_deterministic(bad); });
    CHECK(e.op() == "flash_attention");
    CHECK_MESSAGE(contains(e.message(), std::string("XF_ATTENTION_DETERMINISTIC='") + bad + "'"), e.what());
  }
  {
    ScopedEnv env("XF_ATTENTION_DETERMINISTIC", nullptr);
    CHECK(attention_deterministic_from_env());
  }
  {
    ScopedEnv env("XF_ATTENTION_DETERMINISTIC", "0");
    CHECK_FALSE(attention_deterministic_from_env());
#ifdef XF_WITH_CUDA
    // The dispatcher runs a call with it, whatever the caller's args said, and the cuDNN form follows (the backward
    // then accumulates dq with atomics, natively or in cuDNN).
    cuda::FlashAttentionArgs a;
    a.dtype = DType::bf16;
    a.B = a.H = a.Hk = 1;
    a.Sq = a.Sk = 16;
    a.D = 64;
    a.q_strides = a.k_strides = head_strides(AttentionLayout::bhsd, 1, 16, 64);
    CHECK(a.deterministic);
    CHECK(cuda::cudnn_args_of(a).deterministic);
    const cuda::FlashAttentionArgs e = cuda::with_env_determinism(a);
    CHECK_FALSE(e.deterministic);
    CHECK_FALSE(cuda::cudnn_args_of(e).deterministic);
    ScopedEnv back("XF_ATTENTION_DETERMINISTIC", "1");
    CHECK(cuda::with_env_determinism(e).deterministic);
#endif
  }
}

TEST_CASE("attention backend: the choice for each request and support (a pure function)") {
  using R = AttentionBackendRequest;
  using B = AttentionBackend;
  const auto yes = BackendSupport::yes();
  const auto no_native = BackendSupport::no("head dim 300 past 256");
  const auto no_cudnn = BackendSupport::no("dropout needs the CPU oracle's Philox mask");
  const auto no_fwd = BackendSupport::no("cuDNN refused the forward");
  // auto (and composite, which is auto for fused nodes): cuDNN where it runs the call.
  for (R r : {R::automatic, R::composite}) {
    CHECK(choose_attention_backend(r, call(false, yes, yes)) == B::cudnn);
    CHECK(choose_attention_backend(r, call(false, yes, no_cudnn)) == B::native);
    CHECK(choose_attention_backend(r, call(false, yes, yes, yes, "scratch past the budget")) == B::native);
    CHECK(choose_attention_backend(r, call(true, yes, yes, yes)) == B::cudnn);
    // A backward follows its forward: the forward ran natively, so does the backward.
    CHECK(choose_attention_backend(r, call(true, yes, yes, no_fwd)) == B::native);
    CHECK(choose_attention_backend(r, call(true, yes, no_cudnn, yes)) == B::native);
    // A call only cuDNN can run goes there even past the budget or when its forward did not.
    CHECK(choose_attention_backend(r, call(false, no_native, yes, yes, "scratch past the budget")) == B::cudnn);
    CHECK(choose_attention_backend(r, call(true, no_native, yes, no_fwd)) == B::cudnn);
    const Error e = error_of([&] { choose_attention_backend(r, call(false, no_native, no_cudnn)); });
    CHECK(e.op() == "flash_attention");
    CHECK_MESSAGE(contains(e.message(), "no attention backend can run this call (forward bf16 test)"), e.what());
    CHECK_MESSAGE(contains(e.message(), "cudnn: dropout needs the CPU oracle's Philox mask"), e.what());
    CHECK_MESSAGE(contains(e.message(), "native: head dim 300 past 256"), e.what());
  }
  // Forced native.
  CHECK(choose_attention_backend(R::native, call(false, yes, yes)) == B::native);
  CHECK(choose_attention_backend(R::native, call(true, yes, yes)) == B::native);
  {
    const Error e = error_of([&] { choose_attention_backend(R::native, call(false, no_native, yes)); });
    CHECK(e.op() == "flash_attention");
    CHECK_MESSAGE(contains(e.message(), "XF_ATTENTION_BACKEND=native cannot run this call"), e.what());
    CHECK_MESSAGE(contains(e.message(), "native: head dim 300 past 256"), e.what());
    CHECK_MESSAGE(contains(e.message(), "cudnn: could run it"), e.what());
  }
  // Forced cudnn: the budget and the forward's backend do not matter.
  CHECK(choose_attention_backend(R::cudnn, call(false, yes, yes, yes, "scratch past the budget")) == B::cudnn);
  CHECK(choose_attention_backend(R::cudnn, call(true, yes, yes, no_fwd)) == B::cudnn);
  {
    const Error e = error_of([&] { choose_attention_backend(R::cudnn, call(true, yes, no_cudnn)); });
    CHECK_MESSAGE(contains(e.message(), "XF_ATTENTION_BACKEND=cudnn cannot run this call (backward bf16 test)"), e.what());
    CHECK_MESSAGE(contains(e.message(), "cudnn: dropout needs the CPU oracle's Philox mask"), e.what());
    CHECK_MESSAGE(contains(e.message(), "native: could run it"), e.what());
  }
}

TEST_CASE("attention backend: the info list names every backend, with a reason for each unavailable one") {
  const auto list = attention_backends_info();
  std::vector<std::string> names;
  for (const auto& b : list) {
    names.push_back(b.name);
    if (!b.available) CHECK_MESSAGE(!b.detail.empty(), b.name);
  }
  REQUIRE(list.size() == 5);
  CHECK(contains(names[0], "cpu flash_attention"));
  CHECK(list[0].available);
  CHECK(contains(names[1], "cpu composite"));
  CHECK(list[1].available);
  CHECK(contains(names[2], "cuda flash_attention, native"));
  CHECK(contains(names[3], "cuda composite"));
  CHECK(contains(names[4], "cudnn fused attention"));
  CHECK(list[2].available == (cuda_device_count() > 0));
#ifdef XF_HAVE_CUDNN_ATTENTION
  CHECK_MESSAGE(contains(list[4].detail, "built against cuDNN frontend "), list[4].detail);
  CHECK(list[4].available == (cuda_device_count() > 0 && cuda::cudnn_runtime_problem().empty()));
#else
  CHECK_FALSE(list[4].available);
  CHECK_MESSAGE(contains(list[4].detail, "not built: "), list[4].detail);
#endif
}

#ifdef XF_WITH_CUDA

namespace {

// The launchers' arguments of a packed (B, H, S, D) call: the one place the tests build them.
cuda::FlashAttentionArgs fa_args(DType dt, int64_t B, int64_t H, int64_t Hk, int64_t Sq, int64_t Sk, int64_t D,
                                 double scale, bool causal) {
  cuda::FlashAttentionArgs a;
  a.dtype = dt;
  a.B = B, a.H = H, a.Hk = Hk, a.Sq = Sq, a.Sk = Sk, a.D = D;
  a.q_strides = head_strides(AttentionLayout::bhsd, H, Sq, D);
  a.k_strides = head_strides(AttentionLayout::bhsd, Hk, Sk, D);
  a.scale = scale;
  a.causal = causal;
  return a;
}

}  // namespace

TEST_CASE("attention backend: the native kernels' limits and the cuDNN form of a call (no GPU needed)") {
  const cuda::FlashAttentionArgs a = fa_args(DType::bf16, 2, 8, 2, 100, 300, 64, 0.125, true);
  CHECK(cuda::native_attention_support(a).ok);
  auto bad = a;
  bad.D = 300;
  CHECK_MESSAGE(contains(cuda::native_attention_support(bad).reason, "head dims 1 to 256"),
                cuda::native_attention_support(bad).reason);
  bad = a;
  bad.dtype = DType::f64;
  CHECK_FALSE(cuda::native_attention_support(bad).ok);
  bad = a;
  bad.Sq = int64_t{64} * 65535 + 1;
  CHECK_FALSE(cuda::native_attention_support(bad).ok);
  const cuda::CudnnSdpaArgs c = cuda::cudnn_args_of(a);
  CHECK((c.band.left == -1 && c.band.right == 0 && !c.band.bottom_right));  // causal, top-left
  auto windowed = a;
  windowed.causal = false;
  windowed.window_left = 16;
  windowed.window_right = 3;
  windowed.alignment = CausalAlignment::bottom_right;
  const cuda::CudnnSdpaArgs cw = cuda::cudnn_args_of(windowed);
  CHECK((cw.band.left == 16 && cw.band.right == 3 && cw.band.bottom_right));
  CHECK(c.deterministic);
  CHECK(c.q.batch == 8 * 100 * 64);
  CHECK(c.q.head == 100 * 64);
  CHECK(c.q.seq == 64);
  CHECK(c.k.batch == 2 * 300 * 64);
  CHECK(c.v.head == 300 * 64);
  CHECK(c.o.seq == 64);
  const HeadStrides s = head_strides(AttentionLayout::bshd, 8, 100, 64);
  CHECK(s.batch == 100 * 8 * 64);
  CHECK(s.head == 64);
  CHECK(s.seq == 8 * 64);
}

#endif  // XF_WITH_CUDA

#ifdef XF_HAVE_CUDNN_ATTENTION

TEST_CASE("attention backend: cuDNN versions (no GPU needed)") {
  CHECK(cuda::cudnn_version_string(91400) == "9.14.0");
  CHECK(cuda::cudnn_version_string(90501) == "9.5.1");
  CHECK(cuda::cudnn_runtime_version() >= 90000);
  CHECK(cuda::cudnn_compiled_version() >= 90000);
  CHECK(cuda::cudnn_runtime_problem().empty());  // the cuDNN this binary loads serves it
  CHECK(cuda::cudnn_frontend_version().rfind("1.", 0) == 0);
}

#endif  // XF_HAVE_CUDNN_ATTENTION

// =========================================================================================================
// CUDA
// =========================================================================================================

#ifdef XF_HAVE_CUDNN_ATTENTION

namespace {

cuda::CudaContext& cctx() { return *dynamic_cast<cuda::CudaContext*>(cuda_test_ctx()); }

struct Case {
  int64_t B, H, Hk, Sq, Sk, D;
  AttentionBand band;  // {left, right, bottom_right}: causal is right 0
};

std::string case_name(const Case& c, bool bshd, DType dt) {
  const AttentionBand& b = c.band;
  const std::string mask = b.full() ? std::string()
                           : b.left < 0 && b.right == 0 ? std::string(b.bottom_right ? " causal-bottom-right" : " causal")
                                                        : str_cat(" band(", b.left, ",", b.right, b.bottom_right ? ",br)" : ")");
  return str_cat("B=", c.B, " H=", c.H, " Hk=", c.Hk, " Sq=", c.Sq, " Sk=", c.Sk, " D=", c.D, mask,
                 bshd ? " bshd" : " bhsd", " [", dtype_name(dt), "]");
}

// Tolerances (as tests/test_flash_attention.cpp's for the native kernel, for the same reasons): cuDNN also rounds
// P (and dS) to the 16-bit dtype before the second matmul and accumulates in fp32; lse is fp32 throughout.
struct CudnnTol {
  double out_atol, out_rtol, lse_atol, grad_rel, grad_rtol;
};
CudnnTol cudnn_tol(DType t) {
  return t == DType::bf16 ? CudnnTol{2e-2, 2e-2, 2e-4, 2e-2, 2e-2} : CudnnTol{3e-3, 3e-3, 2e-4, 4e-3, 4e-3};
}

// A device copy of a (B, H, S, D) host tensor in the layout (bshd: stored as (B, S, H, D)).
Tensor to_layout_device(const Tensor& bhsd, bool bshd, DType dt) {
  const Tensor t = as_dtype(bhsd, dt);
  return (bshd ? t.permute({0, 2, 1, 3}).contiguous() : t).to_device(cuda_test_ctx());
}

// A device tensor of NaN bytes (0xFF) in the layout of a (B, H, S, D) tensor.
Tensor poisoned(int64_t B, int64_t H, int64_t S, int64_t D, bool bshd, DType dt) {
  return poisoned_device(bshd ? Shape{B, S, H, D} : Shape{B, H, S, D}, dt);
}
Tensor poisoned_lse(int64_t B, int64_t H, int64_t Sq) { return poisoned_device({B, H, Sq}, DType::f32); }

// The values of a device tensor of the layout, as (B, H, S, D) row-major doubles.
std::vector<double> from_layout(const Tensor& t, bool bshd) {
  const Tensor h = t.to_host();
  return (bshd ? h.permute({0, 2, 1, 3}).contiguous() : h).to_doubles();
}

cuda::CudnnSdpaArgs args_of(const Case& c, DType dt, bool bshd, double scale) {
  cuda::CudnnSdpaArgs a;
  a.dtype = dt;
  a.B = c.B, a.H = c.H, a.Hk = c.Hk, a.Sq = c.Sq, a.Sk = c.Sk, a.D = c.D;
  const AttentionLayout layout = bshd ? AttentionLayout::bshd : AttentionLayout::bhsd;
  a.q = a.o = head_strides(layout, c.H, c.Sq, c.D);
  a.k = a.v = head_strides(layout, c.Hk, c.Sk, c.D);
  a.scale = scale;
  a.band = c.band;
  return a;
}

// The CPU oracle: the flash_attention op in f32 with the case's band (causal, window, alignment). The backward runs
// from out rounded to `dt` (the out the GPU backward reads), so only the kernels differ.
struct Oracle {
  std::vector<double> out, lse, dq, dk, dv;
};

Oracle oracle(const Case& c, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, double scale,
              DType dt) {
  FlashAttentionAttrs attrs;
  attrs.scale = scale;
  attrs.window_left = c.band.left;
  attrs.window_right = c.band.right;
  attrs.alignment = c.band.bottom_right ? CausalAlignment::bottom_right : CausalAlignment::top_left;
  const auto f = run_op(FlashAttentionOp(attrs), {q, k, v}, &test_pool());
  const Tensor out_rounded = as_dtype(as_dtype(f[0], dt), DType::f32);
  const auto g = run_op(FlashAttentionBackwardOp(attrs, false), {q, k, v, out_rounded, dout, f[1]}, &test_pool());
  return {f[0].to_doubles(), f[1].to_doubles(), g[0].to_doubles(), g[1].to_doubles(), g[2].to_doubles()};
}

void check_scaled(const std::vector<double>& got, const std::vector<double>& ref, double rel, double rtol,
                  const std::string& what) {
  double mx = 1.0;  // O(1) inputs: every gradient term is O(1) even where the sum cancels (see test_flash_attention)
  for (double x : ref) mx = std::max(mx, std::abs(x));
  check_close(got, ref, rel * mx, rtol, what);
}

// One case through cuDNN's forward and backward against the oracle. `required`: the shape is mainstream
// (bf16/f16, D 64 or 128) and cuDNN must accept it; otherwise a refusal must come with a reason.
void cudnn_case(const Case& c, DType dt, bool bshd, bool required) {
  const std::string w = case_name(c, bshd, dt);
  const double scale = 0.9 / std::sqrt(static_cast<double>(c.D));  // not 1/sqrt(D): the scale must be applied
  const cuda::CudnnSdpaArgs a = args_of(c, dt, bshd, scale);
  for (bool backward : {false, true}) {
    const cuda::CudnnSdpaSupport s = cuda::cudnn_sdpa_support(cctx(), a, backward);
    if (!s.unsupported.empty()) {
      if (required) FAIL_CHECK(w << (backward ? " backward" : " forward") << ": cuDNN refused: " << s.unsupported);
      MESSAGE(w << (backward ? " backward" : " forward") << ": cuDNN refused (allowed here): " << s.unsupported);
      return;
    }
  }
  const uint64_t seed = 1000 + static_cast<uint64_t>(c.Sq * 3 + c.Sk * 7 + c.D);
  // Inputs rounded to dt, the oracle on the rounded values in f32.
  const auto rounded = [&](Shape sh, uint64_t sd, double lim) {
    return as_dtype(as_dtype(random_tensor(sh, sd, -lim, lim), dt), DType::f32);
  };
  const Tensor q = rounded({c.B, c.H, c.Sq, c.D}, seed, 1.5), k = rounded({c.B, c.Hk, c.Sk, c.D}, seed + 1, 1.5);
  const Tensor v = rounded({c.B, c.Hk, c.Sk, c.D}, seed + 2, 1.5), dout = rounded({c.B, c.H, c.Sq, c.D}, seed + 3, 1);
  const Oracle ref = oracle(c, q, k, v, dout, scale, dt);
  const CudnnTol tol = cudnn_tol(dt);

  const Tensor in_q = to_layout_device(q, bshd, dt), in_k = to_layout_device(k, bshd, dt);
  const Tensor in_v = to_layout_device(v, bshd, dt), in_dout = to_layout_device(dout, bshd, dt);
  Tensor out = poisoned(c.B, c.H, c.Sq, c.D, bshd, dt), lse = poisoned_lse(c.B, c.H, c.Sq);
  cuda::cudnn_sdpa_forward(cctx(), a, in_q.raw_data(), in_k.raw_data(), in_v.raw_data(), out.raw_data(),
                           lse.data<float>());
  cuda_test_ctx()->synchronize();
  check_close(from_layout(out, bshd), ref.out, tol.out_atol, tol.out_rtol, w + " out");
  check_close(lse.to_host().to_doubles(), ref.lse, tol.lse_atol, 0.0, w + " lse");
  {  // The inference forward: no statistics (stats = false, no lse pointer), its own plan.
    cuda::CudnnSdpaArgs inference = a;
    inference.stats = false;
    const cuda::CudnnSdpaSupport si = cuda::cudnn_sdpa_support(cctx(), inference, false);
    if (si.unsupported.empty()) {
      Tensor out2 = poisoned(c.B, c.H, c.Sq, c.D, bshd, dt);
      cuda::cudnn_sdpa_forward(cctx(), inference, in_q.raw_data(), in_k.raw_data(), in_v.raw_data(), out2.raw_data(),
                               nullptr);
      cuda_test_ctx()->synchronize();
      check_close(from_layout(out2, bshd), ref.out, tol.out_atol, tol.out_rtol, w + " out (no stats)");
      // The arguments and the lse pointer must agree, both ways.
      CHECK_THROWS_AS(cuda::cudnn_sdpa_forward(cctx(), inference, in_q.raw_data(), in_k.raw_data(), in_v.raw_data(),
                                               out2.raw_data(), lse.data<float>()),
                      Error);
      CHECK_THROWS_AS(cuda::cudnn_sdpa_forward(cctx(), a, in_q.raw_data(), in_k.raw_data(), in_v.raw_data(),
                                               out2.raw_data(), nullptr),
                      Error);
    } else if (required) {
      FAIL_CHECK(w << " forward without stats: cuDNN refused: " << si.unsupported);
    }
  }

  // The backward from the oracle's out (rounded to dt, as the oracle's backward had it) and lse: cuDNN takes our lse.
  const Tensor ref_out = Tensor::from_vector(std::vector<float>(ref.out.begin(), ref.out.end()), {c.B, c.H, c.Sq, c.D});
  const Tensor in_out = to_layout_device(ref_out, bshd, dt);
  const Tensor in_lse =
      Tensor::from_vector(std::vector<float>(ref.lse.begin(), ref.lse.end()), {c.B, c.H, c.Sq}).to_device(cuda_test_ctx());
  Tensor gq = poisoned(c.B, c.H, c.Sq, c.D, bshd, dt), gk = poisoned(c.B, c.Hk, c.Sk, c.D, bshd, dt);
  Tensor gv = poisoned(c.B, c.Hk, c.Sk, c.D, bshd, dt);
  cuda::cudnn_sdpa_backward(cctx(), a, in_q.raw_data(), in_k.raw_data(), in_v.raw_data(), in_out.raw_data(),
                            in_dout.raw_data(), in_lse.data<float>(), gq.raw_data(), gk.raw_data(), gv.raw_data());
  cuda_test_ctx()->synchronize();
  check_scaled(from_layout(gq, bshd), ref.dq, tol.grad_rel, tol.grad_rtol, w + " dq");
  check_scaled(from_layout(gk, bshd), ref.dk, tol.grad_rel, tol.grad_rtol, w + " dk");
  check_scaled(from_layout(gv, bshd), ref.dv, tol.grad_rel, tol.grad_rtol, w + " dv");
}

// Bands of the cases: none, causal (top-left, bottom-right), and sliding windows.
const AttentionBand kNone{}, kCausal{-1, 0, false}, kCausalBR{-1, 0, true};

}  // namespace

XF_CUDA_TEST_CASE("cudnn attention: forward and backward against the CPU (bf16, f16; D 64, 128; both layouts)") {
  // S = 1, 17, 127, 257, 1000; Sq != Sk both ways; GQA (H/Hk = 2, 4) and MQA; causal top-left (with Sq > Sk every
  // row still sees key 0) and bottom-right.
  const std::vector<Case> cases = {
      {2, 4, 4, 17, 17, 64, kCausal},   {1, 4, 2, 127, 127, 128, kNone},
      {1, 8, 1, 257, 257, 64, kCausal}, {1, 2, 2, 1000, 1000, 128, kCausal},
      {2, 4, 1, 127, 257, 64, kNone},     {1, 4, 2, 257, 127, 128, kCausal},
      {1, 2, 2, 1000, 17, 64, kNone},     {1, 2, 2, 17, 1000, 128, kCausal}};
  for (const Case& c : cases)
    for (DType dt : {DType::bf16, DType::f16})
      for (bool bshd : {false, true}) cudnn_case(c, dt, bshd, /*required=*/true);
}

XF_CUDA_TEST_CASE("cudnn attention: sliding windows (both alignments) against the CPU, or refused with a reason") {
  // A causal window (Mistral's kind) must run; the others depend on cuDNN's version (9.14.0 refuses non-causal
  // windows past Sk = 1024) and must be right when accepted. Left bound 0 is the diagonal alone.
  cudnn_case({1, 4, 2, 257, 257, 64, {16, 0, false}}, DType::bf16, true, /*required=*/true);
  for (const Case& c : {Case{1, 4, 4, 300, 300, 128, {31, 7, false}}, Case{2, 2, 2, 127, 257, 64, {40, 0, true}},
                        Case{1, 2, 2, 1000, 1000, 64, {100, 100, false}}, Case{1, 2, 1, 33, 33, 64, {0, 0, false}},
                        Case{1, 2, 2, 64, 200, 64, {20, 5, true}}})
    for (DType dt : {DType::bf16, DType::f16}) cudnn_case(c, dt, false, /*required=*/false);
}

XF_CUDA_TEST_CASE("cudnn attention: other head dims, one query, bottom-right masks: right, or refused with a reason") {
  // cuDNN's support for these depends on its version and the GPU (the dispatcher sends a refused shape to the
  // native kernel); what it accepts must be right.
  for (const Case& c : {Case{1, 2, 2, 127, 127, 8, kCausal}, Case{1, 2, 1, 65, 129, 40, kNone},
                        Case{2, 2, 2, 33, 33, 80, kCausal}, Case{1, 2, 2, 129, 129, 256, kNone},
                        Case{1, 2, 2, 1, 127, 64, kNone}, Case{2, 4, 2, 1, 1000, 128, kCausalBR},
                        Case{1, 4, 2, 127, 1000, 128, kCausalBR}, Case{1, 2, 1, 257, 257, 64, kCausalBR}})
    for (DType dt : {DType::bf16, DType::f16})
      for (bool bshd : {false, true}) cudnn_case(c, dt, bshd, /*required=*/false);
}

XF_CUDA_TEST_CASE("cudnn attention: its lse equals the native kernel's, and a native backward of its forward is right") {
  for (const Case& c : {Case{2, 4, 2, 257, 257, 64, kCausal}, Case{1, 4, 4, 1000, 1000, 128, kNone}})
    for (DType dt : {DType::bf16, DType::f16}) {
      const std::string w = case_name(c, false, dt);
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
      const cuda::FlashAttentionArgs fa = fa_args(dt, c.B, c.H, c.Hk, c.Sq, c.Sk, c.D, scale, c.band.right == 0);
      const Tensor q = random_tensor({c.B, c.H, c.Sq, c.D}, 5, -1.5, 1.5, dt).to_device(cuda_test_ctx());
      const Tensor k = random_tensor({c.B, c.Hk, c.Sk, c.D}, 6, -1.5, 1.5, dt).to_device(cuda_test_ctx());
      const Tensor v = random_tensor({c.B, c.Hk, c.Sk, c.D}, 7, -1.5, 1.5, dt).to_device(cuda_test_ctx());
      Tensor out_n = poisoned(c.B, c.H, c.Sq, c.D, false, dt), lse_n = poisoned_lse(c.B, c.H, c.Sq);
      Tensor out_c = poisoned(c.B, c.H, c.Sq, c.D, false, dt), lse_c = poisoned_lse(c.B, c.H, c.Sq);
      cuda::launch_flash_attention_forward(fa, q.raw_data(), k.raw_data(), v.raw_data(), out_n.raw_data(),
                                           lse_n.data<float>(), cctx().stream());
      cuda::cudnn_sdpa_forward(cctx(), cuda::cudnn_args_of(fa), q.raw_data(), k.raw_data(), v.raw_data(),
                               out_c.raw_data(), lse_c.data<float>());
      cuda_test_ctx()->synchronize();
      // Both are fp32 log-sum-exps of the same fp32 scores, summed in another order: ~1e-6 of |lse| ~ 10.
      check_close(lse_c.to_host().to_doubles(), lse_n.to_host().to_doubles(), 5e-5, 0.0, w + " lse cudnn vs native");
      const CudnnTol tol = cudnn_tol(dt);
      check_close(out_c.to_host().to_doubles(), out_n.to_host().to_doubles(), tol.out_atol, tol.out_rtol,
                  w + " out cudnn vs native");
      // The backward on each backend from cuDNN's out and lse: the same gradients.
      const Tensor dout = random_tensor({c.B, c.H, c.Sq, c.D}, 8, -1, 1, dt).to_device(cuda_test_ctx());
      std::vector<Tensor> g[2];
      for (int n = 0; n < 2; ++n) {
        g[n] = {poisoned(c.B, c.H, c.Sq, c.D, false, dt), poisoned(c.B, c.Hk, c.Sk, c.D, false, dt),
                poisoned(c.B, c.Hk, c.Sk, c.D, false, dt)};
      }
      {
        ScopedEnv env("XF_ATTENTION_BACKEND", "native");
        cuda::attention_backward(cctx(), fa, q.raw_data(), k.raw_data(), v.raw_data(), out_c.raw_data(),
                                 dout.raw_data(), lse_c.data<float>(), nullptr, g[0][0].raw_data(),
                                 g[0][1].raw_data(), g[0][2].raw_data());
      }
      cuda::cudnn_sdpa_backward(cctx(), cuda::cudnn_args_of(fa), q.raw_data(), k.raw_data(), v.raw_data(),
                                out_c.raw_data(), dout.raw_data(), lse_c.data<float>(), g[1][0].raw_data(),
                                g[1][1].raw_data(), g[1][2].raw_data());
      cuda_test_ctx()->synchronize();
      const char* names[3] = {" dq", " dk", " dv"};
      for (int i = 0; i < 3; ++i)
        check_scaled(g[1][i].to_host().to_doubles(), g[0][i].to_host().to_doubles(), 2 * tol.grad_rel,
                     2 * tol.grad_rtol, w + names[i] + " cudnn vs native backward");
    }
}

XF_CUDA_TEST_CASE("attention dispatch: auto's choices, and forced backends that cannot run a call") {
  using R = AttentionBackendRequest;
  const cuda::FlashAttentionArgs a = fa_args(DType::bf16, 2, 4, 2, 128, 128, 64, 0.125, true);
  CHECK(cuda::attention_backend_for(cctx(), R::automatic, a, false) == AttentionBackend::cudnn);
  CHECK(cuda::attention_backend_for(cctx(), R::automatic, a, true) == AttentionBackend::cudnn);
  CHECK(cuda::attention_backend_for(cctx(), R::native, a, false) == AttentionBackend::native);
  // Speed: at head dim 64 the native Hopper backward beats cuDNN's deterministic one from 512 keys without a mask
  // and from 1024 causal, at head dim 256 from 1024 keys either way (ops/cuda/attention_dispatch.cpp), so auto runs
  // such a backward natively, after a forward on cuDNN; shorter rows and head dim 128 stay on cuDNN. Only where the
  // Hopper backward would run (sm_90).
  {
    auto open = fa_args(DType::bf16, 1, 2, 2, 512, 512, 64, 0.125, false);
    auto long_causal = fa_args(DType::bf16, 1, 2, 2, 1024, 1024, 64, 0.125, true);
    auto short_open = fa_args(DType::bf16, 2, 4, 2, 128, 128, 64, 0.125, false);
    auto wide = fa_args(DType::bf16, 1, 2, 2, 512, 512, 128, 0.088, false);
    auto d256_causal = fa_args(DType::bf16, 1, 2, 2, 1024, 1024, 256, 0.0625, true);
    auto d256_short = fa_args(DType::bf16, 1, 2, 2, 512, 512, 256, 0.0625, false);
    const bool hopper = cuda::flash_attention_sm90_backward_refusal(open, nullptr, nullptr, nullptr, nullptr, nullptr,
                                                                    nullptr, nullptr, nullptr)
                            .empty();
    const AttentionBackend fast = hopper ? AttentionBackend::native : AttentionBackend::cudnn;
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, open, false) == AttentionBackend::cudnn);
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, open, true) == fast);
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, long_causal, true) == fast);
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, short_open, true) == AttentionBackend::cudnn);
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, wide, true) == AttentionBackend::cudnn);
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, d256_causal, true) == fast);
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, d256_causal, false) == AttentionBackend::cudnn);
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, d256_short, true) == AttentionBackend::cudnn);
    if (hopper) {
      const auto s = cuda::attention_call_support(cctx(), R::automatic, d256_causal, true, false, true);
      CHECK_MESSAGE(contains(s.cudnn_auto_veto, "at head dim 256 and 1024 keys the native Hopper backward is faster"),
                    s.cudnn_auto_veto);
    }
    CHECK(cuda::attention_backend_for(cctx(), R::cudnn, open, true) == AttentionBackend::cudnn);
    ScopedEnv atomic("XF_ATTENTION_DETERMINISTIC", "0");  // cuDNN's atomic backward: faster, so cuDNN
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, open, true) == AttentionBackend::cudnn);
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, d256_causal, true) == AttentionBackend::cudnn);
  }
  // A gradient of lse, a misaligned pointer: cuDNN cannot, native does.
  CHECK(cuda::attention_backend_for(cctx(), R::automatic, a, true, /*has_dlse=*/true) == AttentionBackend::native);
  CHECK(cuda::attention_backend_for(cctx(), R::automatic, a, false, false, /*aligned=*/false) ==
        AttentionBackend::native);
  // An additive bias: auto runs it on cuDNN (the Hopper kernels take none, and cuDNN keeps the contract for rows a
  // -inf bias hides entirely: test_flash_attention_masks_cuda.cpp), forward and backward with dbias; native forced
  // runs it on the mma.sync kernels.
  {
    const Tensor bias = random_tensor({1, 4, 128, 128}, 9, -1, 1, DType::bf16).to_device(cuda_test_ctx());
    auto biased = a;
    biased.bias = bias.raw_data();
    biased.bias_heads = 4;
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, biased, false) == AttentionBackend::cudnn);
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, biased, true) == AttentionBackend::cudnn);
    CHECK(cuda::attention_backend_for(cctx(), R::native, biased, false) == AttentionBackend::native);
    biased.bias_grad = true;
    CHECK(cuda::attention_backend_for(cctx(), R::automatic, biased, true) == AttentionBackend::cudnn);
    CHECK(cuda::attention_backend_for(cctx(), R::cudnn, biased, true) == AttentionBackend::cudnn);
    const auto s = cuda::attention_call_support(cctx(), R::automatic, biased, false, false, true);
    CHECK_MESSAGE(s.cudnn_auto_veto.empty(), s.cudnn_auto_veto);
  }
  // Dropout: auto runs it natively; a forced cudnn is an error naming both backends' answers.
  auto drop = a;
  drop.dropout = 0.1;
  CHECK(cuda::attention_backend_for(cctx(), R::automatic, drop, false) == AttentionBackend::native);
  {
    const Error e = error_of([&] { cuda::attention_backend_for(cctx(), R::cudnn, drop, false); });
    CHECK(e.op() == "flash_attention");
    CHECK_MESSAGE(contains(e.message(), "XF_ATTENTION_BACKEND=cudnn cannot run this call (forward bf16 B=2"), e.what());
    CHECK_MESSAGE(contains(e.message(), "cudnn: dropout needs the CPU oracle's Philox mask"), e.what());
    CHECK_MESSAGE(contains(e.message(), "native: could run it"), e.what());
  }
  // f32: native only.
  auto f32 = a;
  f32.dtype = DType::f32;
  CHECK(cuda::attention_backend_for(cctx(), R::automatic, f32, false) == AttentionBackend::native);
  CHECK_MESSAGE(contains(error_of([&] { cuda::attention_backend_for(cctx(), R::cudnn, f32, true); }).message(),
                    "cudnn: cuDNN attention runs bf16 and f16, not f32"),
                "f32");
  // D = 300: neither; a forced native names both reasons.
  auto wide = a;
  wide.D = 304;
  {
    const Error e = error_of([&] { cuda::attention_backend_for(cctx(), R::native, wide, false); });
    CHECK_MESSAGE(contains(e.message(), "native: the native kernels take head dims 1 to 256, not 304"), e.what());
    CHECK_MESSAGE(contains(e.message(), "cudnn: head dim 304 is not a multiple of 8 up to 256"), e.what());
    CHECK_THROWS_AS(cuda::attention_backend_for(cctx(), R::automatic, wide, false), Error);
  }
  // The entry points read XF_ATTENTION_BACKEND: a forced cudnn with dropout throws before any launch.
  {
    ScopedEnv env("XF_ATTENTION_BACKEND", "cudnn");
    const Tensor q = Tensor::zeros({2, 4, 128, 64}, DType::bf16, cuda_test_ctx());
    const Tensor kv = Tensor::zeros({2, 2, 128, 64}, DType::bf16, cuda_test_ctx());
    Tensor out = Tensor::empty({2, 4, 128, 64}, DType::bf16, cuda_test_ctx());
    Tensor lse = Tensor::empty({2, 4, 128}, DType::f32, cuda_test_ctx());
    const Error e = error_of([&] {
      cuda::attention_forward(cctx(), drop, q.raw_data(), kv.raw_data(), kv.raw_data(), out.raw_data(),
                              lse.data<float>());
    });
    CHECK_MESSAGE(contains(e.message(), "dropout"), e.what());
  }
}

XF_CUDA_TEST_CASE("attention dispatch: the entry points under auto give the CPU's results (forward and backward)") {
  const int64_t B = 1, H = 4, Hk = 2, S = 200, D = 64;
  const cuda::FlashAttentionArgs a = fa_args(DType::bf16, B, H, Hk, S, S, D, 0.125, true);
  ScopedEnv env("XF_ATTENTION_BACKEND", "auto");
  const auto r = [&](Shape s, uint64_t seed) { return as_dtype(as_dtype(random_tensor(s, seed, -1.5, 1.5), a.dtype), DType::f32); };
  const Tensor q = r({B, H, S, D}, 1), k = r({B, Hk, S, D}, 2), v = r({B, Hk, S, D}, 3), dout = r({B, H, S, D}, 4);
  const Oracle ref = oracle({B, H, Hk, S, S, D, kCausal}, q, k, v, dout, a.scale, a.dtype);
  const Tensor gq = to_layout_device(q, false, a.dtype), gk = to_layout_device(k, false, a.dtype);
  const Tensor gv = to_layout_device(v, false, a.dtype), gd = to_layout_device(dout, false, a.dtype);
  Tensor out = poisoned(B, H, S, D, false, a.dtype), lse = poisoned_lse(B, H, S);
  cuda::attention_forward(cctx(), a, gq.raw_data(), gk.raw_data(), gv.raw_data(), out.raw_data(), lse.data<float>());
  Tensor dq = poisoned(B, H, S, D, false, a.dtype), dk = poisoned(B, Hk, S, D, false, a.dtype);
  Tensor dv = poisoned(B, Hk, S, D, false, a.dtype);
  cuda::attention_backward(cctx(), a, gq.raw_data(), gk.raw_data(), gv.raw_data(), out.raw_data(), gd.raw_data(),
                           lse.data<float>(), nullptr, dq.raw_data(), dk.raw_data(), dv.raw_data());
  cuda_test_ctx()->synchronize();
  const CudnnTol tol = cudnn_tol(a.dtype);
  check_close(out.to_host().to_doubles(), ref.out, tol.out_atol, tol.out_rtol, "auto out");
  check_close(lse.to_host().to_doubles(), ref.lse, tol.lse_atol, 0.0, "auto lse");
  // out was rounded to bf16 before the backward read it: twice the tolerance.
  check_scaled(dq.to_host().to_doubles(), ref.dq, 2 * tol.grad_rel, 2 * tol.grad_rtol, "auto dq");
  check_scaled(dk.to_host().to_doubles(), ref.dk, 2 * tol.grad_rel, 2 * tol.grad_rtol, "auto dk");
  check_scaled(dv.to_host().to_doubles(), ref.dv, 2 * tol.grad_rel, 2 * tol.grad_rtol, "auto dv");
}

XF_CUDA_TEST_CASE("cudnn attention: plans are cached (a second call builds nothing; a refused shape is probed once)") {
  // A context of its own, so its counters start at 0.
  const auto own = make_device_context(Device::cuda(0));
  auto& ctx = *dynamic_cast<cuda::CudaContext*>(own.get());
  cuda::CudnnSdpaArgs a = args_of({2, 4, 2, 96, 96, 64, kCausal}, DType::bf16, false, 0.125);
  const Tensor q = random_tensor({2, 4, 96, 64}, 1, -1, 1, DType::bf16).to_device(own.get());
  const Tensor kv = random_tensor({2, 2, 96, 64}, 2, -1, 1, DType::bf16).to_device(own.get());
  Tensor out = Tensor::empty({2, 4, 96, 64}, DType::bf16, own.get());
  Tensor lse = Tensor::empty({2, 4, 96}, DType::f32, own.get());
  CHECK(cuda::cudnn_sdpa_stats(ctx).graphs_built == 0);
  cuda::cudnn_sdpa_forward(ctx, a, q.raw_data(), kv.raw_data(), kv.raw_data(), out.raw_data(), lse.data<float>());
  CHECK(cuda::cudnn_sdpa_stats(ctx).graphs_built == 1);
  const std::vector<double> first = out.to_host().to_doubles();
  cuda::cudnn_sdpa_forward(ctx, a, q.raw_data(), kv.raw_data(), kv.raw_data(), out.raw_data(), lse.data<float>());
  CHECK(cuda::cudnn_sdpa_support(ctx, a, false).unsupported.empty());
  CHECK(cuda::cudnn_sdpa_stats(ctx).graphs_built == 1);
  CHECK(out.to_host().to_doubles() == first);  // the same plan: the same bits
  // Another scale is another plan.
  a.scale = 0.25;
  CHECK(cuda::cudnn_sdpa_support(ctx, a, false).unsupported.empty());
  CHECK(cuda::cudnn_sdpa_stats(ctx).graphs_built == 2);
  // q rows 68 elements apart (136 bytes, not a multiple of the 16-byte alignment): cuDNN refuses; asked twice,
  // it is built once.
  cuda::CudnnSdpaArgs odd = a;
  odd.q = {4 * 96 * 68, 96 * 68, 68};
  const auto r1 = cuda::cudnn_sdpa_support(ctx, odd, false);
  const auto r2 = cuda::cudnn_sdpa_support(ctx, odd, false);
  CHECK_FALSE(r1.unsupported.empty());
  CHECK(r1.unsupported == r2.unsupported);
  CHECK_MESSAGE(contains(r1.unsupported, "cuDNN refused the graph"), r1.unsupported);
  CHECK(cuda::cudnn_sdpa_stats(ctx).graphs_built == 3);
  CHECK(cuda::cudnn_sdpa_stats(ctx).graphs_unsupported == 1);
  // Static refusals build nothing.
  cuda::CudnnSdpaArgs f32 = a;
  f32.dtype = DType::f32;
  CHECK_FALSE(cuda::cudnn_sdpa_support(ctx, f32, false).unsupported.empty());
  CHECK(cuda::cudnn_sdpa_stats(ctx).graphs_built == 3);
  // Running a refused call is an error with the reason.
  const Error e = error_of([&] {
    cuda::cudnn_sdpa_forward(ctx, odd, q.raw_data(), kv.raw_data(), kv.raw_data(), out.raw_data(), lse.data<float>());
  });
  CHECK(e.op() == "flash_attention");
  CHECK_MESSAGE(contains(e.message(), "cuDNN SDPA cannot run this call"), e.what());
}

XF_CUDA_TEST_CASE("cudnn attention: a CUDA-graph replay equals the eager run; the backward is deterministic") {
  DeviceContext* dc = cuda_test_ctx();
  const cuda::CudnnSdpaArgs a = args_of({2, 4, 4, 300, 300, 128, kCausal}, DType::bf16, false, 0.09);
  const Tensor q = random_tensor({2, 4, 300, 128}, 11, -1.5, 1.5, DType::bf16).to_device(dc);
  const Tensor k = random_tensor({2, 4, 300, 128}, 12, -1.5, 1.5, DType::bf16).to_device(dc);
  const Tensor v = random_tensor({2, 4, 300, 128}, 13, -1.5, 1.5, DType::bf16).to_device(dc);
  const Tensor dout = random_tensor({2, 4, 300, 128}, 14, -1, 1, DType::bf16).to_device(dc);
  Tensor out = poisoned(2, 4, 300, 128, false, DType::bf16), lse = poisoned_lse(2, 4, 300);
  Tensor dq = poisoned(2, 4, 300, 128, false, DType::bf16), dk = poisoned(2, 4, 300, 128, false, DType::bf16);
  Tensor dv = poisoned(2, 4, 300, 128, false, DType::bf16);
  const auto step = [&] {
    cuda::cudnn_sdpa_forward(cctx(), a, q.raw_data(), k.raw_data(), v.raw_data(), out.raw_data(), lse.data<float>());
    cuda::cudnn_sdpa_backward(cctx(), a, q.raw_data(), k.raw_data(), v.raw_data(), out.raw_data(), dout.raw_data(),
                              lse.data<float>(), dq.raw_data(), dk.raw_data(), dv.raw_data());
  };
  step();  // eager: builds the plans
  dc->synchronize();
  const auto eager_out = out.to_host().to_doubles(), eager_dq = dq.to_host().to_doubles();
  const auto eager_dk = dk.to_host().to_doubles();
  step();  // again: a deterministic backward gives the same bits
  dc->synchronize();
  CHECK(dq.to_host().to_doubles() == eager_dq);
  CHECK(dk.to_host().to_doubles() == eager_dk);
  // Captured once, replayed into poisoned outputs.
  const std::shared_ptr<void> graph = capture_graph(*dc, step);
  for (Tensor* t : {&out, &dq, &dk}) {
    std::vector<unsigned char> nan(t->nbytes(), 0xFF);
    dc->copy(t->raw_data(), nan.data(), nan.size(), CopyKind::host_to_device);
  }
  dc->replay(graph);
  dc->synchronize();
  CHECK(out.to_host().to_doubles() == eager_out);
  CHECK(dq.to_host().to_doubles() == eager_dq);
  CHECK(dk.to_host().to_doubles() == eager_dk);
}

XF_CUDA_TEST_CASE("cudnn attention: the non-deterministic backward (atomic dq) is right too") {
  cuda::CudnnSdpaArgs a = args_of({2, 4, 2, 257, 257, 64, kCausal}, DType::bf16, true, 0.1);
  a.deterministic = false;
  const cuda::CudnnSdpaSupport s = cuda::cudnn_sdpa_support(cctx(), a, true);
  REQUIRE_MESSAGE(s.unsupported.empty(), s.unsupported);
  const auto det = cuda::cudnn_sdpa_support(cctx(), args_of({2, 4, 2, 257, 257, 64, kCausal}, DType::bf16, true, 0.1), true);
  MESSAGE("backward scratch: atomic " << s.workspace_bytes << " bytes, deterministic " << det.workspace_bytes
                                      << " bytes (" << det.engine << ")");
  const Case c{2, 4, 2, 257, 257, 64, kCausal};
  const Tensor q = as_dtype(as_dtype(random_tensor({2, 4, 257, 64}, 21, -1.5, 1.5), DType::bf16), DType::f32);
  const Tensor k = as_dtype(as_dtype(random_tensor({2, 2, 257, 64}, 22, -1.5, 1.5), DType::bf16), DType::f32);
  const Tensor v = as_dtype(as_dtype(random_tensor({2, 2, 257, 64}, 23, -1.5, 1.5), DType::bf16), DType::f32);
  const Tensor dout = as_dtype(as_dtype(random_tensor({2, 4, 257, 64}, 24, -1, 1), DType::bf16), DType::f32);
  const Oracle ref = oracle(c, q, k, v, dout, 0.1, DType::bf16);
  const Tensor ref_out = Tensor::from_vector(std::vector<float>(ref.out.begin(), ref.out.end()), {2, 4, 257, 64});
  const Tensor lse = Tensor::from_vector(std::vector<float>(ref.lse.begin(), ref.lse.end()), {2, 4, 257}).to_device(cuda_test_ctx());
  const Tensor gq = to_layout_device(q, true, DType::bf16), gk = to_layout_device(k, true, DType::bf16);
  const Tensor gv = to_layout_device(v, true, DType::bf16), go = to_layout_device(ref_out, true, DType::bf16);
  const Tensor gd = to_layout_device(dout, true, DType::bf16);
  Tensor dq = poisoned(2, 4, 257, 64, true, DType::bf16), dk = poisoned(2, 2, 257, 64, true, DType::bf16);
  Tensor dv = poisoned(2, 2, 257, 64, true, DType::bf16);
  cuda::cudnn_sdpa_backward(cctx(), a, gq.raw_data(), gk.raw_data(), gv.raw_data(), go.raw_data(), gd.raw_data(),
                            lse.data<float>(), dq.raw_data(), dk.raw_data(), dv.raw_data());
  cuda_test_ctx()->synchronize();
  const CudnnTol tol = cudnn_tol(DType::bf16);
  check_scaled(from_layout(dq, true), ref.dq, tol.grad_rel, tol.grad_rtol, "atomic dq");
  check_scaled(from_layout(dk, true), ref.dk, tol.grad_rel, tol.grad_rtol, "atomic dk");
  check_scaled(from_layout(dv, true), ref.dv, tol.grad_rel, tol.grad_rtol, "atomic dv");
}

#endif  // XF_HAVE_CUDNN_ATTENTION
