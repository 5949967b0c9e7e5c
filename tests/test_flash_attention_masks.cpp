// The masks of flash_attention (ops/flash_attention.h) on the CPU: causal alignment (top_left, bottom_right),
// sliding windows, an additive bias with its gradient (broadcast over batch and heads), packed variable-length
// sequences; each against a float64 reference written from the definitions (tests/flash_attention_testing.h) on
// awkward shapes in both layouts, by finite differences in float64, by leakage (a hidden key changes nothing), and
// against the composite SDPA with the same mask as an additive -inf tensor (the dropout mask included).
// The CUDA kernels' masks: tests/test_flash_attention_masks_cuda.cpp.
#include <cmath>
#include <limits>

#include "ops/attention.h"
#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "ops/flash_attention.h"
#include "ops/matmul.h"
#include "ops/softmax.h"
#include "tests/flash_attention_testing.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A problem with the usual scale 1 / sqrt(D).
FaProblem problem(int64_t B, int64_t H, int64_t Hk, int64_t Sq, int64_t Sk, int64_t D) {
  return with_scale(fa_problem(B, H, Hk, Sq, Sk, D));
}

FaProblem layout(FaProblem p, AttentionLayout l) {
  p.a.layout = l;
  return p;
}

// Tolerances against the float64 reference, per dtype, with the reason.
struct CpuTol {
  double out_atol, out_rtol, lse_atol, grad_rel, grad_rtol, grad_floor;
  const char* why;
};
CpuTol cpu_tolerance(DType t) {
  if (t == DType::f64)
    return {1e-12, 1e-10, 1e-12, 1e-11, 1e-9, 1e-6, "the same double sums in another order"};
  return {2e-5, 1e-4, 2e-5, 1e-4, 1e-4, 1.0,
          "f32 sgemm sums of up to ~4k terms in another order, expf vs exp: ~1e-6 relative, x10 margin; gradient "
          "sums cancel, so their error is relative to the tensor's scale (floor 1: O(1) terms)"};
}

// The backward op's inputs: q, k, v, out, dout, lse, [dlse], [bias], [offsets].
std::vector<Tensor> backward_inputs(const FaProblem& p, const FaInputs& in, const std::vector<Tensor>& fwd,
                                    const Tensor& dout, const Tensor* dlse) {
  std::vector<Tensor> r{in.all[0], in.all[1], in.all[2], fwd[0], dout, fwd[1]};
  if (dlse) r.push_back(*dlse);
  for (size_t i = 3; i < in.all.size(); ++i) r.push_back(in.all[i]);
  (void)p;
  return r;
}

// The op (CPU, `dt`) against the float64 reference: out, lse and, when `backward`, dq, dk, dv, dbias.
void check_cpu_case(const FaProblem& p, DType dt, bool backward = true, bool with_dlse = false) {
  CAPTURE(p.name());
  CAPTURE(dtype_name(dt));
  const FaInputs in = make_fa_inputs(p, 17 + static_cast<uint64_t>(p.Sq + p.D), dt);
  const auto fwd = run_op(FlashAttentionOp(p.a), in.all, &test_pool());
  const CpuTol tol = cpu_tolerance(dt);
  if (!backward) {
    const FaRef ref = fa_reference(p, in);
    check_close(fa_ref_order(p, fwd[0]), ref.out, tol.out_atol, tol.out_rtol, "out");
    check_close(finite_lse(fwd[1].to_doubles()), finite_lse(ref.lse), tol.lse_atol, 0.0, "lse");
    return;
  }
  const Tensor dout_ref = random_tensor(in.q.shape(), 5, -1, 1, dt);  // reference order
  const Tensor dout = p.a.layout == AttentionLayout::bshd ? swap12(dout_ref) : dout_ref;
  const Tensor dlse = random_tensor(fwd[1].shape(), 6, -1, 1, fwd[1].dtype());
  const FaRef ref = fa_reference(p, in, dout_ref.to_doubles(), with_dlse ? dlse.to_doubles() : std::vector<double>{});
  check_close(fa_ref_order(p, fwd[0]), ref.out, tol.out_atol, tol.out_rtol, "out");
  check_close(finite_lse(fwd[1].to_doubles()), finite_lse(ref.lse), tol.lse_atol, 0.0, "lse");
  const FlashAttentionBackwardOp bop(p.a, with_dlse, p.Bb > 0);
  const auto g = run_op(bop, backward_inputs(p, in, fwd, dout, with_dlse ? &dlse : nullptr), &test_pool());
  check_scaled(fa_ref_order(p, g[0]), ref.dq, tol.grad_rel, tol.grad_rtol, "dq", tol.grad_floor);
  check_scaled(fa_ref_order(p, g[1]), ref.dk, tol.grad_rel, tol.grad_rtol, "dk", tol.grad_floor);
  check_scaled(fa_ref_order(p, g[2]), ref.dv, tol.grad_rel, tol.grad_rtol, "dv", tol.grad_floor);
  if (p.Bb > 0) {
    REQUIRE(g.size() == 4);
    CHECK(g[3].shape() == Shape{p.Bb, p.Hb, p.Sq, p.Sk});
    check_scaled(g[3].to_doubles(), ref.dbias, tol.grad_rel, tol.grad_rtol, "dbias", tol.grad_floor);
  }
}

