// Kernel lab: can an AdamW update run beside a training step's backward GEMMs and cost less than it does after them?
//
// The question behind "the optimizer in the backward" (docs/gpu.md): once a transformer layer's gradients are final,
// its update could run on a low-priority stream while the backward of the layers below it runs on the main stream.
// That only gains if the update's blocks find room on the SMs while the GEMMs run (registers, threads, bandwidth the
// GEMM leaves) or in the GEMMs' tails, and if the GEMMs do not slow down by what the update gains.
//
// The problem: one GPT-2 124M layer's backward GEMMs (16 x 1024 tokens, width 768, bf16 in, fp32 accumulation, plain
// cuBLASLt GEMMs at the heuristic's first choice; their (m, n, k) below), and one layer's AdamW update (7.08 M
// parameters: p, g, m, v in f32 and a bf16 copy of p, 30 bytes a parameter, as the runtime's kernel moves).
// Cases, each the median of 15 samples of `batch` back-to-back repetitions:
//   gemms         the GEMMs alone on the high-priority stream
//   adamw g       the update alone (g: blocks of 256 threads: "chunks" one block per 16 Ki elements as the runtime
//                 launches it, or a grid-stride kernel of g blocks)
//   both g        the update issued on the low-priority stream at the start of the GEMMs: the time until both end
// and the gain, gemms + adamw - both, against the ideal, adamw (all of it hidden).
// The update's arithmetic is the runtime's (runtime/cuda/optimizer.cu) without its round-to-nearest intrinsics: this
// lab times, it does not check results, apart from a parameter read back after the runs being finite.
//   xfrun_lab_overlap_optimizer [layers]     (layers: how many layers' GEMMs and updates one repetition holds, 1)
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#define LAB_NAME "lab overlap_optimizer"
#include "tools/lab/lab_cublaslt.h"

namespace {

// One plain bf16 GEMM, column-major C (m, n) = A^T B with A (k, m) and B (k, n) (cuBLASLt's "TN", its fastest layout),
// the heuristic's first algorithm, its own workspace.
class Gemm {
 public:
  Gemm(cublasLtHandle_t lt, int64_t m, int64_t n, int64_t k) : m_(m), n_(n), k_(k), a_(k * m), b_(k * n), c_(m * n) {
    LAB_LT_CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
    LAB_LT_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
    LAB_LT_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn));
    LAB_LT_CHECK(cublasLtMatrixLayoutCreate(&la_, CUDA_R_16BF, k, m, k));
    LAB_LT_CHECK(cublasLtMatrixLayoutCreate(&lb_, CUDA_R_16BF, k, n, k));
    LAB_LT_CHECK(cublasLtMatrixLayoutCreate(&lc_, CUDA_R_16BF, m, n, m));
    cublasLtMatmulPreference_t pref;
    LAB_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = kWorkspace;
    LAB_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    int found = 0;
    LAB_LT_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, desc_, la_, lb_, lc_, lc_, pref, 1, &heur_, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    if (found == 0) {
      std::printf("%s: FATAL: no cuBLASLt algorithm for %lld x %lld x %lld\n", LAB_NAME, (long long)m, (long long)n,
                  (long long)k);
      std::exit(3);
    }
    LAB_CHECK(cudaMemset(a_.get(), 0x3c, a_.bytes()));  // 0x3c3c: bf16 0.0115, finite, not zero (zeros draw less power)
    LAB_CHECK(cudaMemset(b_.get(), 0x3b, b_.bytes()));
  }
  ~Gemm() {
    cublasLtMatrixLayoutDestroy(la_);
    cublasLtMatrixLayoutDestroy(lb_);
    cublasLtMatrixLayoutDestroy(lc_);
    cublasLtMatmulDescDestroy(desc_);
  }
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  void run(cublasLtHandle_t lt, cudaStream_t s) const {
    const float one = 1.f, zero = 0.f;
    LAB_LT_CHECK(cublasLtMatmul(lt, desc_, &one, a_.get(), la_, b_.get(), lb_, &zero, c_.get(), lc_, c_.get(), lc_,
                                &heur_.algo, ws_.get(), kWorkspace, s));
  }
  double flops() const { return 2.0 * m_ * n_ * k_; }

 private:
  static constexpr size_t kWorkspace = 32u << 20;  // cuBLASLt's recommendation for Hopper
  int64_t m_, n_, k_;
  lab::DeviceBuffer<__nv_bfloat16> a_, b_, c_;
  lab::DeviceBuffer<unsigned char> ws_{kWorkspace};
  cublasLtMatmulDesc_t desc_{};
  cublasLtMatrixLayout_t la_{}, lb_{}, lc_{};
  cublasLtMatmulHeuristicResult_t heur_{};
};

