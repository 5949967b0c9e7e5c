// Kernel lab: the deterministic column reduction of ops/cuda/rowwise.cuh (reduce_axis with K > 1: a bias gradient, the
// LayerNorm backward's parameter-gradient partial rows), stage by stage. reduce_axis splits the R rows into S chunks
// (stage 1: fp32 partial rows, S x K), then adds the S rows (stage 2). This lab times each stage on its own for a sweep
// of S (stage 1 also with 1 and 8 rows' loads in flight per thread, against production's kColUnroll), stage 2 in
// 16-byte packs (W 4) or scalars (W 1, four times the blocks), both stages back to back, and reduce_axis both ways:
// two launches, or one with counters (the last blocks add the partial rows). Cases: GPT-2's bias gradients (16384 x
// 768, 2304 and 3072 bf16), the LayerNorm backward's partial rows (528 x 768 fp32) and an awkward 1000 x 100 (rows
// not in 16-byte packs: scalar loads, reduce_axis only). Every variant's result is checked against a float64 sum on
// the host (|error| <= 1e-3 relative to the column's sum of |x|: bf16 output rounding), and each line prints the time of
// a call (lab::time_us: batches of back-to-back calls, as in a CUDA graph) and the input's bandwidth. A second of
// copies runs first, so that the clocks have left idle. (Session 17's run 4 timed single launches, each with about
// 5 us of launch and event latency: a stage 2 of 24 KB read 7-8 us.)
//   xfrun_lab_column_reduce
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#define LAB_NAME "lab column_reduce"
#include "ops/cuda/rowwise.cuh"
#include "tools/lab/lab_cuda.h"  // LAB_CHECK, lab::DeviceBuffer, lab::Event, lab::time_us

using namespace xfr::cuda;