const auto TL = CausalAlignment::top_left;
const auto BR = CausalAlignment::bottom_right;
const auto BSHD = AttentionLayout::bshd;

}  // namespace

TEST_CASE("flash_attention masks: CPU causal alignments against float64 (Sq < Sk, Sq > Sk, empty rows)") {
  for (const FaProblem& p : {causal(problem(2, 4, 2, 17, 127, 40), BR), causal(problem(1, 2, 1, 127, 17, 64), BR),
                             causal(problem(1, 1, 1, 1, 1000, 80), BR), causal(problem(1, 2, 2, 127, 17, 40), TL),
                             layout(causal(problem(1, 3, 1, 33, 65, 128), BR), BSHD)})
    for (DType dt : {DType::f64, DType::f32}) check_cpu_case(p, dt, true, p.Sq == 33);
}

TEST_CASE("flash_attention masks: CPU sliding windows against float64 (either alignment, one side, both)") {
  for (const FaProblem& p :
       {window(causal(problem(1, 2, 2, 127, 127, 64), TL), 16, 0), window(problem(1, 3, 1, 33, 100, 40), 8, 8, BR),
        window(problem(1, 1, 1, 17, 17, 128), 0, 0), layout(window(problem(2, 2, 1, 70, 50, 80), -1, 5), BSHD),
        window(problem(1, 2, 2, 127, 1, 40), 31, -1, BR), window(causal(problem(1, 2, 1, 17, 300, 64), BR), 40, -1, BR)})
    for (DType dt : {DType::f64, DType::f32}) check_cpu_case(p, dt, true, p.Sq == 70);
}

TEST_CASE("flash_attention masks: CPU additive bias and its gradient against float64 (broadcast batch, heads)") {
  for (const FaProblem& p :
       {with_bias(problem(2, 2, 2, 17, 33, 40), 1, 1), with_bias(causal(problem(2, 4, 2, 33, 17, 64), BR), 2, 1),
        layout(with_bias(window(problem(2, 3, 1, 40, 70, 40), 10, 3), 1, 3), BSHD),
        with_bias(problem(1, 2, 2, 17, 17, 256), 1, 2), with_bias(problem(2, 2, 1, 1, 1, 8), 2, 2),
        with_bias(window(problem(4, 12, 4, 17, 17, 40), 3, 3), 4, 1)})  // many B H
    for (DType dt : {DType::f64, DType::f32}) check_cpu_case(p, dt, true, p.D == 64);
}

TEST_CASE("flash_attention masks: CPU packed variable-length sequences against float64 (block diagonal)") {
  FaProblem a = causal(packed({5, 0, 17, 1}, {7, 3, 17, 9}, 4, 2, 64), BR);  // an empty sequence; Sq != Sk each
  FaProblem b = layout(causal(packed({127, 1}, {127, 1}, 2, 2, 40), TL), BSHD);
  FaProblem c = window(packed({33, 20}, {40, 20}, 3, 1, 80), 5, 2, BR);
  FaProblem d = packed({3, 4}, {0, 5}, 2, 1, 16);  // a sequence without keys: out 0, lse -inf
  for (const FaProblem& p : {a, b, c, d})
    for (DType dt : {DType::f64, DType::f32}) check_cpu_case(p, dt, true, p.Sq == 23);
}

