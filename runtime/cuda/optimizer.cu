// The device optimizer (runtime/device_optimizer.h) on CUDA: fused multi-tensor AdamW and SGD kernels over
// the flat f32 buffers, a deterministic two-stage gradient-norm reduction, and the loss-scale update.
//
// Work is cut into chunks: pieces of at most kChunk elements of one slot, listed once in a device table
// (begin, length, decays). The update kernels run one block per chunk, so one launch covers every parameter
// and padding between slots is neither read nor written. The per-step scalars are read from a StepScalars
// in device memory, so every launch here except the host setters can be captured in a CUDA graph.
//
// Arithmetic mirrors runtime/optimizer.cpp operation by operation with round-to-nearest intrinsics
// (__fmul_rn, __fadd_rn, ...), which nvcc never contracts into an FMA; with IEEE division and square root
// the updates then round exactly as the host's (GCC compiles the host code with -std=c++17, i.e.
// -ffp-contract=off). The only other difference is the double-precision pow() of the bias corrections
// (CUDA's is within 2 ulp of double, glibc's within 1), which reaches a float only in a rare tie.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ops/cuda/device/reduce.cuh"
#include "ops/cuda/device/types.cuh"
#include "ops/cuda/device/vec.cuh"
#include "runtime/cuda/check.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/optimizer.h"
#include "runtime/tensor.h"

