// The native attention backward on Hopper (sm_90a): the host side of the kernels in
// ops/cuda/device/sm90/attention_backward.cuh (which describes them), promoted from the kernel lab's b3
// (tools/lab/attention_wgmma_bwd.cu), and of the head-dim-256 ones in ops/cuda/device/sm90/attention_backward_d256.cuh.
// launch_flash_attention_backward (ops/cuda/flash_attention.cu) sends a call here when sm90_backward_refusal is empty
// (the forward's reach and switch: bf16 / f16, D 64, 128 or 256, every band, GQA, either layout, any Sq and Sk; no
// bias, dropout or packed sequences; XF_ATTENTION_SM90=0 turns it off), and to the mma.sync kernels
// (flash_attention_tc.cuh) otherwise. At D 64 and 128 each of the two main kernels runs one item per CTA or
// persistent, whichever persistent_pays (below) says is faster for the problem, and without p.deterministic (the
// atomic backward) the dK/dV kernel also sums dq (kFusedDq) into a zeroed f32 workspace, which a last kernel converts,
// and there is no dQ kernel. D = 256 runs one item per CTA, deterministic either way.
#include <atomic>
#include <cstdint>
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/cuda/device/sm90/attention_backward.cuh"
#include "ops/cuda/device/sm90/attention_backward_d256.cuh"
#include "ops/cuda/flash_attention_params.cuh"
#include "runtime/env.h"

