// flash_attention on a packed qkv (ops/flash_attention.h, qkv_packed) and what uses it: the op on (B, S, 3, H, D)
// against the op on the three bshd parts (CPU, f64 and f32, forward and backward, with masks, a bias, dropout, dlse
// and packed sequences), finite-difference gradients, the front door's errors, the composite fallback of
// scaled_dot_product_attention_qkvpacked, and multi_head_dispatch's one-GEMM projection against the three
// projections. CUDA (skipped without XF_TEST_DEVICE=cuda and a GPU): the packed op on the GPU against the CPU under
// native, auto and cuDNN, on the Hopper, mma.sync and f32 kernels.
#include <cmath>

#include "components/multi_head_dispatch.h"
#include "ops/attention.h"
#include "ops/flash_attention.h"
#include "runtime/param_store.h"
#include "tests/cuda_testing.h"
#include "tests/flash_attention_testing.h"
#include "tests/mha_testing.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

// bshd parts (B, S, H, D) (varlen (T, H, D)) -> qkv (B, S, 3, H, D) ((T, 3, H, D)), in q's dtype.
Tensor pack_qkv(const Tensor& q, const Tensor& k, const Tensor& v) {
  const Shape& s = q.shape();
  const int64_t HD = s[s.size() - 2] * s.back(), rows = q.numel() / HD;
  const auto a = q.to_doubles(), b = k.to_doubles(), c = v.to_doubles();
  std::vector<double> r(static_cast<size_t>(3 * q.numel()));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t e = 0; e < HD; ++e) {
      const size_t src = static_cast<size_t>(i * HD + e), dst = static_cast<size_t>(3 * i * HD + e);
      r[dst] = a[src];
      r[dst + static_cast<size_t>(HD)] = b[src];
      r[dst + static_cast<size_t>(2 * HD)] = c[src];
    }
  Shape ps = s;
  ps.insert(ps.end() - 2, 3);
  const Tensor t = Tensor::from_vector(r, ps);
  return q.dtype() == DType::f64 ? t : t.to(q.dtype());
}

// Part `which` (0 q, 1 k, 2 v) of a packed (.., 3, H, D) tensor, as (.., H, D) doubles.
std::vector<double> part(const Tensor& qkv, int which) {
  const Shape& s = qkv.shape();
  const int64_t HD = s[s.size() - 2] * s.back(), rows = qkv.numel() / (3 * HD);
  const auto x = qkv.to_doubles();
  std::vector<double> r(static_cast<size_t>(rows * HD));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t e = 0; e < HD; ++e)
      r[static_cast<size_t>(i * HD + e)] = x[static_cast<size_t>((3 * i + which) * HD + e)];
  return r;
}

// A self-attention problem (Sq = Sk, H = Hk) in bshd, as the packed op takes it.
FaProblem self_problem(int64_t B, int64_t H, int64_t S, int64_t D) {
  FaProblem p = with_scale(fa_problem(B, H, H, S, S, D));
  p.a.layout = AttentionLayout::bshd;
  return p;
}
FaProblem self_packed(std::vector<int64_t> lens, int64_t H, int64_t D) {
  FaProblem p = with_scale(packed(lens, lens, H, H, D));
  p.a.layout = AttentionLayout::bshd;
  return p;
}

// The packed op's forward inputs from the separate op's: qkv, then the bias and one offsets tensor (the same for
// queries and keys).
std::vector<Tensor> packed_inputs(const FaProblem& p, const std::vector<Tensor>& sep) {
  std::vector<Tensor> r{pack_qkv(sep[0], sep[1], sep[2])};
  if (p.Bb > 0) r.push_back(sep[3]);
  if (p.varlen()) r.insert(r.end(), {sep[sep.size() - 2], sep[sep.size() - 2]});
  return r;
}

FlashAttentionAttrs packed_attrs(FlashAttentionAttrs a) {
  a.qkv_packed = true;
  return a;
}