namespace xfr::cuda {
namespace {

// Threads per block of every kernel here: 8 warps, so 8 resident blocks fill an SM's 2048 threads.
constexpr int kThreads = 256;

// Elements per chunk (the unit of one block's work). 16Ki = 256 threads x 4 floats (one float4) x 16
// iterations: enough to amortise a block's set-up (one chunk-table read, the bias corrections), while a
// 124M-parameter model still gives ~7.6k blocks (~57 per SM on an H200), so the last wave is short. A
// multiple of 4 keeps every chunk of a 16-byte-aligned slot 16-byte aligned; the same as the host's kChunk.
constexpr size_t kChunk = 16384;

// Blocks of the first stage of the norm: 132 SMs x 8 resident blocks = 1056 fill an H200 once; 1024 is the
// power of two below. A fixed count (not derived from the device) fixes which chunks each block sums and in
// what order, so for a given slot layout the norm has the same bits on every GPU and every run.
constexpr int kNormBlocks = 1024;

// torch's guard against dividing by a zero norm in clip_grad_norm_ (as runtime/optimizer.cpp).
constexpr double kClipEps = 1e-6;

struct Chunk {
  uint64_t begin;  // first element, into the flat buffers
  uint32_t len;    // elements, 1..kChunk
  uint32_t decay;  // 1 when weight decay applies to this chunk's slot
};
static_assert(sizeof(Chunk) == 16, "one 16-byte load per chunk");

struct LossScaleState {
  float scale;             // first, so scale_device() points at offset 0
  int32_t reserved;        // keeps the counters 8-byte aligned
  int64_t growth_tracker;
  int64_t overflow_steps;
};

__device__ __forceinline__ bool aligned16(const void* p) { return dev::aligned16(p); }

// ---- the parameter mirror (DeviceOptimizer::ParamMirror) --------------------------------------------------
// M: the mirror's element type (__nv_bfloat16 or __half), or void for no mirror. The updated parameters are rounded to
// nearest even (dev::from_float), as the executor's conversion of the whole flat buffer rounds them.

// Four 16-bit values: one 8-byte store.
template <class M>
struct alignas(8) Mirror4 {
  M v[4];
};

// Writes the updated p[i] (i < n, float4 i covers elements 4i..4i+3 of the chunk) to the chunk's mirror.
template <class M>
__device__ __forceinline__ void mirror_store4(M* mirror, uint32_t i, const float4& p) {
  if constexpr (!std::is_void_v<M>) {
    Mirror4<M> r;
    r.v[0] = dev::from_float<M>(p.x);
    r.v[1] = dev::from_float<M>(p.y);
    r.v[2] = dev::from_float<M>(p.z);
    r.v[3] = dev::from_float<M>(p.w);
    reinterpret_cast<Mirror4<M>*>(mirror)[i] = r;
  }
}
template <class M>
__device__ __forceinline__ void mirror_store(M* mirror, uint32_t i, float p) {
  if constexpr (!std::is_void_v<M>) mirror[i] = dev::from_float<M>(p);
}
// The float4 path also stores the mirror four at a time: it needs 8-byte alignment (no mirror: always true).
template <class M>
__device__ __forceinline__ bool mirror_aligned(const M* mirror) {
  if constexpr (std::is_void_v<M>) return true;
  else return (reinterpret_cast<uintptr_t>(mirror) & 7) == 0;
}

// ---- host setters (by-value kernel arguments: stream-ordered like an async copy, without pinned staging) ---

enum : unsigned { kSetLr = 1u, kSetStep = 2u, kSetMultiplier = 4u };

__global__ void set_scalars_kernel(StepScalars* s, unsigned what, float lr, int64_t step_count, float multiplier) {
  if (what & kSetLr) s->lr = lr;
  if (what & kSetStep) s->step_count = step_count;
  if (what & kSetMultiplier) s->grad_multiplier = multiplier;
}

// The multiplier of this step's gradients, (base * 1/scale) * clip, rounded as the host rounds a
// pre-multiplied gradient; exactly 1 when nothing is folded in (so g * 1 == g).
__device__ __forceinline__ float effective_multiplier(const StepScalars& s) {
  return __fmul_rn(__fmul_rn(s.grad_multiplier, s.inv_loss_scale), s.clip_factor);
}

// ---- gradient norm: two deterministic stages, no float atomics ---------------------------------------

// Stage 1: block b sums x^2 in double over chunks b, b + gridDim.x, ... into partials[b].
// Memory bound: reads 4 bytes per parameter once (~0.1 ms for 124M parameters at 4.8 TB/s); the double FMA
// per element is far below the H200's fp64 rate. Double accumulation, as the host's global_grad_norm,
// cannot overflow for finite floats (1e77 per square), so a non-finite sum means a non-finite gradient.
__global__ void __launch_bounds__(kThreads)
    sumsq_partials_kernel(const float* __restrict__ g, const Chunk* __restrict__ chunks, int64_t n_chunks,
                          double* __restrict__ partials) {
  double acc = 0.0;
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    const Chunk ch = chunks[c];
    const float* x = g + ch.begin;
    uint32_t done = 0;
    if (aligned16(x)) {
      const uint32_t n4 = ch.len / 4;
      for (uint32_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 a = reinterpret_cast<const float4*>(x)[i];
        acc += static_cast<double>(a.x) * a.x;
        acc += static_cast<double>(a.y) * a.y;
        acc += static_cast<double>(a.z) * a.z;
        acc += static_cast<double>(a.w) * a.w;
      }
      done = n4 * 4;
    }
    for (uint32_t i = done + threadIdx.x; i < ch.len; i += blockDim.x) acc += static_cast<double>(x[i]) * x[i];
  }
  acc = dev::block_sum<double>(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Stage 2 (one block): the partials in a fixed order, then the norm, found_inf and the clip factor.
// Latency bound (a few microseconds: one launch, <= kNormBlocks doubles).
// loss_scale: null without a LossScaler. max_norm: 0 = no clipping.
__global__ void __launch_bounds__(kThreads)
    norm_finalize_kernel(const double* __restrict__ partials, int n, StepScalars* s, const float* loss_scale,
                         float max_norm) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partials[i];
  acc = dev::block_sum<double>(acc);
  if (threadIdx.x != 0) return;
  const float inv = loss_scale ? __frcp_rn(*loss_scale) : 1.0f;  // exact for a power-of-two scale
  s->inv_loss_scale = inv;
  // The norm of grads * multiplier, scaled after the sum (the multiplier is one number for all of them).
  const double norm = sqrt(acc) * fabs(static_cast<double>(s->grad_multiplier) * static_cast<double>(inv));
  s->grad_norm = static_cast<float>(norm);
  float clip = 1.0f;
  if (!isfinite(norm)) {
    s->found_inf = 1;  // only ever set here; step() clears it
  } else if (max_norm > 0.0f && norm > static_cast<double>(max_norm)) {
    clip = static_cast<float>(static_cast<double>(max_norm) / (norm + kClipEps));  // as host clip_grad_norm
  }
  s->clip_factor = clip;
}

// ---- AdamW -------------------------------------------------------------------------------------------

struct AdamWConsts {  // from the config, fixed for the optimizer's life
  float beta1, beta2, one_minus_beta1, one_minus_beta2, eps, weight_decay;
};

struct AdamWStep {  // derived once per block from the StepScalars, as the host derives them per step
  float mul, decay, step_size, bc2_sqrt;
};

__device__ AdamWStep adamw_step_scalars(const StepScalars& s, const AdamWConsts& c) {
  // In double, then rounded once to float, as runtime/optimizer.cpp (torch computes them from Python floats).
  // _rn intrinsics keep nvcc from contracting 1 - lr * wd into an FMA the host does not do.
  const double t = static_cast<double>(s.step_count + 1);
  const double bc1 = __dadd_rn(1.0, -pow(static_cast<double>(c.beta1), t));
  const double bc2 = __dadd_rn(1.0, -pow(static_cast<double>(c.beta2), t));
  AdamWStep k;
  k.mul = effective_multiplier(s);
  k.decay = static_cast<float>(__dadd_rn(1.0, -__dmul_rn(static_cast<double>(s.lr), c.weight_decay)));
  k.step_size = static_cast<float>(__ddiv_rn(static_cast<double>(s.lr), bc1));
  k.bc2_sqrt = static_cast<float>(__dsqrt_rn(bc2));
  return k;
}

// One element, operation for operation as adamw_range() in runtime/optimizer.cpp:
//   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;  p = p*decay - step_size*m / (sqrt(v)/bc2_sqrt + eps)
__device__ __forceinline__ void adamw_element(float& p, float g, float& m, float& v, const AdamWConsts& c,
                                              const AdamWStep& k, float decay) {
  const float gi = __fmul_rn(g, k.mul);
  m = __fadd_rn(__fmul_rn(c.beta1, m), __fmul_rn(c.one_minus_beta1, gi));
  v = __fadd_rn(__fmul_rn(c.beta2, v), __fmul_rn(__fmul_rn(c.one_minus_beta2, gi), gi));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), k.bc2_sqrt), c.eps);
  p = __fsub_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(k.step_size, m), denom));
}

