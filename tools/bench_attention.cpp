// Attention kernel benchmark, run beside tools/bench_attention_torch.py in one job (tools/gpu_check.sh attn):
// the FlashAttention grid, 16k tokens per batch (B = 16384 / S), hidden 2048 (H = 2048 / D; --hidden changes it, e.g.
// 768 for GPT-2 124M's attention at D = 64: H = 12), D = 64 and 128,
// S = 512 ... 16k, causal and not, bf16, q/k/v packed (B, H, S, D) from a normal distribution. For each point:
//   native        our kernels (ops/cuda/flash_attention_launch.h): the Hopper forward and backward where they
//                 apply (the row's native_forward / native_backward say which ran), else the FA2-style mma.sync ones;
//                 deterministic backward (what auto runs by default)
//   native_atomic the same forward, the backward with dq summed by reductions in L2 (FlashAttentionArgs::deterministic
//                 false, XF_ATTENTION_DETERMINISTIC=0; the kind of torch's flash backend, FA2)
//   cudnn         cuDNN SDPA through ops/cuda/cudnn_attention.h, deterministic backward (what auto runs)
//   cudnn_atomic  the same forward, the backward with atomic dq (torch's cuDNN backend's kind)
// forward and forward+backward TFLOP/s (FlashAttention convention: forward 4·B·H·S²·D, halved when causal;
// backward 2.5x the forward, so forward+backward is 3.5x), medians over CUDA-event-timed repetitions; the
// first cuDNN call's time (the plan build) and the backend XF_ATTENTION_BACKEND=auto picks for the forward and
// the backward.
//   xfrun_bench_attention [--out FILE.json] [--reps N] [--warmup N] [--D 64,128] [--S 512,1024,...] [--hidden 2048]
//                         [--backends native,native_atomic,cudnn,cudnn_atomic]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ops/attention_backend.h"
#include "ops/cuda/attention_dispatch.h"
#include "ops/cuda/cudnn_attention.h"
#include "ops/cuda/flash_attention_launch.h"
#include "ops/flash_attention.h"
#include "runtime/cuda/context.h"
#include "runtime/device_context.h"
#include "runtime/tensor.h"

using namespace xfr;

namespace {

constexpr int64_t kTokens = 16384;  // per batch, as the FlashAttention papers' grid
constexpr int64_t kDefaultHidden = 2048;  // the FlashAttention papers' grid

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::stoll(item));
  return v;
}

bool listed(const std::string& list, const std::string& name) {
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ','))
    if (item == name) return true;
  return false;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A device bf16 tensor of n normal values (every grid point has kTokens * hidden elements).
Tensor random_bf16(DeviceContext* ctx, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return Tensor::from_vector(v, {n}).to(DType::bf16).to_device(ctx);
}

// Median milliseconds of `fn` over `reps` runs, after `warmup` runs, measured as triton.testing.do_bench measures
// PyTorch's side (tools/bench_attention_torch.py): before each run a 256 MB memset clears the L2 cache (50 MB on the
// H200), then `fn` runs between two CUDA events. The memset also keeps the GPU busy while the host issues `fn`, so
// neither side's time includes its host work (a few microseconds, 2-4% of the shortest cells), only its kernels.
double median_ms(DeviceContext& ctx, int warmup, int reps, const std::function<void()>& fn) {
  constexpr size_t kFlushBytes = size_t(256) << 20;  // do_bench's cache-clearing buffer: 256 MB
  const std::shared_ptr<void> flush = ctx.allocate(kFlushBytes);  // the caching pool hands it back each call
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    ctx.memset_zero(flush.get(), kFlushBytes);
    const auto a = ctx.record_event();
    fn();
    const auto b = ctx.record_event();
    ms.push_back(ctx.elapsed_ms(a, b));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string out, backends = "native,native_atomic,cudnn,cudnn_atomic";
  int reps = 10, warmup = 3;  // few: the whole grid, with PyTorch's, must fit gpu_check's attn step
  int64_t hidden = kDefaultHidden;
  std::vector<int64_t> Ds{64, 128}, Ss{512, 1024, 2048, 4096, 8192, 16384};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--out") out = v;
    else if (a == "--reps") reps = std::stoi(v);
    else if (a == "--warmup") warmup = std::stoi(v);
    else if (a == "--D") Ds = parse_list(v);
    else if (a == "--S") Ss = parse_list(v);
    else if (a == "--backends") backends = v;
    else if (a == "--hidden") hidden = std::stoll(v);
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  bool shapes_ok = !Ds.empty() && !Ss.empty() && hidden > 0;
  for (int64_t D : Ds) shapes_ok &= D > 0 && hidden % D == 0;
  for (int64_t S : Ss) shapes_ok &= S > 0 && kTokens % S == 0;
  if (argc % 2 == 0 || reps < 1 || warmup < 0 || !shapes_ok) {
    std::fprintf(stderr, "usage: xfrun_bench_attention [--out FILE.json] [--reps N] [--warmup N] [--D 64,128] "
                         "[--S 512,...] [--backends native,native_atomic,cudnn,cudnn_atomic] [--hidden 2048]\n  (D divides the hidden %lld, S "
                         "divides %lld)\n",
                 static_cast<long long>(hidden), static_cast<long long>(kTokens));
    return 2;
  }
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "xfrun_bench_attention: %s\n", cuda_unavailable_reason().c_str());
    return 1;
  }
  const bool with_cudnn =
