// The native attention on Hopper (wgmma, TMA, warp-specialised): the forward (ops/cuda/flash_attention_sm90.cu) and
// the backward (ops/cuda/flash_attention_sm90_backward.cu) against the CPU kernel in f32 on the same rounded inputs,
// on every band they take (none, causal in both alignments, sliding windows), both layouts, bf16 and f16, GQA / MQA,
// a gradient of lse (dlse) or none, and awkward lengths (1, 17, 33, 127, 129, 257, 1000, 4097: tails of the 64-,
// 128- and 192-row tiles on both axes, rows that see no key, key blocks no query sees). Each problem also runs with
// XF_ATTENTION_SM90=0 (the mma.sync kernels) against the same oracle, and the Hopper forward with both of its
// schedules (XF_ATTENTION_SM90_PINGPONG=1, 0), on its default grid and persistent on 3 CTAs
// (XF_ATTENTION_SM90_CTAS=3), and at D = 64 with three consumer warpgroups as well as two
// (XF_ATTENTION_SM90_CONSUMERS=3; these problems are too short for the default to pick three) and with 256-key K/V
// tiles as well as 128-key ones (XF_ATTENTION_SM90_BLOCK_N=256, 128, two consumers; the default takes 256 keys
// without a mask and under a causal band from 1024 keys), each with its default consumer loop (256-key tiles:
// streamed; under a causal band with the diagonal's half steps, and without them: XF_ATTENTION_SM90_DIAG_HALF=0) and
// the per-tile one (XF_ATTENTION_SM90_STREAM=0), under a mask with its tiles drawn from the context's
// counter and dealt in pairs (XF_ATTENTION_SM90_DRAW=1, 0; the default draws at D = 64), at D = 64 without a mask
// drawn in head order with the split tail (the default with ping-pong from 4 key tiles: these problems have fewer query
// tiles than the H200 has SMs, so every tile is split along its keys into pieces that other CTAs run; on 3 and 5 CTAs
// the last round's tiles), drawn whole (XF_ATTENTION_SM90_SPLIT=0) and dealt in pairs (XF_ATTENTION_SM90_DRAW=0), and
// the Hopper
// backward with its one-item-per-CTA and its persistent kernels (XF_ATTENTION_SM90_BWD_PERSISTENT=0, 1), the latter
// also on 3 CTAs (head dim 256: its own kernels, sm90/attention_backward_d256.cuh, on four problems). Outputs start poisoned (NaN), so an unwritten row fails. The choice of kernel
// (flash_attention_sm90_refusal) is checked on any machine with a CUDA build; the GPU cases are skipped without one
// (XF_TEST_DEVICE=cuda runs them; filter -tc='flash_attention CUDA sm90*').
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "ops/flash_attention.h"
#include "runtime/env.h"
#include "tests/cuda_testing.h"
#include "tests/flash_attention_testing.h"
#include "testing.h"
#ifdef XF_WITH_CUDA
#include "ops/cuda/flash_attention_launch.h"
#endif

using namespace xfr;
using namespace xfr::testing;