// One block per chunk. Memory bound: reads p, g, m, v and writes p, m, v = 28 bytes per parameter; 124M
// parameters move 3.5 GB, ~0.72 ms at the H200's 4.8 TB/s peak (~0.9 ms at the ~4 TB/s a stream kernel
// reaches). The two IEEE divisions and the square root (~60 instructions per element) stay well below the
// ~400 fp32 instructions per element the SMs could issue in that time.
// mirror: (flat) the parameters' 16-bit copy, rewritten from the updated values; unused when M is void.
template <class M>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                 M* __restrict__ mirror, const Chunk* __restrict__ chunks, const StepScalars* __restrict__ s,
                 AdamWConsts c) {
  // found_inf is read by every thread and written by no block of this kernel: a uniform early exit.
  if (s->found_inf) return;
  __shared__ AdamWStep k_shared;
  if (threadIdx.x == 0) k_shared = adamw_step_scalars(*s, c);
  __syncthreads();
  const AdamWStep k = k_shared;
  const Chunk ch = chunks[blockIdx.x];
  const float decay = ch.decay ? k.decay : 1.0f;  // p * 1.0f == p exactly
  float* pp = p + ch.begin;
  const float* gp = g + ch.begin;
  float* mp = m + ch.begin;
  float* vp = v + ch.begin;
  M* mir = nullptr;
  if constexpr (!std::is_void_v<M>) mir = mirror + ch.begin;
  uint32_t done = 0;
  if (aligned16(pp) && aligned16(gp) && aligned16(mp) && aligned16(vp) && mirror_aligned(mir)) {
    const uint32_t n4 = ch.len / 4;
    for (uint32_t i = threadIdx.x; i < n4; i += blockDim.x) {
      float4 pv = reinterpret_cast<float4*>(pp)[i];
      const float4 gv = reinterpret_cast<const float4*>(gp)[i];
      float4 mv = reinterpret_cast<float4*>(mp)[i];
      float4 vv = reinterpret_cast<float4*>(vp)[i];
      adamw_element(pv.x, gv.x, mv.x, vv.x, c, k, decay);
      adamw_element(pv.y, gv.y, mv.y, vv.y, c, k, decay);
      adamw_element(pv.z, gv.z, mv.z, vv.z, c, k, decay);
      adamw_element(pv.w, gv.w, mv.w, vv.w, c, k, decay);
      reinterpret_cast<float4*>(pp)[i] = pv;
      reinterpret_cast<float4*>(mp)[i] = mv;
      reinterpret_cast<float4*>(vp)[i] = vv;
      mirror_store4(mir, i, pv);
    }
    done = n4 * 4;
  }
  for (uint32_t i = done + threadIdx.x; i < ch.len; i += blockDim.x) {
    adamw_element(pp[i], gp[i], mp[i], vp[i], c, k, decay);
    mirror_store(mir, i, pp[i]);
  }
}

