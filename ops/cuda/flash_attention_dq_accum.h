// The atomic Hopper backward's dq workspace (ops/cuda/device/sm90/attention_backward.cuh, the dK/dV kernels'
// kFusedDq): its layout and the shares the kernels add into it. Plain C++ (no CUDA header): the CPU tests check the
// layout's invariants, which the kernel's staging stores, its bulk reductions and bwd_dq_convert_kernel's loads rely on.
#pragma once

#include <cstdint>

#include "runtime/rng.h"  // XF_HOST_DEVICE

namespace xfr::cuda::sm90 {

// A consumer warpgroup's share of a tile is one 64 x 64 block (m64n64: 32 fp32 a thread): 64 of the tile's 128
// queries at D = 64 (BM = 128), 64 of the 128 columns at D = 128 (BM = 64).
constexpr int kDqBlock = 64;
constexpr uint32_t kDqBlockBytes = kDqBlock * kDqBlock * 4;  // 16 KB
// dq_accum: (B, H, Sq_pad / 64, D / 64) blocks of 64 queries x 64 columns, each 16 KB contiguous (so that a bulk
// reduction adds a warp's 16 rows of a share in one go), element (q, d) of a block at q * 64 + dq_accum_col(q, d):
// a row's 16-byte chunks are XOR-swizzled by q % 8, so that a warp's float2 stores of its accumulator fragment into
// the staging block (8 rows x 4 column pairs) hit every bank twice (two wavefronts, the least for 256 bytes) instead
// of eight times. A chunk (4 consecutive columns from a multiple of 4) stays whole, so column pairs and the
// conversion's 16-byte loads stay contiguous.
XF_HOST_DEVICE constexpr int dq_accum_col(int q, int d) { return (((d >> 2) ^ (q & 7)) << 2) | (d & 3); }
XF_HOST_DEVICE inline int64_t dq_accum_block(int b, int h, int qblk, int dblk, int H, int Sq_pad, int D) {
  return (((static_cast<int64_t>(b) * H + h) * (Sq_pad / kDqBlock) + qblk) * (D / kDqBlock) + dblk) *
         (kDqBlock * kDqBlock);
}

// Where the dK/dV kernel's reduce_dq stages register pair i (i even) of lane `lane` of warp w (the m64n64 fragment:
// row 16 w + lane / 4 + 8 ((i >> 1) & 1), columns 8 (i / 4) + 2 (lane % 4), + 1), in bytes from its staging block:
// dq_stage_base(w, lane) + dq_stage_chunk(i, lane) + dq_stage_row(i) = 4 (row 64 + dq_accum_col(row, column)). Split
// so that a thread keeps one base and 8 distinct chunk offsets across the tile loop, the row's + 8 an immediate; one
// address per register pair, kept whole, had ptxas spill.
XF_HOST_DEVICE constexpr uint32_t dq_stage_base(int w, int lane) {
  return static_cast<uint32_t>((16 * w + lane / 4) * kDqBlock * 4 + 4 * ((2 * (lane % 4)) & 3));
}
XF_HOST_DEVICE constexpr uint32_t dq_stage_chunk(int i, int lane) {
  return ((static_cast<uint32_t>(2 * (i / 4)) + static_cast<uint32_t>((lane % 4) / 2)) ^ static_cast<uint32_t>(lane / 4))
         << 4;
}
XF_HOST_DEVICE constexpr uint32_t dq_stage_row(int i) { return static_cast<uint32_t>(((i >> 1) & 1) * 8 * kDqBlock * 4); }

}  // namespace xfr::cuda::sm90