TEST_CASE("flash_attention masks: CPU long sequences (S = 1000 windowed bshd, S = 4097 local and causal)") {
  check_cpu_case(layout(window(causal(problem(1, 2, 2, 1000, 1000, 64), TL), 128, 0), BSHD), DType::f32);
  // 4097: the key blocks outside the window are skipped, so this costs O(S W), not O(S^2).
  check_cpu_case(window(problem(1, 1, 1, 4097, 4097, 64), 64, 64), DType::f64);
  check_cpu_case(causal(problem(1, 1, 1, 4097, 4097, 40), BR), DType::f32, /*backward=*/false);
}

TEST_CASE("flash_attention masks: gradients by finite differences (float64; each mask kind)") {
  const auto t = [](Shape s, uint64_t seed) { return random_tensor(s, seed, -1, 1, DType::f64); };
  FlashAttentionAttrs br{0.4, true, 0.0, AttentionLayout::bhsd, BR};
  check_gradients([&](Graph&, const std::vector<Value>& in) { return flash_attention(in[0], in[1], in[2], br).out; },
                  {t({1, 4, 5, 6}, 1), t({1, 2, 7, 6}, 2), t({1, 2, 7, 6}, 3)}, "causal bottom_right Sq < Sk");
  check_gradients([&](Graph&, const std::vector<Value>& in) { return flash_attention(in[0], in[1], in[2], br).out; },
                  {t({1, 2, 7, 6}, 4), t({1, 2, 4, 6}, 5), t({1, 2, 4, 6}, 6)}, "causal bottom_right Sq > Sk");
  FlashAttentionAttrs win{0.4, false, 0.0, AttentionLayout::bshd, TL, 2, 1};
  check_gradients([&](Graph&, const std::vector<Value>& in) { return flash_attention(in[0], in[1], in[2], win).out; },
                  {t({2, 9, 2, 4}, 7), t({2, 8, 1, 4}, 8), t({2, 8, 1, 4}, 9)}, "window (2, 1) bshd GQA");
  FlashAttentionAttrs plain{0.4};
  check_gradients([&](Graph&, const std::vector<Value>& in) {
    return flash_attention(in[0], in[1], in[2], plain, "fa", in[3]).out;
  }, {t({2, 3, 4, 5}, 10), t({2, 3, 6, 5}, 11), t({2, 3, 6, 5}, 12), t({1, 3, 4, 6}, 13)}, "bias (1, H)");
  FlashAttentionAttrs cw{0.4, true, 0.0, AttentionLayout::bhsd, BR, 3, -1};
  check_gradients([&](Graph&, const std::vector<Value>& in) {
    const auto r = flash_attention(in[0], in[1], in[2], cw, "fa", in[3]);
    return add(r.out, reshape(r.lse, {2, 2, 6, 1}));  // lse reaches the loss too
  }, {t({2, 2, 6, 5}, 14), t({2, 1, 8, 5}, 15), t({2, 1, 8, 5}, 16), t({2, 1, 6, 8}, 17)}, "bias (B, 1), windowed");
  FlashAttentionAttrs drop{0.4, false, 0.3, AttentionLayout::bhsd, TL, 2, 2};
  check_gradients([&](Graph&, const std::vector<Value>& in) {
    return flash_attention(in[0], in[1], in[2], drop, "fa", in[3]).out;
  }, {t({1, 2, 5, 4}, 18), t({1, 2, 7, 4}, 19), t({1, 2, 7, 4}, 20), t({1, 1, 5, 7}, 21)}, "dropout, window, bias",
                  1e-6, 1e-6, 1e-5, /*seed=*/77);
  const Tensor cu_q = offsets_tensor({2, 0, 4}, false), cu_k = offsets_tensor({3, 2, 4}, false);
  FlashAttentionAttrs vl{0.4, true, 0.0, AttentionLayout::bshd, BR};
  check_gradients([&](Graph&, const std::vector<Value>& in) {
    return flash_attention(in[0], in[1], in[2], vl, "fa", Value{}, in[3], in[4]).out;
  }, {t({6, 2, 4}, 22), t({9, 1, 4}, 23), t({9, 1, 4}, 24), cu_q, cu_k}, "varlen causal bshd");
}