// ---- SGD ---------------------------------------------------------------------------------------------

enum class SgdMode { plain, momentum, nesterov };

struct SgdConsts {
  float weight_decay, momentum;
};

// One element, as sgd_range() in runtime/optimizer.cpp (dampening 0):
//   d = g + wd*p (decaying chunks);  buf = mu*buf + d;  d = nesterov ? d + mu*buf : buf;  p -= lr*d
template <SgdMode kMode>
__device__ __forceinline__ void sgd_element(float& p, float g, float* buf, float mul, float lr, bool decay,
                                            const SgdConsts& c) {
  float d = __fmul_rn(g, mul);
  if (decay) d = __fadd_rn(d, __fmul_rn(c.weight_decay, p));
  if (kMode != SgdMode::plain) {
    const float b = __fadd_rn(__fmul_rn(c.momentum, *buf), d);
    *buf = b;
    d = kMode == SgdMode::nesterov ? __fadd_rn(d, __fmul_rn(c.momentum, b)) : b;
  }
  p = __fsub_rn(p, __fmul_rn(lr, d));
}

// One block per chunk. Memory bound: with momentum reads p, g, buf and writes p, buf (20 bytes per
// parameter, ~0.5 ms for 124M at 4.8 TB/s); plain SGD reads p, g and writes p (12 bytes).
// buf is null for plain SGD (no momentum buffer, as torch keeps none).
// mirror: as adamw_kernel's.
template <SgdMode kMode, class M>
__global__ void __launch_bounds__(kThreads)
    sgd_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ buf, M* __restrict__ mirror,
               const Chunk* __restrict__ chunks, const StepScalars* __restrict__ s, SgdConsts c) {
  if (s->found_inf) return;  // uniform, as in adamw_kernel
  const float mul = effective_multiplier(*s);
  const float lr = s->lr;
  const Chunk ch = chunks[blockIdx.x];
  const bool decay = ch.decay != 0;  // the host already folded weight_decay != 0 into the flag
  float* pp = p + ch.begin;
  const float* gp = g + ch.begin;
  float* bp = kMode == SgdMode::plain ? nullptr : buf + ch.begin;
  M* mir = nullptr;
  if constexpr (!std::is_void_v<M>) mir = mirror + ch.begin;
  uint32_t done = 0;
  if (aligned16(pp) && aligned16(gp) && (kMode == SgdMode::plain || aligned16(bp)) && mirror_aligned(mir)) {
    const uint32_t n4 = ch.len / 4;
    for (uint32_t i = threadIdx.x; i < n4; i += blockDim.x) {
      float4 pv = reinterpret_cast<float4*>(pp)[i];
      const float4 gv = reinterpret_cast<const float4*>(gp)[i];
      float4 bv = make_float4(0.f, 0.f, 0.f, 0.f);
      if (kMode != SgdMode::plain) bv = reinterpret_cast<float4*>(bp)[i];
      sgd_element<kMode>(pv.x, gv.x, &bv.x, mul, lr, decay, c);
      sgd_element<kMode>(pv.y, gv.y, &bv.y, mul, lr, decay, c);
      sgd_element<kMode>(pv.z, gv.z, &bv.z, mul, lr, decay, c);
      sgd_element<kMode>(pv.w, gv.w, &bv.w, mul, lr, decay, c);
      reinterpret_cast<float4*>(pp)[i] = pv;
      if (kMode != SgdMode::plain) reinterpret_cast<float4*>(bp)[i] = bv;
      mirror_store4(mir, i, pv);
    }
    done = n4 * 4;
  }
  for (uint32_t i = done + threadIdx.x; i < ch.len; i += blockDim.x) {
    float unused = 0.0f;
    sgd_element<kMode>(pp[i], gp[i], kMode == SgdMode::plain ? &unused : bp + i, mul, lr, decay, c);
    mirror_store(mir, i, pp[i]);
  }
}

// ---- after the update ----------------------------------------------------------------------------------

