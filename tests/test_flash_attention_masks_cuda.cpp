// The CUDA kernels of flash_attention with masks (ops/cuda/flash_attention*.cu): every mask kind x layout x dtype
// against the CPU kernel in f32 on the same rounded inputs (forward out, lse; backward dq, dk, dv, dbias), awkward
// shapes, dropout masks equal to the CPU's; FlashAttention-3's acceptance rule against a float64 reference (the
// kernel's error at most twice that of a naive attention computed in the same low precision on the same GPU);
// and an S = 32768 run whose caching-allocator peak stays linear in S. Skipped without a GPU (XF_TEST_DEVICE=cuda
// runs them); filter: -tc='flash_attention CUDA masks*'. The tensor-core kernels' mask helper
// (ops/cuda/flash_attention_mask.h) is plain C++, checked on the CPU against the definitions (last case, never
// skipped).
#include <cmath>
#include <functional>
#include <limits>

#include "ops/cuda/flash_attention_mask.h"
#include "ops/flash_attention.h"
#include "ops/matmul.h"
#include "ops/softmax.h"
#include "tests/cuda_testing.h"
#include "tests/flash_attention_testing.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
const auto TL = CausalAlignment::top_left;
const auto BR = CausalAlignment::bottom_right;

// One of each mask kind on awkward shapes: S = 1, 17, 127, 1000 (and 300, 65, 130), D = 8, 32, 40, 64, 80, 128,
// 256; Sq != Sk both ways (rows that see nothing under bottom_right); GQA; windows that skip most key tiles; every
// bias broadcast; packed sequences with an empty one, one without keys, and a long one.
std::vector<FaProblem> mask_problems() {
  std::vector<FaProblem> r = {
      causal(fa_problem(2, 4, 2, 17, 127, 40), BR),
      causal(fa_problem(1, 2, 1, 1000, 127, 64), BR),
      causal(fa_problem(1, 2, 2, 1, 1000, 128), BR),
      causal(fa_problem(1, 3, 3, 127, 1000, 80), TL),
      window(fa_problem(1, 2, 2, 1000, 1000, 64), 100, 100),
      window(causal(fa_problem(1, 2, 1, 127, 1000, 128), BR), 50, -1, BR),
      window(fa_problem(2, 2, 2, 17, 17, 32), 0, 0),
      window(fa_problem(1, 2, 2, 127, 127, 256), 30, 5, BR),
      window(fa_problem(1, 2, 2, 65, 130, 8), -1, 3),
      with_bias(fa_problem(2, 2, 2, 17, 33, 40), 1, 1),
      with_bias(causal(fa_problem(2, 4, 2, 127, 127, 64), BR), 2, 1),
      with_bias(window(fa_problem(1, 3, 1, 100, 70, 128), 10, 3), 1, 3),
      with_bias(fa_problem(2, 2, 2, 33, 65, 256), 2, 2),
      with_bias(fa_problem(1, 12, 12, 128, 128, 32), 1, 1),
      causal(packed({5, 0, 17, 1, 300}, {7, 3, 17, 9, 300}, 4, 2, 64), BR),
      window(packed({127, 1, 64}, {127, 1, 64}, 2, 2, 128), 16, 0),
      packed({3, 4, 1000}, {0, 5, 999}, 2, 1, 40),
  };
  for (auto& p : r) p = with_scale(p);
  return r;
}