constexpr int kThreads = 256;      // the runtime's optimizer blocks
constexpr int64_t kChunk = 16384;  // elements a block of the "chunks" launch (the runtime's kChunk)

struct AdamWArgs {
  float* p;
  const float* g;
  float* m;
  float* v;
  __nv_bfloat16* mirror;
  int64_t n;  // a multiple of 4
};

__device__ __forceinline__ void adamw4(const AdamWArgs& a, int64_t i) {  // elements 4i..4i+3
  constexpr float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, step = 6e-4f, decay = 1.f - 6e-4f * 0.1f, bc2 = 0.05f;
  float4 p = reinterpret_cast<float4*>(a.p)[i], m = reinterpret_cast<float4*>(a.m)[i],
         v = reinterpret_cast<float4*>(a.v)[i];
  const float4 g = reinterpret_cast<const float4*>(a.g)[i];
  float* pp = &p.x;
  float* mp = &m.x;
  float* vp = &v.x;
  const float* gp = &g.x;
  __nv_bfloat16 out[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    mp[e] = b1 * mp[e] + (1.f - b1) * gp[e];
    vp[e] = b2 * vp[e] + (1.f - b2) * gp[e] * gp[e];
    pp[e] = pp[e] * decay - step * mp[e] / (sqrtf(vp[e]) / bc2 + eps);
    out[e] = __float2bfloat16_rn(pp[e]);
  }
  reinterpret_cast<float4*>(a.p)[i] = p;
  reinterpret_cast<float4*>(a.m)[i] = m;
  reinterpret_cast<float4*>(a.v)[i] = v;
  reinterpret_cast<uint2*>(a.mirror)[i] = *reinterpret_cast<const uint2*>(out);
}

// One block per kChunk elements (the runtime's launch shape).
__global__ void __launch_bounds__(kThreads) adamw_chunks(AdamWArgs a) {
  const int64_t begin = int64_t(blockIdx.x) * kChunk / 4, stop = begin + kChunk / 4,
                end = stop < a.n / 4 ? stop : a.n / 4;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) adamw4(a, i);
}
// gridDim.x blocks over everything (grid-stride).
__global__ void __launch_bounds__(kThreads) adamw_strided(AdamWArgs a) {
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < a.n / 4; i += int64_t(gridDim.x) * kThreads)
    adamw4(a, i);
}

}  // namespace