// One thread: counts the step (or the skip) and resets the per-step fields for the next step. A separate
// launch because every block of the update must have read step_count and found_inf first. Latency bound
// (~2 us of stream time, 0.2% of a 124M-parameter AdamW step).
__global__ void finish_step_kernel(StepScalars* s) {
  const bool skipped = s->found_inf != 0;
  s->last_step_skipped = skipped ? 1 : 0;
  if (skipped)
    s->skipped_steps += 1;
  else
    s->step_count += 1;
  s->found_inf = 0;
  s->clip_factor = 1.0f;
  s->inv_loss_scale = 1.0f;
}

// One thread: GradScaler.update's schedule (torch's _amp_update_scale_).
__global__ void loss_scale_update_kernel(LossScaleState* ls, const StepScalars* s, float growth, float backoff,
                                         int64_t interval) {
  if (s->last_step_skipped) {
    ls->scale = ls->scale * backoff;
    ls->growth_tracker = 0;
    ls->overflow_steps += 1;
    return;
  }
  const int64_t clean = ls->growth_tracker + 1;
  if (clean >= interval) {
    const float grown = ls->scale * growth;
    if (isfinite(grown)) ls->scale = grown;  // torch keeps the old scale rather than grow it to inf
    ls->growth_tracker = 0;
  } else {
    ls->growth_tracker = clean;
  }
}

__global__ void set_loss_scale_kernel(LossScaleState* ls, float scale, int64_t growth_tracker) {
  ls->scale = scale;
  ls->growth_tracker = growth_tracker;
}

// ---- host side -------------------------------------------------------------------------------------------

// what: the error's op; thing: what was asked for ("a device optimizer").
std::shared_ptr<CudaContext> cuda_context(DeviceContext& ctx, const char* what, const char* thing) {
  auto* cuda = dynamic_cast<CudaContext*>(&ctx);
  XF_CHECK(cuda != nullptr, what, thing, " needs a CUDA context, got one for ", ctx.device().str(), " (",
           ctx.describe(), ")");
  return std::static_pointer_cast<CudaContext>(cuda->shared_from_this());
}

// Host inputs written while the stream is being captured would be frozen into the graph: refuse them.
void check_not_capturing(cudaStream_t stream, const char* what, const char* fn) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  XF_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  XF_CHECK(status == cudaStreamCaptureStatusNone, what, fn,
           " is a host input of the step: call it before launching a captured graph, not while capturing");
}

class CudaDeviceOptimizer final : public DeviceOptimizer {
 public:
  CudaDeviceOptimizer(std::shared_ptr<CudaContext> ctx, const Optimizer& host)
      : DeviceOptimizer(host.config(), host.slots(), host.flat_size()), ctx_(std::move(ctx)) {
    const OptimizerConfig& c = config_;
    adamw_ = c.name == "adamw";
    if (adamw_) {
      mode_ = SgdMode::plain;  // unused
    } else {
      mode_ = c.momentum == 0.0f ? SgdMode::plain : c.nesterov ? SgdMode::nesterov : SgdMode::momentum;
    }
    // The chunk table, as the host's split_slots(): each slot in pieces of <= kChunk elements.
    std::vector<Chunk> chunks;
    for (const ParamSlot& slot : slots_) {
      // SGD: torch skips the decay term entirely when weight_decay == 0 (so 0 * inf never makes a NaN).
      const bool decay = decays(c, slot.kind) && (adamw_ || c.weight_decay != 0.0f);
      for (size_t b = 0; b < slot.numel; b += kChunk)
        chunks.push_back(Chunk{static_cast<uint64_t>(slot.offset + b),
                               static_cast<uint32_t>(std::min(kChunk, slot.numel - b)), decay ? 1u : 0u});
    }
    n_chunks_ = static_cast<int64_t>(chunks.size());
    XF_CHECK(n_chunks_ <= int64_t(0x7fffffff), "optimizer", "too many parameters for one launch: ", n_chunks_,
             " chunks of ", kChunk);  // gridDim.x's limit, 2^31 - 1 blocks (3.5e13 parameters)
    norm_blocks_ = static_cast<int>(std::min<int64_t>(n_chunks_, kNormBlocks));

    chunks_ = ctx_->allocate(std::max<size_t>(1, chunks.size()) * sizeof(Chunk));
    partials_ = ctx_->allocate(static_cast<size_t>(kNormBlocks) * sizeof(double));
    scalars_ = ctx_->allocate(sizeof(StepScalars));
    // The state buffers the host optimizer has, by name and in its order: each [flat_size] f32, zeroed
    // (padding stays zero; the slots are overwritten by upload_state below).
    for (const auto& entry : mutable_state(host))
      state_.emplace_back(entry.first, Tensor::zeros({static_cast<int64_t>(flat_size_)}, DType::f32, ctx_.get()));

    if (adamw_) {
      exp_avg_ = device_state("exp_avg").data<float>();
      exp_avg_sq_ = device_state("exp_avg_sq").data<float>();
    } else if (mode_ != SgdMode::plain) {
      momentum_buffer_ = device_state("momentum_buffer").data<float>();
    }

    const StepScalars initial{};
    ctx_->copy(chunks_.get(), chunks.data(), chunks.size() * sizeof(Chunk), CopyKind::host_to_device);
    ctx_->copy(scalars_.get(), &initial, sizeof initial, CopyKind::host_to_device);
    upload_state(host);  // synchronizes: the host vectors above are done with
  }

