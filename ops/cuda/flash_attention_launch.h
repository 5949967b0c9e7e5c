// Plain launchers of the CUDA fused attention (ops/cuda/flash_attention.cu), for benchmarks and callers that
// hold device pointers and a stream but no graph. No CUDA header is needed to call them.
//
// Conventions: q, k, v, out, dout, dq, dk, dv are device arrays of `dtype` (bf16, f16 or f32) addressed by element
// strides (batch, head, seq) with a contiguous head dim: element (b, h, i, d) of q is at
// q[b q_strides.batch + h q_strides.head + i q_strides.seq + d]; out, dout and dq use q_strides, v, dk and dv
// use k_strides (head_strides() in ops/flash_attention.h gives those of a contiguous bhsd or bshd tensor).
// lse, dlse and the workspace are contiguous f32 (B, H, Sq). Shapes (ops/flash_attention.h):
//   q, out, dout, dq: (B, H, Sq, D) logical   k, v, dk, dv: (B, Hk, Sk, D) logical   lse, dlse: (B, H, Sq)
// with H % Hk == 0 and 1 <= D <= 256. Pointers need no particular alignment (16-byte aligned ones with D and every
// stride a multiple of 8 take the asynchronous-copy path). Work is issued on `stream` and nothing waits for it. Only what the kernels
// cannot do is checked here (D > 256, a dtype other than bf16/f16/f32: xfr::Error naming "flash_attention");
// the op's infer() validates the rest.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/flash_attention.h"
#include "runtime/dtype.h"

struct CUstream_st;

namespace xfr::cuda {

struct FlashAttentionArgs {
  DType dtype = DType::bf16;
  int64_t B = 0, H = 0, Hk = 0, Sq = 0, Sk = 0, D = 0;
  HeadStrides q_strides, k_strides;  // element strides of q (out, dout, dq) and of k (v, dk, dv)
  double scale = 1.0;
  bool causal = false;   // key j hidden from query i when j > i (top-left aligned)
  double dropout = 0.0;  // p in [0, 1)
  // Dropout's Philox stream (runtime/rng.h): element (b, h, i, j) of the implicit (B, H, Sq, Sk) probability
  // tensor uses stream element start + ((b H + h) Sq + i) Sk + j of `seed`, start = offset (+ *offset_device
  // when set, read on the device when the kernel runs: CUDA-graph replay).
  uint64_t seed = 0;
  uint64_t offset = 0;
  const uint64_t* offset_device = nullptr;
};

// out = softmax(scale q k^T) v (with dropout), lse = the rows' log-sum-exp (-inf for a fully hidden row).
void launch_flash_attention_forward(const FlashAttentionArgs& a, const void* q, const void* k, const void* v,
                                    void* out, float* lse, CUstream_st* stream);

// Device scratch the backward needs: Delta = rowsum(dout * out) - dlse, (B, H, Sq) f32.
size_t flash_attention_backward_workspace_bytes(const FlashAttentionArgs& a);

// dq, dk, dv of ops/flash_attention.h (dk, dv summed over the query heads of each kv head). dlse may be null
// (no gradient reaches lse). `workspace` holds flash_attention_backward_workspace_bytes(a) bytes, 16-byte
// aligned, and is used until the kernels have run on `stream`. No atomics: dk/dv and dq are written by one CTA
// each, so the results are deterministic.
void launch_flash_attention_backward(const FlashAttentionArgs& a, const void* q, const void* k, const void* v,
                                     const void* out, const void* dout, const float* lse, const float* dlse,
                                     void* dq, void* dk, void* dv, void* workspace, CUstream_st* stream);

}  // namespace xfr::cuda
