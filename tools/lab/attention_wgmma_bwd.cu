// Kernel lab: a FlashAttention BACKWARD for Hopper (sm_90a) built on wgmma and TMA, in numbered variants timed side
// by side on the FlashAttention benchmark grid and on awkward shapes, each checked against a simple fp32 reference.
// The forward twin is tools/lab/attention_wgmma.cu (whose device header and host helpers this lab reuses).
//
//   given q, k, v, out, dout (bf16; q, out, dout (B, H, Sq, D), k, v (B, Hk, Sk, D), layout bhsd or bshd) and lse
//   (B, H, Sq) f32 (natural log) of out = softmax(q k^T scale + mask) v, scale = 1/sqrt(D), optionally dlse
//   (B, H, Sq): dq, dk, dv in the inputs' layouts (dk, dv of kv head hk summed over its G = H / Hk query heads);
//   fp32 accumulation. The mask is a band of ops/flash_attention.h (AttentionBand: none, causal top-left or
//   bottom-right, sliding windows). out and lse come from an fp32 reference forward (out rounded to bf16) on
//   N(0,1) inputs made on the device.
//
// Reach (each variant refuses the rest by name, printed as SKIP): b1: packed bhsd, Sq == Sk = S a multiple of 128,
// H == Hk, no band or causal, no dlse, D = 64 or 128. b3, b4, b4s: D = 64 or 128, any Sq, Sk >= 1, every band, GQA / MQA,
// bhsd or bshd, dlse (bf16 here; its kernels are templates on T = bf16 / f16, f16 compiled with -DLAB_B3_F16 but
// not run: the references are bf16).
//
// Variants. Both start with production's pre-kernel (bwd_prep_kernel: Delta_i = dout_i . out_i - dlse_i,
// lse2_i = lse_i log2(e)).
//   b1  the specialised speed baseline (attention_wgmma_bwd/kernels.cuh has a comment block per kernel: tiles,
//       barriers and the pipeline). dK/dV kernel: CTA = 128 keys (2 consumer warpgroups x 64), a TMA producer
//       streams Q, dO, lse2, Delta of each query tile (64 rows at D = 128, 128 at D = 64) through a 2-stage
//       mbarrier ring; per tile S^T = K Q^T, dP^T = V dO^T (wgmma_ss), P^T and dS^T in registers, dV += P^T dO,
//       dK += dS^T Q (wgmma_rs). Then a separate deterministic dQ kernel: CTA = 128 queries, K/V tiles through the
//       ring, S = Q K^T, dP = dO V^T, dQ += dS K. Recomputes S and dP once more (the price of no atomics): 7 GEMMs
//       of S x S x D per (b, h) instead of 5. Tile sizes, shared-memory layouts and GEMM helpers are production's.
//   b3  production's backward (ops/cuda/device/sm90/attention_backward.cuh, which documents it): b1 generalised
//       (4-D TMA maps over strided tensors, Mask<kLower> for every band, GQA summed in the dK/dV CTA, bounded
//       epilogues; same tiles, threads, registers and barriers), developed here as b3 and then promoted. One item
//       (128 keys, 128 queries) per CTA.
//   b4  production's persistent kernels (the same per-tile math; one CTA per SM walking pairs of items in
//       fa::TileOrder, the producer loading the next item's K, V or Q, dO while this one finishes); b4s runs them
//       on 3 CTAs, so that the small cases walk many items a CTA (correctness). Developed here as a copy of b3's
//       kernels and promoted beside them. Run 27 (2026-11-30), against b3: D = 64 1.05x-1.15x from S = 512 to
//       8192, 1.25x-1.30x at S = 1000 causal (256 items), D = 128 with many items 0.96x-1.01x, 0.50x-0.89x with
//       fewer items than SMs; production's launcher picks per kernel (flash_attention_sm90_backward.cu,
//       persistent_pays). Runs 24-26 had it 5-11% slower at long S, before its descriptors were kept in
//       registers (ss_gemm_desc). Run 29 (2026-11-30) tried a one-item-per-CTA mode of these kernels (a grid of
//       every item, each CTA running its own item alone) to replace b3's kernels: 0.93x-0.96x of b3 at D = 128 and
//       0.93x-0.99x at D = 64 (the persistent dK/dV tile loop is 689 instructions at D = 128 against b3's 664, and
//       the item loop's barriers cost the rest), so b3's kernels stay for one item per CTA.
//   Retired: b2 (dQ by fp32 atomics from the dK/dV kernel) was slower than b1 and spilled when causal (run 13:
//   219.9 TFLOP/s at D=128 S=2048 vs b1's 440.0; 104.6 vs 187.7 at D=128 S=512 causal).
//   Time covers everything a caller would run: the pre-kernel and the kernels.
//
// Registers (nvcc 13.0, ptxas -v; every fast kernel runs kWsThreads = 384 threads = 2 consumer warpgroups at 240 +
// a producer warpgroup at 24, setmaxnreg; kernels.cuh, b1's dK/dV kernel, has the history): 168 registers at entry,
// 0 spill bytes and no C7512 warning in b1's bwd_dkdv / bwd_dq and b3's bwd_dkdv_kernel / bwd_dq_kernel (bf16 and
// f16, D 64 / 128, every mask form).
// First results (H200, run 13): b1 187.7 TFLOP/s at D=128 S=512 causal, 440.0 at D=128 S=2048 non-causal; every
// case PASS (rel. L2 2.3e-3 - 2.4e-3). Run 14 (--quick): b3 396 TFLOP/s at D=128 S=2048 (B=2, H=16), b1 418.
//
// Cases: the benchmark grid (D x causal x S, B = 16384 / S, H = 2048 / D) plus b3's awkward cases (awkward_cases:
// tails, Sq != Sk, bottom-right causal with rows that see nothing, windows, GQA / MQA, bshd, dlse, Sq = 1); --quick:
// one grid case and 3 small awkward ones. Any of --sq --sk --h --hk --b --band --layout --dlse: one case per D.
// Output: one line per case, `lab attention_wgmma_bwd <variant> D= Sq= Sk= band= B= H= Hk= layout= dlse=:
// max_err_dq= max_err_dk= max_err_dv= PASS|FAIL time_ms= TFLOP/s=` with details in brackets; FLOPs = 2.5 x 4 B H
// pairs D, pairs = Sq Sk without a band, S^2 / 2 causal with Sq == Sk (the FlashAttention convention), else the exact
// count of visible (query, key) pairs. Every variant (b1 too) is checked against the general fp32 references
// (kernels.cuh, reference3_*: the old packed ones' math with bands, GQA and strides). Exit status: 0 all cases
// passed (a refusal is no failure), 1 some case failed (or every variant refused every case), 2 usage error, 3 CUDA error that leaves the context unusable (setup, or a sticky fault: the last lines name
// the kernel, variant and case, and, for a pipeline deadlock, the block, thread and mbarrier that timed out).
//
//   xfrun_lab_attention_wgmma_bwd [--variant b1[,b3,b4,b4s]] [--quick] [--d 64|128] [--causal 0|1] [--s S] [--reps N]
//       [--sq N] [--sk N] [--h N] [--hk N] [--b N] [--band none|causal|causal_br|window:L,R|window_br:L,R]
//       [--layout bhsd|bshd] [--dlse 0|1]
//
// Build: only for -gencode=arch=compute_90a,code=sm_90a (CMakeLists.txt); wgmma and setmaxnreg need sm_90a.
#define LAB_NAME "lab attention_wgmma_bwd"
#include "lab_cuda.h"
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "attention_wgmma_bwd/kernels.cuh"  // the device code (and the forward lab's: reference forward, fill_randn)
#include "attention_wgmma_host.h"           // hang record, case_error, tensor maps, command line