// GPU (in `dt`) against the CPU (f32) on the same rounded inputs, forward and backward. `edit` may change the f32
// inputs before they are rounded (a bias row set to -inf). Returns the GPU forward's (out, lse).
std::vector<Tensor> cuda_mask_case(FaProblem p, DType dt, double drop, uint64_t seed, uint64_t offset, bool with_dlse,
                                   bool i64_offsets, const std::function<void(FaInputs&)>& edit = {}) {
  p.a.dropout = drop;
  FaInputs in32 = make_fa_inputs(p, 11 + static_cast<uint64_t>(p.Sq + p.Sk + p.D), DType::f32, 1.5, i64_offsets);
  if (edit) edit(in32);
  std::vector<Tensor> gin, cin;
  for (const Tensor& t : in32.all) {
    gin.push_back(as_dtype(t, dt));
    cin.push_back(as_dtype(gin.back(), DType::f32));
  }
  const std::string w = p.name() + " p=" + std::to_string(drop) + " [" + dtype_name(dt) + "]";
  CAPTURE(w);
  const FaTol tol = fa_tolerance(dt);
  const FlashAttentionOp op(p.a);
  const auto ref = run_op(op, cin, &test_pool(), seed, offset);
  const auto got = run_op_cuda(op, gin, seed, offset);
  check_close(got[0].to_doubles(), ref[0].to_doubles(), tol.out_atol, tol.out_rtol, w + " out");
  check_close(finite_lse(got[1].to_doubles()), finite_lse(ref[1].to_doubles()), tol.lse_atol, 0.0, w + " lse");

  // Backward: both sides get the CPU forward's out (rounded to dt) and lse, so only the backward kernels differ.
  const Tensor out_g = as_dtype(ref[0], dt), out_c = as_dtype(out_g, DType::f32);
  const Tensor dout_g = random_tensor(ref[0].shape(), 301, -1, 1, dt), dout_c = as_dtype(dout_g, DType::f32);
  const Tensor dlse = random_tensor(ref[1].shape(), 302, -1, 1);
  std::vector<Tensor> gb{gin[0], gin[1], gin[2], out_g, dout_g, ref[1]}, cb{cin[0], cin[1], cin[2], out_c, dout_c, ref[1]};
  if (with_dlse) {
    gb.push_back(dlse);
    cb.push_back(dlse);
  }
  for (size_t i = 3; i < gin.size(); ++i) {
    gb.push_back(gin[i]);
    cb.push_back(cin[i]);
  }
  const FlashAttentionBackwardOp bop(p.a, with_dlse, p.Bb > 0);
  const auto rb = run_op(bop, cb, &test_pool(), seed, offset);
  const auto gg = run_op_cuda(bop, gb, seed, offset);
  const char* names[4] = {" dq", " dk", " dv", " dbias"};
  for (size_t i = 0; i < rb.size(); ++i)
    check_scaled(gg[i].to_doubles(), rb[i].to_doubles(), tol.grad_rel, tol.grad_rtol, w + names[i], /*floor=*/1.0);
  return got;
}

}  // namespace

XF_CUDA_TEST_CASE("flash_attention CUDA masks: every mask x layout x dtype against the CPU (forward, backward)") {
  // Forced native (every case on our kernels), then auto (cuDNN for the bf16 / f16 calls it maps: a bias, a window,
  // top-left causal); f32 is native either way.
  for (const std::string backend : {"native", "auto"}) {
    ScopedEnv env("XF_ATTENTION_BACKEND", backend.c_str());
    CAPTURE(backend);
    for (const FaProblem& p0 : mask_problems())
      for (AttentionLayout l : {AttentionLayout::bhsd, AttentionLayout::bshd})
        for (DType dt : cuda_float_dtypes()) {
          if (dt == DType::f32 && backend == "auto") continue;
          FaProblem p = p0;
          p.a.layout = l;
          cuda_mask_case(p, dt, 0.0, 0, 0, /*with_dlse=*/p.Sq == 127, /*i64_offsets=*/l == AttentionLayout::bshd);
        }
  }
}

