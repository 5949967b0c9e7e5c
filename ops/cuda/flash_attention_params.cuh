// What the CUDA kernels of ops/flash_attention.h share: the parameters (one struct passed by value to every
// kernel), the sequences of a batch entry (packed variable-length sequences included), the addressing of every
// tensor, the dropout factors and the launchers of the tensor-core (ops/cuda/flash_attention_tc.cuh) and f32
// (ops/cuda/flash_attention_f32.cu) kernels. The mask as the tensor-core kernels test it, and the features an
// instantiation of theirs is compiled with: ops/cuda/flash_attention_mask.h.
#pragma once
#include <cuda.h>  // CUtensorMap
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "ops/cuda/flash_attention_mask.h"
#include "ops/flash_attention.h"
#include "runtime/dtype.h"
#include "runtime/rng.h"

namespace xfr::cuda::fa {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct Dropout {
  bool on = false;
  uint32_t threshold = 0;  // keep when (bits >> 8) >= threshold (ops/dropout.h)
  float keep_scale = 1.f;  // 1 / (1 - p) rounded to float, as the CPU kernel and the dropout op
  uint64_t seed = 0;
  uint64_t offset = 0;
  const uint64_t* offset_device = nullptr;
  __device__ __forceinline__ uint64_t start() const { return offset + (offset_device ? *offset_device : 0ull); }
};

struct Params {
  // Tensors (see each kernel for which it reads and writes). q, dq: (B, H, Sq, D) logical, addressed through qs;
  // out (o), dout: the same logical shape through os (qs unless q is part of a packed qkv); k, v, dk, dv:
  // (B, Hk, Sk, D) logical, through ks; lse, dlse, delta: (B, H, Sq) or, varlen,
  // (H, Tq) f32 contiguous (row (b, h, i) at b lse_b + h lse_h + q0 + i); bias, dbias: (Bb, Hb, Sq, Sk) of q's
  // dtype, contiguous (bias_b, bias_h: 0 on a broadcast axis); cu_q, cu_k: nseq + 1 offsets, i32 or i64.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* out = nullptr;
  const void* dout = nullptr;
  void* o = nullptr;  // forward output
  float* lse_out = nullptr;
  const float* lse = nullptr;
  const float* dlse = nullptr;
  float* delta = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  const void* bias = nullptr;
  void* dbias = nullptr;
  const void* cu_q = nullptr;
  const void* cu_k = nullptr;
  bool cu64 = false;
  bool varlen = false;
  // B: batch entries, or sequences when varlen; Sq, Sk: per entry, or the packed totals Tq, Tk when varlen.
  int B = 0, H = 0, Hk = 0, G = 1, Sq = 0, Sk = 0, D = 0;
  int Bb = 0, Hb = 0;  // the bias's broadcast extents (1 or B, 1 or H)
  HeadStrides qs, ks, os;  // element strides (batch, head, seq); the head dim is contiguous
  int64_t bias_b = 0, bias_h = 0, lse_b = 0, lse_h = 0;
  AttentionBand band;
  float scale = 1.f;       // softmax scale
  float scale_log2 = 1.f;  // scale * log2(e): scores go to exp2
  bool vec = false;  // D and every stride % 8 == 0, every pointer 16-byte aligned: cp.async and 32-bit stores
  bool deterministic = true;  // the backward: false allows the Hopper kernels' atomic dq (FlashAttentionArgs)
  unsigned* tile_counter = nullptr;  // the Hopper forward's drawn tiles and split tail (FlashAttentionArgs)
  int tile_counter_words = 0;        // u32 at tile_counter
  void* forward_workspace = nullptr;  // the Hopper forward's split tail: sm90_forward_workspace_bytes(p) bytes
  Dropout drop;