namespace xfr::cuda::fa {

namespace {

using sm90::BwdArgs;
using sm90::kDqBlockM;

// Rows of the Delta / lse2 workspaces per (b, h): Sq rounded up to the 128-query tiles both kernels read whole.
int64_t padded_rows(const Params& p) { return (static_cast<int64_t>(p.Sq) + kDqBlockM - 1) / kDqBlockM * kDqBlockM; }

// The atomic backward's f32 sums of dq (sm90::dq_accum_block's layout): (B, H, padded_rows, D), after Delta and lse2.
size_t dq_accum_bytes(const Params& p) {
  return static_cast<size_t>(p.B) * p.H * padded_rows(p) * p.D * sizeof(float);
}

// Whether a kernel runs persistent (bwd_*_persistent_kernel: pairs of items on at most one CTA per SM, the producer
// loading the next item under this one's last tile and epilogue) or one item per CTA. `items`: the kernel's blocks
// of 128 rows. H200, 2026-11-30, run 27 (the backward lab, both kernels together, the backward alone;
// docs/benchmarks.md):
//   - fewer items than SMs: pairs halve the CTAs (0.50x-0.89x where every kernel had under 132 items);
//   - up to 4 items per SM: the pairs' balance beats the last wave's tail (1.25x / 1.30x at S = 1000 causal with
//     256 items, D = 128 / 64);
//   - more, D = 64: persistent gains everywhere (1.13x / 1.15x at S = 512, 1.07x / 1.11x at 2048, 1.05x / 1.06x at
//     8192, non-causal / causal);
//   - more, D = 128: even (0.98x-1.01x from S = 512 to 2048) to a loss (0.96x at S = 8192 non-causal).
// The atomic backward's fused dK/dV kernel takes the same rule; it was not measured on its own (session 13: it ran
// persistent at D = 64 and S = 8192, one item per CTA at D = 128 there).
bool persistent_pays(int64_t items, int D, int sms) {
  if (items <= sms) return false;
  return items <= 4 * static_cast<int64_t>(sms) || D <= 64;
}

// The kernels' work lists (dkdv_order, dq_order) and grids of one call: a persistent kernel's CTA count
// (sm90_persistent_ctas), or 0 for the one-item kernel on its 3-D grid of every item.
struct Plan {
  fa::TileOrder<sm90::kBwdBlockN> kv;
  fa::TileOrder<kDqBlockM> q;
  int kv_ctas = 0, q_ctas = 0;
};

// `kernel` on `grid` with kWsThreads threads and `smem` bytes of dynamic shared memory (allowed once per kernel
// and device).
template <auto kernel>
void launch_ws(dim3 grid, int smem, const BwdArgs& args, cudaStream_t stream) {
  static std::atomic<uint64_t> done{0};
  allow_smem(kernel, smem, done);
  kernel<<<grid, sm90::kWsThreads, smem, stream>>>(args);
}

// One of the two main kernels: the persistent one on `ctas` CTAs, or (ctas = 0) the one-item one on a CTA per item,
// grid (blocks, heads, batch) of its work list `order`.
template <auto kPersistent, auto kOneItem, class Order>
void launch_role(const Order& order, int ctas, int B, int smem, const BwdArgs& args, cudaStream_t stream) {
  if (ctas > 0)
    launch_ws<kPersistent>(dim3(static_cast<unsigned>(ctas)), smem, args, stream);
  else
    launch_ws<kOneItem>(dim3(static_cast<unsigned>(order.m_tiles), static_cast<unsigned>(order.H),
                             static_cast<unsigned>(B)),
                        smem, args, stream);
}

// Delta and lse2 into their workspaces (bwd_prep_kernel), the first kernel of every backward here.
template <class T, int D>
void launch_prep(const BwdArgs& args, const Params& p, float* delta, float* lse2, cudaStream_t stream) {
  sm90::launch_bwd_prep<T, D>(static_cast<const T*>(p.out), static_cast<const T*>(p.dout), p.lse, p.dlse, delta, lse2,
                              p.B, p.H, p.Sq, args.Sq_pad, p.os, stream);
  XF_CUDA_CHECK_LAUNCH("flash_attention_backward (sm90 Delta)");
}

// The backward of one call: Delta and lse2, then the main kernels. Head dim 256 (sm90/attention_backward_d256.cuh):
// the dK/dV kernel on a CTA per 64 keys and the dQ kernel on a CTA per 64 queries, deterministic whatever
// p.deterministic says (no atomic form) and one item per CTA (plan unused).
template <class T, int D, bool kLower>
void launch(const BwdArgs& args, const Params& p, float* delta, float* lse2, const Plan& plan, cudaStream_t stream) {
  launch_prep<T, D>(args, p, delta, lse2, stream);
  if constexpr (D == sm90::kSplitD) {
    constexpr int kBlock = sm90::kSplitBlock;
    launch_ws<sm90::bwd_dkdv_d256_kernel<T, kLower>>(
        dim3(static_cast<unsigned>((p.Sk + kBlock - 1) / kBlock), static_cast<unsigned>(p.Hk),
             static_cast<unsigned>(p.B)),
        sm90::SplitDkdvLayout<>::kBytes, args, stream);
    XF_CUDA_CHECK_LAUNCH("flash_attention_backward (sm90 dK, dV at head dim 256)");
    launch_ws<sm90::bwd_dq_d256_kernel<T, kLower>>(
        dim3(static_cast<unsigned>((p.Sq + kBlock - 1) / kBlock), static_cast<unsigned>(p.H),
             static_cast<unsigned>(p.B)),
        sm90::SplitDqLayout<>::kBytes, args, stream);
    XF_CUDA_CHECK_LAUNCH("flash_attention_backward (sm90 dQ at head dim 256)");
    (void)plan;
  } else {
    if (args.dq_accum) {  // the atomic backward: dK, dV and dq's sums in one kernel, then dq from the sums
      XF_CUDA_CHECK(cudaMemsetAsync(args.dq_accum, 0, dq_accum_bytes(p), stream));
      launch_role<sm90::bwd_dkdv_persistent_kernel<T, D, kLower, true>, sm90::bwd_dkdv_kernel<T, D, kLower, true>>(
          plan.kv, plan.kv_ctas, p.B, sm90::DkdvLayout<D, sm90::kBwdStages, true>::kBytes, args, stream);
      XF_CUDA_CHECK_LAUNCH("flash_attention_backward (sm90 dK, dV, dQ sums)");
      const int64_t threads = static_cast<int64_t>(p.B) * p.H * p.Sq * (D / 8);
      sm90::bwd_dq_convert_kernel<T, D><<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(
          args.dq_accum, static_cast<T*>(p.dq), p.B, p.H, p.Sq, args.Sq_pad, p.qs, p.scale);
      XF_CUDA_CHECK_LAUNCH("flash_attention_backward (sm90 dQ from its sums)");
      return;
    }
    launch_role<sm90::bwd_dkdv_persistent_kernel<T, D, kLower>, sm90::bwd_dkdv_kernel<T, D, kLower>>(
        plan.kv, plan.kv_ctas, p.B, sm90::DkdvLayout<D>::kBytes, args, stream);
    XF_CUDA_CHECK_LAUNCH("flash_attention_backward (sm90 dK, dV)");
    launch_role<sm90::bwd_dq_persistent_kernel<T, D, kLower>, sm90::bwd_dq_kernel<T, D, kLower>>(
        plan.q, plan.q_ctas, p.B, sm90::DqLayout<D>::kBytes, args, stream);
    XF_CUDA_CHECK_LAUNCH("flash_attention_backward (sm90 dQ)");
  }
}

template <class T, int D>
void launch_band(const BwdArgs& args, const Params& p, float* delta, float* lse2, const Plan& plan,
                 cudaStream_t stream) {
  if (p.band.left >= 0) {
    launch<T, D, true>(args, p, delta, lse2, plan, stream);
  } else {
    launch<T, D, false>(args, p, delta, lse2, plan, stream);
  }
}

// Whether the call runs the atomic backward (dq summed into dq_accum): asked for, and not at head dim 256.
bool atomic_dq(const Params& p) { return !p.deterministic && p.D != sm90::kSplitD; }

}  // namespace

// The forward's rule (sm90_problem_refusal, sm90_refusal: the latter runs the former first): the backward takes
// what the forward takes, head dim 256 included (its own kernels, attention_backward_d256.cuh).
std::string sm90_backward_problem_refusal(const Params& p, DType dtype) { return sm90_problem_refusal(p, dtype); }

std::string sm90_backward_refusal(const Params& p, DType dtype) { return sm90_refusal(p, dtype); }

size_t sm90_backward_workspace_bytes(const Params& p) {
  const size_t stats = 2 * static_cast<size_t>(p.B) * p.H * padded_rows(p) * sizeof(float);  // Delta, lse2
  return stats + (atomic_dq(p) ? dq_accum_bytes(p) : 0);
}

void launch_sm90_backward(const Params& p, DType dtype, void* workspace, cudaStream_t stream) {
  BwdArgs args;
  const int D = p.D;
  const bool d256 = D == sm90::kSplitD;
  const int bm = d256 ? sm90::kSplitBlock : D == 64 ? sm90::bwd_block_m<64>() : sm90::bwd_block_m<128>();
  const int kvn = d256 ? sm90::kSplitBlock : sm90::kBwdBlockN;
  const int dqn = D == 64 ? sm90::dq_block_n<64>() : sm90::dq_block_n<128>();
  std::string why;
  // The dK/dV kernel reads q, dout in tiles of bm queries and k, v in blocks of kvn keys; the dQ kernel (none in the
  // atomic backward) q, dout in blocks of 128 queries and k, v in tiles of dqn keys. At head dim 256 both kernels
  // read 64-row boxes of every tensor (the first four maps).
  const bool ok = sm90_head_map(&args.tm_q_bm, dtype, p.q, D, p.Sq, p.H, p.B, p.qs, bm, &why) &&
                  sm90_head_map(&args.tm_do_bm, dtype, p.dout, D, p.Sq, p.H, p.B, p.os, bm, &why) &&
                  sm90_head_map(&args.tm_k, dtype, p.k, D, p.Sk, p.Hk, p.B, p.ks, kvn, &why) &&
                  sm90_head_map(&args.tm_v, dtype, p.v, D, p.Sk, p.Hk, p.B, p.ks, kvn, &why) &&
                  (!p.deterministic || d256 ||
                   (sm90_head_map(&args.tm_q128, dtype, p.q, D, p.Sq, p.H, p.B, p.qs, kDqBlockM, &why) &&
                    sm90_head_map(&args.tm_do128, dtype, p.dout, D, p.Sq, p.H, p.B, p.os, kDqBlockM, &why) &&
                    sm90_head_map(&args.tm_k_dq, dtype, p.k, D, p.Sk, p.Hk, p.B, p.ks, dqn, &why) &&
                    sm90_head_map(&args.tm_v_dq, dtype, p.v, D, p.Sk, p.Hk, p.B, p.ks, dqn, &why)));
  XF_CHECK(ok, "flash_attention_backward", "the sm90 backward's tensor maps: ", why);
  args.Sq_pad = static_cast<int>(padded_rows(p));
  float* delta = static_cast<float*>(workspace);
  float* lse2 = delta + static_cast<int64_t>(p.B) * p.H * args.Sq_pad;  // 512-byte multiples: bulk copies aligned
  args.lse2 = lse2;
  args.delta = delta;
  // After Delta and lse2 (whose sizes are multiples of 512 bytes): 16-byte aligned, as the bulk reductions need.
  if (atomic_dq(p)) args.dq_accum = lse2 + static_cast<int64_t>(p.B) * p.H * args.Sq_pad;
  args.dq = p.dq;
  args.dk = p.dk;
  args.dv = p.dv;
  args.qs = p.qs;
  args.ks = p.ks;
  args.B = p.B;
  args.H = p.H;
  args.Hk = p.Hk;
  args.G = p.G;
  args.Sq = p.Sq;
  args.Sk = p.Sk;
  args.band = p.band;
  args.scale = p.scale;
  args.scale_log2 = p.scale_log2;
  // Persistent or one item per CTA, per kernel (persistent_pays); XF_ATTENTION_SM90_BWD_PERSISTENT=1 or 0 forces
  // one for both. Head dim 256 has one item per CTA only (its launch reads no plan).
  Plan plan{sm90::dkdv_order(args), sm90::dq_order(args)};
  if (!d256) {
    const int sms = sm90_device_sms(), forced = env_forced("XF_ATTENTION_SM90_BWD_PERSISTENT");
    const auto ctas = [&](const auto& order) {  // the kernel's items: m_tiles blocks of each of H heads of B entries
      const int64_t items = static_cast<int64_t>(order.m_tiles) * order.H * p.B;
      const bool persistent = forced >= 0 ? forced == 1 : persistent_pays(items, D, sms);
      return persistent ? sm90_persistent_ctas(order.pairs) : 0;
    };
    plan.kv_ctas = ctas(plan.kv);
    plan.q_ctas = ctas(plan.q);
  }
  if (dtype == DType::bf16) {
    if (D == 64) launch_band<__nv_bfloat16, 64>(args, p, delta, lse2, plan, stream);
    else if (D == 128) launch_band<__nv_bfloat16, 128>(args, p, delta, lse2, plan, stream);
    else launch_band<__nv_bfloat16, sm90::kSplitD>(args, p, delta, lse2, plan, stream);
  } else {
    if (D == 64) launch_band<__half, 64>(args, p, delta, lse2, plan, stream);
    else if (D == 128) launch_band<__half, 128>(args, p, delta, lse2, plan, stream);
    else launch_band<__half, sm90::kSplitD>(args, p, delta, lse2, plan, stream);
  }
}

}  // namespace xfr::cuda::fa