TEST_CASE("flash_attention masks: leakage: a hidden key or another sequence's key changes nothing") {
  // Perturbs key/value j of every head and checks the output rows of queries that cannot see j are bit-identical
  // and at least one row that sees it changed.
  auto check = [](const FaProblem& p, int64_t seq, int64_t j) {
    CAPTURE(p.name());
    CAPTURE(j);
    FaInputs in = make_fa_inputs(p, 5, DType::f64);
    const auto base = run_op(FlashAttentionOp(p.a), in.all, &test_pool());
    int64_t q0 = 0, k0 = 0, Sq = p.Sq, Sk = p.Sk;
    for (int64_t b = 0; p.varlen() && b <= seq; ++b) {
      Sq = p.lens_q[static_cast<size_t>(b)];
      Sk = p.lens_k[static_cast<size_t>(b)];
      if (b < seq) {
        q0 += Sq;
        k0 += Sk;
      }
    }
    Tensor k = in.k.clone(), v = in.v.clone();  // bhsd / (H, T, D) order
    const int64_t heads = p.Hk, T = p.varlen() ? p.Sk : p.Sk;
    for (int64_t b = 0; b < (p.varlen() ? 1 : p.B); ++b)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t d = 0; d < p.D; ++d) {
          const int64_t e = ((b * heads + h) * T + k0 + j) * p.D + d;
          k.data<double>()[e] += 3.0;
          v.data<double>()[e] -= 2.0;
        }
    in.all[1] = p.a.layout == AttentionLayout::bshd ? swap12(k) : k;
    in.all[2] = p.a.layout == AttentionLayout::bshd ? swap12(v) : v;
    const auto changed = run_op(FlashAttentionOp(p.a), in.all, &test_pool());
    const auto o0 = fa_ref_order(p, base[0]), o1 = fa_ref_order(p, changed[0]);
    bool hidden_same = true, seen_changed = false;
    const int64_t rows = p.varlen() ? p.H * p.Sq : p.B * p.H * p.Sq;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = r % p.Sq;  // query position in the packed / per-batch axis
      const bool in_seq = t >= q0 && t < q0 + Sq;
      const bool sees = in_seq && fa_visible(p.a, t - q0, j, Sq, Sk);
      bool differs = false;
      for (int64_t d = 0; d < p.D; ++d)
        differs |= o0[static_cast<size_t>(r * p.D + d)] != o1[static_cast<size_t>(r * p.D + d)];
      if (!sees) hidden_same &= !differs;
      seen_changed |= sees && differs;
    }
    CHECK(hidden_same);
    CHECK(seen_changed);
  };
  check(window(problem(1, 2, 1, 40, 40, 8), 5, 3), 0, 20);
  check(window(causal(problem(2, 2, 2, 30, 45, 8), BR), 6, -1, BR), 0, 25);
  check(causal(problem(1, 1, 1, 45, 30, 8), BR), 0, 10);
  check(layout(causal(packed({10, 12, 7}, {9, 14, 7}, 2, 1, 8), TL), BSHD), 1, 3);
  check(window(packed({10, 12, 7}, {9, 14, 7}, 2, 2, 8), 2, 2, BR), 2, 0);
}

TEST_CASE("flash_attention masks: equal the composite with the mask as an additive -inf tensor, dropout included") {
  // The composite's dropout draws element ((b H + h) Sq + i) Sk + j of its (B, H, Sq, Sk) probabilities; varlen's
  // definition makes the packed problem that (1, H, Tq, Tk) block-diagonal tensor, so the masks agree too.
  for (const FaProblem& p0 : {window(causal(problem(2, 2, 2, 33, 40, 16), BR), 9, -1, BR),
                              with_bias(window(problem(1, 3, 3, 20, 31, 8), 4, 6), 1, 3),
                              causal(packed({7, 13, 5}, {9, 13, 8}, 2, 2, 16), BR)})
    for (double drop : {0.0, 0.3}) {
      FaProblem p = p0;
      p.a.dropout = drop;
      CAPTURE(p.name());
      const FaInputs in = make_fa_inputs(p, 9, DType::f64);
      const int64_t B = p.varlen() ? 1 : p.B;
      const std::vector<double> mask = fa_dense_mask(p, in);
      const Tensor m = Tensor::from_vector(mask, {B, p.H, p.Sq, p.Sk});
      const Shape q4{B, p.H, p.Sq, p.D}, k4{B, p.Hk, p.Sk, p.D};
      const uint64_t seed = 123;
      // The composite of ops/attention.h, spelled out (these problems have no GQA): its dropout node is the only
      // random node of the graph, as the flash_attention node is below.
      const Tensor comp = run_graph([&](Graph&, const std::vector<Value>& v) {
        const Value scores = matmul(reshape(v[0], q4), reshape(v[1], k4), false, true);
        Value probs = softmax(scores, v[3], p.a.scale, false);
        if (drop > 0) probs = dropout(probs, drop);
        return matmul(probs, reshape(v[2], k4), false, false);
      }, {in.q, in.k, in.v, m}, seed);
      const auto fa = run_op(FlashAttentionOp(p.a), in.all, &test_pool(), seed, 0);
      check_close(fa_ref_order(p, fa[0]), comp.to_doubles(), 1e-12, 1e-10, "vs composite");
    }
}