// Both ops run by `run` (CPU or CUDA) on the same inputs: the packed results against the separate ones within
// (atol, rtol) (0, 0: equal). Forward out, lse; backward dq, dk, dv (dqkv's parts) and dbias, with dlse when asked.
template <class Run>
void packed_against_separate(const FaProblem& p, DType dt, bool with_dlse, double atol, double rtol, Run run) {
  const std::string w = p.name() + " [" + dtype_name(dt) + "]";
  CAPTURE(w);
  const FaInputs in = make_fa_inputs(p, 17 + static_cast<uint64_t>(p.Sq + p.D), dt);
  const std::vector<Tensor> pin = packed_inputs(p, in.all);
  const FlashAttentionAttrs pa = packed_attrs(p.a);
  const auto fs = run(FlashAttentionOp(p.a), in.all);
  const auto fp = run(FlashAttentionOp(pa), pin);
  CHECK(fp[0].shape() == fs[0].shape());
  check_close(fp[0].to_doubles(), fs[0].to_doubles(), atol, rtol, w + " out");
  check_close(finite_lse(fp[1].to_doubles()), finite_lse(fs[1].to_doubles()), atol, rtol, w + " lse");

  const Tensor dout = random_tensor(fs[0].shape(), 401, -1, 1, dt), dlse = random_tensor(fs[1].shape(), 402, -1, 1, fs[1].dtype());
  std::vector<Tensor> bs{in.all[0], in.all[1], in.all[2], fs[0], dout, fs[1]}, bp{pin[0], fs[0], dout, fs[1]};
  if (with_dlse) {
    bs.push_back(dlse);
    bp.push_back(dlse);
  }
  bs.insert(bs.end(), in.all.begin() + 3, in.all.end());
  bp.insert(bp.end(), pin.begin() + 1, pin.end());
  const bool bias_grad = p.Bb > 0;
  const auto gs = run(FlashAttentionBackwardOp(p.a, with_dlse, bias_grad), bs);
  const auto gp = run(FlashAttentionBackwardOp(pa, with_dlse, bias_grad), bp);
  REQUIRE(gp.size() == 1u + bias_grad);
  CHECK(gp[0].shape() == pin[0].shape());
  const char* names[3] = {" dq", " dk", " dv"};
  for (int i = 0; i < 3; ++i)
    check_close(part(gp[0], i), gs[static_cast<size_t>(i)].to_doubles(), atol, rtol, w + names[i]);
  if (bias_grad) check_close(gp[1].to_doubles(), gs[3].to_doubles(), atol, rtol, w + " dbias");
}

std::vector<FaProblem> packed_problems() {
  return {
      causal(self_problem(2, 3, 17, 40), CausalAlignment::top_left),
      self_problem(1, 2, 33, 64),
      window(self_problem(2, 2, 31, 16), 5, 2),
      with_bias(causal(self_problem(2, 2, 33, 32), CausalAlignment::bottom_right), 1, 2),
      causal(self_packed({5, 0, 17, 1}, 2, 24), CausalAlignment::top_left),
  };
}

}  // namespace

TEST_CASE("flash_attention qkv_packed: the op on (B, S, 3, H, D) equals the op on the three parts (CPU)") {
  // f64 runs the same scalar arithmetic on other addresses: equal. f32 runs sgemm with other leading dimensions,
  // which may block the sums differently: a few ulps.
  for (const FaProblem& p0 : packed_problems())
    for (DType dt : {DType::f64, DType::f32})
      for (double drop : {0.0, 0.2}) {
        FaProblem p = p0;
        p.a.dropout = drop;
        const double tol = dt == DType::f64 ? 0.0 : 1e-6;
        packed_against_separate(p, dt, /*with_dlse=*/drop == 0.0, tol, tol,
                                [](const Op& op, const std::vector<Tensor>& in) {
                                  return run_op(op, in, &test_pool(), /*seed=*/9, /*offset=*/3);
                                });
      }
}

TEST_CASE("flash_attention qkv_packed: gradients by finite differences (float64, causal, a bias)") {
  const Tensor qkv = random_tensor({1, 5, 3, 2, 6}, 51, -1, 1, DType::f64);  // (B, S, 3, H, D)
  const Tensor bias = random_tensor({1, 2, 5, 5}, 52, -1, 1, DType::f64);
  FlashAttentionAttrs a{0.4, true, 0.0, AttentionLayout::bshd};
  check_gradients([a](Graph&, const std::vector<Value>& in) {
    return flash_attention_qkvpacked(in[0], a, "fa", in[1]).out;
  }, {qkv, bias}, "flash_attention qkv_packed");
}

