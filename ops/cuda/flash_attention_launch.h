// Plain launchers of the CUDA fused attention (ops/cuda/flash_attention.cu), for benchmarks and callers that
// hold device pointers and a stream but no graph. No CUDA header is needed to call them.
//
// Conventions: q, k, v, out, dout, dq, dk, dv are device arrays of `dtype` (bf16, f16 or f32) addressed by element
// strides (batch, head, seq) with a contiguous head dim: element (b, h, i, d) of q is at
// q[b q_strides.batch + h q_strides.head + i q_strides.seq + d]; out, dout and dq use q_strides, v, dk and dv
// use k_strides (head_strides() in ops/flash_attention.h gives those of a contiguous bhsd or bshd tensor).
// lse, dlse and the workspace are contiguous f32 (B, H, Sq), or (H, Tq) for packed sequences. Shapes and masks:
// ops/flash_attention.h; logically
//   q, out, dout, dq: (B, H, Sq, D)   k, v, dk, dv: (B, Hk, Sk, D)   lse, dlse: (B, H, Sq)   bias, dbias: (Bb, Hb, Sq, Sk)
// with H % Hk == 0 and 1 <= D <= 256; packed sequences (cu_seqlens_q set): B is the number of sequences, Sq and Sk
// the packed totals Tq and Tk, batch strides 0. Pointers need no particular alignment (16-byte aligned ones with
// D and every stride a multiple of 8 take the asynchronous-copy path). Work is issued on `stream` and nothing
// waits for it. Only what the kernels cannot do is checked here (D > 256, a dtype other than bf16/f16/f32,
// inconsistent options: xfr::Error naming "flash_attention"); the op's infer() validates the rest.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "ops/flash_attention.h"
#include "runtime/dtype.h"

struct CUstream_st;