#ifdef XF_WITH_CUDA
namespace {

const auto TL = CausalAlignment::top_left;
const auto BR = CausalAlignment::bottom_right;

// The launcher's arguments of a (non-varlen, unbiased) problem with contiguous tensors in its layout.
cuda::FlashAttentionArgs args_of(const FaProblem& p, DType dt) {
  cuda::FlashAttentionArgs a;
  a.dtype = dt;
  a.B = p.B;
  a.H = p.H;
  a.Hk = p.Hk;
  a.Sq = p.Sq;
  a.Sk = p.Sk;
  a.D = p.D;
  a.q_strides = head_strides(p.a.layout, p.H, p.Sq, p.D);
  a.k_strides = head_strides(p.a.layout, p.Hk, p.Sk, p.D);
  a.scale = p.a.scale;
  a.causal = p.a.causal;
  a.alignment = p.a.alignment;
  a.window_left = p.a.window_left;
  a.window_right = p.a.window_right;
  a.dropout = p.a.dropout;
  return a;
}

// A 16-byte aligned stand-in pointer: the refusal reads addresses, never data.
const void* const kAligned = reinterpret_cast<const void*>(uintptr_t{256});

std::vector<FaProblem> sm90_problems() {
  std::vector<FaProblem> r = {
      fa_problem(1, 2, 2, 1, 1, 64),                                // one query, one key
      fa_problem(2, 4, 2, 127, 129, 64),                            // tails on both axes, GQA
      fa_problem(1, 3, 1, 257, 33, 128),                            // MQA, Sq > Sk, a 33-key tile
      fa_problem(1, 3, 1, 200, 1000, 64),                           // unmasked, 4+ key tiles: the split tail
      causal(fa_problem(1, 2, 2, 1000, 1000, 128), TL),             // the diagonal in the middle of tiles
      causal(fa_problem(1, 2, 1, 1000, 127, 64), BR),               // most rows see no key: out 0, lse -inf
      causal(fa_problem(1, 2, 2, 1000, 1000, 64), TL),              // D 64: 256-key tiles' half steps and whole ones
      causal(fa_problem(2, 2, 2, 17, 1000, 128), BR),               // a few queries at the end of 1000 keys
      causal(fa_problem(1, 2, 1, 4097, 4097, 128), TL),             // 33 query blocks, one row in the last
      window(fa_problem(1, 2, 2, 1000, 1000, 64), 100, 100),        // skips most key tiles on both sides
      window(causal(fa_problem(1, 2, 1, 300, 1000, 128), BR), 50, -1, BR),
      window(fa_problem(2, 2, 2, 257, 257, 64), 0, 0),              // the diagonal alone
      window(fa_problem(1, 2, 2, 65, 130, 128), -1, 3),             // a right bound only
      fa_problem(1, 2, 1, 129, 257, 256),                           // head dim 256 (64-key tiles; MQA)
      causal(fa_problem(1, 2, 2, 300, 300, 256), TL),               // head dim 256 under a mask
      causal(fa_problem(2, 4, 2, 127, 33, 256), BR),                // D 256: GQA, Sq > Sk, rows that see nothing
      window(fa_problem(1, 2, 2, 257, 200, 256), 40, 17),           // D 256: a band skipping tiles on both sides
  };
  for (auto& p : r) p = with_scale(p);
  r.push_back(fa_problem(1, 2, 2, 129, 257, 64));  // a custom scale (3 / sqrt(D)): large logits
  r.back().a.scale = 3.0 / 8.0;
  return r;
}

}  // namespace

TEST_CASE("flash_attention CUDA sm90: which problems the Hopper forward takes, and the reasons it gives") {
  auto refusal = [](const FaProblem& p, DType dt, const void* ptr = kAligned) {
    return cuda::flash_attention_sm90_refusal(args_of(p, dt), ptr, kAligned, kAligned, kAligned);
  };
  const FaProblem ok = with_scale(causal(fa_problem(2, 4, 2, 127, 129, 64), BR));
  CHECK(contains(refusal(ok, DType::f32), "bf16 or f16"));
  CHECK(contains(refusal(with_scale(fa_problem(1, 2, 2, 17, 17, 80)), DType::bf16), "head dim 80"));
  FaProblem drop = ok;
  drop.a.dropout = 0.1;
  CHECK(contains(refusal(drop, DType::bf16), "dropout"));
  CHECK(contains(refusal(ok, DType::bf16, reinterpret_cast<const void*>(uintptr_t{258})), "16-byte aligned"));
  {
    ScopedEnv env("XF_ATTENTION_SM90", "0");
    const std::string why = refusal(ok, DType::f16);
    CHECK_MESSAGE((contains(why, "XF_ATTENTION_SM90=0") || contains(why, "no sm_90a code")), why);
  }
  // In reach: empty on an H100 / H200 of a build with sm_90a, else the build's or the device's reason.
  const std::string why = refusal(ok, DType::bf16);
  CHECK_MESSAGE((why.empty() || contains(why, "compute capability 9.0") || contains(why, "no sm_90a code")), why);
  // The backward: the same rule, on its own tensors (a misaligned gradient, or out, which its pre-kernel reads in
  // 16-byte packs, sends it to the mma.sync kernels).
  auto backward_refusal = [](const FaProblem& p, DType dt, const void* dk, const void* out = kAligned) {
    return cuda::flash_attention_sm90_backward_refusal(args_of(p, dt), kAligned, kAligned, kAligned, out, kAligned,
                                                       kAligned, dk, kAligned);
  };
  CHECK(backward_refusal(ok, DType::bf16, kAligned) == why);
  // Head dim 256: the forward's rule, and the backward's (its own kernels).
  const FaProblem d256 = with_scale(causal(fa_problem(1, 2, 2, 129, 129, 256), TL));
  CHECK(refusal(d256, DType::bf16) == why);
  CHECK(backward_refusal(d256, DType::bf16, kAligned) == why);
  CHECK(contains(backward_refusal(ok, DType::bf16, reinterpret_cast<const void*>(uintptr_t{258})), "16-byte aligned"));
  CHECK(contains(backward_refusal(ok, DType::bf16, kAligned, reinterpret_cast<const void*>(uintptr_t{264})),
                 "16-byte aligned"));
  CHECK(contains(backward_refusal(drop, DType::bf16, kAligned), "dropout"));
}

