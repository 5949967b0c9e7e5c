// Kernel lab: a FlashAttention BACKWARD for Hopper (sm_90a) built on wgmma and TMA, in numbered variants timed side
// by side on the FlashAttention benchmark grid, each checked against a simple fp32 reference. The forward twin is
// tools/lab/attention_wgmma.cu (whose device header and host helpers this lab reuses).
//
//   given q, k, v, out, dout (B, H, S, D) bf16 packed and lse (B, H, S) f32 (natural log) of out = softmax(q k^T
//   scale) v, scale = 1/sqrt(D): dq, dk, dv (B, H, S, D) bf16; fp32 accumulation; non-causal or causal (top-left).
//   out and lse come from an fp32 reference forward (out rounded to bf16) on N(0,1) inputs made on the device.
//
// Lab limits (refused by name, see unsupported_reason): S a multiple of 128 (no tail tiles), D = 64 or 128.
//
// Variants (attention_wgmma_bwd/kernels.cuh has a comment block per kernel: tiles, the limit each size hits,
// barriers and the pipeline). All start with a pre-kernel Delta_i = dout_i . out_i, lse2_i = lse_i log2(e).
//   b1  dK/dV kernel: CTA = 128 keys (2 consumer warpgroups x 64), a TMA producer warp streams Q, dO, lse2, Delta
//       of each query tile (64 rows at D = 128, 128 at D = 64) through a 2-stage mbarrier ring; per tile
//       S^T = K Q^T, dP^T = V dO^T (wgmma_ss), P^T and dS^T in registers, dV += P^T dO, dK += dS^T Q (wgmma_rs).
//       Then a separate deterministic dQ kernel: CTA = 128 queries, K/V tiles through the ring, S = Q K^T,
//       dP = dO V^T, dQ += dS K. Recomputes S and dP once more (the price of no atomics): 7 GEMMs of S x S x D
//       per (b, h) instead of 5.
//   b2  dQ by fp32 atomics from the dK/dV kernel: each tile's dS^T goes to shared memory as bf16 and one more
//       wgmma (both operands MN-major: wgmma_ss_mn) gives a 64 x 64 piece of dQ per warpgroup, added with
//       red.global.add.f32 into a zeroed fp32 buffer; a conversion kernel scales it to bf16. 5 GEMMs; not
//       deterministic (the order of the additions varies).
//   Time covers everything a caller would run: the pre-kernel, b2's memset of the dQ buffer, the kernels, b2's
//   conversion.
//
// Registers (nvcc 13.0, ptxas -v; every fast kernel runs 384 threads = 2 consumer warpgroups at 240 + a producer
// warpgroup at 24, setmaxnreg; see kBwdThreads in kernels.cuh for the history): no C7512 warning in any kernel.
//   b1: bwd_dkdv and bwd_dq, every instantiation: 0 spill bytes.
//   b2: bwd_dkdv with the dQ atomics: 0 spill bytes non-causal; causal 136 bytes (D=128), 36 (D=64): the dQ
//       accumulators and the atomics' addresses beside dV and dK; b2 is the atomics experiment.
// First results (H200, run 13): b1 187.7 TFLOP/s at D=128 S=512 causal, 440.0 at D=128 S=2048 non-causal; b2 104.6
// and 219.9; every case PASS (rel. L2 2.3e-3 - 2.4e-3).
//
// Output: one line per case, `lab attention_wgmma_bwd <variant> D= S= causal= B= H=: max_err_dq= max_err_dk=
// max_err_dv= PASS|FAIL time_ms= TFLOP/s=` with details in brackets; FLOPs = 2.5 x 4 B H S^2 D, halved when
// causal (the FlashAttention convention). Exit status: 0 all cases passed, 1 some case failed or was refused,
// 2 usage error, 3 CUDA error that leaves the context unusable (setup, or a sticky fault: the last lines name
// the kernel, variant and case, and, for a pipeline deadlock, the block, thread and mbarrier that timed out).
//
//   xfrun_lab_attention_wgmma_bwd [--variant b1[,b2]] [--quick] [--d 64|128] [--causal 0|1] [--s S] [--reps N]
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