#ifdef XF_HAVE_CUDNN_ATTENTION
XF_CUDA_TEST_CASE("flash_attention CUDA masks: an additive bias on cuDNN (forced) against the CPU, or refused with a reason") {
  // The op through the dispatcher with XF_ATTENTION_BACKEND=cudnn: the bias (and dbias) mapped to cuDNN's sdpa and
  // sdpa_backward nodes. `required`: a (1 or B, 1 or H) bias with D 64 or 128, no mask or a causal top-left one, Sk
  // a multiple of 8 (16-byte rows): cuDNN must run it. The others (a window, bottom-right, Sk = 33: refused by
  // cuDNN's support check or our static one) must be refused with a reason, or run right.
  struct BiasCase {
    FaProblem p;
    bool required;
  };
  const std::vector<BiasCase> cases = {
      {with_bias(fa_problem(2, 2, 2, 17, 64, 64), 1, 1), true},
      {with_bias(causal(fa_problem(2, 4, 2, 128, 128, 64), TL), 2, 1), true},
      {with_bias(fa_problem(1, 4, 4, 257, 136, 128), 1, 4), true},
      {with_bias(fa_problem(2, 2, 1, 127, 1000, 128), 2, 2), true},
      {with_bias(fa_problem(1, 12, 12, 128, 128, 32), 1, 1), false},
      {with_bias(window(fa_problem(1, 3, 1, 100, 72, 128), 10, 3), 1, 3), false},
      {with_bias(causal(fa_problem(2, 4, 2, 127, 128, 64), BR), 2, 1), false},
      {with_bias(fa_problem(2, 2, 2, 17, 33, 64), 1, 1), false},
  };
  ScopedEnv env("XF_ATTENTION_BACKEND", "cudnn");
  for (const BiasCase& c : cases)
    for (AttentionLayout l : {AttentionLayout::bhsd, AttentionLayout::bshd})
      for (DType dt : {DType::bf16, DType::f16}) {
        FaProblem p = with_scale(c.p);
        p.a.layout = l;
        try {
          cuda_mask_case(p, dt, 0.0, 0, 0, /*with_dlse=*/false, /*i64_offsets=*/false);
        } catch (const Error& e) {
          // std::string: doctest prints a char pointer as an address.
          const std::string why = e.what();
          CHECK_MESSAGE(contains(e.message(), "cudnn"), why);  // the dispatcher's refusal names the backend
          if (c.required) FAIL_CHECK(p.name() << " [" << dtype_name(dt) << "]: cuDNN refused: " << why);
          else MESSAGE(p.name() << " [" << dtype_name(dt) << "]: refused (allowed here): " << why);
        }
      }
}

XF_CUDA_TEST_CASE("flash_attention CUDA masks: a row a -inf bias hides entirely, natively and on cuDNN (forced)") {
  // The op's contract for such a row: out 0 and lse -inf, and no gradient through it (dq and dbias 0 there). Both
  // backends against the CPU, forward and backward (dbias too), and the row checked exactly. Run 37 found cuDNN
  // 9.14 giving out 0 and lse -inf for it, so auto sends a bias to cuDNN (ops/cuda/attention_dispatch.cpp).
  const FaProblem p = with_scale(with_bias(fa_problem(1, 2, 2, 16, 64, 64), 1, 2));
  const int64_t head = 1, row = 5;  // (head, row) of the (1, H, Sq, Sk) bias that hides every key
  const auto hide_row = [&](FaInputs& in) {
    float* bias = in.all[3].data<float>();  // (1, H, Sq, Sk)
    for (int64_t j = 0; j < p.Sk; ++j) bias[(head * p.Sq + row) * p.Sk + j] = -INFINITY;
  };
  for (const std::string backend : {"native", "cudnn"}) {
    CAPTURE(backend);
    ScopedEnv env("XF_ATTENTION_BACKEND", backend.c_str());
    const auto got = cuda_mask_case(p, DType::bf16, 0.0, 0, 0, /*with_dlse=*/false, /*i64_offsets=*/false, hide_row);
    const auto o = got[0].to_doubles(), lse = got[1].to_doubles();
    const size_t r = static_cast<size_t>(head * p.Sq + row);
    bool zero = lse[r] == -kInf;
    for (int64_t d = 0; d < p.D; ++d) zero = zero && o[r * p.D + d] == 0.0;
    CHECK_MESSAGE(zero, backend << ": lse " << lse[r] << ", out[0] " << o[r * p.D]);
  }
}
#endif

XF_CUDA_TEST_CASE("flash_attention CUDA masks: dropout masks equal the CPU's under every mask kind") {
  // f32: a different keep/drop decision would move out by O(0.1), far beyond the f32 tolerance. Offset 4k + 3
  // puts key pairs across Philox blocks; varlen checks the packed element index.
  for (const FaProblem& p :
       {with_scale(window(causal(fa_problem(1, 2, 1, 127, 129, 64), BR), 40, -1, BR)),
        with_scale(with_bias(fa_problem(2, 2, 2, 33, 17, 40), 1, 2)),
        with_scale(causal(packed({30, 0, 70}, {40, 5, 70}, 2, 2, 128), BR)),
        with_scale(window(fa_problem(1, 2, 2, 70, 70, 256), 8, 8))})
    for (DType dt : cuda_float_dtypes())
      for (uint64_t offset : {uint64_t{0}, uint64_t{4 * 1001 + 3}}) cuda_mask_case(p, dt, 0.2, 4321, offset, false, false);
}