TEST_CASE("flash_attention masks: rows with every key hidden give out 0 and lse -inf (mask or -inf bias)") {
  FaProblem p = causal(problem(1, 2, 2, 9, 4, 8), BR);  // queries 0..4 see no key
  const FaInputs in = make_fa_inputs(p, 3, DType::f32);
  const auto r = run_op(FlashAttentionOp(p.a), in.all, &test_pool());
  const auto o = r[0].to_doubles(), l = r[1].to_doubles();
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < 9; ++i) {
      CHECK((l[static_cast<size_t>(h * 9 + i)] == -kInf) == (i < 5));
      if (i < 5)
        for (int64_t d = 0; d < 8; ++d) CHECK(o[static_cast<size_t>((h * 9 + i) * 8 + d)] == 0.0);
    }
  // A bias row of -inf hides everything too; its gradient is 0.
  FaProblem pb = with_bias(problem(1, 1, 1, 3, 5, 8), 1, 1);
  FaInputs ib = make_fa_inputs(pb, 4, DType::f64);
  for (int64_t j = 0; j < 5; ++j) ib.all[3].data<double>()[5 + j] = -kInf;  // query 1
  const auto rb = run_op(FlashAttentionOp(pb.a), ib.all, &test_pool());
  CHECK(rb[1].to_doubles()[1] == -kInf);
  for (int64_t d = 0; d < 8; ++d) CHECK(rb[0].to_doubles()[static_cast<size_t>(8 + d)] == 0.0);
  const Tensor dout = random_tensor({1, 1, 3, 8}, 5, -1, 1, DType::f64);
  const auto g = run_op(FlashAttentionBackwardOp(pb.a, false, true),
                        {ib.all[0], ib.all[1], ib.all[2], rb[0], dout, rb[1], ib.all[3]}, &test_pool());
  for (int64_t j = 0; j < 5; ++j) CHECK(g[3].to_doubles()[static_cast<size_t>(5 + j)] == 0.0);
}