struct Problem {
  int B, H, S, D;
  bool causal;
  const bf16 *q, *k, *v, *out, *dout;  // (B, H, S, D)
  const float* lse;                    // (B, H, S)
  bf16 *dq, *dk, *dv;                  // (B, H, S, D)
  float *delta, *lse2;                 // (B, H, S) workspace of the pre-kernel
  float* dq_accum;                     // (B, H, S, D) b2's fp32 dQ
  // box rows: _bm = the dK/dV kernel's query tile (bwd_block_m<D>), _128 = 128 (K/V tiles, the dQ kernel's Q/dO)
  CUtensorMap tm_q_bm, tm_do_bm, tm_q128, tm_do128, tm_k128, tm_v128;
  CUtensorMap tm_k_dq, tm_v_dq;  // box dq_block_n<D>() rows: the dQ kernel's K/V tiles
  float scale() const { return 1.f / std::sqrt(static_cast<float>(D)); }
  float scale_log2() const { return kLog2e / std::sqrt(static_cast<float>(D)); }
  size_t rows() const { return static_cast<size_t>(B) * H * S; }
  size_t n() const { return rows() * D; }
};

// The kernels' shape limits, checked by name before any launch ("" = supported).
std::string unsupported_reason(int S, int D) {
  if (D != 64 && D != 128) return "D=" + std::to_string(D) + " is not 64 or 128 (the kernels are instantiated for those)";
  if (S <= 0 || S % 128 != 0)
    return "S=" + std::to_string(S) + " is not a positive multiple of 128 (the lab's kernels have no tail tiles)";
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
  std::string tag;  // "b1 D=.. S=.. causal=.."
  std::string err;
  bool ok(cudaError_t launch, const char* kernel) {
    if (!checked) return launch == cudaSuccess || (err = std::string(kernel) + ": launch failed", false);
    const std::string m = case_error(launch, (std::string(kernel) + " [" + tag + "]").c_str());
    if (m.empty()) return true;
    err = m;
    return false;
  }
};

constexpr int kStages = 2;

// The kernel's resources as the runtime sees them, for a launch that failed (the first GPU run: "too many resources
// requested for launch" at 288 threads x 224 registers; kernels.cuh, kBwdThreads).
template <class Kernel>
std::string resources_of(Kernel kernel) {
  cudaFuncAttributes a{};
  if (cudaFuncGetAttributes(&a, kernel) != cudaSuccess) return " (cudaFuncGetAttributes failed)";
  return " [numRegs=" + std::to_string(a.numRegs) + " maxThreadsPerBlock=" + std::to_string(a.maxThreadsPerBlock) +
         " localSizeBytes=" + std::to_string(a.localSizeBytes) + " maxDynamicSharedSizeBytes=" +
         std::to_string(a.maxDynamicSharedSizeBytes) + " launched with " + std::to_string(kBwdThreads) + " threads]";
}

template <int D>
bool launch_prep(const Problem& p, Run& r) {
  bwd_prep<D><<<static_cast<unsigned>(p.rows() / 8), 256>>>(p.out, p.dout, p.lse, p.delta, p.lse2, p.rows());
  return r.ok(cudaGetLastError(), "bwd_prep");
}

template <int D, bool C, bool ATOMIC>
bool launch_dkdv(const Problem& p, Run& r) {
  constexpr int smem = DkdvLayout<D, ATOMIC, kStages>::kBytes;
  static const cudaError_t attr = set_smem(bwd_dkdv<D, C, ATOMIC, kStages>, smem);
  if (attr != cudaSuccess) return r.ok(attr, "bwd_dkdv (cudaFuncSetAttribute)");
  bwd_dkdv<D, C, ATOMIC, kStages><<<dim3(p.S / kBwdBlockN, p.H, p.B), kBwdThreads, smem>>>(
      p.tm_q_bm, p.tm_do_bm, p.tm_k128, p.tm_v128, p.lse2, p.delta, p.dk, p.dv, p.dq_accum, p.H, p.S, p.scale(),
      p.scale_log2());
  if (r.ok(cudaGetLastError(), ATOMIC ? "bwd_dkdv<dq atomic>" : "bwd_dkdv")) return true;
  r.err += resources_of(bwd_dkdv<D, C, ATOMIC, kStages>);
  return false;
}