// =====================================================================================================================
// Host
// =====================================================================================================================
namespace {

using namespace lab;
using namespace lab::bwd;
using lab_host::bf16_to_float;
using lab_host::case_error;
using lab_host::make_tensor_map;
using lab_host::make_tensor_map_4d;
namespace sm90 = xfr::cuda::sm90;  // b3's kernels and the pre-kernel: production's

// One case of the lab: the problem's sizes, band and layout.
struct Case {
  int D = 128, B = 1, H = 1, Hk = 1, Sq = 1, Sk = 1;
  AttentionBand band;      // none: left = right = -1
  std::string band_name;   // as on the command line
  bool bshd = false;       // layout (B, S, heads, D) instead of (B, heads, S, D)
  bool dlse = false;       // a dlse input (Delta = dout . out - dlse)
};

// Element strides of a (B, heads, S, D) tensor stored in the case's layout.
HeadStrides strides_of(bool bshd, int heads, int S, int D) {
  if (bshd) return {static_cast<int64_t>(S) * heads * D, D, static_cast<int64_t>(heads) * D};
  return {static_cast<int64_t>(heads) * S * D, static_cast<int64_t>(S) * D, D};
}

struct Problem {
  int B, H, Hk, Sq, Sk, D, Sq_pad;  // Sq_pad: Sq rounded up to 128 (b3's workspace rows)
  AttentionBand band;
  bool bshd, has_dlse;
  HeadStrides qs, ks;                   // q, out, dout, dq: qs; k, v, dk, dv: ks
  const bf16 *q, *k, *v, *out, *dout;   // q, out, dout (B, H, Sq, D); k, v (B, Hk, Sk, D); strides qs / ks
  const float* lse;                     // (B, H, Sq)
  const float* dlse;                    // (B, H, Sq) or null
  bf16 *dq, *dk, *dv;                   // dq (B, H, Sq, D) strides qs; dk, dv (B, Hk, Sk, D) strides ks
  float *delta, *lse2;                  // (B, H, Sq_pad) workspace of the pre-kernel (b1: Sq_pad = S)
  // b1 (packed bhsd, Sq == Sk = S, H == Hk) 2-D maps over (B*H*S, D). Box rows: _bm = the dK/dV kernel's query
  // tile (bwd_block_m<D>), _128 = 128 (K/V tiles, the dQ kernel's Q/dO)
  CUtensorMap tm_q_bm, tm_do_bm, tm_q128, tm_do128, tm_k128, tm_v128;
  CUtensorMap tm_k_dq, tm_v_dq;  // box dq_block_n<D>() rows: the dQ kernel's K/V tiles
  BwdArgs b3;                    // b3's parameters (4-D maps, strides, band)
  int S;                         // b1: Sq (== Sk)
  bool causal;                   // b1: band causal
  float scale() const { return 1.f / std::sqrt(static_cast<float>(D)); }
  float scale_log2() const { return kLog2e / std::sqrt(static_cast<float>(D)); }
  size_t rows() const { return static_cast<size_t>(B) * H * Sq; }  // query rows
  size_t n() const { return rows() * D; }
};

bool is_causal(const AttentionBand& b) { return b.left < 0 && b.right == 0; }
bool is_none(const AttentionBand& b) { return b.left < 0 && b.right < 0; }

// The kernels' shape limits, checked by name before any launch ("" = supported).
std::string refusal_b1(const Case& c) {
  if (c.D != 64 && c.D != 128) return "D=" + std::to_string(c.D) + " is not 64 or 128 (the kernels are instantiated for those)";
  if (c.Sq != c.Sk) return "Sq != Sk (b1 has one S)";
  if (c.Sq <= 0 || c.Sq % 128 != 0)
    return "S=" + std::to_string(c.Sq) + " is not a positive multiple of 128 (b1 has no tail tiles)";
  if (c.H != c.Hk) return "H != Hk (b1 has no GQA)";
  if (!is_none(c.band) && !is_causal(c.band)) return "band " + c.band_name + " (b1: none or causal only)";
  if (c.bshd) return "layout bshd (b1: packed bhsd only)";
  if (c.dlse) return "a dlse input (b1 has none)";
  return "";
}
std::string refusal_b3(const Case& c) {
  if (c.D != 64 && c.D != 128) return "D=" + std::to_string(c.D) + " is not 64 or 128 (the kernels are instantiated for those)";
  if (c.Sq < 1 || c.Sk < 1) return "an empty sequence";
  if (c.Hk < 1 || c.H % c.Hk != 0) return "H is not a multiple of Hk";
  if (c.B > 65535 || c.H > 65535) return "more than 65535 batch entries or heads (grid z, y)";
  return "";
}

template <class Kernel>
cudaError_t set_smem(Kernel kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

// One launch of a variant's kernels. checked (the first, verified run): every kernel is synchronised and its error
// reported with its name and the case (case_error stops the program on a sticky one); unchecked (timed runs):
// launches only, errors surface at the end of the timing.
struct Run {
  bool checked;
  std::string tag;  // "b1 D=.. Sq=.. ..."
  std::string err;
  bool ok(cudaError_t launch, const char* kernel) {
    if (!checked) return launch == cudaSuccess || (err = std::string(kernel) + ": launch failed", false);
    const std::string m = case_error(launch, (std::string(kernel) + " [" + tag + "]").c_str());
    if (m.empty()) return true;
    err = m;
    return false;
  }
};

// The kernel's resources as the runtime sees them, for a launch that failed (the first GPU run: "too many resources
// requested for launch" at 288 threads x 224 registers; kernels.cuh, b1's dK/dV kernel).
template <class Kernel>
std::string resources_of(Kernel kernel) {
  cudaFuncAttributes a{};
  if (cudaFuncGetAttributes(&a, kernel) != cudaSuccess) return " (cudaFuncGetAttributes failed)";
  return " [numRegs=" + std::to_string(a.numRegs) + " maxThreadsPerBlock=" + std::to_string(a.maxThreadsPerBlock) +
         " localSizeBytes=" + std::to_string(a.localSizeBytes) + " maxDynamicSharedSizeBytes=" +
         std::to_string(a.maxDynamicSharedSizeBytes) + " launched with " + std::to_string(kWsThreads) + " threads]";
}

// The pre-kernel of both variants: production's bwd_prep_kernel (Delta, lse2 into (B, H, Sq_pad); b1's cases are
// packed bhsd with Sq_pad = S and no dlse).
template <int D>
bool launch_prep(const Problem& p, Run& r) {
  sm90::launch_bwd_prep<bf16, D>(p.out, p.dout, p.lse, p.dlse, p.delta, p.lse2, p.B, p.H, p.Sq, p.Sq_pad, p.qs, 0);
  return r.ok(cudaGetLastError(), "bwd_prep_kernel");
}

template <int D, bool C>
bool launch_dkdv(const Problem& p, Run& r) {
  constexpr int smem = DkdvLayout<D, kBwdStages>::kBytes;
  static const cudaError_t attr = set_smem(bwd_dkdv<D, C, kBwdStages>, smem);
  if (attr != cudaSuccess) return r.ok(attr, "bwd_dkdv (cudaFuncSetAttribute)");
  bwd_dkdv<D, C, kBwdStages><<<dim3(p.S / kBwdBlockN, p.H, p.B), kWsThreads, smem>>>(
      p.tm_q_bm, p.tm_do_bm, p.tm_k128, p.tm_v128, p.lse2, p.delta, p.dk, p.dv, p.H, p.S, p.scale(), p.scale_log2());
  if (r.ok(cudaGetLastError(), "bwd_dkdv")) return true;
  r.err += resources_of(bwd_dkdv<D, C, kBwdStages>);
  return false;
}

template <int D, bool C>
bool launch_dq(const Problem& p, Run& r) {
  constexpr int smem = DqLayout<D, kBwdStages>::kBytes;
  static const cudaError_t attr = set_smem(bwd_dq<D, C, kBwdStages>, smem);
  if (attr != cudaSuccess) return r.ok(attr, "bwd_dq (cudaFuncSetAttribute)");
  bwd_dq<D, C, kBwdStages><<<dim3(p.S / kDqBlockM, p.H, p.B), kWsThreads, smem>>>(
      p.tm_q128, p.tm_do128, p.tm_k_dq, p.tm_v_dq, p.lse2, p.delta, p.dq, p.H, p.S, p.scale(), p.scale_log2());
  if (r.ok(cudaGetLastError(), "bwd_dq")) return true;
  r.err += resources_of(bwd_dq<D, C, kBwdStages>);
  return false;
}

template <int D, bool C>
bool run_b1(const Problem& p, Run& r) {
  return launch_prep<D>(p, r) && launch_dkdv<D, C>(p, r) && launch_dq<D, C>(p, r);
}
bool dispatch_b1(const Problem& p, Run& r) {
  if (p.D == 64) return p.causal ? run_b1<64, true>(p, r) : run_b1<64, false>(p, r);
  return p.causal ? run_b1<128, true>(p, r) : run_b1<128, false>(p, r);
}

// b3: production's pre-kernel, dK/dV kernel and dQ kernel (ops/cuda/device/sm90/attention_backward.cuh), one item
// per CTA; kLower: the band has a left bound (Mask<true>).
template <int D, bool kLower>
bool launch_b3(const Problem& p, Run& r) {
  using T = bf16;
  if (!launch_prep<D>(p, r)) return false;
  constexpr int smem_kv = DkdvLayout<D>::kBytes, smem_q = DqLayout<D>::kBytes;
  static const cudaError_t attr_kv = set_smem(sm90::bwd_dkdv_kernel<T, D, kLower>, smem_kv);
  if (attr_kv != cudaSuccess) return r.ok(attr_kv, "bwd_dkdv_kernel (cudaFuncSetAttribute)");
  const dim3 grid_kv((p.Sk + kBwdBlockN - 1) / kBwdBlockN, p.Hk, p.B);
  sm90::bwd_dkdv_kernel<T, D, kLower><<<grid_kv, kWsThreads, smem_kv>>>(p.b3);
  if (!r.ok(cudaGetLastError(), "bwd_dkdv_kernel")) {
    r.err += resources_of(sm90::bwd_dkdv_kernel<T, D, kLower>);
    return false;
  }
  static const cudaError_t attr_q = set_smem(sm90::bwd_dq_kernel<T, D, kLower>, smem_q);
  if (attr_q != cudaSuccess) return r.ok(attr_q, "bwd_dq_kernel (cudaFuncSetAttribute)");
  sm90::bwd_dq_kernel<T, D, kLower><<<dim3(p.Sq_pad / kDqBlockM, p.H, p.B), kWsThreads, smem_q>>>(p.b3);
  if (r.ok(cudaGetLastError(), "bwd_dq_kernel")) return true;
  r.err += resources_of(sm90::bwd_dq_kernel<T, D, kLower>);
  return false;
}
bool dispatch_b3(const Problem& p, Run& r) {
  const bool lower = p.band.left >= 0;
  if (p.D == 64) return lower ? launch_b3<64, true>(p, r) : launch_b3<64, false>(p, r);
  return lower ? launch_b3<128, true>(p, r) : launch_b3<128, false>(p, r);
}

// b4, b4s: production's persistent kernels (bwd_dkdv_persistent_kernel, bwd_dq_persistent_kernel), pairs of items on
// min(pairs, cap) CTAs, cap = the SM count (b4) or 3 (b4s: the small cases then walk many items a CTA).
template <int D, bool kLower>
bool launch_b4(const Problem& p, Run& r, int cap) {
  using T = bf16;
  if (!launch_prep<D>(p, r)) return false;
  constexpr int smem_kv = DkdvLayout<D>::kBytes, smem_q = DqLayout<D>::kBytes;
  static const cudaError_t attr_kv = set_smem(sm90::bwd_dkdv_persistent_kernel<T, D, kLower>, smem_kv);
  if (attr_kv != cudaSuccess) return r.ok(attr_kv, "bwd_dkdv_persistent_kernel (cudaFuncSetAttribute)");
  sm90::bwd_dkdv_persistent_kernel<T, D, kLower><<<std::min(sm90::dkdv_order(p.b3).pairs, cap), kWsThreads, smem_kv>>>(
      p.b3);
  if (!r.ok(cudaGetLastError(), "bwd_dkdv_persistent_kernel")) {
    r.err += resources_of(sm90::bwd_dkdv_persistent_kernel<T, D, kLower>);
    return false;
  }
  static const cudaError_t attr_q = set_smem(sm90::bwd_dq_persistent_kernel<T, D, kLower>, smem_q);
  if (attr_q != cudaSuccess) return r.ok(attr_q, "bwd_dq_persistent_kernel (cudaFuncSetAttribute)");
  sm90::bwd_dq_persistent_kernel<T, D, kLower><<<std::min(sm90::dq_order(p.b3).pairs, cap), kWsThreads, smem_q>>>(p.b3);
  if (r.ok(cudaGetLastError(), "bwd_dq_persistent_kernel")) return true;
  r.err += resources_of(sm90::bwd_dq_persistent_kernel<T, D, kLower>);
  return false;
}
int sm_count() {
  static const int n = [] {
    int dev = 0, sms = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    return sms > 0 ? sms : 1;
  }();
  return n;
}
template <int kCap>  // 0: the SM count
bool dispatch_b4(const Problem& p, Run& r) {
  const int cap = kCap > 0 ? kCap : sm_count();
  const bool lower = p.band.left >= 0;
  if (p.D == 64) return lower ? launch_b4<64, true>(p, r, cap) : launch_b4<64, false>(p, r, cap);
  return lower ? launch_b4<128, true>(p, r, cap) : launch_b4<128, false>(p, r, cap);
}

struct Variant {
  const char* name;
  const char* what;
  bool (*launch)(const Problem&, Run&);
  std::string (*refusal)(const Case&);
};
const Variant kVariants[] = {
    {"b1", "dK/dV kernel (TMA ring, 2 consumer WGs x 64 keys, wgmma ss+rs) + separate deterministic dQ kernel",
     dispatch_b1, refusal_b1},
    {"b3", "production's backward (ops/cuda/device/sm90/attention_backward.cuh), one item per CTA", dispatch_b3,
     refusal_b3},
    {"b4", "production's persistent backward, pairs of items on one CTA per SM", dispatch_b4<0>, refusal_b3},
    {"b4s", "production's persistent backward on 3 CTAs (each walks many items: correctness on small cases)",
     dispatch_b4<3>, refusal_b3},
};

// Tolerances, per element of dq, dk, dv (the reference computes each bound beside its gradient, kernels.cuh):
//   |got - want| <= 1e-5 + 1e-2 mag, with mag_dq = scale sum_j P_ij (|dP_ij| + |Delta_i|) |k_jd| (dk likewise
//   with q), mag_dv = sum_i P_ij |dout_id|. mag bounds both |want| and the sum of |terms| whose bf16 rounding a
//   correct kernel performs: P (for dV) or dS (for dK, dQ) rounded to bf16 before the GEMM moves the sum by at
//   most 2^-8 mag, and the final rounding of the gradient to bf16 by at most 2^-8 |want| <= 2^-8 mag: 2^-7 =
//   7.8e-3 mag in the worst case. The remaining 2.2e-3 mag covers what differs in fp32 (ex2.approx vs expf,
//   summation order of S, dP, Delta: dP - Delta carries an absolute error ~ D 2^-24 sum_d |dout_d v_d|, under
//   2.2e-3 P (|dP| + |Delta|) unless |dP| + |Delta| < ~0.3 for most keys, never for N(0,1) data where |dP| ~ sqrt(D)).
//   That bound is safe but loose at long S (mag ~ S^0.5 |want| for sums of S terms of random sign: an all-zero
//   output could pass it at S = 8192), so each tensor must also have a relative L2 error
//   ||got - want|| / ||want|| <= 1e-2: a correct kernel's two roundings are random-signed, ~2-3e-3 in L2; a
//   zero, permuted or mis-scaled tensor is at ~1 or more. (A gradient that is zero everywhere, e.g. dk of keys
//   no query sees, has mag 0 there: the element bound is then 1e-5, so it must be written as zero.)
constexpr double kAtol = 1e-5, kMagRtol = 1e-2, kRelL2 = 1e-2;

struct Check {
  double max_err = 0, max_ref = 0, sq_err = 0, sq_ref = 0;
  size_t bad = 0, nonfinite = 0;
  long long first_bad = -1;
  float got = 0, want = 0, mag = 0;
  double rel_l2() const { return sq_ref > 0 ? std::sqrt(sq_err / sq_ref) : std::sqrt(sq_err); }
  bool pass() const { return bad == 0 && nonfinite == 0 && rel_l2() <= kRelL2; }
};

// got: the kernel's (B, heads, S, D) tensor in its layout (strides st); want, mag: the reference's, packed.
Check compare(const std::vector<uint16_t>& got, const std::vector<float>& want, const std::vector<float>& mag,
              int heads, int S, int D, const HeadStrides& st) {
  Check c;
  for (size_t e = 0; e < want.size(); ++e) {
    const int64_t d = e % D, s = (e / D) % S, h = (e / D / S) % heads, b = e / D / S / heads;
    const float g = bf16_to_float(got[b * st.batch + h * st.head + s * st.seq + d]), w = want[e];
    c.max_ref = std::max(c.max_ref, static_cast<double>(std::fabs(w)));
    c.sq_ref += static_cast<double>(w) * w;
    const double err = std::fabs(static_cast<double>(g) - w);
    const bool finite = std::isfinite(g);
    if (!finite) ++c.nonfinite;
    if (finite) c.max_err = std::max(c.max_err, err), c.sq_err += err * err;
    if (!finite || err > kAtol + kMagRtol * mag[e]) {
      if (c.bad++ == 0) c.first_bad = static_cast<long long>(e), c.got = g, c.want = w, c.mag = mag[e];
    }
  }
  return c;
}

std::string where(const char* tensor, long long flat, int heads, int S, int D) {  // flat: packed (B, heads, S, D)
  char buf[96];
  const long long d = flat % D, r = flat / D;
  std::snprintf(buf, sizeof buf, "%s(b=%lld,h=%lld,s=%lld,d=%lld)", tensor, r / S / heads, (r / S) % heads, r % S, d);
  return buf;
}

std::vector<uint16_t> to_host(const bf16* x, size_t n) {
  std::vector<uint16_t> h(n);
  LAB_CHECK(cudaMemcpy(h.data(), x, n * 2, cudaMemcpyDeviceToHost));
  return h;
}
std::vector<float> to_host(const float* x, size_t n) {
  std::vector<float> h(n);
  if (n) LAB_CHECK(cudaMemcpy(h.data(), x, n * 4, cudaMemcpyDeviceToHost));
  return h;
}

// Host fp64 spot check of the GPU reference backward: dq of query rows {0, Sq/2, Sq-1} of the last (b, h), dk and
// dv of key rows {0, Sk/2, Sk-1} of the last (b, hk) (summed over its G query heads), from the same bf16 inputs,
// lse and dlse, with the band. Returns the worst |err| / (1e-4 + mag).
double spot_check_reference(const Problem& p, const std::vector<float>& ref_dq, const std::vector<float>& ref_dk,
                            const std::vector<float>& ref_dv, const std::vector<float>& mag_dq,
                            const std::vector<float>& mag_dk, const std::vector<float>& mag_dv) {
  const int D = p.D, Sq = p.Sq, Sk = p.Sk, G = p.H / p.Hk, b = p.B - 1, hk = p.Hk - 1;
  const size_t nq = p.n(), nk = static_cast<size_t>(p.B) * p.Hk * Sk * D;
  const auto q = to_host(p.q, nq), o = to_host(p.out, nq), dout = to_host(p.dout, nq);
  const auto k = to_host(p.k, nk), v = to_host(p.v, nk);
  const auto lse = to_host(p.lse, p.rows());
  const std::vector<float> dlse = p.dlse ? to_host(p.dlse, p.rows()) : std::vector<float>(p.rows(), 0.f);
  auto fq = [&](const std::vector<uint16_t>& x, int h, int i, int d) {
    return double(bf16_to_float(x[b * p.qs.batch + h * p.qs.head + int64_t(i) * p.qs.seq + d]));
  };
  auto fk = [&](const std::vector<uint16_t>& x, int j, int d) {
    return double(bf16_to_float(x[b * p.ks.batch + hk * p.ks.head + int64_t(j) * p.ks.seq + d]));
  };
  auto lrow = [&](int h, int i) { return (size_t(b) * p.H + h) * Sq + i; };
  auto delta = [&](int h, int i) {
    double s = 0;
    for (int d = 0; d < D; ++d) s += fq(dout, h, i, d) * fq(o, h, i, d);
    return s - dlse[lrow(h, i)];
  };
  const double scale = 1.0 / std::sqrt(double(D));
  auto pds = [&](int h, int i, int j, double dlt, double& pp, double& ds) {  // P_ij and dS_ij of head h (kv head hk)
    double s = 0, dp = 0;
    for (int d = 0; d < D; ++d) s += fq(q, h, i, d) * fk(k, j, d), dp += fq(dout, h, i, d) * fk(v, j, d);
    pp = std::exp(scale * s - lse[lrow(h, i)]);
    ds = pp * (dp - dlt);
  };
  double worst = 0;
  auto upd = [&](double got64, float ref32, float mag) { worst = std::max(worst, std::fabs(got64 - ref32) / (1e-4 + mag)); };
  const int h_last = p.H - 1;  // in kv head hk = Hk - 1
  for (const int x : {0, Sq / 2, Sq - 1}) {  // query rows of (b, H - 1)
    std::vector<double> dq(D, 0.0);
    const double dlt = delta(h_last, x);
    if (lse[lrow(h_last, x)] != -INFINITY)
      for (int j = int(p.band.key_lo(x, Sq, Sk)); j < int(p.band.key_hi(x, Sq, Sk)); ++j) {
        double pp, ds;
        pds(h_last, x, j, dlt, pp, ds);
        for (int d = 0; d < D; ++d) dq[d] += ds * fk(k, j, d);
      }
    const size_t r = lrow(h_last, x) * D;
    for (int d = 0; d < D; ++d) upd(scale * dq[d], ref_dq[r + d], mag_dq[r + d]);
  }
  for (const int x : {0, Sk / 2, Sk - 1}) {  // key rows of (b, Hk - 1)
    std::vector<double> dk(D, 0.0), dv(D, 0.0);
    for (int g = 0; g < G; ++g) {
      const int h = hk * G + g;
      for (int i = int(p.band.query_lo(x, Sq, Sk)); i < int(p.band.query_hi(x + 1, Sq, Sk)); ++i) {
        if (lse[lrow(h, i)] == -INFINITY) continue;
        double pp, ds;
        pds(h, i, x, delta(h, i), pp, ds);
        for (int d = 0; d < D; ++d) dk[d] += ds * fq(q, h, i, d), dv[d] += pp * fq(dout, h, i, d);
      }
    }
    const size_t r = ((size_t(b) * p.Hk + hk) * Sk + x) * D;
    for (int d = 0; d < D; ++d) {
      upd(scale * dk[d], ref_dk[r + d], mag_dk[r + d]);
      upd(dv[d], ref_dv[r + d], mag_dv[r + d]);
    }
  }
  return worst;
}

// The visible (query, key) pairs of one (b, h): the FLOP count's S^2 (FlashAttention's convention: S^2 / 2 for
// causal with Sq == Sk, S^2 without a band; the exact count otherwise).
double visible_pairs(const Case& c) {
  if (is_none(c.band)) return double(c.Sq) * c.Sk;
  if (is_causal(c.band) && c.Sq == c.Sk) return double(c.Sq) * c.Sq / 2;
  double n = 0;
  for (int i = 0; i < c.Sq; ++i)
    n += double(std::max<int64_t>(0, c.band.key_hi(i, c.Sq, c.Sk) - c.band.key_lo(i, c.Sq, c.Sk)));
  return n;
}

// --band none | causal | causal_br | window:L,R | window_br:L,R (L, R: keys left / right of the diagonal, -1
// unbounded; _br: bottom-right alignment, the diagonal at j = i + Sk - Sq).
bool parse_band(const std::string& s, AttentionBand* b) {
  *b = AttentionBand{};
  if (s == "none") return true;
  if (s == "causal" || s == "causal_br") {
    b->right = 0;
    b->bottom_right = s == "causal_br";
    return true;
  }
  for (const char* pre : {"window:", "window_br:"}) {
    const std::string ps = pre;
    if (s.compare(0, ps.size(), ps) != 0) continue;
    long l = 0, r = 0;
    char tail = 0;
    if (std::sscanf(s.c_str() + ps.size(), "%ld,%ld%c", &l, &r, &tail) != 2 || l < -1 || r < -1) return false;
    b->left = l, b->right = r, b->bottom_right = ps == "window_br:";
    return true;
  }
  return false;
}

Case make_case(int D, int B, int H, int Hk, int Sq, int Sk, const std::string& band, bool bshd, bool dlse) {
  Case c{D, B, H, Hk, Sq, Sk, {}, band, bshd, dlse};
  if (!parse_band(band, &c.band)) {
    std::printf("%s: FATAL: bad band '%s'\n", LAB_NAME, band.c_str());
    std::exit(2);
  }
  return c;
}

// b3's awkward cases (beside the benchmark grid): tails, Sq != Sk, both causal alignments (Sq > Sk bottom-right:
// rows that see no key), windows (kLower), GQA / MQA, bshd, dlse, Sq = 1.
std::vector<Case> awkward_cases(bool quick) {
  std::vector<Case> v;
  v.push_back(make_case(64, 3, 8, 8, 127, 300, "causal_br", false, false));
  v.push_back(make_case(128, 2, 4, 1, 300, 127, "causal_br", false, true));  // MQA; rows 0..172 see nothing
  v.push_back(make_case(128, 4, 4, 4, 1, 513, "none", false, false));
  if (quick) return v;
  v.push_back(make_case(128, 2, 16, 16, 1000, 1000, "causal", false, false));
  v.push_back(make_case(64, 2, 16, 16, 1000, 1000, "causal", false, false));
  v.push_back(make_case(128, 2, 16, 4, 2048, 2048, "causal", false, false));  // GQA G = 4
  v.push_back(make_case(64, 2, 8, 8, 1500, 1500, "window:256,0", false, false));
  v.push_back(make_case(128, 2, 8, 2, 777, 1025, "none", true, true));  // bshd, GQA, dlse
  v.push_back(make_case(64, 2, 8, 8, 1000, 1000, "window:64,64", true, false));
  v.push_back(make_case(128, 2, 8, 2, 1536, 2048, "window_br:512,0", true, false));
  v.push_back(make_case(128, 2, 8, 8, 640, 1000, "causal", false, false));  // top-left, Sq < Sk: keys no one sees
  v.push_back(make_case(64, 1, 2, 1, 1, 1, "causal", false, false));
  return v;
}

#ifdef LAB_B3_F16
// Compile check only (nvcc -DLAB_B3_F16 ... -Xptxas -v): b3's (production's) f16 kernels, never launched here (the
// references and inputs are bf16).
void* const kB3F16Kernels[] = {
    reinterpret_cast<void*>(sm90::bwd_prep_kernel<__half, 64>),          reinterpret_cast<void*>(sm90::bwd_prep_kernel<__half, 128>),
    reinterpret_cast<void*>(sm90::bwd_dkdv_kernel<__half, 64, false>),  reinterpret_cast<void*>(sm90::bwd_dkdv_kernel<__half, 64, true>),
    reinterpret_cast<void*>(sm90::bwd_dkdv_kernel<__half, 128, false>), reinterpret_cast<void*>(sm90::bwd_dkdv_kernel<__half, 128, true>),
    reinterpret_cast<void*>(sm90::bwd_dq_kernel<__half, 64, false>),    reinterpret_cast<void*>(sm90::bwd_dq_kernel<__half, 64, true>),
    reinterpret_cast<void*>(sm90::bwd_dq_kernel<__half, 128, false>),   reinterpret_cast<void*>(sm90::bwd_dq_kernel<__half, 128, true>),
};
#endif

}  // namespace

int main(int argc, char** argv) {
#ifdef LAB_B3_F16
  (void)kB3F16Kernels;
#endif
  std::vector<lab_host::VariantName> names;
  for (const auto& v : kVariants) names.push_back({v.name, v.what});
  // b3's options, taken out before the shared parser sees the rest: --sq --sk --h --hk --b --band --layout --dlse
  // (any of them: one case per --d instead of the default list).
  int o_sq = -1, o_sk = -1, o_h = -1, o_hk = -1, o_b = -1, o_dlse = 0;
  std::string o_band, o_layout = "bhsd";
  bool custom = false, s_given = false;
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    auto num = [&](int* dst) {
      char* end = nullptr;
      *dst = static_cast<int>(std::strtol(argv[++i], &end, 10));
      if (*end != '\0') {
        std::printf("%s: not an integer after %s: %s\n", LAB_NAME, a.c_str(), argv[i]);
        std::exit(2);
      }
      custom = true;
    };
    if (has_value && a == "--sq") num(&o_sq);
    else if (has_value && a == "--sk") num(&o_sk);
    else if (has_value && a == "--h") num(&o_h);
    else if (has_value && a == "--hk") num(&o_hk);
    else if (has_value && a == "--b") num(&o_b);
    else if (has_value && a == "--dlse") num(&o_dlse);
    else if (has_value && a == "--band") o_band = argv[++i], custom = true;
    else if (has_value && a == "--layout") {
      o_layout = argv[++i], custom = true;
      if (o_layout != "bhsd" && o_layout != "bshd") {
        std::printf("%s: --layout bhsd|bshd, not %s\n", LAB_NAME, o_layout.c_str());
        std::exit(2);
      }
    } else {
      if (a == "--s") s_given = true;
      if (a == "--help" || a == "-h")
        std::printf("%s: b3's options: [--sq N] [--sk N] [--h N] [--hk N] [--b N] [--band none|causal|causal_br|"
                    "window:L,R|window_br:L,R] [--layout bhsd|bshd] [--dlse 0|1] (any of them: one case per D)\n",
                    LAB_NAME);
      rest.push_back(argv[i]);
    }
  }
  lab_host::Options opt = lab_host::parse(static_cast<int>(rest.size()), rest.data(), "xfrun_lab_attention_wgmma_bwd",
                                          "one small grid case per variant (S=512, D=128, causal=1; --d / --causal "
                                          "override) and 3 of b3's awkward cases",
                                          names);
  if (opt.quick) {
    if (!opt.d_given) opt.dims = {128};
    if (!opt.causal_given) opt.causal = {1};
  }
  std::vector<Case> cases;
  if (custom) {
    for (const int D : opt.dims) {
      const int sq = o_sq > 0 ? o_sq : (s_given ? opt.seqs[0] : 1000);
      const std::string band = !o_band.empty() ? o_band : (opt.causal[0] ? "causal" : "none");
      const int h = o_h > 0 ? o_h : 16;
      cases.push_back(make_case(D, o_b > 0 ? o_b : 2, h, o_hk > 0 ? o_hk : h, sq, o_sk > 0 ? o_sk : sq, band,
                                o_layout == "bshd", o_dlse != 0));
    }
  } else {
    for (const int D : opt.dims)
      for (const int causal : opt.causal)
        for (const int S : opt.seqs) {
          const int B = std::max(1, 16384 / std::max(S, 1)), H = 2048 / std::max(D, 1);
          cases.push_back(make_case(D, B, H, H, S, S, causal ? "causal" : "none", false, false));
        }
    if (!s_given && !opt.causal_given)
      for (const Case& c : awkward_cases(opt.quick))
        if (!opt.d_given || std::find(opt.dims.begin(), opt.dims.end(), c.D) != opt.dims.end()) cases.push_back(c);
  }

