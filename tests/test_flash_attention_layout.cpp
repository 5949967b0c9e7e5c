// The bshd layout of flash_attention (ops/flash_attention.h) and what uses it: the op in bshd against the op in
// bhsd on the transposed tensors (CPU, forward and backward, f64 and f32), rotary on (B, S, H, hd), and
// multi_head_dispatch with a bshd attention (no head permutes) against the permuted path, forward and training
// gradients. The CUDA kernels' bshd path is tested with the other CUDA cases in tests/test_flash_attention.cpp.
#include <cmath>

#include "components/multi_head_dispatch.h"
#include "ops/attention.h"
#include "ops/flash_attention.h"
#include "ops/rotary.h"
#include "ops/shape_ops.h"
#include "runtime/param_store.h"
#include "tests/flash_attention_testing.h"
#include "tests/mha_testing.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

// Exact equality: both layouts run the same arithmetic in the same order, only the addresses differ.
void check_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  check_close(got.to_doubles(), want.to_doubles(), 0.0, 0.0, what);
}

}  // namespace

TEST_CASE("flash_attention layout: bshd equals bhsd on the transposed tensors (CPU f64 and f32, fwd and bwd)") {
  struct Case {
    int64_t B, H, Hk, Sq, Sk, D;
    bool causal;
    double p;
  };
  for (const Case c : {Case{2, 4, 2, 17, 33, 40, true, 0.0}, Case{1, 3, 1, 70, 9, 8, false, 0.2},
                       Case{1, 2, 2, 1, 1, 64, false, 0.0}, Case{2, 2, 2, 129, 65, 16, true, 0.1}})
    for (DType dt : {DType::f64, DType::f32}) {
      CAPTURE(c.Sq);
      CAPTURE(c.Sk);
      CAPTURE(dtype_name(dt));
      const Tensor q = random_tensor({c.B, c.H, c.Sq, c.D}, 1, -1.5, 1.5, dt);
      const Tensor k = random_tensor({c.B, c.Hk, c.Sk, c.D}, 2, -1.5, 1.5, dt);
      const Tensor v = random_tensor({c.B, c.Hk, c.Sk, c.D}, 3, -1.5, 1.5, dt);
      const Tensor dout = random_tensor({c.B, c.H, c.Sq, c.D}, 4, -1, 1, dt);
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
      const uint64_t seed = 7, offset = 5;
      const FlashAttentionAttrs bhsd{scale, c.causal, c.p, AttentionLayout::bhsd};
      const FlashAttentionAttrs bshd{scale, c.causal, c.p, AttentionLayout::bshd};
      const auto f1 = run_op(FlashAttentionOp(bhsd), {q, k, v}, &test_pool(), seed, offset);
      const auto f2 = run_op(FlashAttentionOp(bshd), {swap12(q), swap12(k), swap12(v)}, &test_pool(), seed, offset);
      CHECK(f2[0].shape() == Shape{c.B, c.Sq, c.H, c.D});
      CHECK(f2[1].shape() == Shape{c.B, c.H, c.Sq});
      check_equal(f2[0], swap12(f1[0]), "out");
      check_equal(f2[1], f1[1], "lse");
      const auto b1 = run_op(FlashAttentionBackwardOp(bhsd, false), {q, k, v, f1[0], dout, f1[1]}, &test_pool(),
                             seed, offset);
      const auto b2 = run_op(FlashAttentionBackwardOp(bshd, false),
                             {swap12(q), swap12(k), swap12(v), f2[0], swap12(dout), f2[1]}, &test_pool(), seed, offset);
      check_equal(b2[0], swap12(b1[0]), "dq");
      check_equal(b2[1], swap12(b1[1]), "dk");
      check_equal(b2[2], swap12(b1[2]), "dv");
    }
}

TEST_CASE("flash_attention layout: bshd gradients by finite differences (float64, GQA, causal)") {
  const auto q = random_tensor({1, 5, 4, 6}, 11, -1, 1, DType::f64);  // (B, Sq, H, D)
  const auto k = random_tensor({1, 7, 2, 6}, 12, -1, 1, DType::f64);  // (B, Sk, Hk, D)
  const auto v = random_tensor({1, 7, 2, 6}, 13, -1, 1, DType::f64);
  check_gradients([](Graph&, const std::vector<Value>& in) {
    return flash_attention(in[0], in[1], in[2], FlashAttentionAttrs{0.4, true, 0.0, AttentionLayout::bshd}).out;
  }, {q, k, v}, "flash_attention bshd");
}

TEST_CASE("flash_attention layout: shape errors name the layout") {
  Graph g;
  const Value q = g.input("q", TensorMeta{{2, 5, 4, 8}, DType::f32});  // (B, Sq, H, D)
  const Value k = g.input("k", TensorMeta{{2, 7, 3, 8}, DType::f32});  // Hk = 3 does not divide H = 4
  try {
    flash_attention(q, k, k, FlashAttentionAttrs{1.0, false, 0.0, AttentionLayout::bshd});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.op() == "flash_attention");
    CHECK_MESSAGE(std::string(e.what()).find("q (B, Sq, H, D)") != std::string::npos, e.what());
  }
}

TEST_CASE("rotary: seq_axis -3 on (B, S, H, hd) equals seq_axis -2 on the permuted heads, and its gradient") {
  const Tensor x = random_tensor({2, 9, 3, 10}, 21, -1, 1, DType::f64);  // (B, S, H, hd)
  const Tensor a = run_graph([](Graph&, const std::vector<Value>& in) { return rotary_bshd(in[0], 3); }, {x});
  const Tensor b = run_graph([](Graph&, const std::vector<Value>& in) { return rotary(in[0], 3); }, {swap12(x)});
  check_close(a.to_doubles(), swap12(b).to_doubles(), 0.0, 0.0, "rotary bshd vs bhsd");
  check_gradients([](Graph&, const std::vector<Value>& in) { return rotary_bshd(in[0], 2); },
                  {random_tensor({1, 4, 2, 6}, 22, -1, 1, DType::f64)}, "rotary bshd");
}


TEST_CASE("multi_head_dispatch: bshd attention (no permutes) equals the permuted path, forward and gradients") {
  struct Case {
    int64_t B, T, C, H;
    bool rotary, causal;
    double p;
  };
  for (const Case c : {Case{2, 17, 48, 4, false, true, 0.0}, Case{1, 33, 40, 5, true, false, 0.0},
                       Case{2, 9, 32, 2, true, true, 0.25}}) {
    CAPTURE(c.T);
    CAPTURE(c.rotary);
    MultiHeadSpec spec;
    spec.dim_model = c.C;
    spec.num_heads = c.H;
    spec.use_rotary_embeddings = c.rotary;
    const Tensor x = random_tensor({c.B, c.T, c.C}, 41, -1, 1);
    const AttentionFn bhsd = sdpa_fn(AttentionLayout::bhsd, c.causal, c.p);
    const MhaRun a = run_mha(x, spec, bhsd, sdpa_fn(AttentionLayout::bshd, c.causal, c.p)), b = run_mha(x, spec, bhsd, {});
    CHECK(a.count("permute") == 0);
    CHECK(b.count("permute") > 0);
    check_equal(a.y, b.y, "y");
    check_equal(a.dx, b.dx, "dx");
    check_equal(a.grads, b.grads, "parameter gradients");
  }
}