int main(int argc, char** argv) {
  const int layers = argc > 1 ? std::max(1, std::atoi(argv[1])) : 1;
  cudaDeviceProp prop{};
  LAB_CHECK(cudaGetDeviceProperties(&prop, 0));
  cublasLtHandle_t lt;
  LAB_LT_CHECK(cublasLtCreate(&lt));
  int lo = 0, hi = 0;
  LAB_CHECK(cudaDeviceGetStreamPriorityRange(&lo, &hi));  // (least, greatest): greatest is the numerically lowest
  cudaStream_t main_s, side_s;
  LAB_CHECK(cudaStreamCreateWithPriority(&main_s, cudaStreamNonBlocking, hi));
  LAB_CHECK(cudaStreamCreateWithPriority(&side_s, cudaStreamNonBlocking, lo));

  // One layer's backward GEMMs, (m, n, k) column-major: the dgelu-shaped input gradient of the MLP's second layer,
  // the input gradients of fc, q/k/v and the projection, and the four weight gradients (k = the 16384 tokens).
  const int64_t T = 16384, C = 768;
  const std::vector<std::array<int64_t, 3>> shapes = {{4 * C, T, C}, {C, T, 4 * C}, {C, T, 3 * C}, {C, T, C},
                                                      {C, 4 * C, T}, {4 * C, C, T}, {C, 3 * C, T}, {C, C, T}};
  std::vector<std::unique_ptr<Gemm>> gemms;
  double flops = 0;
  for (const auto& s : shapes) {
    gemms.push_back(std::make_unique<Gemm>(lt, s[0], s[1], s[2]));
    flops += gemms.back()->flops();
  }
  // One layer's parameters: 12 C^2 weights and 13 C biases and norm parameters.
  const int64_t n = ((12 * C * C + 13 * C) * layers + 3) / 4 * 4;
  lab::DeviceBuffer<float> p(n), g(n), m(n), v(n);
  lab::DeviceBuffer<__nv_bfloat16> mirror(n);
  LAB_CHECK(cudaMemset(p.get(), 0, p.bytes()));
  LAB_CHECK(cudaMemset(g.get(), 0x3c, g.bytes()));  // 0x3c3c3c3c: 0.0115
  LAB_CHECK(cudaMemset(m.get(), 0, m.bytes()));
  LAB_CHECK(cudaMemset(v.get(), 0, v.bytes()));
  const AdamWArgs args{p.get(), g.get(), m.get(), v.get(), mirror.get(), n};
  const double bytes = 30.0 * n;

  const auto run_gemms = [&] {
    for (int l = 0; l < layers; ++l)
      for (const auto& gm : gemms) gm->run(lt, main_s);
  };
  // grid 0: the chunks launch; else the strided kernel on `grid` blocks.
  const auto run_adamw = [&](int grid, cudaStream_t s) {
    if (grid == 0)
      adamw_chunks<<<static_cast<unsigned>((n + kChunk - 1) / kChunk), kThreads, 0, s>>>(args);
    else
      adamw_strided<<<static_cast<unsigned>(grid), kThreads, 0, s>>>(args);
    LAB_CHECK(cudaGetLastError());
  };
  cudaFuncAttributes fa{};
  LAB_CHECK(cudaFuncGetAttributes(&fa, adamw_chunks));
  std::printf(
      "%s: %s, %d SMs; %d layer(s): %zu GEMMs (%.1f GFLOP), AdamW over %lld parameters (%.0f MB); adamw "
      "kernel %d registers a thread\n",
      LAB_NAME, prop.name, prop.multiProcessorCount, layers, gemms.size() * layers, layers * flops * 1e-9, (long long)n,
      bytes * 1e-6, fa.numRegs);

  const double t_gemms = lab::time_us(main_s, run_gemms, 4, 15);
  std::printf("%s: gemms alone           %9.1f us (%.0f TFLOP/s)\n", LAB_NAME, t_gemms,
              layers * flops / t_gemms * 1e-6);
  lab::Event fork, join;
  const int sms = prop.multiProcessorCount;
  for (int grid : {0, sms / 8, sms / 4, sms / 2, sms, 4 * sms}) {
    const std::string name = grid == 0 ? std::string("chunks") : std::to_string(grid) + " blocks";
    const double t_adamw = lab::time_us(
        side_s, [&] { run_adamw(grid, side_s); }, 4, 15);
    // Both: the side stream starts with the main one and the main one waits for it at the end.
    const double t_both = lab::time_us(
        main_s,
        [&] {
          LAB_CHECK(cudaEventRecord(fork.get(), main_s));
          LAB_CHECK(cudaStreamWaitEvent(side_s, fork.get(), 0));
          run_adamw(grid, side_s);
          run_gemms();
          LAB_CHECK(cudaEventRecord(join.get(), side_s));
          LAB_CHECK(cudaStreamWaitEvent(main_s, join.get(), 0));
        },
        4, 15);
    std::printf("%s: adamw %-12s alone %7.1f us (%.2f TB/s); beside the gemms %8.1f us: gain %6.1f us of %.1f\n",
                LAB_NAME, name.c_str(), t_adamw, bytes / t_adamw * 1e-6, t_both, t_gemms + t_adamw - t_both, t_adamw);
  }
  float probe = 0;
  LAB_CHECK(cudaMemcpy(&probe, p.get(), sizeof probe, cudaMemcpyDeviceToHost));
  std::printf("%s: a parameter after the runs: %g (%s)\n", LAB_NAME, probe,
              std::isfinite(probe) ? "finite" : "NOT FINITE");
  cudaStreamDestroy(main_s);
  cudaStreamDestroy(side_s);
  cublasLtDestroy(lt);
  return std::isfinite(probe) ? 0 : 1;
}