template <int D, bool C>
bool launch_dq(const Problem& p, Run& r) {
  constexpr int smem = DqLayout<D, kStages>::kBytes;
  static const cudaError_t attr = set_smem(bwd_dq<D, C, kStages>, smem);
  if (attr != cudaSuccess) return r.ok(attr, "bwd_dq (cudaFuncSetAttribute)");
  bwd_dq<D, C, kStages><<<dim3(p.S / kDqBlockM, p.H, p.B), kBwdThreads, smem>>>(p.tm_q128, p.tm_do128, p.tm_k_dq, p.tm_v_dq,
                                                                         p.lse2, p.delta, p.dq, p.H, p.S, p.scale(),
                                                                         p.scale_log2());
  if (r.ok(cudaGetLastError(), "bwd_dq")) return true;
  r.err += resources_of(bwd_dq<D, C, kStages>);
  return false;
}

template <int D, bool C>
struct B1 {
  static bool run(const Problem& p, Run& r) {
    return launch_prep<D>(p, r) && launch_dkdv<D, C, false>(p, r) && launch_dq<D, C>(p, r);
  }
};
template <int D, bool C>
struct B2 {
  static bool run(const Problem& p, Run& r) {
    if (!r.ok(cudaMemsetAsync(p.dq_accum, 0, p.n() * sizeof(float)), "cudaMemsetAsync(dq_accum)")) return false;
    if (!launch_prep<D>(p, r) || !launch_dkdv<D, C, true>(p, r)) return false;
    dq_convert<<<1024, 256>>>(p.dq_accum, p.dq, p.n(), p.scale());
    return r.ok(cudaGetLastError(), "dq_convert");
  }
};

template <template <int, bool> class F>
bool dispatch(const Problem& p, Run& r) {
  if (p.D == 64) return p.causal ? F<64, true>::run(p, r) : F<64, false>::run(p, r);
  return p.causal ? F<128, true>::run(p, r) : F<128, false>::run(p, r);
}