namespace {

// max |x - ref|
double max_err(const std::vector<double>& x, const std::vector<double>& ref) {
  REQUIRE(x.size() == ref.size());
  double e = 0;
  for (size_t i = 0; i < x.size(); ++i) e = std::max(e, std::abs(x[i] - ref[i]));
  return e;
}
double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double v : x) m = std::max(m, std::abs(v));
  return m;
}

// The naive attention on the GPU in `dt`: matmul, softmax with the mask as an additive tensor (-inf hidden, the
// bias added), matmul, and its autodiff backward; q, k, v in the reference order (bhsd; varlen as (1, H, T, D)),
// H == Hk. Returns out, dq, dk, dv and dmask (the bias's gradient before the broadcast sum: the sum is taken here).
struct NaiveOut {
  std::vector<double> out, dq, dk, dv, dbias;
};
NaiveOut naive_gpu(const FaProblem& p, const FaInputs& in, const Tensor& dout, DType dt) {
  const int64_t B = p.varlen() ? 1 : p.B;
  const std::vector<double> mask = fa_dense_mask(p, in);
  const Shape q4{B, p.H, p.Sq, p.D}, k4{B, p.Hk, p.Sk, p.D}, m4{B, p.H, p.Sq, p.Sk};
  Graph g;
  const Value q = g.input("q", TensorMeta{q4, dt}, true), k = g.input("k", TensorMeta{k4, dt}, true),
              v = g.input("v", TensorMeta{k4, dt}, true), m = g.input("m", TensorMeta{m4, dt}, true);
  const Value out = matmul(softmax(matmul(q, k, false, true), m, p.a.scale, false), v, false, false);
  const Value w = g.input("dout", out.meta());
  const Gradients grads = gradients(out, w);
  ExecutorOptions opt;
  opt.device = Device::cuda(0);
  opt.device_ctx = cuda_test_ctx()->shared_from_this();
  auto store = std::make_shared<ParamStore>(g, cuda_test_ctx());
  Executor ex(g, {out, grads.get(q), grads.get(k), grads.get(v), grads.get(m)}, grads, store, opt);
  ex.bind(q, in.q.to(dt).view(q4));
  ex.bind(k, in.k.to(dt).view(k4));
  ex.bind(v, in.v.to(dt).view(k4));
  ex.bind(m, Tensor::from_vector(mask, m4).to(dt));
  ex.bind(w, dout.to(dt).view(q4));
  ex.run();
  auto host = [&](Value x) { return ex.get(x).to_host().to_doubles(); };
  NaiveOut r{host(out), host(grads.get(q)), host(grads.get(k)), host(grads.get(v)), {}};
  if (p.Bb > 0) {  // sum the (B, H, Sq, Sk) mask gradient over the bias's broadcast axes
    const auto dm = host(grads.get(m));
    r.dbias.assign(static_cast<size_t>(p.Bb * p.Hb * p.Sq * p.Sk), 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t e = 0; e < p.Sq * p.Sk; ++e)
          r.dbias[static_cast<size_t>(((p.Bb == 1 ? 0 : b) * p.Hb + (p.Hb == 1 ? 0 : h)) * p.Sq * p.Sk + e)] +=
              dm[static_cast<size_t>((b * p.H + h) * p.Sq * p.Sk + e)];
  }
  return r;
}

}  // namespace