  // Offsets of head (b, h) of q and of kv head (b, hk) of k (batch stride 0 when varlen).
  __device__ __forceinline__ int64_t q_head(int64_t b, int64_t h) const { return b * qs.batch + h * qs.head; }
  // Offset of head (b, h) of out and dout.
  __device__ __forceinline__ int64_t o_head(int64_t b, int64_t h) const { return b * os.batch + h * os.head; }
  __device__ __forceinline__ int64_t k_head(int64_t b, int64_t hk) const { return b * ks.batch + hk * ks.head; }
  // Rows of lse, dlse, delta: (B, H, Sq) or (H, Tq).
  __host__ __device__ __forceinline__ int64_t rows_lse() const { return static_cast<int64_t>(varlen ? 1 : B) * H * Sq; }
};

// The rows of batch entry (sequence) b: queries [q0, q0 + Sq), keys [k0, k0 + Sk) along the seq axes.
struct Seq {
  int q0, Sq, k0, Sk;
};

__device__ __forceinline__ int64_t load_offset(const Params& p, const void* cu, int i) {
  return p.cu64 ? static_cast<const int64_t*>(cu)[i] : static_cast<const int32_t*>(cu)[i];
}

// Offset i of `cu`, clamped into [lo, total]: the device never reads or writes out of range, whatever the offsets
// are (the CPU checks them; here invalid offsets give wrong numbers, not faults).
__device__ __forceinline__ int offset_at(const Params& p, const void* cu, int i, int lo, int total) {
  const int64_t x = load_offset(p, cu, i);
  return static_cast<int>(x < lo ? lo : (x > total ? total : x));
}

// kVarlen false: an instantiation without packed sequences (p.varlen is false), the test compiled out.
template <bool kVarlen = true>
__device__ __forceinline__ Seq seq_of(const Params& p, int b) {
  if (!kVarlen || !p.varlen) return {0, p.Sq, 0, p.Sk};
  const int q0 = offset_at(p, p.cu_q, b, 0, p.Sq), q1 = offset_at(p, p.cu_q, b + 1, q0, p.Sq);
  const int k0 = offset_at(p, p.cu_k, b, 0, p.Sk), k1 = offset_at(p, p.cu_k, b + 1, k0, p.Sk);
  return {q0, q1 - q0, k0, k1 - k0};
}

// Varlen grids tile the concatenated sequences: sequence s owns the tiles [T_s, T_{s+1}) of `rows` rows,
// T_s = floor(cu[s] / rows) + s, at least ceil(len_s / rows) of them (floor((a + n) / r) - floor(a / r) + 1 >=
// ceil(n / r)), floor(total / rows) + nseq in all; the last few of a sequence may start past its end and exit.
__host__ __device__ __forceinline__ int varlen_tiles(int total, int nseq, int rows) { return total / rows + nseq; }

// The sequence of tile t (the largest s with T_s <= t) and, in `tile`, the tile within it.
__device__ __forceinline__ int seq_of_tile(const Params& p, const void* cu, int total, int t, int rows, int& tile) {
  auto first = [&](int s) { return offset_at(p, cu, s, 0, total) / rows + s; };
  int lo = 0, hi = p.B - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (first(mid) <= t) lo = mid; else hi = mid - 1;
  }
  tile = t - first(lo);
  return lo;
}

// The sequence holding packed row t of `cu` (the largest s with cu[s] <= t).
__device__ __forceinline__ int seq_of_row(const Params& p, const void* cu, int total, int t) {
  int lo = 0, hi = p.B - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offset_at(p, cu, mid, 0, total) <= t) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// The (b, head), sequence and first row (within the sequence) of a CTA of `rows` rows of one axis: kKeys false, a
// forward / dQ CTA of queries, grid (B H, ceil(Sq / rows)) or varlen (H, varlen_tiles(Tq, nseq, rows)), query
// blocks issued last first (the longest under causal); kKeys, a dK/dV CTA of keys, grid (B Hk, ceil(Sk / rows)) or
// varlen (Hk, varlen_tiles(Tk, ...)). False: a varlen tile past its sequence's end (the CTA has nothing to do).
template <bool kVarlen, bool kKeys>
__device__ __forceinline__ bool block_of(const Params& p, int rows, int& b, int& head, int& start, Seq& s) {
  const int t = static_cast<int>(kKeys ? blockIdx.y : gridDim.y - 1 - blockIdx.y);
  int tile = t;
  if (kVarlen && p.varlen) {
    head = static_cast<int>(blockIdx.x);
    b = seq_of_tile(p, kKeys ? p.cu_k : p.cu_q, kKeys ? p.Sk : p.Sq, t, rows, tile);
  } else {
    const int heads = kKeys ? p.Hk : p.H;
    b = static_cast<int>(blockIdx.x) / heads;
    head = static_cast<int>(blockIdx.x) % heads;
  }
  s = seq_of<kVarlen>(p, b);
  start = tile * rows;
  return !(kVarlen && p.varlen) || start < (kKeys ? s.Sk : s.Sq);
}

// Row of (b, h, query i of sequence s) in lse, dlse, delta.
__device__ __forceinline__ int64_t row_id(const Params& p, int b, int h, const Seq& s, int i) {
  return b * p.lse_b + h * p.lse_h + s.q0 + i;
}

// Dropout stream element of (b, h, i, key 0) (ops/flash_attention.h: e = row Sk + k0 + j; Sk = Tk for varlen).
__device__ __forceinline__ uint64_t drop_row(const Params& p, uint64_t start, int64_t row, const Seq& s) {
  return start + static_cast<uint64_t>(row * p.Sk + s.k0);
}

// The bias row (b, h, i) (Sk entries, no varlen with a bias).
template <class T>
__device__ __forceinline__ const T* bias_row(const Params& p, int b, int h, int i) {
  return static_cast<const T*>(p.bias) + b * p.bias_b + h * p.bias_h + static_cast<int64_t>(i) * p.Sk;
}

// The dropout factor (keep_scale or 0) of stream element idx.
__device__ __forceinline__ float drop_factor(const Dropout& d, uint64_t idx) {
  return (philox_u32(d.seed, idx) >> 8) >= d.threshold ? d.keep_scale : 0.f;
}

