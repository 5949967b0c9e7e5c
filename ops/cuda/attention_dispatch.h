// The attention dispatcher: runs one flash_attention call (forward or backward) on our native kernel
// (ops/cuda/flash_attention_launch.h) or on cuDNN's fused attention (ops/cuda/cudnn_attention.h), by
// XF_ATTENTION_BACKEND and the rule of ops/attention_backend.h. The entry points take the launchers'
// arguments, with the CudaContext (its stream, caching allocator and plan cache) in place of a stream.
//
// What each backend runs (a call outside both is an error naming both reasons):
//   native  bf16, f16, f32; head dim 1..256; dropout; a gradient of lse; any pointer alignment
//   cudnn   bf16, f16; head dim a multiple of 8 up to 256; no dropout (cuDNN's RNG cannot draw the CPU oracle's
//           Philox mask); no gradient of lse in the backward; 16-byte aligned pointers; and whatever else cuDNN's
//           own support check refuses on this GPU and cuDNN version (probed once per shape, then cached)
#pragma once
#include <cstddef>
#include <memory>

#include "ops/attention_backend.h"
#include "ops/cuda/cudnn_attention.h"
#include "ops/cuda/flash_attention_launch.h"

namespace xfr::cuda {

class CudaContext;

// auto sends a call to cuDNN only when its plan's scratch is at most this. On sm_90 cuDNN's deterministic
// backward (the only kind the dispatcher uses: reproducible like the native kernel) keeps dP, B·H·Sq·Sk bf16
// values, in its scratch; 1 GiB is that buffer at 16k tokens of 2k context with 16 heads. Past it, memory is
// worth more than cuDNN's speed and the native kernel (O(B·H·Sq) scratch) runs. A forced cudnn ignores it.
constexpr size_t kAutoCudnnMaxWorkspaceBytes = size_t(1) << 30;

// out (B, H, Sq, D) and lse (B, H, Sq) f32, as launch_flash_attention_forward; lse may be null (not wanted: cuDNN
// runs its forward without statistics, the native kernels write them to scratch).
void attention_forward(CudaContext& ctx, const FlashAttentionArgs& a, const void* q, const void* k, const void* v,
                       void* out, float* lse);

// Gives the native forward `a` ctx's tile counters and, when the call splits its tail, a workspace from ctx's
// allocator (FlashAttentionArgs::tile_counter, forward_workspace), as attention_forward runs it. The workspace lives as
// long as the returned pointer (null when none is needed); the launches using it go on ctx's stream.
std::shared_ptr<void> attach_forward_scratch(CudaContext& ctx, FlashAttentionArgs& a);

// dq, dk, dv (and dbias when not null), as launch_flash_attention_backward (its workspace comes from ctx's
// allocator). dlse may be null.
void attention_backward(CudaContext& ctx, const FlashAttentionArgs& a, const void* q, const void* k, const void* v,
                        const void* out, const void* dout, const float* lse, const float* dlse, void* dq, void* dk,
                        void* dv, void* dbias = nullptr);

// What the entry points decide from, for one call: each backend's support (cuDNN probed only when the request
// can use it or native cannot run the call), for `request`.
AttentionCallSupport attention_call_support(CudaContext& ctx, AttentionBackendRequest request,
                                            const FlashAttentionArgs& a, bool backward, bool has_dlse,
                                            bool pointers_aligned);
// The backend the entry points pick for such a call (throws as they do when none can run it).
AttentionBackend attention_backend_for(CudaContext& ctx, AttentionBackendRequest request, const FlashAttentionArgs& a,
                                       bool backward, bool has_dlse = false, bool pointers_aligned = true);

// Whether the native kernels can run the call (their launchers' limits).
BackendSupport native_attention_support(const FlashAttentionArgs& a);

// The cuDNN form of a flash_attention call: its strides (either layout), causal alignment, and a.deterministic.
CudnnSdpaArgs cudnn_args_of(const FlashAttentionArgs& a);

// args with deterministic from XF_ATTENTION_DETERMINISTIC (ops/attention_backend.h; 1, the default, or 0): the entry
// points and attention_call_support decide and run with it, whatever the caller's args said.
FlashAttentionArgs with_env_determinism(const FlashAttentionArgs& args);

}  // namespace xfr::cuda