XF_CUDA_TEST_CASE("flash_attention CUDA masks: FlashAttention-3 rule, error <= 2x a naive same-precision attention's") {
  // FlashAttention-3's acceptance test: against a float64 reference on the same (rounded) inputs, the fused
  // kernel's largest error in out, dQ, dK, dV (and dbias) is at most twice that of the textbook attention run in
  // the same low precision (here the composite matmul / softmax / matmul graph and its autodiff, on the same GPU),
  // plus a rounding slack of half a unit of the dtype at the tensor's scale (2^-9 bf16, 2^-12 f16 relative: an
  // error the output's own final rounding can give, which the naive path may happen to avoid on a lucky tensor).
  // Under auto (cuDNN where it runs the call) and forced native (the Hopper forward for D = 64, 128 on sm_90).
  for (const char* backend : {"auto", "native"})
  for (DType dt : {DType::bf16, DType::f16}) {
    ScopedEnv env("XF_ATTENTION_BACKEND", backend);
    CAPTURE(backend);
    const double slack_rel = dt == DType::bf16 ? std::ldexp(1.0, -9) : std::ldexp(1.0, -12);
    for (const FaProblem& p :
         {with_scale(causal(fa_problem(2, 4, 4, 127, 300, 64), BR)), with_scale(window(fa_problem(1, 2, 2, 1000, 1000, 128), 64, 64)),
          with_scale(with_bias(causal(fa_problem(2, 2, 2, 100, 100, 40), TL), 1, 2)),
          with_scale(causal(packed({100, 27, 200}, {100, 60, 200}, 2, 2, 32), BR)),
          with_scale(fa_problem(1, 3, 3, 17, 1000, 256))}) {
      CAPTURE(p.name());
      CAPTURE(dtype_name(dt));
      const FaInputs in = make_fa_inputs(p, 77, dt);  // in.q/k/v/bias: the rounded values, as f64
      const Tensor dout = random_tensor(in.q.shape(), 78, -1, 1, dt);  // reference order
      const FaRef ref = fa_reference(p, in, dout.to_doubles());
      // The kernel: forward, then the backward from its own out and lse.
      const auto f = run_op_cuda(FlashAttentionOp(p.a), in.all);
      std::vector<Tensor> bin{in.all[0], in.all[1], in.all[2], f[0].to_host(), dout, f[1].to_host()};
      for (size_t i = 3; i < in.all.size(); ++i) bin.push_back(in.all[i]);
      const auto g = run_op_cuda(FlashAttentionBackwardOp(p.a, false, p.Bb > 0), bin);
      const NaiveOut nv = naive_gpu(p, in, dout, dt);
      auto rule = [&](const std::vector<double>& kernel, const std::vector<double>& naive, const std::vector<double>& r,
                      const char* what) {
        const double ek = max_err(kernel, r), en = max_err(naive, r), slack = slack_rel * max_abs(r);
        CHECK_MESSAGE(ek <= 2 * en + slack, what << ": kernel error " << ek << ", naive " << en << ", slack " << slack);
      };
      rule(f[0].to_host().to_doubles(), nv.out, ref.out, "out");
      rule(g[0].to_host().to_doubles(), nv.dq, ref.dq, "dq");
      rule(g[1].to_host().to_doubles(), nv.dk, ref.dk, "dk");
      rule(g[2].to_host().to_doubles(), nv.dv, ref.dv, "dv");
      if (p.Bb > 0) rule(g[3].to_host().to_doubles(), nv.dbias, ref.dbias, "dbias");
    }
  }
}