__device__ __forceinline__ uint32_t lane_of(const Philox4x32& r, unsigned lane) {
  return lane == 0 ? r.x[0] : lane == 1 ? r.x[1] : lane == 2 ? r.x[2] : r.x[3];
}

// The factors of stream elements idx and idx + 1 (one Philox block, two when idx % 4 == 3).
__device__ __forceinline__ void drop_factor2(const Dropout& d, uint64_t idx, float& z0, float& z1) {
  const unsigned lane = static_cast<unsigned>(idx & 3u);
  const Philox4x32 r = philox_block(d.seed, idx >> 2);
  const uint32_t b0 = lane_of(r, lane);
  const uint32_t b1 = lane < 3u ? lane_of(r, lane + 1u) : philox_block(d.seed, (idx >> 2) + 1u).x[0];
  z0 = (b0 >> 8) >= d.threshold ? d.keep_scale : 0.f;
  z1 = (b1 >> 8) >= d.threshold ? d.keep_scale : 0.f;
}

// lse in the exp2 domain for a P recomputation: +inf for a row with nothing visible (lse = -inf) or outside the
// sequence (valid false), so that exp2(s - lse2) is 0 there.
__device__ __forceinline__ float lse2_of(const Params& p, int64_t row, bool valid) {
  if (!valid) return INFINITY;
  const float l = p.lse[row];
  return l == -INFINITY ? INFINITY : l * kLog2e;
}

// ---- launchers (host) -------------------------------------------------------------------------------------
// bf16 / f16 on tensor cores: forward; backward dQ, dK/dV and (p.dbias set) dbias, after delta is written.
void launch_tc_forward(const Params& p, DType dtype, cudaStream_t stream);
void launch_tc_backward(const Params& p, DType dtype, cudaStream_t stream);
// bf16 / f16 on Hopper (wgmma, TMA; ops/cuda/flash_attention_sm90.cu, ops/cuda/flash_attention_sm90_backward.cu)
// where sm90_refusal(p, dtype) is empty (p with the direction's tensors and vec); else it names why (the problem,
// the tensors, the build, XF_ATTENTION_SM90=0, the device). sm90_problem_refusal: the problem's part alone (no
// pointers, no device), e.g. to size a workspace before the tensors exist.
std::string sm90_problem_refusal(const Params& p, DType dtype);
std::string sm90_refusal(const Params& p, DType dtype);
void launch_sm90_forward(const Params& p, DType dtype, cudaStream_t stream);
// The bytes of p.forward_workspace the Hopper forward's split tail would use on the current device (DrawOrder's
// SplitTail: the pieces' records), 0 where it would not split (a mask, tiles that divide into whole rounds, no
// counters, XF_ATTENTION_SM90_SPLIT=0, no Hopper device). A launch with less (null) runs without the split.
size_t sm90_forward_workspace_bytes(const Params& p);
// The current device's SM count when it is compute capability 9.0 (the sm_90a code runs there and nowhere else),
// else 0; cached per device.
int sm90_device_sms();
// A persistent kernel's grid: one CTA per unit of work (a pair of tiles of TileOrder, a tile of DrawOrder), at most
// one per SM, and at most XF_ATTENTION_SM90_CTAS (a test that walks many units per CTA on a small problem; a
// benchmark's baseline of one unit per CTA).
int sm90_persistent_ctas(int units);
// The backward: dq, dk, dv of p (p.dbias null) from q, k, v, out, dout, lse and dlse (may be null). `workspace`:
// sm90_backward_workspace_bytes(p) bytes, 16-byte aligned (Delta and lse2 rows padded to the 128-query tiles).
size_t sm90_backward_workspace_bytes(const Params& p);
// The backward's reach: the forward's (sm90_refusal, sm90_problem_refusal) without head dim 256.
std::string sm90_backward_problem_refusal(const Params& p, DType dtype);
std::string sm90_backward_refusal(const Params& p, DType dtype);
void launch_sm90_backward(const Params& p, DType dtype, void* workspace, cudaStream_t stream);
// The 4-D (D, S, heads, B) TMA map of one of q, k, v, out, dout with strides st, read in boxes of 64 x box_rows;
// false (and why) when the driver refuses it.
bool sm90_head_map(CUtensorMap* map, DType dtype, const void* base, int D, int S, int heads, int B,
                   const HeadStrides& st, int box_rows, std::string* why);
// f32: the same, plain FMA.
void launch_f32_forward(const Params& p, cudaStream_t stream);
void launch_f32_backward(const Params& p, cudaStream_t stream);
// The grid's y extent for `rows`-row tiles of the query (key) axis of p: ceil(S / rows), or varlen_tiles.
inline int tiles_y(const Params& p, int S, int rows) {
  return p.varlen ? varlen_tiles(S, p.B, rows) : (S + rows - 1) / rows;
}
// The features (flash_attention_mask.h) of the tensor-core instantiation that runs p.
inline int kernel_features(const Params& p) {
  return instantiation_of(features_needed(p.bias != nullptr, p.drop.on, p.varlen, p.band));
}

}  // namespace xfr::cuda::fa