TEST_CASE("flash_attention qkv_packed: errors name the op and the packed shape") {
  Graph g;
  const Value bad = g.input("qkv", TensorMeta{{2, 5, 2, 4, 8}, DType::f32});  // 2 where 3 belongs
  const Value qkv = g.input("qkv_ok", TensorMeta{{2, 5, 3, 4, 8}, DType::f32});
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      CHECK(e.op() == "flash_attention");
      return std::string(e.what());
    }
    FAIL("no error");
    return std::string();
  };
  const std::string shape = message([&] {
    flash_attention_qkvpacked(bad, FlashAttentionAttrs{1.0, false, 0.0, AttentionLayout::bshd});
  });
  CHECK_MESSAGE(shape.find("(B, S, 3, H, D)") != std::string::npos, shape);
  const std::string layout = message([&] {
    flash_attention_qkvpacked(qkv, FlashAttentionAttrs{1.0, false, 0.0, AttentionLayout::bhsd});
  });
  CHECK_MESSAGE(layout.find("needs layout bshd") != std::string::npos, layout);
}

TEST_CASE("flash_attention qkv_packed: scaled_dot_product_attention_qkvpacked's composite fallback equals the fused op") {
  const Tensor qkv = random_tensor({2, 9, 3, 2, 8}, 61, -1, 1, DType::f64);
  AttentionOptions o;
  o.causal = true;
  auto attend = [&](Graph&, const std::vector<Value>& in) {
    return scaled_dot_product_attention_qkvpacked(in[0], Value{}, o, "attention");
  };
  const Tensor fused = run_graph(attend, {qkv});
  ScopedEnv env("XF_ATTENTION_BACKEND", "composite");
  const Tensor composite = run_graph(attend, {qkv});
  CHECK(composite.shape() == Shape{2, 9, 2, 8});
  check_close(composite.to_doubles(), fused.to_doubles(), 1e-12, 1e-12, "composite vs fused");
  check_gradients(attend, {random_tensor({1, 4, 3, 2, 4}, 62, -1, 1, DType::f64)}, "composite qkvpacked");
}


TEST_CASE("multi_head_dispatch: the packed q/k/v projection (one GEMM) equals the three projections") {
  struct Case {
    int64_t B, T, C, H;
    bool bias, causal, rotary;
    double p;
  };
  for (const Case c : {Case{2, 17, 48, 4, true, true, false, 0.0}, Case{1, 33, 40, 5, false, false, false, 0.0},
                       Case{2, 9, 32, 2, true, true, false, 0.25}, Case{1, 9, 32, 2, true, false, true, 0.0}}) {
    CAPTURE(c.T);
    CAPTURE(c.rotary);
    MultiHeadSpec spec;
    spec.dim_model = c.C;
    spec.num_heads = c.H;
    spec.bias = c.bias;
    spec.use_rotary_embeddings = c.rotary;
    const Tensor x = random_tensor({c.B, c.T, c.C}, 81, -1, 1);
    const AttentionFn bshd = sdpa_fn(AttentionLayout::bshd, c.causal, c.p);
    const MhaRun a = run_mha(x, spec, {}, bshd, sdpa_packed_fn(c.causal, c.p)), b = run_mha(x, spec, {}, bshd);
    if (c.rotary) {  // rotary turns q and k after the projection: the three projections stay
      CHECK(a.count("linear") == 4);
      CHECK(a.packed_attention == 0);
    } else {
      CHECK(a.count("linear") == 2);  // the packed projection and the output projection
      CHECK(a.count("concat") == (c.bias ? 2 : 1));
      CHECK(a.packed_attention == 1);
    }
    CHECK(b.count("linear") == 4);
    CHECK(b.packed_attention == 0);
    // f32 GEMMs of other widths (and dx as one K = 3C sum instead of three): a few ulps.
    check_close(a.y.to_doubles(), b.y.to_doubles(), 1e-6, 1e-5, "y");
    check_close(a.dx.to_doubles(), b.dx.to_doubles(), 1e-6, 1e-5, "dx");
    check_close(a.grads.to_doubles(), b.grads.to_doubles(), 1e-6, 1e-5, "parameter gradients");
  }
}

// ---- CUDA ----------------------------------------------------------------------------------------------------