  void set_lr(float lr) override {
    check_lr(lr);
    set_scalars(kSetLr, lr, 0, 0.0f, "set_lr");
  }

  void set_host_scalars(float lr, int64_t step_count) override {
    check_lr(lr);
    XF_CHECK(step_count >= 0, "optimizer", "step count must be >= 0, got ", step_count);
    set_scalars(kSetLr | kSetStep, lr, step_count, 0.0f, "set_host_scalars");
  }

  void set_grad_multiplier(float multiplier) override {
    XF_CHECK(std::isfinite(multiplier) && multiplier > 0.0f, "optimizer",
             "gradient multiplier must be finite and > 0, got ", multiplier);
    set_scalars(kSetMultiplier, 0.0f, 0, multiplier, "set_grad_multiplier");
  }

  void grad_norm(const float* grads_dev, const LossScaler* scaler) override { norm(grads_dev, 0.0f, scaler); }

  void clip_grad_norm(const float* grads_dev, float max_norm, const LossScaler* scaler) override {
    XF_CHECK(max_norm > 0.0f, "clip_grad_norm", "max_norm must be > 0, got ", max_norm);
    norm(grads_dev, max_norm, scaler);
  }

  void step(float* params_dev, const float* grads_dev, const ParamMirror& mirror) override {
    XF_CHECK(params_dev != nullptr && grads_dev != nullptr, "optimizer", "step: null parameter or gradient buffer");
    XF_CHECK(!mirror.data || mirror.dtype == DType::bf16 || mirror.dtype == DType::f16, "optimizer",
             "step: the parameter mirror must be bf16 or f16, got ", dtype_name(mirror.dtype));
    cudaStream_t stream = ctx_->stream();
    if (n_chunks_ > 0) {
      if (!mirror.data) update(params_dev, grads_dev, static_cast<void*>(nullptr));
      else if (mirror.dtype == DType::bf16) update(params_dev, grads_dev, static_cast<__nv_bfloat16*>(mirror.data));
      else update(params_dev, grads_dev, static_cast<__half*>(mirror.data));
    }
    finish_step_kernel<<<1, 1, 0, stream>>>(scalars());
    XF_CUDA_CHECK_LAUNCH("finish_step");
  }

  StepScalars read_scalars() override {
    StepScalars s{};
    ctx_->copy(&s, scalars_.get(), sizeof s, CopyKind::device_to_host);
    ctx_->synchronize();
    return s;
  }

  StepScalars* scalars_device() override { return scalars(); }
  const StepScalars* scalars_device() const override { return static_cast<const StepScalars*>(scalars_.get()); }

  void download_state(Optimizer& host) override {
    check_same_layout(host, "download_state");
    const auto host_state = host.state();
    for (const auto& [name, vec] : host_state)
      ctx_->copy(vec->data(), device_state(name).raw_data(), flat_size_ * sizeof(float), CopyKind::device_to_host);
    const StepScalars s = read_scalars();  // synchronizes, so the copies above are complete too
    host.set_step_count(s.step_count);
  }

  void upload_state(const Optimizer& host) override {
    check_same_layout(host, "upload_state");
    for (const auto& [name, vec] : mutable_state(host))
      ctx_->copy(device_state(name).raw_data(), vec->data(), flat_size_ * sizeof(float), CopyKind::host_to_device);
    // Stream-ordered after any step already issued; the lr stays as it was.
    set_scalars(kSetStep, 0.0f, host.step_count(), 0.0f, "upload_state");
    ctx_->synchronize();  // host memory taking part in a copy must stay valid until then
  }

 private:
  StepScalars* scalars() const { return static_cast<StepScalars*>(scalars_.get()); }