TEST_CASE("flash_attention masks: the front door names the op and the offending shape or value") {
  Graph g;
  const auto in = [&](const char* n, Shape s, DType t = DType::f32) { return g.input(n, TensorMeta{s, t}); };
  const Value q = in("q", {2, 4, 5, 8}), k = in("k", {2, 2, 7, 8});
  auto expect = [&](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      FAIL("no error for " << needle);
    } catch (const Error& e) {
      CHECK(e.op() == "flash_attention");
      CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, std::string(e.what()));
    }
  };
  const FlashAttentionAttrs plain{1.0};
  expect([&] { flash_attention(q, k, k, plain, "fa", in("b1", {3, 1, 5, 7})); }, "(3, 1, 5, 7)");   // Bb
  expect([&] { flash_attention(q, k, k, plain, "fa", in("b2", {1, 4, 5, 6})); }, "(1, 4, 5, 6)");   // Sk
  expect([&] { flash_attention(q, k, k, plain, "fa", in("b3", {1, 4, 5, 7}, DType::f64)); }, "dtype");
  FlashAttentionAttrs bad = plain;
  bad.causal = true;
  bad.window_right = 2;
  expect([&] { flash_attention(q, k, k, bad); }, "window_right must be -1 or 0 with causal, got 2");
  bad = plain;
  bad.window_left = -3;
  expect([&] { flash_attention(q, k, k, bad); }, "(-3, -1)");
  const Value qv = in("qv", {4, 9, 8}), kv = in("kv", {2, 11, 8});  // varlen bhsd: (H, Tq, D), (Hk, Tk, D)
  const Value c32 = in("c32", {3}, DType::i32), c64 = in("c64", {3}, DType::i64), c4 = in("c4", {4}, DType::i32);
  expect([&] { flash_attention(qv, kv, kv, plain, "fa", Value{}, c32, c64); }, "must both be i32 or both i64");
  expect([&] { flash_attention(qv, kv, kv, plain, "fa", Value{}, c32, c4); }, "(nseq + 1)");
  expect([&] { flash_attention(qv, kv, kv, plain, "fa", Value{}, c32); }, "both cu_seqlens_q and cu_seqlens_k");
  expect([&] { flash_attention(q, k, k, plain, "fa", Value{}, c32, c32); }, "rank 3");
  expect([&] { flash_attention(qv, kv, kv, plain, "fa", in("b4", {1, 4, 9, 11}), c32, c32); }, "varlen");
  // Offsets are data: the CPU kernel checks them when it runs.
  FlashAttentionAttrs vl = plain;
  vl.varlen = true;
  const Tensor q3 = random_tensor({4, 9, 8}, 1), k3 = random_tensor({2, 11, 8}, 2);
  try {
    run_op(FlashAttentionOp(vl), {q3, k3, k3, offsets_tensor({4, 4}, false), offsets_tensor({5, 6}, false)},
           &test_pool());
    FAIL("no error for offsets ending at 8 with Tq = 9");
  } catch (const Error& e) {
    CHECK(e.op() == "flash_attention");
    CHECK_MESSAGE(std::string(e.what()).find("cu_seqlens_q must end at the packed length 9, got 8") !=
                      std::string::npos,
                  std::string(e.what()));
  }
  // random_numbers: B H Sq Sk, or H Tq Tk for varlen.
  FlashAttentionAttrs d = vl;
  d.dropout = 0.1;
  CHECK(FlashAttentionOp(d).random_numbers({qv.meta(), kv.meta(), kv.meta(), c32.meta(), c32.meta()}) == 4 * 9 * 11);
}

TEST_CASE("scaled_dot_product_attention: masks reach the fused op; the composite refuses a window clearly") {
  const Tensor q = random_tensor({2, 9, 3, 8}, 1), k = random_tensor({2, 12, 3, 8}, 2), v = random_tensor({2, 12, 3, 8}, 3);
  const Tensor bias = random_tensor({1, 3, 9, 12}, 4, -1, 1);
  AttentionOptions o;
  o.layout = AttentionLayout::bshd;
  o.causal = true;
  o.alignment = BR;
  o.window_left = 4;
  const Tensor sdpa = run_graph([&](Graph&, const std::vector<Value>& in) {
    return scaled_dot_product_attention(in[0], in[1], in[2], in[3], o);
  }, {q, k, v, bias});
  FlashAttentionAttrs a{1.0 / std::sqrt(8.0), true, 0.0, AttentionLayout::bshd, BR, 4, -1};
  a.has_bias = true;
  const auto fa = run_op(FlashAttentionOp(a), {q, k, v, bias}, &test_pool());
  check_close(sdpa.to_doubles(), fa[0].to_doubles(), 0.0, 0.0, "sdpa = flash_attention with the mask as bias");
  // Rank-3 heads take the composite, which has no window.
  Graph g;
  const Value q3 = g.input("q", TensorMeta{{3, 9, 8}, DType::f32}), k3 = g.input("k", TensorMeta{{3, 12, 8}, DType::f32});
  AttentionOptions w;
  w.window_left = 2;
  try {
    scaled_dot_product_attention(q3, k3, k3, Value{}, w);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "scaled_dot_product_attention");
    CHECK_MESSAGE(std::string(e.what()).find("has no sliding window (2, -1)") != std::string::npos,
                  std::string(e.what()));
  }
  AttentionOptions br;
  br.causal = true;
  br.alignment = BR;
  CHECK_THROWS_WITH_AS(scaled_dot_product_attention(q3, k3, k3, Value{}, br),
                       doctest::Contains("bottom_right causal alignment for Sq 9 != Sk 12"), Error);
}