XF_CUDA_TEST_CASE("flash_attention CUDA masks: S = 32768 in bf16 keeps the allocator's peak linear in S") {
  // B = 1, H = 2, D = 64: q, k, v, out are 8 MiB each and lse 256 KiB, while the scores of a materialised
  // attention would be 2 x 32768^2 x 2 B = 4 GiB. The peak over the forward and the backward must stay within
  // twice every tensor's bytes together (inputs, outputs, the Delta workspace): O(S).
  const FaProblem p = with_scale(causal(fa_problem(1, 2, 2, 32768, 32768, 64), TL));
  const FaInputs in = make_fa_inputs(p, 5, DType::bf16);
  DeviceContext* ctx = cuda_test_ctx();
  ctx->synchronize();
  const size_t base = ctx->memory_stats().current_bytes;
  ctx->reset_peak();
  const auto f = run_op_cuda(FlashAttentionOp(p.a), in.all);
  const Tensor dout = random_tensor(in.q.shape(), 6, -1, 1, DType::bf16);
  const auto g = run_op_cuda(FlashAttentionBackwardOp(p.a, false), {in.all[0], in.all[1], in.all[2], f[0], dout, f[1]});
  const size_t peak = ctx->memory_stats().peak_bytes - base;
  const size_t qkv = static_cast<size_t>(in.q.numel()) * 2;  // one (1, 2, S, 64) bf16 tensor
  const size_t all = 3 * qkv + qkv + 2 * static_cast<size_t>(p.H * p.Sq) * 4 + qkv + 3 * qkv + qkv;  // in, out, lse, Delta, dout, grads, out again
  CHECK_MESSAGE(peak <= 2 * all, "peak " << peak << " bytes for tensors of " << all << " bytes");
  CHECK(peak < static_cast<size_t>(p.Sq) * static_cast<size_t>(p.Sk) / 4);  // far below S^2 bytes
  // A few rows against float64 (the whole reference would be 2 x 32768^2 x 64 multiply-adds on the CPU).
  const auto out = f[0].to_host().to_doubles();
  const auto Q = in.q.to_doubles(), K = in.k.to_doubles(), V = in.v.to_doubles();
  for (int64_t h : {int64_t{0}, int64_t{1}})
    for (int64_t i : {int64_t{0}, int64_t{12345}, int64_t{32767}}) {
      std::vector<double> s(static_cast<size_t>(i + 1));
      double mx = -kInf, sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        double d = 0;
        for (int64_t c = 0; c < 64; ++c)
          d += Q[static_cast<size_t>((h * p.Sq + i) * 64 + c)] * K[static_cast<size_t>((h * p.Sk + j) * 64 + c)];
        s[static_cast<size_t>(j)] = d * p.a.scale;
        mx = std::max(mx, s[static_cast<size_t>(j)]);
      }
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t c = 0; c < 64; ++c) {
        double o = 0;
        for (int64_t j = 0; j <= i; ++j) o += s[static_cast<size_t>(j)] / sum * V[static_cast<size_t>((h * p.Sk + j) * 64 + c)];
        const FaTol tol = fa_tolerance(DType::bf16);
        const double got = out[static_cast<size_t>((h * p.Sq + i) * 64 + c)];
        CHECK_MESSAGE(std::abs(got - o) <= tol.out_atol + tol.out_rtol * std::abs(o), "row " << i << " head " << h);
      }
    }
  for (double x : g[0].to_host().to_doubles()) REQUIRE(std::isfinite(x));
}