  // The update kernel of this optimizer, writing the mirror (M: its element type; void: none).
  template <class M>
  void update(float* params_dev, const float* grads_dev, M* mirror) {
    cudaStream_t stream = ctx_->stream();
    const Chunk* chunks = static_cast<const Chunk*>(chunks_.get());
    const unsigned grid = static_cast<unsigned>(n_chunks_);
    if (adamw_) {
      const OptimizerConfig& c = config_;
      AdamWConsts k{c.beta1,
                    c.beta2,
                    static_cast<float>(1.0 - static_cast<double>(c.beta1)),
                    static_cast<float>(1.0 - static_cast<double>(c.beta2)),
                    c.eps,
                    c.weight_decay};
      adamw_kernel<M><<<grid, kThreads, 0, stream>>>(params_dev, grads_dev, exp_avg_, exp_avg_sq_, mirror, chunks,
                                                     scalars(), k);
      XF_CUDA_CHECK_LAUNCH("adamw");
      return;
    }
    const SgdConsts k{config_.weight_decay, config_.momentum};
    float* buf = momentum_buffer_;
    switch (mode_) {
      case SgdMode::plain:
        sgd_kernel<SgdMode::plain, M><<<grid, kThreads, 0, stream>>>(params_dev, grads_dev, buf, mirror, chunks,
                                                                     scalars(), k);
        break;
      case SgdMode::momentum:
        sgd_kernel<SgdMode::momentum, M><<<grid, kThreads, 0, stream>>>(params_dev, grads_dev, buf, mirror, chunks,
                                                                        scalars(), k);
        break;
      case SgdMode::nesterov:
        sgd_kernel<SgdMode::nesterov, M><<<grid, kThreads, 0, stream>>>(params_dev, grads_dev, buf, mirror, chunks,
                                                                        scalars(), k);
        break;
    }
    XF_CUDA_CHECK_LAUNCH("sgd");
  }

  // Optimizer::state() is not const but only hands out pointers; they are only read here.
  static std::vector<std::pair<std::string, std::vector<float>*>> mutable_state(const Optimizer& host) {
    return const_cast<Optimizer&>(host).state();
  }

  static void check_lr(float lr) {
    XF_CHECK(std::isfinite(lr) && lr >= 0.0f, "optimizer", "lr must be finite and >= 0, got ", lr);
  }

  void set_scalars(unsigned what, float lr, int64_t step_count, float multiplier, const char* fn) {
    check_not_capturing(ctx_->stream(), "optimizer", fn);
    set_scalars_kernel<<<1, 1, 0, ctx_->stream()>>>(scalars(), what, lr, step_count, multiplier);
    XF_CUDA_CHECK_LAUNCH("set_scalars");
  }

  void norm(const float* grads_dev, float max_norm, const LossScaler* scaler) {
    XF_CHECK(grads_dev != nullptr, "optimizer", "grad_norm: null gradient buffer");
    cudaStream_t stream = ctx_->stream();
    if (norm_blocks_ > 0) {
      sumsq_partials_kernel<<<norm_blocks_, kThreads, 0, stream>>>(
          grads_dev, static_cast<const Chunk*>(chunks_.get()), n_chunks_, static_cast<double*>(partials_.get()));
      XF_CUDA_CHECK_LAUNCH("sumsq_partials");
    }
    norm_finalize_kernel<<<1, kThreads, 0, stream>>>(static_cast<const double*>(partials_.get()), norm_blocks_,
                                                     scalars(), scaler ? scaler->scale_device() : nullptr, max_norm);
    XF_CUDA_CHECK_LAUNCH("norm_finalize");
  }

  void check_same_layout(const Optimizer& host, const char* fn) const {
    XF_CHECK(host.config().name == config_.name, "optimizer", fn, ": host optimizer is '", host.config().name,
             "', the device one '", config_.name, "'");
    XF_CHECK(host.flat_size() == flat_size_, "optimizer", fn, ": host flat size ", host.flat_size(),
             " != device flat size ", flat_size_);
    const std::vector<ParamSlot>& hs = host.slots();
    XF_CHECK(hs.size() == slots_.size(), "optimizer", fn, ": host has ", hs.size(), " slots, the device ",
             slots_.size());
    for (size_t i = 0; i < hs.size(); ++i)
      XF_CHECK(hs[i].offset == slots_[i].offset && hs[i].numel == slots_[i].numel, "optimizer", fn, ": slot ", i,
               " ('", hs[i].name, "') is [", hs[i].offset, ", +", hs[i].numel, ") on the host, [", slots_[i].offset,
               ", +", slots_[i].numel, ") on the device");
    const auto names = mutable_state(host);
    XF_CHECK(names.size() == state_.size(), "optimizer", fn, ": host has ", names.size(), " state buffers, the device ",
             state_.size());
    for (const auto& [name, vec] : names)
      XF_CHECK(vec->size() == flat_size_, "optimizer", fn, ": host state '", name, "' has ", vec->size(),
               " elements, expected ", flat_size_);
  }