XF_CUDA_TEST_CASE("flash_attention qkv_packed: CUDA against the CPU (native, auto, cuDNN; Hopper, mma.sync, f32)") {
  // D 64 and 128 reach the Hopper kernels (and cuDNN under auto / forced); 40 and the bias the mma.sync ones; f32
  // the plain kernels. The GPU's packed results against the CPU's packed results on the same rounded inputs.
  std::vector<FaProblem> problems = packed_problems();
  problems.push_back(causal(self_problem(2, 3, 257, 64), CausalAlignment::top_left));
  problems.push_back(self_problem(1, 2, 300, 128));
  problems.push_back(causal(self_packed({127, 1, 300}, 2, 64), CausalAlignment::top_left));
  int cudnn_forwards = 0, cudnn_backwards = 0;  // forced cuDNN calls that ran (not refused)
  for (const char* backend : {"native", "auto", "cudnn"})
    for (const FaProblem& p0 : problems)
      for (DType dt : cuda_float_dtypes()) {
        if (dt == DType::f32 && std::string(backend) != "native") continue;
        ScopedEnv env("XF_ATTENTION_BACKEND", backend);
        CAPTURE(backend);
        FaProblem p = p0;
        p.a.qkv_packed = true;
        const std::string w = p.name() + " [" + dtype_name(dt) + "]";
        CAPTURE(w);
        const FaInputs in32 = make_fa_inputs(p0, 23 + static_cast<uint64_t>(p.Sq + p.D), DType::f32);
        std::vector<Tensor> gin, cin;
        for (const Tensor& t : packed_inputs(p, in32.all)) {
          gin.push_back(as_dtype(t, dt));
          cin.push_back(as_dtype(gin.back(), DType::f32));
        }
        const FaTol tol = fa_tolerance(dt);
        const FlashAttentionOp op(p.a);
        std::vector<Tensor> ref, got;
        try {
          got = run_op_cuda(op, gin);
        } catch (const Error& e) {  // forced cuDNN on a call it cannot run: refused with its reason
          CHECK_MESSAGE(std::string(backend) == "cudnn", e.what());
          continue;
        }
        cudnn_forwards += std::string(backend) == "cudnn";
        ref = run_op(op, cin, &test_pool());
        check_close(got[0].to_doubles(), ref[0].to_doubles(), tol.out_atol, tol.out_rtol, w + " out");
        check_close(finite_lse(got[1].to_doubles()), finite_lse(ref[1].to_doubles()), tol.lse_atol, 0.0, w + " lse");
        const Tensor out_g = as_dtype(ref[0], dt), out_c = as_dtype(out_g, DType::f32);
        const Tensor dout_g = random_tensor(ref[0].shape(), 403, -1, 1, dt), dout_c = as_dtype(dout_g, DType::f32);
        std::vector<Tensor> gb{gin[0], out_g, dout_g, ref[1]}, cb{cin[0], out_c, dout_c, ref[1]};
        gb.insert(gb.end(), gin.begin() + 1, gin.end());
        cb.insert(cb.end(), cin.begin() + 1, cin.end());
        const FlashAttentionBackwardOp bop(p.a, false, p.Bb > 0);
        std::vector<Tensor> gg;
        try {
          gg = run_op_cuda(bop, gb);
        } catch (const Error& e) {
          CHECK_MESSAGE(std::string(backend) == "cudnn", e.what());
          continue;
        }
        cudnn_backwards += std::string(backend) == "cudnn";
        const auto rb = run_op(bop, cb, &test_pool());
        const char* names[3] = {" dq", " dk", " dv"};
        for (int i = 0; i < 3; ++i)
          check_scaled(part(gg[0], i), part(rb[0], i), tol.grad_rel, tol.grad_rtol, w + names[i], /*floor=*/1.0);
        if (p.Bb > 0)
          check_scaled(gg[1].to_doubles(), rb[1].to_doubles(), tol.grad_rel, tol.grad_rtol, w + " dbias", 1.0);
      }
#ifdef XF_HAVE_CUDNN_ATTENTION
  // cuDNN takes the unmasked and causal D = 64 / 128 problems in bf16 and f16: the packed strides reached its graphs.
  CHECK(cudnn_forwards >= 4);
  CHECK(cudnn_backwards >= 4);
#endif
}
