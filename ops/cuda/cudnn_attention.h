// cuDNN's fused attention for the flash_attention op's contract (ops/flash_attention.h, no dropout), through
// the cuDNN frontend's graph API (sdpa and sdpa_backward nodes). Built only with cuDNN 9 and the frontend's
// headers (CMake defines XF_HAVE_CUDNN_ATTENTION); ops/cuda/attention_dispatch.h decides when it runs.
//
//   forward   out = softmax(scale q k^T) v, lse[b,h,i] = log sum_j exp(scale q_i . k_j) (natural log; cuDNN's
//             "Stats" output, which is this lse: checked against the native kernel by the tests)
//   backward  dq, dk, dv from q, k, v, out, dout and that lse (dk, dv summed over each kv head's group)
// bf16 or f16 in and out, fp32 for the scores, the softmax and the accumulators. GQA/MQA (H % Hk == 0),
// any finite scale, an additive bias (and its gradient), causal masks and sliding windows aligned top-left (torch's is_causal, the op's) or bottom-right
// (Sq <= Sk), as far as cuDNN's support check accepts them (it refuses some windows on some versions: a refusal
// is cached with its reason and the dispatcher runs the native kernel).
// Tensors are (B, H, S, D) with explicit element strides over b, h and s (the head dim is contiguous), so
// packed (B, H, S, D) and (B, S, H, D) both work; lse is a packed (B, H, Sq) f32 array. Every pointer must be
// 16-byte aligned (kCudnnSdpaAlignment).
//
// Plans: for each key (direction, dtype, sizes, strides, scale, mask, determinism, stats) the graph is validated,
// built, given heuristic mode A's execution plans, checked for support and built once (every plan of the unified
// and the composite implementation, timed on the first call, unless XF_CUDNN_AUTOTUNE=0), then cached in the
// CudaContext's plan cache, a failing key too (with cuDNN's reason), so a shape cuDNN cannot run is probed
// once. One cuDNN handle per context, on the context's stream, used by one thread at a time. Scratch comes
// from the context's workspace when it fits, else from its caching allocator (stream-ordered).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "ops/flash_attention.h"  // HeadStrides
#include "runtime/dtype.h"

namespace xfr::cuda {

class CudaContext;

// cuDNN's attention kernels move q, k, v, out with 16-byte vector loads and TMA and do not check pointers
// against that (on sm_90 a misaligned pointer gives wrong results, not an error: the frontend's note on its
// operand alignment), so every pointer must be 16-byte aligned; callers route others to the native kernel.
constexpr size_t kCudnnSdpaAlignment = 16;


struct CudnnSdpaArgs {
  DType dtype = DType::bf16;  // bf16 or f16
  int64_t B = 0, H = 0, Hk = 0, Sq = 0, Sk = 0, D = 0;
  // q (and dq), k (dk), v (dv), o (out and dout)
  HeadStrides q, k, v, o;  // element strides over (batch, head, seq); ops/flash_attention.h's head_strides()
  double scale = 1.0;  // applied in fp32, as the native kernel does
  // The keys each query sees (ops/flash_attention.h): causal (right 0), sliding windows, top-left or bottom-right
  // diagonal; cuDNN's diagonal band with left bound left + 1 (it keeps key j when j > i - bound) and right bound
  // right.
  AttentionBand band;
  // Forward: whether lse (cuDNN's Stats) is written. false for an inference forward whose lse nothing reads
  // (Op::output_optional): the graph then has no Stats output, as torch's inference SDPA asks cuDNN.
  bool stats = true;
  // An additive bias (bias_batch, bias_heads, Sq, Sk) of the dtype, contiguous, broadcast over an extent of 1
  // (ops/flash_attention.h), added to the scaled scores before the mask and the softmax (the native kernels' order and
  // cuDNN's). Its rows must be 16-byte aligned: Sk a multiple of 8. Backward: bias_grad asks for dbias (the bias's
  // shape: dS summed over the broadcast axes; cuDNN runs it on its dP-workspace backward only).
  bool bias = false;
  int64_t bias_batch = 1, bias_heads = 1;
  bool bias_grad = false;
  // Backward: cuDNN's deterministic algorithm (bitwise reproducible dq, like the native kernel's; on sm_90 it
  // keeps dP in a B·H·Sq·Sk scratch). false: dq accumulated with atomics (faster, O(B·H·Sq·D) scratch).
  bool deterministic = true;
};

struct CudnnSdpaSupport {
  std::string unsupported;     // empty: cuDNN runs this call; else why not (cuDNN's own message when it refused)
  size_t workspace_bytes = 0;  // the plan's scratch
  std::string engine;          // how the plan was made ("implementation auto, heuristic mode A")
};

// Whether cuDNN can run the call: static checks (dtype, sizes, version) then the cached plan (built on first
// use: this may take a while). Pointers are not looked at (see kCudnnSdpaAlignment).
CudnnSdpaSupport cudnn_sdpa_support(CudaContext& ctx, const CudnnSdpaArgs& a, bool backward);

// Run the cached plan (built on first use; its candidate plans timed on the first call, see the .cpp). lse may be
// null exactly when a.stats is false; bias (Bb, Hb, Sq, Sk) is given exactly when a.bias, dbias (its shape) exactly
// when a.bias_grad. Throws xfr::Error("flash_attention", ...) when cuDNN cannot run the
// call (with cudnn_sdpa_support's reason) or a pointer is not 16-byte aligned. Work is issued on ctx's stream.
void cudnn_sdpa_forward(CudaContext& ctx, const CudnnSdpaArgs& a, const void* q, const void* k, const void* v,
                        void* out, float* lse, const void* bias = nullptr);
void cudnn_sdpa_backward(CudaContext& ctx, const CudnnSdpaArgs& a, const void* q, const void* k, const void* v,
                         const void* out, const void* dout, const float* lse, void* dq, void* dk, void* dv,
                         const void* bias = nullptr, void* dbias = nullptr);

// Plans of this context: graphs built (supported or not) and those cuDNN refused (tests check that a second
// call builds nothing).
struct CudnnSdpaStats {
  int64_t graphs_built = 0;
  int64_t graphs_unsupported = 0;
};
CudnnSdpaStats cudnn_sdpa_stats(CudaContext& ctx);

// Versions: the cuDNN library loaded at run time (cudnnGetVersion(), e.g. 91400; needs no GPU), the cuDNN
// headers and the frontend this was compiled against, as "9.14.0".
int cudnn_runtime_version();
std::string cudnn_version_string(int version);
int cudnn_compiled_version();
std::string cudnn_frontend_version();
// Empty when the loaded cuDNN can serve this build (same major version as the headers, 9.0 or newer), else why.
std::string cudnn_runtime_problem();

}  // namespace xfr::cuda