struct Variant {
  const char* name;
  const char* what;
  bool (*launch)(const Problem&, Run&);
};
const Variant kVariants[] = {
    {"b1", "dK/dV kernel (TMA ring, 2 consumer WGs x 64 keys, wgmma ss+rs) + separate deterministic dQ kernel",
     dispatch<B1>},
    {"b2", "dK/dV kernel that also adds dQ = dS K (dS^T via smem, wgmma_ss_mn) with fp32 red.global.add + convert",
     dispatch<B2>},
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
//   zero, permuted or mis-scaled tensor is at ~1 or more.
constexpr double kAtol = 1e-5, kMagRtol = 1e-2, kRelL2 = 1e-2;

struct Check {
  double max_err = 0, max_ref = 0, sq_err = 0, sq_ref = 0;
  size_t bad = 0, nonfinite = 0;
  long long first_bad = -1;
  float got = 0, want = 0, mag = 0;
  double rel_l2() const { return sq_ref > 0 ? std::sqrt(sq_err / sq_ref) : std::sqrt(sq_err); }
  bool pass() const { return bad == 0 && nonfinite == 0 && rel_l2() <= kRelL2; }
};

Check compare(const std::vector<uint16_t>& got, const std::vector<float>& want, const std::vector<float>& mag) {
  Check c;
  for (size_t i = 0; i < got.size(); ++i) {
    const float g = bf16_to_float(got[i]), w = want[i];
    c.max_ref = std::max(c.max_ref, static_cast<double>(std::fabs(w)));
    c.sq_ref += static_cast<double>(w) * w;
    const double e = std::fabs(static_cast<double>(g) - w);
    const bool finite = std::isfinite(g);
    if (!finite) ++c.nonfinite;
    if (finite) c.max_err = std::max(c.max_err, e), c.sq_err += e * e;
    if (!finite || e > kAtol + kMagRtol * mag[i]) {
      if (c.bad++ == 0) c.first_bad = static_cast<long long>(i), c.got = g, c.want = w, c.mag = mag[i];
    }
  }
  return c;
}

std::string where(const char* tensor, long long flat, int H, int S, int D) {
  char buf[96];
  const long long d = flat % D, r = flat / D;
  std::snprintf(buf, sizeof buf, "%s(b=%lld,h=%lld,s=%lld,d=%lld)", tensor, r / S / H, (r / S) % H, r % S, d);
  return buf;
}

// Host fp64 spot check of the GPU reference backward, on the last (b, h): dq of query rows {0, S/2+1, S-1} and
// dk, dv of key rows {0, S/2+1, S-1}, from the same bf16 inputs and lse. Returns the worst |err| / (1e-4 + mag).
double spot_check_reference(const Problem& p, const std::vector<float>& ref_dq, const std::vector<float>& ref_dk,
                            const std::vector<float>& ref_dv, const std::vector<float>& mag_dq,
                            const std::vector<float>& mag_dk, const std::vector<float>& mag_dv) {
  const size_t bh = static_cast<size_t>(p.B) * p.H - 1, n = static_cast<size_t>(p.S) * p.D;
  const int S = p.S, D = p.D;
  std::vector<uint16_t> q(n), k(n), v(n), o(n), dout(n);
  std::vector<float> lse(S);
  LAB_CHECK(cudaMemcpy(q.data(), p.q + bh * n, n * 2, cudaMemcpyDeviceToHost));
  LAB_CHECK(cudaMemcpy(k.data(), p.k + bh * n, n * 2, cudaMemcpyDeviceToHost));
  LAB_CHECK(cudaMemcpy(v.data(), p.v + bh * n, n * 2, cudaMemcpyDeviceToHost));
  LAB_CHECK(cudaMemcpy(o.data(), p.out + bh * n, n * 2, cudaMemcpyDeviceToHost));
  LAB_CHECK(cudaMemcpy(dout.data(), p.dout + bh * n, n * 2, cudaMemcpyDeviceToHost));
  LAB_CHECK(cudaMemcpy(lse.data(), p.lse + bh * S, S * 4, cudaMemcpyDeviceToHost));
  auto f = [](const std::vector<uint16_t>& x, int row, int d, int D_) { return double(bf16_to_float(x[size_t(row) * D_ + d])); };
  std::vector<double> delta(S, 0.0);
  for (int i = 0; i < S; ++i)
    for (int d = 0; d < D; ++d) delta[i] += f(dout, i, d, D) * f(o, i, d, D);
  const double scale = 1.0 / std::sqrt(double(D));
  auto pds = [&](int i, int j, double& pp, double& ds) {  // P_ij and dS_ij
    double s = 0, dp = 0;
    for (int d = 0; d < D; ++d) s += f(q, i, d, D) * f(k, j, d, D), dp += f(dout, i, d, D) * f(v, j, d, D);
    pp = std::exp(scale * s - lse[i]);
    ds = pp * (dp - delta[i]);
  };
  double worst = 0;
  auto upd = [&](double got64, float ref32, float mag) {
    worst = std::max(worst, std::fabs(got64 - ref32) / (1e-4 + mag));
  };
  for (const int x : {0, S / 2 + 1, S - 1}) {
    std::vector<double> dq(D, 0.0), dk(D, 0.0), dv(D, 0.0);
    for (int j = 0; j < (p.causal ? x + 1 : S); ++j) {  // query row x
      double pp, ds;
      pds(x, j, pp, ds);
      for (int d = 0; d < D; ++d) dq[d] += ds * f(k, j, d, D);
    }
    for (int i = p.causal ? x : 0; i < S; ++i) {  // key row x
      double pp, ds;
      pds(i, x, pp, ds);
      for (int d = 0; d < D; ++d) dk[d] += ds * f(q, i, d, D), dv[d] += pp * f(dout, i, d, D);
    }
    const size_t r = (bh * S + x) * D;
    for (int d = 0; d < D; ++d) {
      upd(scale * dq[d], ref_dq[r + d], mag_dq[r + d]);
      upd(scale * dk[d], ref_dk[r + d], mag_dk[r + d]);
      upd(dv[d], ref_dv[r + d], mag_dv[r + d]);
    }
  }
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<lab_host::VariantName> names;
  for (const auto& v : kVariants) names.push_back({v.name, v.what});
  lab_host::Options opt = lab_host::parse(argc, argv, "xfrun_lab_attention_wgmma_bwd",
                                          "one small case per variant: S=512, D=128, causal=1 (--d / --causal override)",
                                          names);
  if (opt.quick) {
    if (!opt.d_given) opt.dims = {128};
    if (!opt.causal_given) opt.causal = {1};
  }
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("%s: FATAL: no CUDA device\n", LAB_NAME);
    return 3;
  }
  cudaDeviceProp prop{};
  LAB_CHECK(cudaGetDeviceProperties(&prop, 0));
  int drv = 0, rt = 0;
  LAB_CHECK(cudaDriverGetVersion(&drv));
  LAB_CHECK(cudaRuntimeGetVersion(&rt));
  std::printf("%s: device %s (sm_%d%d, %d SMs, %.0f GiB), driver %d, runtime %d\n", LAB_NAME, prop.name, prop.major,
              prop.minor, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, drv, rt);
  if (prop.major != 9 || prop.minor != 0) {
    std::printf("%s: FATAL: the kernels are built for sm_90a only (wgmma, setmaxnreg)\n", LAB_NAME);
    return 3;
  }
  lab_host::setup_hang_record();
  std::printf("%s: inputs q,k,v,dout N(0,1) bf16, out/lse from an fp32 reference forward; tol per element |err| <= %g + "
              "%g mag (mag: the reference's sum of |terms|) and relative L2 <= %g per tensor; time = median of %d runs "
              "after 3 warm-ups (pre-kernel + kernels + memset/convert); FLOPs 2.5*4*B*H*S^2*D (/2 causal)\n",
              LAB_NAME, kAtol, kMagRtol, kRelL2, opt.reps);
  for (const auto& v : kVariants) std::printf("%s: variant %s = %s\n", LAB_NAME, v.name, v.what);
  std::fflush(stdout);

  int failures = 0;
  std::vector<std::string> summary;
  for (const int D : opt.dims) {
    for (const int causal : opt.causal) {
      for (const int S : opt.seqs) {
        const int B = std::max(1, 16384 / std::max(S, 1)), H = 2048 / std::max(D, 1);
        char tag[96];
        std::snprintf(tag, sizeof tag, "D=%d S=%d causal=%d B=%d H=%d", D, S, causal, B, H);
        const std::string why = unsupported_reason(S, D);
        if (!why.empty()) {
          for (const auto& v : kVariants)
            if (opt.variants.empty() || std::find(opt.variants.begin(), opt.variants.end(), v.name) != opt.variants.end()) {
              std::printf("%s %s %s: FAIL (refused: %s)\n", LAB_NAME, v.name, tag, why.c_str());
              ++failures;
            }
          continue;
        }
        const size_t rows = static_cast<size_t>(B) * H * S, n = rows * D;
        DeviceBuffer<bf16> q(n), k(n), v(n), out(n), dout(n), dq(n), dk(n), dv(n);
        DeviceBuffer<float> lse(rows), ref_delta(rows), delta(rows), lse2(rows);
        DeviceBuffer<float> ref_dq(n), ref_dk(n), ref_dv(n), mag_dq(n), mag_dk(n), mag_dv(n), dq_accum(n);
        const uint64_t seed = 0xb3d0000ull + static_cast<uint64_t>(D) * 1000003ull + S * 7ull + causal;
        fill_randn<<<1024, 256>>>(q.get(), n, seed * 5 + 0, 1.f);
        fill_randn<<<1024, 256>>>(k.get(), n, seed * 5 + 1, 1.f);
        fill_randn<<<1024, 256>>>(v.get(), n, seed * 5 + 2, 1.f);
        fill_randn<<<1024, 256>>>(dout.get(), n, seed * 5 + 3, 1.f);
        LAB_CHECK(cudaGetLastError());
        const float scale = 1.f / std::sqrt(static_cast<float>(D));

        // reference forward (fp32 out -> bf16; the bound it writes is unused here: the scratch is dq_accum), then
        // the reference backward; outputs poisoned first, so a kernel that writes nothing is caught
        LAB_CHECK(cudaMemset(lse.get(), 0xFF, lse.bytes()));
        LAB_CHECK(cudaMemset(ref_dq.get(), 0xFF, ref_dq.bytes()));
        LAB_CHECK(cudaMemset(ref_dk.get(), 0xFF, ref_dk.bytes()));
        LAB_CHECK(cudaMemset(ref_dv.get(), 0xFF, ref_dv.bytes()));
        LAB_CHECK(cudaMemset(mag_dq.get(), 0, mag_dq.bytes()));  // unwritten -> the tolerance collapses to atol
        LAB_CHECK(cudaMemset(mag_dk.get(), 0, mag_dk.bytes()));
        LAB_CHECK(cudaMemset(mag_dv.get(), 0, mag_dv.bytes()));
        const unsigned ref_blocks = static_cast<unsigned>(rows / 8);
        // ref_dk / dq_accum serve as the forward's fp32 out / bound scratch (overwritten below)
        if (D == 64) {
          reference_attention<64><<<ref_blocks, 256>>>(q.get(), k.get(), v.get(), ref_dk.get(), lse.get(),
                                                       dq_accum.get(), S, scale, causal);
        } else {
          reference_attention<128><<<ref_blocks, 256>>>(q.get(), k.get(), v.get(), ref_dk.get(), lse.get(),
                                                        dq_accum.get(), S, scale, causal);
        }
        to_bf16<<<1024, 256>>>(ref_dk.get(), out.get(), n);
        std::string ref_err = case_error(cudaGetLastError(), "reference forward");
        if (ref_err.empty()) {
          LAB_CHECK(cudaMemset(ref_dk.get(), 0xFF, ref_dk.bytes()));
          if (D == 64) {
            reference_bwd_dq<64><<<ref_blocks, 256>>>(q.get(), k.get(), v.get(), out.get(), dout.get(), lse.get(),
                                                      ref_dq.get(), mag_dq.get(), ref_delta.get(), S, scale, causal);
            reference_bwd_dkdv<64><<<ref_blocks, 256>>>(q.get(), k.get(), v.get(), dout.get(), lse.get(),
                                                        ref_delta.get(), ref_dk.get(), ref_dv.get(), mag_dk.get(),
                                                        mag_dv.get(), S, scale, causal);
          } else {
            reference_bwd_dq<128><<<ref_blocks, 256>>>(q.get(), k.get(), v.get(), out.get(), dout.get(), lse.get(),
                                                       ref_dq.get(), mag_dq.get(), ref_delta.get(), S, scale, causal);
            reference_bwd_dkdv<128><<<ref_blocks, 256>>>(q.get(), k.get(), v.get(), dout.get(), lse.get(),
                                                         ref_delta.get(), ref_dk.get(), ref_dv.get(), mag_dk.get(),
                                                         mag_dv.get(), S, scale, causal);
          }
          ref_err = case_error(cudaGetLastError(), "reference backward");
        }
        if (!ref_err.empty()) {
          std::printf("%s reference %s: FAIL (%s); skipping the variants of this case\n", LAB_NAME, tag, ref_err.c_str());
          ++failures;
          continue;
        }
        std::vector<float> h_ref_dq(n), h_ref_dk(n), h_ref_dv(n), h_mag_dq(n), h_mag_dk(n), h_mag_dv(n);
        LAB_CHECK(cudaMemcpy(h_ref_dq.data(), ref_dq.get(), ref_dq.bytes(), cudaMemcpyDeviceToHost));
        LAB_CHECK(cudaMemcpy(h_ref_dk.data(), ref_dk.get(), ref_dk.bytes(), cudaMemcpyDeviceToHost));
        LAB_CHECK(cudaMemcpy(h_ref_dv.data(), ref_dv.get(), ref_dv.bytes(), cudaMemcpyDeviceToHost));
        LAB_CHECK(cudaMemcpy(h_mag_dq.data(), mag_dq.get(), mag_dq.bytes(), cudaMemcpyDeviceToHost));
        LAB_CHECK(cudaMemcpy(h_mag_dk.data(), mag_dk.get(), mag_dk.bytes(), cudaMemcpyDeviceToHost));
        LAB_CHECK(cudaMemcpy(h_mag_dv.data(), mag_dv.get(), mag_dv.bytes(), cudaMemcpyDeviceToHost));

        Problem p{B, H, S, D, causal != 0, q.get(), k.get(), v.get(), out.get(), dout.get(), lse.get(),
                  dq.get(), dk.get(), dv.get(), delta.get(), lse2.get(), dq_accum.get(), {}, {}, {}, {}, {}, {}, {}, {}};
        const int bm = D == 64 ? bwd_block_m<64>() : bwd_block_m<128>();
        p.tm_q_bm = make_tensor_map(p.q, rows, D, bm);
        p.tm_do_bm = make_tensor_map(p.dout, rows, D, bm);
        p.tm_q128 = make_tensor_map(p.q, rows, D, 128);
        p.tm_do128 = make_tensor_map(p.dout, rows, D, 128);
        p.tm_k128 = make_tensor_map(p.k, rows, D, 128);
        p.tm_v128 = make_tensor_map(p.v, rows, D, 128);
        const int dqn = D == 64 ? dq_block_n<64>() : dq_block_n<128>();
        p.tm_k_dq = make_tensor_map(p.k, rows, D, dqn);
        p.tm_v_dq = make_tensor_map(p.v, rows, D, dqn);

        // fp32 vs fp64 on the same inputs: ~1e-6 mag expected; 1e-3 catches a wrong formula, not summation noise
        const double spot = spot_check_reference(p, h_ref_dq, h_ref_dk, h_ref_dv, h_mag_dq, h_mag_dk, h_mag_dv);
        const bool spot_ok = spot <= 1e-3;
        std::printf("%s reference %s: fp64 host spot check (dq of 3 query rows, dk/dv of 3 key rows) max |err|/(1e-4+mag)=%.2e %s\n",
                    LAB_NAME, tag, spot, spot_ok ? "PASS" : "FAIL");
        if (!spot_ok) ++failures;
        std::fflush(stdout);

        const double flops = 2.5 * 4.0 * B * H * static_cast<double>(S) * S * D / (causal ? 2.0 : 1.0);
        std::vector<uint16_t> h_dq(n), h_dk(n), h_dv(n);
        for (const auto& var : kVariants) {
          if (!opt.variants.empty() && std::find(opt.variants.begin(), opt.variants.end(), var.name) == opt.variants.end())
            continue;
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
          const Check cq = compare(h_dq, h_ref_dq, h_mag_dq), ck = compare(h_dk, h_ref_dk, h_mag_dk),
                      cv = compare(h_dv, h_ref_dv, h_mag_dv);

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
          const std::pair<const char*, const Check*> checks[] = {{"dq", &cq}, {"dk", &ck}, {"dv", &cv}};
          for (const auto& [name, c] : checks)
            if (c->first_bad != -1)
              std::printf("%s %s %s:   first mismatch %s got=%g want=%g mag=%g\n", LAB_NAME, var.name, tag,
                          where(name, c->first_bad, H, S, D).c_str(), c->got, c->want, c->mag);
          if (!terr.empty()) std::printf("%s %s %s:   timing failed: %s\n", LAB_NAME, var.name, tag, terr.c_str());
          std::fflush(stdout);
          char brief[160];
          std::snprintf(brief, sizeof brief, "%s %s: %s %.1f TFLOP/s", var.name, tag, pass ? "PASS" : "FAIL",
                        flops / (ms * 1e-3) / 1e12);
          summary.push_back(brief);
        }
      }
    }
  }
  std::sort(summary.begin(), summary.end());  // grouped by variant
  for (const auto& s : summary) std::printf("%s summary %s\n", LAB_NAME, s.c_str());
  std::printf("%s: %s (%d failing case%s)\n", LAB_NAME, failures ? "FAIL" : "all PASS", failures,
              failures == 1 ? "" : "s");
  return failures ? 1 : 0;
}