#ifdef XF_HAVE_CUDNN_ATTENTION
      true;
#else
      false;
#endif
  nlohmann::json res;
  std::vector<nlohmann::json> rows;
  try {
    auto ctx_ptr = make_device_context(Device::cuda(0));
    auto& ctx = *dynamic_cast<cuda::CudaContext*>(ctx_ptr.get());
    res["device"] = ctx.describe();
    for (const AttentionBackendInfo& b : attention_backends_info())
      if (b.name.rfind("cudnn", 0) == 0) res["cudnn"] = b.available ? "available (" + b.detail + ")" : b.detail;
    const int64_t n = kTokens * hidden;
    const Tensor q = random_bf16(&ctx, n, 1), k = random_bf16(&ctx, n, 2), v = random_bf16(&ctx, n, 3);
    const Tensor dout = random_bf16(&ctx, n, 4);
    Tensor o = Tensor::empty({kTokens * hidden}, DType::bf16, &ctx);
    Tensor dq = Tensor::empty({kTokens * hidden}, DType::bf16, &ctx), dk = Tensor::empty({kTokens * hidden}, DType::bf16, &ctx);
    Tensor dv = Tensor::empty({kTokens * hidden}, DType::bf16, &ctx);
    // lse: B * H * S = kTokens * hidden / D floats, the most for the smallest D.
    Tensor lse = Tensor::empty({kTokens * hidden / *std::min_element(Ds.begin(), Ds.end())}, DType::f32, &ctx);
    std::printf("attention bf16, %lld tokens, hidden %lld (TFLOP/s fwd | fwd+bwd; %d reps)\n",
                static_cast<long long>(kTokens), static_cast<long long>(hidden), reps);
    std::fflush(stdout);
    for (int64_t D : Ds)
      for (int64_t S : Ss)
        for (bool causal : {false, true}) {
          cuda::FlashAttentionArgs a;
          a.dtype = DType::bf16;
          a.B = kTokens / S;
          a.H = a.Hk = hidden / D;
          a.Sq = a.Sk = S;
          a.D = D;
          a.q_strides = a.k_strides = head_strides(AttentionLayout::bhsd, a.H, S, D);
          a.scale = 1.0 / std::sqrt(static_cast<double>(D));
          a.causal = causal;
          const double flops = 4.0 * a.B * a.H * S * S * D / (causal ? 2 : 1);
          const auto base = [&] {
            return nlohmann::json{{"D", D}, {"S", S}, {"B", a.B}, {"H", a.H}, {"causal", causal}};
          };
          std::string line = str_cat("D=", D, " S=", S, causal ? " causal " : "        ");
          const auto run = [&](const std::string& name, const std::function<void()>& fwd,
                               const std::function<void()>& bwd) {
            nlohmann::json r = base();
            r["backend"] = name;
            try {
              const double t0 = now_ms();
              fwd();
              bwd();
              ctx.synchronize();
              r["first_call_ms"] = now_ms() - t0;  // cuDNN: includes building the forward and backward plans
              const double f = median_ms(ctx, warmup, reps, fwd);
              const double fb = median_ms(ctx, warmup, reps, [&] {
                fwd();
                bwd();
              });
              r["fwd_ms"] = f;
              r["fwdbwd_ms"] = fb;
              r["fwd_TFLOPs"] = flops / f / 1e9;
              r["fwdbwd_TFLOPs"] = 3.5 * flops / fb / 1e9;
              line += str_cat(" | ", name, " ", static_cast<int>(flops / f / 1e9), " ", static_cast<int>(3.5 * flops / fb / 1e9));
            } catch (const std::exception& e) {
              r["error"] = std::string(e.what()).substr(0, 300);
              line += str_cat(" | ", name, " n/a");
            }
            rows.push_back(r);
          };
          for (const char* name : {"native", "native_atomic"}) {
            if (!listed(backends, name)) continue;
            cuda::FlashAttentionArgs na = a;
            na.deterministic = std::string(name) == "native";
            const std::shared_ptr<void> fws = cuda::attach_forward_scratch(ctx, na);  // as attention_forward runs it
            const size_t ws_bytes = cuda::flash_attention_backward_workspace_bytes(na);
            const std::shared_ptr<void> ws = ctx.allocate(ws_bytes);
            run(name,
                [&] {
                  cuda::launch_flash_attention_forward(na, q.raw_data(), k.raw_data(), v.raw_data(), o.raw_data(),
                                                       lse.data<float>(), ctx.stream());
                },
                [&] {
                  cuda::launch_flash_attention_backward(na, q.raw_data(), k.raw_data(), v.raw_data(), o.raw_data(),
                                                        dout.raw_data(), lse.data<float>(), nullptr, dq.raw_data(),
                                                        dk.raw_data(), dv.raw_data(), nullptr, ws.get(), ctx.stream());
                });
            // Which native kernels ran: the Hopper ones (sm90) or the mma.sync ones, and why.
            const auto ran = [](const std::string& why) { return why.empty() ? std::string("sm90") : "mma.sync (" + why + ")"; };
            rows.back()["native_forward"] =
                ran(cuda::flash_attention_sm90_refusal(na, q.raw_data(), k.raw_data(), v.raw_data(), o.raw_data()));
            rows.back()["native_backward"] = ran(cuda::flash_attention_sm90_backward_refusal(
                na, q.raw_data(), k.raw_data(), v.raw_data(), o.raw_data(), dout.raw_data(), dq.raw_data(),
                dk.raw_data(), dv.raw_data()));
          }
#ifdef XF_HAVE_CUDNN_ATTENTION
          for (const char* name : {"cudnn", "cudnn_atomic"}) {
            if (!listed(backends, name)) continue;
            cuda::CudnnSdpaArgs c = cuda::cudnn_args_of(a);
            c.deterministic = std::string(name) == "cudnn";
            run(name,
                [&] {
                  cuda::cudnn_sdpa_forward(ctx, c, q.raw_data(), k.raw_data(), v.raw_data(), o.raw_data(),
                                           lse.data<float>());
                },
                [&] {
                  cuda::cudnn_sdpa_backward(ctx, c, q.raw_data(), k.raw_data(), v.raw_data(), o.raw_data(),
                                            dout.raw_data(), lse.data<float>(), dq.raw_data(), dk.raw_data(),
                                            dv.raw_data());
                });
            const cuda::CudnnSdpaSupport s = cuda::cudnn_sdpa_support(ctx, c, true);
            rows.back()["bwd_workspace_bytes"] = s.workspace_bytes;
            rows.back()["bwd_engine"] = s.engine;
          }
#endif
          // What auto would run (after the runs above, so their first calls include the cuDNN plan builds).
          nlohmann::json choice = base();
          choice["backend"] = "auto";
          for (bool bwd : {false, true}) {
            try {
              choice[bwd ? "auto_bwd" : "auto_fwd"] =
                  attention_backend_name(cuda::attention_backend_for(ctx, AttentionBackendRequest::automatic, a, bwd));
            } catch (const std::exception& e) {
              choice[bwd ? "auto_bwd" : "auto_fwd"] = std::string("error: ") + e.what();
            }
          }
          rows.push_back(choice);
          line += str_cat(" | auto ", choice["auto_fwd"].get<std::string>(), "/", choice["auto_bwd"].get<std::string>());
          std::printf("%s\n", line.c_str());
          std::fflush(stdout);
        }
    if (!with_cudnn) std::printf("cuDNN attention: %s\n", res.value("cudnn", std::string("not built")).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xfrun_bench_attention: %s\n", e.what());
    res["attention"] = rows;
    if (!out.empty()) std::ofstream(out) << res.dump(1);
    return 1;
  }
  res["attention"] = rows;
  if (!out.empty()) std::ofstream(out) << res.dump(1);
  return 0;
}