namespace {

// Mismatches of the tensor-core kernels' mask `m` (one sequence of Sq queries, Sk keys) against the definitions
// (fa_visible; a key j >= Sk is padding, hidden), as the kernels use it: rows are queries 0 <= i < Sq + 64 and keys
// 0 <= j < Sk + 64 (padding included), blocks of 32 or 64 rows, tiles of 32 or 64. Exact: element (i, j) and
// whether a tile is visible whole (no element test); sound: the key (query) tiles a block visits hold every visible
// one, and sees_any holds wherever a query of the block sees a key of the tile.
template <class M>
int mask_mismatches(const M& m, const FlashAttentionAttrs& a, int Sq, int Sk) {
  auto vis = [&](int i, int j) { return j < Sk && fa_visible(a, i, j, Sq, Sk); };
  int bad = 0;
  for (int i = 0; i < Sq + 64; ++i) {
    const xfr::cuda::fa::KeyRange r = m.keys(i);
    for (int j = 0; j < Sk + 64; ++j) bad += m.hides(r, j) == vis(i, j);
  }
  for (int rows : {32, 64}) {
    for (int size : {32, 64}) {
      for (int q0 = 0; q0 < Sq; q0 += rows) {  // a forward / dQ block: its key tiles, and each tile's visibility
        const int last = std::min(q0 + rows, Sq) - 1;
        const xfr::cuda::fa::TileRange tr = m.key_tiles(q0, rows, size);
        for (int k0 = 0; k0 < Sk + 64; k0 += size) {
          bool all = true, any = false;
          for (int i = q0; i <= last; ++i)
            for (int j = k0; j < k0 + size; ++j) {
              all = all && vis(i, j);
              any = any || vis(i, j);
            }
          const int tile = k0 / size;
          bad += any && (tile < tr.first || tile >= tr.first + tr.count);
          bad += m.covers(m.common_keys(q0, last), k0, k0 + size) != all;
          bad += any && !m.sees_any(q0, last, k0, std::min(k0 + size, Sk));
        }
      }
      for (int k0 = 0; k0 < Sk; k0 += rows) {  // a dK/dV block: its query tiles
        const xfr::cuda::fa::TileRange tr = m.query_tiles(k0, rows, size);
        for (int i = 0; i < Sq; ++i)
          for (int j = k0; j < std::min(k0 + rows, Sk); ++j)
            bad += vis(i, j) && (i / size < tr.first || i / size >= tr.first + tr.count);
      }
    }
  }
  return bad;
}

// Whether two masks give the same tile ranges and tests on every block and tile of the kernels.
template <class M1, class M2>
int mask_differences(const M1& x, const M2& y, int Sq, int Sk) {
  int bad = 0;
  auto same = [](xfr::cuda::fa::TileRange u, xfr::cuda::fa::TileRange v) {
    return u.first == v.first && u.count == v.count;
  };
  for (int i = 0; i < Sq + 64; ++i) bad += x.key_hi(i) != y.key_hi(i) || x.key_lo(i) != y.key_lo(i);
  for (int rows : {32, 64})
    for (int size : {32, 64}) {
      for (int q0 = 0; q0 < Sq; q0 += rows) {
        const int last = std::min(q0 + rows, Sq) - 1;
        bad += !same(x.key_tiles(q0, rows, size), y.key_tiles(q0, rows, size));
        for (int k0 = 0; k0 < Sk + 64; k0 += size) {
          bad += x.covers(x.common_keys(q0, last), k0, k0 + size) != y.covers(y.common_keys(q0, last), k0, k0 + size);
          bad += x.sees_any(q0, last, k0, std::min(k0 + size, Sk)) != y.sees_any(q0, last, k0, std::min(k0 + size, Sk));
        }
      }
      for (int k0 = 0; k0 < Sk; k0 += rows) bad += !same(x.query_tiles(k0, rows, size), y.query_tiles(k0, rows, size));
    }
  return bad;
}

}  // namespace

TEST_CASE("flash_attention CUDA masks: the tensor-core kernels' tile mask and instantiation choice (CPU)") {
  namespace fa = xfr::cuda::fa;
  const int64_t far = int64_t{1} << 40;  // a window past every key
  for (bool causal : {false, true})
    for (CausalAlignment al : {TL, BR})
      for (int64_t wl : {int64_t{-1}, int64_t{0}, int64_t{3}, int64_t{64}, far})
        for (int64_t wr : {int64_t{-1}, int64_t{0}, int64_t{5}, int64_t{64}, int64_t{131}, far}) {
          if (causal && wr > 0) continue;
          FlashAttentionAttrs a;
          a.causal = causal;
          a.alignment = al;
          a.window_left = wl;
          a.window_right = wr;
          CAPTURE(a.str());
          const AttentionBand band = a.band();
          // Plain exactly when nothing but a band without a lower bound is needed.
          CHECK(fa::instantiation_of(fa::features_needed(false, false, false, band)) ==
                (wl < 0 ? fa::kPlain : fa::kGeneral));
          CHECK(fa::instantiation_of(fa::features_needed(true, false, false, band)) == fa::kGeneral);
          CHECK(fa::instantiation_of(fa::features_needed(false, true, false, band)) == fa::kGeneral);
          CHECK(fa::instantiation_of(fa::features_needed(false, false, true, band)) == fa::kGeneral);
          for (int Sq : {1, 5, 64, 65, 130})
            for (int Sk : {1, 5, 64, 65, 130}) {
              CAPTURE(Sq);
              CAPTURE(Sk);
              const fa::Mask<true> general(band, Sq, Sk);
              CHECK(mask_mismatches(general, a, Sq, Sk) == 0);
              if (wl >= 0) continue;  // the plain mask only runs bands without a lower bound
              const fa::Mask<false> plain(band, Sq, Sk);
              CHECK(mask_mismatches(plain, a, Sq, Sk) == 0);
              CHECK(mask_differences(plain, general, Sq, Sk) == 0);
            }
        }
}