namespace xfr::cuda {

struct FlashAttentionArgs {
  DType dtype = DType::bf16;
  int64_t B = 0, H = 0, Hk = 0, Sq = 0, Sk = 0, D = 0;
  HeadStrides q_strides, k_strides;  // element strides of q (dq) and of k (v, dk, dv)
  // Element strides of out and dout; all 0 (unset): q_strides. They differ for a packed qkv (ops/flash_attention.h:
  // q rows 3 H D apart, out rows H D).
  HeadStrides o_strides;
  HeadStrides out_strides() const { return o_strides.seq > 0 ? o_strides : q_strides; }
  double scale = 1.0;
  // The mask (ops/flash_attention.h, AttentionBand): causal, its alignment, a sliding window (-1: unbounded).
  bool causal = false;
  CausalAlignment alignment = CausalAlignment::top_left;
  int64_t window_left = -1, window_right = -1;
  double dropout = 0.0;  // p in [0, 1)
  // Dropout's Philox stream (runtime/rng.h): element e of ops/flash_attention.h uses stream element start + e of
  // `seed`, start = offset (+ *offset_device when set, read on the device when the kernel runs: CUDA-graph replay).
  uint64_t seed = 0;
  uint64_t offset = 0;
  const uint64_t* offset_device = nullptr;
  // An additive bias (bias_batch, bias_heads, Sq, Sk) of `dtype`, contiguous, extents 1 or (B, H); null: none.
  const void* bias = nullptr;
  int64_t bias_batch = 1, bias_heads = 1;
  // Backward: whether dbias is written (attention_backward sets it from its dbias pointer; the dispatcher asks cuDNN
  // for a plan with dbias then). The native launcher goes by its dbias pointer.
  bool bias_grad = false;
  // Packed sequences: B + 1 device offsets each, i32 (or i64 with offsets_i64); null: none. Not with a bias.
  const void* cu_seqlens_q = nullptr;
  const void* cu_seqlens_k = nullptr;
  bool offsets_i64 = false;
  // Forward: whether lse is wanted (attention_forward sets it from its lse pointer; cuDNN then builds a forward
  // without statistics). The native kernels always write lse.
  bool write_lse = true;
  // Backward: bitwise reproducible dq, dk, dv (every element written by one thread). false allows the atomic
  // backward, what torch's flash and cuDNN backends run: the Hopper kernels then add each key block's share of dq into
  // an f32 workspace (ops/cuda/device/sm90/attention_backward.cuh, kFusedDq) instead of recomputing S and dP in a dQ
  // kernel, and cuDNN runs its atomic-dq backward. attention_backward sets it from XF_ATTENTION_DETERMINISTIC
  // (ops/attention_backend.h). The mma.sync kernels are deterministic either way.
  bool deterministic = true;
  // Forward: tile_counter_words u32 of device memory, zero, that the Hopper forward (ops/cuda/flash_attention_sm90.cu)
  // may use to draw its query tiles from a counter (DrawOrder: longest first under a mask; the last round's tiles
  // split into pieces without one), and leaves zero again. Kernels using one counter must not overlap (one stream:
  // CudaContext::launch_counters()). Null: the tiles are dealt in pairs.
  unsigned* tile_counter = nullptr;
  int tile_counter_words = 0;  // 2 draw the tiles; each tile of a split tail takes one more per consumer warpgroup
  // Forward: flash_attention_forward_workspace_bytes(a) bytes of device memory (16-byte aligned) for the Hopper
  // forward's split tail, the pieces' partial results; null (or too few counters) runs no split.
  void* forward_workspace = nullptr;
};

// The keys each query sees: causal (right 0) and the window, on the chosen diagonal (ops/flash_attention.h).
inline AttentionBand attention_band(const FlashAttentionArgs& a) {
  AttentionBand b;
  b.left = a.window_left;
  b.right = a.causal ? 0 : a.window_right;
  b.bottom_right = a.alignment == CausalAlignment::bottom_right;
  return b;
}

// out = softmax(scale q k^T + bias, masked) v (with dropout), lse = the rows' log-sum-exp (-inf for a fully hidden
// row).
void launch_flash_attention_forward(const FlashAttentionArgs& a, const void* q, const void* k, const void* v,
                                    void* out, float* lse, CUstream_st* stream);

// Why launch_flash_attention_forward would not run this call on the Hopper kernel (ops/cuda/flash_attention_sm90.cu:
// wgmma, TMA) but on the mma.sync one; "" when it would. Reads the current device and XF_ATTENTION_SM90.
std::string flash_attention_sm90_refusal(const FlashAttentionArgs& a, const void* q, const void* k, const void* v,
                                         const void* out);
// The same for launch_flash_attention_backward (ops/cuda/flash_attention_sm90_backward.cu): one rule, with the
// backward's tensors' alignment (out's too: its pre-kernel reads out and dout in 16-byte packs).
std::string flash_attention_sm90_backward_refusal(const FlashAttentionArgs& a, const void* q, const void* k,
                                                  const void* v, const void* out, const void* dout, const void* dq,
                                                  const void* dk, const void* dv);

// lse's bytes: (B, H, Sq) f32, or (H, Tq) for packed sequences.
size_t flash_attention_lse_bytes(const FlashAttentionArgs& a);

// Device scratch the forward's split tail needs on the current device (FlashAttentionArgs::forward_workspace), 0 for
// a call that does not split (ops/cuda/flash_attention_sm90.cu, "The split tail").
size_t flash_attention_forward_workspace_bytes(const FlashAttentionArgs& a);

// Device scratch the backward needs: Delta = rowsum(dout * out) - dlse, lse's shape, f32 (the Hopper backward: Delta
// and lse's exp2 form, each padded to 128-query tiles; the atomic one (deterministic false) also dq's f32 sums,
// (B, H, Sq padded to 128, D)).
size_t flash_attention_backward_workspace_bytes(const FlashAttentionArgs& a);

// dq, dk, dv of ops/flash_attention.h (dk, dv summed over the query heads of each kv head) and, when dbias is not
// null (a bias is needed), dbias (the bias's shape and dtype: dS summed over the axes it broadcasts). dlse may be
// null (no gradient reaches lse). `workspace` holds flash_attention_backward_workspace_bytes(a) bytes, 16-byte
// aligned, and is used until the kernels have run on `stream`. With a.deterministic (the default) there are no
// atomics: every output element is written by one thread, so the results are bitwise reproducible; without it the
// Hopper kernels sum dq by reductions in L2, in an order that varies.
void launch_flash_attention_backward(const FlashAttentionArgs& a, const void* q, const void* k, const void* v,
                                     const void* out, const void* dout, const float* lse, const float* dlse,
                                     void* dq, void* dk, void* dv, void* dbias, void* workspace, CUstream_st* stream);

}  // namespace xfr::cuda