XF_CUDA_TEST_CASE("flash_attention CUDA sm90: the Hopper forward and backward against the CPU (bands, layouts, bf16 / f16, tails, dlse)") {
  ScopedEnv native("XF_ATTENTION_BACKEND", "native");  // auto would send most of these to cuDNN
  const auto t_start = std::chrono::steady_clock::now();  // XF_TEST_TRACE's times
  for (const FaProblem& p0 : sm90_problems())
    for (AttentionLayout layout : {AttentionLayout::bhsd, AttentionLayout::bshd})
      for (DType dt : {DType::bf16, DType::f16}) {
        FaProblem p = p0;
        p.a.layout = layout;
        const std::string w = p.name() + " [" + dtype_name(dt) + "]";
        CAPTURE(w);
        const std::string why = cuda::flash_attention_sm90_refusal(args_of(p, dt), kAligned, kAligned, kAligned, kAligned);
        // On a compute capability 9.0 device every problem here must take the Hopper kernels (else this tests the
        // others twice; the backward follows the forward's rule); elsewhere the test still holds the mma.sync
        // kernels to the oracle.
        CHECK_MESSAGE((why.empty() || contains(why, "compute capability 9.0")), why);
        const FaInputs in32 = make_fa_inputs(p, 41 + static_cast<uint64_t>(p.Sq * 3 + p.Sk + p.D), DType::f32);
        std::vector<Tensor> gin, cin;
        for (const Tensor& t : in32.all) {
          gin.push_back(as_dtype(t, dt));
          cin.push_back(as_dtype(gin.back(), DType::f32));
        }
        const FlashAttentionOp op(p.a);
        const auto ref = run_op(op, cin, &test_pool());
        const FaTol tol = fa_tolerance(dt);
        // Backward: both sides get the CPU forward's out (rounded to dt) and lse, so only the backward kernels
        // differ; dlse on every other problem (the gradient that reaches lse: Delta - dlse).
        const bool with_dlse = (p.Sq + p.Sk) % 2 == 1 || p.Sq == 1;
        const Tensor out_g = as_dtype(ref[0], dt), out_c = as_dtype(out_g, DType::f32);
        const Tensor dout_g = random_tensor(ref[0].shape(), 303 + static_cast<uint64_t>(p.Sq), -1, 1, dt);
        const Tensor dout_c = as_dtype(dout_g, DType::f32);
        std::vector<Tensor> gb{gin[0], gin[1], gin[2], out_g, dout_g, ref[1]}, cb{cin[0], cin[1], cin[2], out_c, dout_c, ref[1]};
        if (with_dlse) {
          const Tensor dlse = random_tensor(ref[1].shape(), 304, -1, 1);
          gb.push_back(dlse);
          cb.push_back(dlse);
        }
        const FlashAttentionBackwardOp bop(p.a, with_dlse, false);
        const auto rb = run_op(bop, cb, &test_pool());
        // The Hopper kernels: the forward with either schedule (ping-pong or free-running), on the default grid
        // (these problems have fewer pairs of query tiles than the H200 has SMs: a CTA runs one pair) and on 3 CTAs
        // (each walks many pairs: the pair order, one-tile pairs, tiles that see no key, the ping-pong's
        // realignment between tiles, the streamed loop's turns across tiles), and at D = 64 with three consumer
        // warpgroups and with 256-key tiles as well, each streamed (the default with 256-key tiles) and per tile;
        // then the mma.sync kernels. The backward does not depend on the forward's options: it runs with the
        // forward's defaults, its kernels by its own rule (these problems: one item per CTA), persistent and not
        // (XF_ATTENTION_SM90_BWD_PERSISTENT=1, 0), and persistent on 3 CTAs (D = 256 has one form, deterministic and
        // one item per CTA: its configurations repeat it).
        struct Config {
          const char* sm90;
          const char* pingpong;
          const char* ctas;
          const char* consumers;
          const char* block_n;
          const char* bwd_persistent;
          bool backward;
          const char* deterministic = "";  // "0": the atomic backward (dq summed by reductions, kFusedDq)
          const char* stream = "";         // "0": the forward's per-tile consumer loop instead of the streamed one
          const char* draw = "";           // "0": a masked forward's tiles dealt in pairs instead of drawn
          const char* split = "";          // "0": an unmasked forward without the split tail
          const char* diag_half = "";      // a causal band's half steps on streamed 256-key tiles: "1" on, "0" off
        };
        std::vector<Config> configs;
        for (const char* pingpong : {"1", "0"})
          for (const char* ctas : {"", "3"}) {
            configs.push_back({"1", pingpong, ctas, "", "", "", false});
            // Under a mask the forward draws its tiles from the context's counter at D = 64 (which must be back at
            // zero after every launch: the configurations run one after another) and deals them in pairs at 128 and
            // 256; both orders at every head dim.
            const bool masked = p.a.causal || p.a.window_left >= 0 || p.a.window_right >= 0;
            if (masked)
              for (const char* draw : {"0", "1"}) configs.push_back({"1", pingpong, ctas, "", "", "", false, "", "", draw});
            // Without a mask the D = 64 forward (ping-pong: its default, and forced to 1 here with three consumers)
            // draws its tiles in head order and splits those of its last round (here every tile on the default grid)
            // into pieces along their keys (from 4 key tiles), combined by whichever CTA ends a tile's last piece; on 5
            // CTAs the tail is what 5 leaves. Without the split the tiles are drawn whole, or dealt in pairs.
            if (!masked && p.D == 64) {
              configs.push_back({"1", pingpong, ctas, "", "", "", false, "", "", "", "0"});
              configs.push_back({"1", pingpong, ctas, "", "", "", false, "", "", "0"});
              if (ctas[0] == '3') configs.push_back({"1", pingpong, "5", "", "", "", false});
            }
            if (p.D != 64) continue;  // D = 128 and 256 have one shape
            configs.push_back({"1", pingpong, ctas, "3", "", "", false});
            // Both K/V tile widths at two consumers, whichever the default picks for this band; 256-key tiles in
            // both consumer loops (the others have only the per-tile one).
            configs.push_back({"1", pingpong, ctas, "2", "256", "", false});
            configs.push_back({"1", pingpong, ctas, "2", "256", "", false, "", "0"});
            // The causal forward's half steps (kDiagHalf; the default up to 2048 keys, so on here) forced off.
            if (p.a.causal) configs.push_back({"1", pingpong, ctas, "2", "256", "", false, "", "", "", "", "0"});
            configs.push_back({"1", pingpong, ctas, "2", "128", "", false});
          }
        for (const char* deterministic : {"", "0"}) {
          for (const char* persistent : {"", "1", "0"})
            configs.push_back({"1", "", "", "", "", persistent, true, deterministic});
          configs.push_back({"1", "", "3", "", "", "1", true, deterministic});
        }
        configs.push_back({"0", "", "", "", "", "", true});
        for (const Config& c : configs) {
          ScopedEnv env("XF_ATTENTION_SM90", c.sm90);
          ScopedEnv schedule("XF_ATTENTION_SM90_PINGPONG", c.pingpong);
          ScopedEnv grid("XF_ATTENTION_SM90_CTAS", c.ctas);
          ScopedEnv shape("XF_ATTENTION_SM90_CONSUMERS", c.consumers);
          ScopedEnv tile("XF_ATTENTION_SM90_BLOCK_N", c.block_n);
          ScopedEnv persistent("XF_ATTENTION_SM90_BWD_PERSISTENT", c.bwd_persistent);
          ScopedEnv deterministic("XF_ATTENTION_DETERMINISTIC", c.deterministic);
          ScopedEnv streamed("XF_ATTENTION_SM90_STREAM", c.stream);
          ScopedEnv drawn("XF_ATTENTION_SM90_DRAW", c.draw);
          ScopedEnv split("XF_ATTENTION_SM90_SPLIT", c.split);
          ScopedEnv diag_half("XF_ATTENTION_SM90_DIAG_HALF", c.diag_half);
          const std::string tag = w + " XF_ATTENTION_SM90=" + c.sm90 +
                                  (c.sm90[0] == '1' ? std::string(" PINGPONG=") + c.pingpong + " CTAS=" + c.ctas +
                                                          " CONSUMERS=" + c.consumers + " BLOCK_N=" + c.block_n +
                                                          " BWD_PERSISTENT=" + c.bwd_persistent +
                                                          " DETERMINISTIC=" + c.deterministic +
                                                          " STREAM=" + c.stream + " DRAW=" + c.draw +
                                                          " SPLIT=" + c.split + " DIAG_HALF=" + c.diag_half
                                                    : "");
          INFO(tag);
          // XF_TEST_TRACE=1: each run named on stderr before it starts, so that a run stopped on a hung kernel says
          // which one (doctest prints no INFO context for a test stopped by a signal).
          const bool trace = env_flag("XF_TEST_TRACE");
          const auto say = [&](const char* what) {
            if (!trace) return;
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
            std::fprintf(stderr, "%.1f s: sm90 %s: %s\n", s, what, tag.c_str());
            std::fflush(stderr);
          };
          say("forward");
          const auto got = run_op_cuda(op, gin);
          check_close(got[0].to_doubles(), ref[0].to_doubles(), tol.out_atol, tol.out_rtol, tag + " out");
          check_close(finite_lse(got[1].to_doubles()), finite_lse(ref[1].to_doubles()), tol.lse_atol, 0.0, tag + " lse");
          if (!c.backward) continue;
          say("backward");
          const auto gg = run_op_cuda(bop, gb);
          const char* names[3] = {" dq", " dk", " dv"};
          for (size_t i = 0; i < 3; ++i)
            check_scaled(gg[i].to_doubles(), rb[i].to_doubles(), tol.grad_rel, tol.grad_rtol,
                         tag + names[i] + (with_dlse ? " (dlse)" : ""), /*floor=*/1.0);
        }
      }
}

XF_CUDA_TEST_CASE("flash_attention CUDA sm90: the Hopper backward is deterministic (GQA sums without atomics)") {
  ScopedEnv native("XF_ATTENTION_BACKEND", "native");
  FaProblem p = with_scale(causal(fa_problem(2, 8, 2, 333, 333, 128), BR));  // 4 query heads per kv head
  p.a.layout = AttentionLayout::bshd;
  const FaInputs in = make_fa_inputs(p, 77, DType::bf16);
  const auto f = run_op_cuda(FlashAttentionOp(p.a), in.all);
  const Tensor dout = random_tensor(f[0].shape(), 78, -1, 1, DType::bf16);
  const FlashAttentionBackwardOp bop(p.a, false, false);
  const auto g1 = run_op_cuda(bop, {in.all[0], in.all[1], in.all[2], f[0], dout, f[1]});
  const auto g2 = run_op_cuda(bop, {in.all[0], in.all[1], in.all[2], f[0], dout, f[1]});
  for (size_t i = 0; i < 3; ++i) CHECK(g1[i].to_doubles() == g2[i].to_doubles());
}
#endif