  const Tensor& device_state(const std::string& name) const {
    for (const auto& [n, t] : state_)
      if (n == name) return t;
    throw Error("optimizer", str_cat("no device state buffer '", name, "'"));
  }

  std::shared_ptr<CudaContext> ctx_;
  bool adamw_ = true;
  SgdMode mode_ = SgdMode::plain;
  int64_t n_chunks_ = 0;
  int norm_blocks_ = 0;                  // min(n_chunks_, kNormBlocks)
  std::shared_ptr<void> chunks_;         // [max(1, n_chunks_)] Chunk
  std::shared_ptr<void> partials_;       // [kNormBlocks] double, stage-1 sums of squares
  std::shared_ptr<void> scalars_;        // one StepScalars
  std::vector<std::pair<std::string, Tensor>> state_;  // as host.state(): each [flat_size] f32, zero padding
  float* exp_avg_ = nullptr;          // AdamW: state_ "exp_avg"
  float* exp_avg_sq_ = nullptr;       // AdamW: state_ "exp_avg_sq"
  float* momentum_buffer_ = nullptr;  // SGD with momentum: state_ "momentum_buffer"; null for plain SGD
};

class CudaLossScaler final : public LossScaler {
 public:
  CudaLossScaler(std::shared_ptr<CudaContext> ctx, const LossScalerConfig& config)
      : LossScaler(config), ctx_(std::move(ctx)) {
    state_ = ctx_->allocate(sizeof(LossScaleState));
    const LossScaleState initial{config_.init_scale, 0, 0, 0};
    ctx_->copy(state_.get(), &initial, sizeof initial, CopyKind::host_to_device);
    ctx_->synchronize();  // `initial` is a local
  }

  const float* scale_device() const override { return &static_cast<const LossScaleState*>(state_.get())->scale; }

  void update(const DeviceOptimizer& opt) override {
    loss_scale_update_kernel<<<1, 1, 0, ctx_->stream()>>>(state(), opt.scalars_device(), config_.growth_factor,
                                                          config_.backoff_factor, config_.growth_interval);
    XF_CUDA_CHECK_LAUNCH("loss_scale_update");
  }

  LossScalerStats stats() override {
    LossScaleState s{};
    ctx_->copy(&s, state_.get(), sizeof s, CopyKind::device_to_host);
    ctx_->synchronize();
    return LossScalerStats{s.scale, s.growth_tracker, s.overflow_steps};
  }

  void set_state(float scale, int64_t growth_tracker) override {
    XF_CHECK(std::isfinite(scale) && scale > 0.0f, "loss_scaler", "scale must be finite and > 0, got ", scale);
    XF_CHECK(growth_tracker >= 0, "loss_scaler", "growth tracker must be >= 0, got ", growth_tracker);
    check_not_capturing(ctx_->stream(), "loss_scaler", "set_state");
    set_loss_scale_kernel<<<1, 1, 0, ctx_->stream()>>>(state(), scale, growth_tracker);
    XF_CUDA_CHECK_LAUNCH("set_loss_scale");
  }

 private:
  LossScaleState* state() const { return static_cast<LossScaleState*>(state_.get()); }
  std::shared_ptr<CudaContext> ctx_;
  std::shared_ptr<void> state_;  // one LossScaleState
};

}  // namespace

std::unique_ptr<DeviceOptimizer> make_cuda_optimizer(DeviceContext& ctx, const Optimizer& host) {
  return std::make_unique<CudaDeviceOptimizer>(cuda_context(ctx, "optimizer", "a device optimizer"), host);
}

std::unique_ptr<LossScaler> make_cuda_loss_scaler(DeviceContext& ctx, const LossScalerConfig& config) {
  return std::make_unique<CudaLossScaler>(cuda_context(ctx, "loss_scaler", "a device loss scaler"), config);
}

}  // namespace xfr::cuda