namespace {

template <class T>
T from_float(float v);
template <>
float from_float<float>(float v) {
  return v;
}
template <>
__nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <class T>
double to_double(T v) {
  return static_cast<double>(static_cast<float>(v));
}

template <class TIn>
int run_case(int64_t R, int64_t K) {
  const char* tname = sizeof(TIn) == 2 ? "bf16" : "f32";
  std::mt19937_64 rng(R * 131 + K);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<TIn> hx(static_cast<size_t>(R * K));
  std::vector<double> ref(static_cast<size_t>(K), 0.0), mag(static_cast<size_t>(K), 0.0);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k) {
      hx[r * K + k] = from_float<TIn>(d(rng));
      ref[k] += to_double(hx[r * K + k]);
      mag[k] += std::abs(to_double(hx[r * K + k]));
    }
  lab::DeviceBuffer<TIn> x(hx.size());
  LAB_CHECK(cudaMemcpy(x.get(), hx.data(), x.bytes(), cudaMemcpyHostToDevice));
  lab::DeviceBuffer<__nv_bfloat16> y(K);
  constexpr int64_t kMaxS = 256;
  lab::DeviceBuffer<float> part(kMaxS * K);
  lab::DeviceBuffer<char> scratch_mem(8 << 20);
  int fails = 0;
  // One run into a poisoned y, checked against the float64 sums.
  auto check = [&](const std::string& what, const std::function<void()>& fn) {
    std::vector<__nv_bfloat16> hy(K);
    LAB_CHECK(cudaMemset(y.get(), 0xFF, y.bytes()));
    fn();
    LAB_CHECK(cudaDeviceSynchronize());
    LAB_CHECK(cudaMemcpy(hy.data(), y.get(), y.bytes(), cudaMemcpyDeviceToHost));
    double worst = 0;
    for (int64_t k = 0; k < K; ++k) worst = std::max(worst, std::abs(to_double(hy[k]) - ref[k]) / (mag[k] + 1e-30));
    const bool ok = worst <= 1e-3;
    fails += !ok;
    if (!ok)
      std::printf("%s %s R=%lld K=%lld %s: FAIL (relative error %.3g)\n", LAB_NAME, tname, static_cast<long long>(R),
                  static_cast<long long>(K), what.c_str(), worst);
  };
  const double gb = static_cast<double>(R * K * sizeof(TIn)) / 1e9;
  constexpr int W = 16 / sizeof(TIn);
  for (int64_t S : {8, 16, 32, 64, 128, 256}) {
    if (S > R / 8 || K % W != 0) continue;  // (the sweep's kernels take 16-byte packs)
    const int64_t col_blocks = ceil_div(K, 32 * W), blocks1 = col_blocks * S;
    // Stage 1 with U rows' loads in flight per thread (1: session 20's kernel; kColUnroll: production's).
    auto stage1_u = [&](auto unroll) {
      constexpr int U = decltype(unroll)::value;
      column_reduce_kernel<TIn, float, W, ReduceMode::sum, U><<<static_cast<unsigned>(blocks1), dim3(32, kColLanes)>>>(
          x.get(), nullptr, part.get(), nullptr, 1, R, K, S, 1.f);
    };
    using U1 = std::integral_constant<int, 1>;
    using U8 = std::integral_constant<int, 8>;
    auto stage1 = [&] { stage1_u(std::integral_constant<int, kColUnroll>{}); };
    const double s1_u1 = ::lab::time_us(nullptr, [&] { stage1_u(U1{}); });
    const double s1_u8 = ::lab::time_us(nullptr, [&] { stage1_u(U8{}); });
    check("S=" + std::to_string(S) + " unroll 1", [&] {
      stage1_u(U1{});
      column_reduce_kernel<float, __nv_bfloat16, 4, ReduceMode::sum>
          <<<static_cast<unsigned>(ceil_div(K, 128)), dim3(32, kColLanes)>>>(part.get(), nullptr, y.get(), nullptr, 1, S,
                                                                              K, 1, 1.f);
    });
    auto stage2 = [&](auto width) {
      constexpr int W2 = decltype(width)::value;
      column_reduce_kernel<float, __nv_bfloat16, W2, ReduceMode::sum>
          <<<static_cast<unsigned>(ceil_div(K, 32 * W2)), dim3(32, kColLanes)>>>(part.get(), nullptr, y.get(), nullptr,
                                                                                  1, S, K, 1, 1.f);
    };
    using W4 = std::integral_constant<int, 4>;
    using W1 = std::integral_constant<int, 1>;
    const double s1 = ::lab::time_us(nullptr, stage1);
    const double s2_w4 = ::lab::time_us(nullptr, [&] { stage2(W4{}); });
    const double s2_w1 = ::lab::time_us(nullptr, [&] { stage2(W1{}); });
    const double both_w4 = ::lab::time_us(nullptr, [&] {
      stage1();
      stage2(W4{});
    });
    const double both_w1 = ::lab::time_us(nullptr, [&] {
      stage1();
      stage2(W1{});
    });
    check("S=" + std::to_string(S) + " W4", [&] {
      stage1();
      stage2(W4{});
    });
    check("S=" + std::to_string(S) + " W1", [&] {
      stage1();
      stage2(W1{});
    });
    LAB_CHECK(cudaGetLastError());
    std::printf("%s %s R=%lld K=%lld S=%lld (%lld blocks): stage 1 %.1f us (%.2f TB/s; unroll 1 %.1f, 8 %.1f); "
                "stage 2 W4 %.1f us, W1 %.1f us; both %.1f us (W4), %.1f us (W1)\n",
                LAB_NAME, tname, static_cast<long long>(R), static_cast<long long>(K), static_cast<long long>(S),
                static_cast<long long>(blocks1), s1, gb / s1 * 1e3, s1_u1, s1_u8, s2_w4, s2_w1, both_w4, both_w1);
  }
  auto production = [&] {
    reduce_axis<TIn, __nv_bfloat16, ReduceMode::sum>(x.get(), nullptr, y.get(), nullptr, 1, R, K, 1.f,
                                                     Scratch{scratch_mem.get(), scratch_mem.bytes()}, nullptr);
  };
  const double prod = ::lab::time_us(nullptr, production);
  check("reduce_axis", production);
  LAB_CHECK(cudaGetLastError());
  std::printf("%s %s R=%lld K=%lld reduce_axis (two launches): %.1f us (%.2f TB/s)\n", LAB_NAME, tname,
              static_cast<long long>(R), static_cast<long long>(K), prod, gb / prod * 1e3);
  // With zeroed counters (as the graph kernels pass CudaContext::launch_counters()): the partial rows added by the
  // last block of each column range, one launch. Checked twice in a row (the counters must be left zero), and
  // every counter read back as zero at the end.
  constexpr int64_t kCounters = 1026;
  lab::DeviceBuffer<unsigned> counters(kCounters);
  LAB_CHECK(cudaMemset(counters.get(), 0, counters.bytes()));
  auto one_launch = [&] {
    reduce_axis<TIn, __nv_bfloat16, ReduceMode::sum>(
        x.get(), nullptr, y.get(), nullptr, 1, R, K, 1.f,
        Scratch{scratch_mem.get(), scratch_mem.bytes(), {counters.get(), kCounters}}, nullptr);
  };
  check("reduce_axis one launch", one_launch);
  check("reduce_axis one launch, again", one_launch);
  const double one = ::lab::time_us(nullptr, one_launch);
  check("reduce_axis one launch, after the timing", one_launch);
  std::vector<unsigned> hc(kCounters);
  LAB_CHECK(cudaMemcpy(hc.data(), counters.get(), counters.bytes(), cudaMemcpyDeviceToHost));
  if (std::any_of(hc.begin(), hc.end(), [](unsigned c) { return c != 0; })) {
    std::printf("%s %s R=%lld K=%lld: FAIL (a counter left non-zero)\n", LAB_NAME, tname, static_cast<long long>(R),
                static_cast<long long>(K));
    ++fails;
  }
  LAB_CHECK(cudaGetLastError());
  std::printf("%s %s R=%lld K=%lld reduce_axis (one launch, production): %.1f us (%.2f TB/s)\n", LAB_NAME, tname,
              static_cast<long long>(R), static_cast<long long>(K), one, gb / one * 1e3);
  return fails;
}

}  // namespace

int main() {
  int n = 0;
  LAB_CHECK(cudaGetDeviceCount(&n));
  {  // a second of 256 MB copies: the clocks leave idle before anything is timed
    lab::DeviceBuffer<char> a(256 << 20), b(256 << 20);
    lab::Event e0, e1;
    LAB_CHECK(cudaEventRecord(e0.get()));
    for (float ms = 0; ms < 1000.f;) {
      for (int i = 0; i < 20; ++i) LAB_CHECK(cudaMemcpyAsync(b.get(), a.get(), a.bytes(), cudaMemcpyDeviceToDevice));
      LAB_CHECK(cudaEventRecord(e1.get()));
      LAB_CHECK(cudaEventSynchronize(e1.get()));
      LAB_CHECK(cudaEventElapsedTime(&ms, e0.get(), e1.get()));
    }
  }
  int fails = run_case<__nv_bfloat16>(16384, 768) + run_case<__nv_bfloat16>(16384, 2304) +
              run_case<__nv_bfloat16>(16384, 3072) + run_case<float>(528, 768) + run_case<__nv_bfloat16>(1000, 100);
  std::printf("%s: %s\n", LAB_NAME, fails == 0 ? "all checks passed" : "CHECKS FAILED");
  return fails == 0 ? 0 : 1;
}