  if (const int st = lab_host::open_sm90_device()) return st;
  std::printf("%s: inputs q,k,v,dout N(0,1) bf16 (dlse U(-1,1)), out/lse from an fp32 reference forward; tol per "
              "element |err| <= %g + %g mag (mag: the reference's sum of |terms|) and relative L2 <= %g per tensor; "
              "time = median of %d runs after 3 warm-ups (pre-kernel + kernels); FLOPs "
              "2.5*4*B*H*pairs*D (pairs: S^2, S^2/2 causal with Sq == Sk, else the exact count of visible pairs); a "
              "variant refuses (SKIP) the cases outside its reach\n",
              LAB_NAME, kAtol, kMagRtol, kRelL2, opt.reps);
  for (const auto& v : kVariants) std::printf("%s: variant %s = %s\n", LAB_NAME, v.name, v.what);
  std::fflush(stdout);

  int failures = 0, ran = 0;
  std::vector<std::string> summary;
  for (const Case& c : cases) {
    const int D = c.D, B = c.B, H = c.H, Hk = c.Hk, Sq = c.Sq, Sk = c.Sk;
    char tag[160];
    std::snprintf(tag, sizeof tag, "D=%d Sq=%d Sk=%d band=%s B=%d H=%d Hk=%d layout=%s dlse=%d", D, Sq, Sk,
                  c.band_name.c_str(), B, H, Hk, c.bshd ? "bshd" : "bhsd", c.dlse ? 1 : 0);
    std::vector<const Variant*> todo;
    for (const auto& v : kVariants) {
      if (!opt.variants.empty() && std::find(opt.variants.begin(), opt.variants.end(), v.name) == opt.variants.end())
        continue;
      const std::string why = v.refusal(c);
      if (!why.empty()) {
        std::printf("%s %s %s: SKIP (refused: %s)\n", LAB_NAME, v.name, tag, why.c_str());
        continue;
      }
      todo.push_back(&v);
    }
    if (todo.empty()) continue;
    if (refusal_b3(c) != "") continue;  // the references need what b3 needs (D 64 / 128, H % Hk == 0)
    const int G = H / Hk, Sq_pad = (Sq + 127) / 128 * 128;
    const size_t qrows = static_cast<size_t>(B) * H * Sq, nq = qrows * D;
    const size_t krows = static_cast<size_t>(B) * Hk * Sk, nk = krows * D;
    const size_t wrows = static_cast<size_t>(B) * H * Sq_pad;
    DeviceBuffer<bf16> q(nq), k(nk), v(nk), out(nq), dout(nq), dq(nq), dk(nk), dv(nk);
    DeviceBuffer<float> lse(qrows), dlse(c.dlse ? qrows : 0), ref_delta(qrows), delta(wrows), lse2(wrows);
    DeviceBuffer<float> ref_dq(nq), mag_dq(nq), ref_out(nq), ref_dk(nk), ref_dv(nk), mag_dk(nk), mag_dv(nk);
    const uint64_t seed = 0xb3d0000ull + static_cast<uint64_t>(D) * 1000003ull + Sq * 7ull + Sk * 131ull +
                          (c.band.right + 2) * 17ull + (c.band.left + 2) * 1009ull + H * 3ull + Hk;
    fill_randn<<<1024, 256>>>(q.get(), nq, seed * 5 + 0, 1.f);
    fill_randn<<<1024, 256>>>(k.get(), nk, seed * 5 + 1, 1.f);
    fill_randn<<<1024, 256>>>(v.get(), nk, seed * 5 + 2, 1.f);
    fill_randn<<<1024, 256>>>(dout.get(), nq, seed * 5 + 3, 1.f);
    if (c.dlse) fill_uniform_f32<<<256, 256>>>(dlse.get(), qrows, seed * 5 + 4);
    LAB_CHECK(cudaGetLastError());
    const float scale = 1.f / std::sqrt(static_cast<float>(D));
    RefShape sh;
    sh.B = B, sh.H = H, sh.Hk = Hk, sh.G = G, sh.Sq = Sq, sh.Sk = Sk;
    sh.qs = strides_of(c.bshd, H, Sq, D), sh.ks = strides_of(c.bshd, Hk, Sk, D);
    sh.band = c.band, sh.scale = scale;

    // reference forward (fp32 ref_out -> bf16 out in the case's layout), then the reference backward; outputs
    // poisoned first, so a kernel that writes nothing is caught
    LAB_CHECK(cudaMemset(lse.get(), 0xFF, lse.bytes()));
    LAB_CHECK(cudaMemset(ref_dq.get(), 0xFF, ref_dq.bytes()));
    LAB_CHECK(cudaMemset(ref_dk.get(), 0xFF, ref_dk.bytes()));
    LAB_CHECK(cudaMemset(ref_dv.get(), 0xFF, ref_dv.bytes()));
    LAB_CHECK(cudaMemset(mag_dq.get(), 0, mag_dq.bytes()));  // unwritten -> the tolerance collapses to atol
    LAB_CHECK(cudaMemset(mag_dk.get(), 0, mag_dk.bytes()));
    LAB_CHECK(cudaMemset(mag_dv.get(), 0, mag_dv.bytes()));
    const unsigned qblocks = static_cast<unsigned>((qrows + 7) / 8), kblocks = static_cast<unsigned>((krows + 7) / 8);
    const float* dlse_ptr = c.dlse ? dlse.get() : nullptr;
    if (D == 64) reference3_fwd<64><<<qblocks, 256>>>(q.get(), k.get(), v.get(), ref_out.get(), lse.get(), sh);
    else reference3_fwd<128><<<qblocks, 256>>>(q.get(), k.get(), v.get(), ref_out.get(), lse.get(), sh);
    to_bf16_strided<<<1024, 256>>>(ref_out.get(), out.get(), H, Sq, D, sh.qs, nq);
    std::string ref_err = case_error(cudaGetLastError(), "reference forward");
    if (ref_err.empty()) {
      if (D == 64) {
        reference3_dq<64><<<qblocks, 256>>>(q.get(), k.get(), v.get(), out.get(), dout.get(), lse.get(), dlse_ptr,
                                            ref_dq.get(), mag_dq.get(), ref_delta.get(), sh);
        reference3_dkdv<64><<<kblocks, 256>>>(q.get(), k.get(), v.get(), dout.get(), lse.get(), ref_delta.get(),
                                              ref_dk.get(), ref_dv.get(), mag_dk.get(), mag_dv.get(), sh);
      } else {
        reference3_dq<128><<<qblocks, 256>>>(q.get(), k.get(), v.get(), out.get(), dout.get(), lse.get(), dlse_ptr,
                                             ref_dq.get(), mag_dq.get(), ref_delta.get(), sh);
        reference3_dkdv<128><<<kblocks, 256>>>(q.get(), k.get(), v.get(), dout.get(), lse.get(), ref_delta.get(),
                                               ref_dk.get(), ref_dv.get(), mag_dk.get(), mag_dv.get(), sh);
      }
      ref_err = case_error(cudaGetLastError(), "reference backward");
    }
    if (!ref_err.empty()) {
      std::printf("%s reference %s: FAIL (%s); skipping the variants of this case\n", LAB_NAME, tag, ref_err.c_str());
      ++failures;
      continue;
    }
    const std::vector<float> h_ref_dq = to_host(ref_dq.get(), nq), h_ref_dk = to_host(ref_dk.get(), nk),
                             h_ref_dv = to_host(ref_dv.get(), nk), h_mag_dq = to_host(mag_dq.get(), nq),
                             h_mag_dk = to_host(mag_dk.get(), nk), h_mag_dv = to_host(mag_dv.get(), nk);

    Problem p{};
    p.B = B, p.H = H, p.Hk = Hk, p.Sq = Sq, p.Sk = Sk, p.D = D, p.Sq_pad = Sq_pad;
    p.band = c.band, p.bshd = c.bshd, p.has_dlse = c.dlse, p.qs = sh.qs, p.ks = sh.ks;
    p.q = q.get(), p.k = k.get(), p.v = v.get(), p.out = out.get(), p.dout = dout.get(), p.lse = lse.get();
    p.dlse = dlse_ptr, p.dq = dq.get(), p.dk = dk.get(), p.dv = dv.get(), p.delta = delta.get(), p.lse2 = lse2.get();
    p.S = Sq, p.causal = is_causal(c.band);
    if (refusal_b1(c).empty()) {  // b1's 2-D maps over the packed rows
      const int bm = D == 64 ? bwd_block_m<64>() : bwd_block_m<128>();
      p.tm_q_bm = make_tensor_map(p.q, qrows, D, bm);
      p.tm_do_bm = make_tensor_map(p.dout, qrows, D, bm);
      p.tm_q128 = make_tensor_map(p.q, qrows, D, 128);
      p.tm_do128 = make_tensor_map(p.dout, qrows, D, 128);
      p.tm_k128 = make_tensor_map(p.k, qrows, D, 128);
      p.tm_v128 = make_tensor_map(p.v, qrows, D, 128);
      const int dqn = D == 64 ? dq_block_n<64>() : dq_block_n<128>();
      p.tm_k_dq = make_tensor_map(p.k, qrows, D, dqn);
      p.tm_v_dq = make_tensor_map(p.v, qrows, D, dqn);
    }
    {  // b3's 4-D maps (D, S, heads, B) over the strided tensors
      BwdArgs& a = p.b3;
      const int bm = D == 64 ? bwd_block_m<64>() : bwd_block_m<128>();
      const int dqn = D == 64 ? dq_block_n<64>() : dq_block_n<128>();
      const HeadStrides& qs = p.qs;
      const HeadStrides& ks = p.ks;
      a.tm_q_bm = make_tensor_map_4d(p.q, D, Sq, H, B, qs.batch, qs.head, qs.seq, bm);
      a.tm_do_bm = make_tensor_map_4d(p.dout, D, Sq, H, B, qs.batch, qs.head, qs.seq, bm);
      a.tm_k = make_tensor_map_4d(p.k, D, Sk, Hk, B, ks.batch, ks.head, ks.seq, kBwdBlockN);
      a.tm_v = make_tensor_map_4d(p.v, D, Sk, Hk, B, ks.batch, ks.head, ks.seq, kBwdBlockN);
      a.tm_q128 = make_tensor_map_4d(p.q, D, Sq, H, B, qs.batch, qs.head, qs.seq, kDqBlockM);
      a.tm_do128 = make_tensor_map_4d(p.dout, D, Sq, H, B, qs.batch, qs.head, qs.seq, kDqBlockM);
      a.tm_k_dq = make_tensor_map_4d(p.k, D, Sk, Hk, B, ks.batch, ks.head, ks.seq, dqn);
      a.tm_v_dq = make_tensor_map_4d(p.v, D, Sk, Hk, B, ks.batch, ks.head, ks.seq, dqn);
      a.lse2 = p.lse2, a.delta = p.delta, a.dq = p.dq, a.dk = p.dk, a.dv = p.dv;
      a.qs = qs, a.ks = ks, a.H = H, a.G = G, a.Sq = Sq, a.Sk = Sk, a.Sq_pad = Sq_pad, a.B = B, a.Hk = Hk;
      a.band = c.band, a.scale = p.scale(), a.scale_log2 = p.scale_log2();
    }

    // fp32 vs fp64 on the same inputs: ~1e-6 mag expected; 1e-3 catches a wrong formula, not summation noise
    const double spot = spot_check_reference(p, h_ref_dq, h_ref_dk, h_ref_dv, h_mag_dq, h_mag_dk, h_mag_dv);
    const bool spot_ok = spot <= 1e-3;
    std::printf("%s reference %s: fp64 host spot check (dq of 3 query rows, dk/dv of 3 key rows) max |err|/(1e-4+mag)=%.2e %s\n",
                LAB_NAME, tag, spot, spot_ok ? "PASS" : "FAIL");
    if (!spot_ok) ++failures;
    std::fflush(stdout);

    const double flops = 2.5 * 4.0 * B * H * visible_pairs(c) * D;
    std::vector<uint16_t> h_dq(nq), h_dk(nk), h_dv(nk);
    for (const Variant* var_p : todo) {
      const Variant& var = *var_p;
      ++ran;
      LAB_CHECK(cudaMemset(dq.get(), 0xFF, dq.bytes()));  // 0xFFFF bf16: NaN
      LAB_CHECK(cudaMemset(dk.get(), 0xFF, dk.bytes()));
      LAB_CHECK(cudaMemset(dv.get(), 0xFF, dv.bytes()));
      LAB_CHECK(cudaMemset(delta.get(), 0xFF, delta.bytes()));
      LAB_CHECK(cudaMemset(lse2.get(), 0xFF, lse2.bytes()));
      Run run{true, std::string(var.name) + " " + tag, ""};
      if (!var.launch(p, run)) {
        std::printf("%s %s %s: FAIL (%s)\n", LAB_NAME, var.name, tag, run.err.c_str());
        std::fflush(stdout);
        ++failures;
        summary.push_back(std::string(var.name) + " " + tag + ": FAIL (kernel error)");
        continue;
      }
      LAB_CHECK(cudaMemcpy(h_dq.data(), dq.get(), dq.bytes(), cudaMemcpyDeviceToHost));
      LAB_CHECK(cudaMemcpy(h_dk.data(), dk.get(), dk.bytes(), cudaMemcpyDeviceToHost));
      LAB_CHECK(cudaMemcpy(h_dv.data(), dv.get(), dv.bytes(), cudaMemcpyDeviceToHost));
      const Check cq = compare(h_dq, h_ref_dq, h_mag_dq, H, Sq, D, p.qs),
                  ck = compare(h_dk, h_ref_dk, h_mag_dk, Hk, Sk, D, p.ks),
                  cv = compare(h_dv, h_ref_dv, h_mag_dv, Hk, Sk, D, p.ks);

      // timing: 3 warm-ups, then reps launches back to back with an event between each
      Run timed{false, run.tag, ""};
      for (int i = 0; i < 3; ++i) var.launch(p, timed);
      std::vector<Event> ev(opt.reps + 1);
      LAB_CHECK(cudaEventRecord(ev[0].get()));
      for (int i = 0; i < opt.reps; ++i) {
        var.launch(p, timed);
        LAB_CHECK(cudaEventRecord(ev[i + 1].get()));
      }
      std::string terr = case_error(cudaSuccess, ("timed runs [" + run.tag + "]").c_str());
      if (terr.empty() && !timed.err.empty()) terr = timed.err;
      double ms = NAN;
      if (terr.empty()) {
        std::vector<float> t(opt.reps);
        for (int i = 0; i < opt.reps; ++i) LAB_CHECK(cudaEventElapsedTime(&t[i], ev[i].get(), ev[i + 1].get()));
        std::sort(t.begin(), t.end());
        ms = t[t.size() / 2];
      }
      const bool pass = cq.pass() && ck.pass() && cv.pass() && terr.empty();
      if (!pass) ++failures;
      std::printf("%s %s %s: max_err_dq=%.3e max_err_dk=%.3e max_err_dv=%.3e %s time_ms=%.4f TFLOP/s=%.1f "
                  "(rel_l2 dq=%.2e dk=%.2e dv=%.2e; max|ref| dq=%.3f dk=%.3f dv=%.3f; bad dq=%zu dk=%zu dv=%zu; "
                  "nonfinite dq=%zu dk=%zu dv=%zu)\n",
                  LAB_NAME, var.name, tag, cq.max_err, ck.max_err, cv.max_err, pass ? "PASS" : "FAIL", ms,
                  flops / (ms * 1e-3) / 1e12, cq.rel_l2(), ck.rel_l2(), cv.rel_l2(), cq.max_ref, ck.max_ref,
                  cv.max_ref, cq.bad, ck.bad, cv.bad, cq.nonfinite, ck.nonfinite, cv.nonfinite);
      const struct {
        const char* name;
        const Check* c;
        int heads, S;
      } checks[] = {{"dq", &cq, H, Sq}, {"dk", &ck, Hk, Sk}, {"dv", &cv, Hk, Sk}};
      for (const auto& x : checks)
        if (x.c->first_bad != -1)
          std::printf("%s %s %s:   first mismatch %s got=%g want=%g mag=%g\n", LAB_NAME, var.name, tag,
                      where(x.name, x.c->first_bad, x.heads, x.S, D).c_str(), x.c->got, x.c->want, x.c->mag);
      if (!terr.empty()) std::printf("%s %s %s:   timing failed: %s\n", LAB_NAME, var.name, tag, terr.c_str());
      std::fflush(stdout);
      char brief[256];
      std::snprintf(brief, sizeof brief, "%s %s: %s %.1f TFLOP/s", var.name, tag, pass ? "PASS" : "FAIL",
                    flops / (ms * 1e-3) / 1e12);
      summary.push_back(brief);
    }
  }
  if (ran == 0) {
    std::printf("%s: FAIL: no variant ran on any case (every one refused)\n", LAB_NAME);
    ++failures;
  }
  std::sort(summary.begin(), summary.end());  // grouped by variant
  for (const auto& s : summary) std::printf("%s summary %s\n", LAB_NAME, s.c_str());
  std::printf("%s: %s (%d failing case%s)\n", LAB_NAME, failures ? "FAIL" : "all PASS", failures,
              failures == 1 ? "" : "s");
  return failures ? 1 : 0;
}
