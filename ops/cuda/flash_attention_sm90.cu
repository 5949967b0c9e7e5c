// The native attention forward on Hopper (sm_90a): wgmma, TMA and a warp-specialised pipeline, promoted from the
// kernel lab's winner (tools/lab/attention_wgmma.cu, variant v2; docs/attention.md has its figures). It runs the
// forward of ops/flash_attention.h when the problem is in its reach (sm90_refusal empty); everything else runs the
// mma.sync kernels (flash_attention_tc.cuh), which it matches within rounding. The backward's counterpart is
// ops/cuda/flash_attention_sm90_backward.cu (same reach, same switch).
//
// Reach: bf16 / f16; head dim 64, 128 or 256 (the backward: 64 or 128); no bias, dropout or packed sequences; any
// band (causal in either alignment, sliding windows: the two instantiations kLower false / true of Mask); GQA / MQA;
// any Sq, Sk >= 1 (TMA reads zeros past a sequence's end; the tile mask hides those keys, the epilogue skips those
// rows); both layouts, as long as TMA can address them (16-byte aligned bases, strides multiples of 8 elements). A
// compute capability 9.0 device and a build with sm_90a among its CUDA architectures (XF_BUILD_SM90A);
// XF_ATTENTION_SM90=0 turns it off (the mma.sync kernels then run every forward). sm90_refusal (here) decides for the
// forward and the Hopper backward (ops/cuda/flash_attention_sm90_backward.cu) alike.
//
// CTA = 128 queries of one (b, h) at a time: 384 threads = warpgroup 0, the producer (one thread issues every TMA;
// setmaxnreg down to 24 registers), and warpgroups 1, 2, the consumers (64 query rows each; setmaxnreg up to 240).
// The entry allocation of __launch_bounds__(384, 1) is 168 registers a thread (65536 / 384, rounded down to 8):
// 128 x 24 + 256 x 240 = 384 x 168, so the consumers take exactly what the producer gives back.
// Shared memory (Layout): two Q buffers (BM x D each) where they fit, the O staging tile (BM x D; none in the streamed
// kernel, which stages O in its finished tile's Q buffer, nor at D = 256), K/V stages (BN x D each for K and for V:
// 2 stages of 128 keys, 3 of 256 keys), then the mbarriers: q_full[] and k_full[], v_full[] (the producer's
// arrive.expect_tx + TMA's bytes; V has its own so that S = Q K^T need not wait for it), q_empty[] and empty[] (8
// arrivals: lane 0 of each consumer warp when its wgmmas on Q / the stage are done, or, streamed, when its epilogue
// has read O back from the Q buffer). At D = 128: 2 x 32 + 32 + 2 x 64 = 224 KB of the 227 KB a block may have; at
// D = 64 with 256-key tiles, streamed: 2 x 16 + 3 x 64 = 224 KB. Use u = i / n of stage i % n (i counts stage uses
// over the CTA's tiles, n the stages): consumers wait full with parity u & 1, the producer waits empty with parity
// (u & 1) ^ 1 (which passes at once for u = 0: a fresh barrier counts its previous phase, parity 1, as complete); Q
// buffers likewise, once a tile.
// Persistent: a CTA runs pairs of query tiles (TileOrder), or at D = 64 tiles drawn from a counter (DrawOrder: under a
// mask longest first, without one in head order, the last round's tiles split along their keys into pieces that other
// CTAs run: the split tail); the producer hands each to the consumers through a ring of tile slots and runs ahead into
// the next tiles (a Q as soon as its buffer is free, K and V as stages free up), so the next tile's loads hide behind
// this one's work. Tiles whose queries see no key are written by the producer warpgroup's other warps. ptxas: 168
// registers at entry (128 with three consumers); the producer warpgroup (24 registers) of the two-consumer kernels
// spills 8-32 bytes (its tile decoding and the key-less tiles' writer), the consumers nothing.
// Consumer, per key tile j of those the block's queries see: wait K(j); S = Q K^T (wgmma, both operands from
// shared memory); mask (only tiles some query of the block does not see whole); online softmax; O *= alpha;
// P -> 16-bit A fragments; wait V(j); O += P V (wgmma, A from registers); release the stage. Two schedules
// (kPingpong): free-running, the two consumer warpgroups interleaving on the tensor cores and ALUs as they
// happen to; or ping-pong (FlashAttention-3's), where named barriers make them take turns: one issues O += P(j) V(j)
// and S(j + 1) = Q K(j + 1)^T while the other runs its softmax. Same registers either way (S(j + 1) is issued
// after P(j) V(j) completes). Two loops (kStream): per tile (each tile's first S waits for the tile before's
// epilogue), or streamed (the CTA's tiles as one stream of steps: the next tile's first S is issued with the last
// O += P V, the epilogue runs under it, and ping-pong turns never realign; launch_band says where each runs).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/cuda/device/sm90/attention.cuh"
#include "ops/cuda/device/sm90/tensor_map.h"
#include "ops/cuda/flash_attention_params.cuh"
#include "ops/cuda/flash_attention_tile_order.h"
#include "runtime/env.h"

namespace xfr::cuda::fa {

namespace {

using sm90::WsShape;

// Keys per K/V tile: 128, or 256 at D = 64 (cuDNN's D = 64 forward runs 256-key tiles, three stages: ncu, H200, run
// 29): half the tiles, so half the per-tile fixed work (barriers, the row max's shuffles, O's rescale) per key. The
// S accumulator is then 128 registers a thread; with O's 32 and the P fragments taking S's registers as they are
// packed it fits the consumers' 240 (not three consumers' 160). S is two m64n128 wgmmas a k step (the halves of the
// 256-key tile: wgmma.cuh has N up to 128); their accumulators concatenate into the m64n256 layout.
constexpr int kBlockNWide = 256;
// K/V ring depth: what 227 KB of shared memory holds. 128-key tiles: 2 at D = 128 (a third stage would not fit; see
// above); D = 64 has room for 4 and they ran the same as 2 over the benchmark grid (H200, 2026-11-30, an interleaved
// A/B, within 1%): loads are not what limits D = 64. 256-key tiles (D = 64 only): 3 (Q + O + 3 x 64 KB = 224 KB).
template <int BN>
constexpr int stages_for() {
  return BN == kBlockNWide ? 3 : 2;
}
// Head dim 256: 64-key K/V tiles (S 32 registers a thread beside O's 128), two stages, and no O staging tile: Q (64 KB)
// + 2 x (K + V) (32 KB each) = 192 KB, where an O tile would need 64 KB more than 227 KB allow. O goes from the
// registers to global memory (store_out_direct).
constexpr int kBlockNHead256 = 64;
template <int D>
constexpr bool stages_o() {
  return D <= 128;
}
// Named barriers (0 is __syncthreads'; 1 .. C, C the consumer warpgroups, store_out's): the ping-pong schedule's
// turns, sched_barrier(C) + w for consumer warpgroup w, and its realignment once a tile (see the kernel).
constexpr int sched_barrier(int consumers) { return 1 + consumers; }
constexpr int realign_barrier(int consumers) { return 1 + 2 * consumers; }
// Keys from which the ping-pong schedule is the default. H200, 2026-11-30 (interleaved A/B on the benchmark grid, two
// repeats each, within 1%): ping-pong +1% to +9% at S >= 2048 (D 64 and 128, causal or not), -1% to -4% at
// S <= 1024, where a block's few key tiles leave little softmax to hide and the first turn is pure wait.
constexpr int kPingpongMinKeys = 2048;

// The kernel's parameters, __grid_constant__ (TMA reads the maps from parameter space; the mask points at band).
struct Sm90Args {
  CUtensorMap tm_q, tm_k, tm_v;  // 4-D (D, S, heads, B) views of q (Sq, H) and k, v (Sk, Hk); box (64, BM or BN, 1, 1)
  void* o = nullptr;             // (B, H, Sq, D) logical, strides os
  float* lse = nullptr;          // (B, H, Sq) contiguous
  HeadStrides os;
  int H = 0, G = 1, Sq = 0, Sk = 0;
  AttentionBand band;
  float scale_log2 = 1.f;
  int m_tiles = 0;    // ceil(Sq / BM): query tiles per (b, h), BM the CTA's query rows (WsShape)
  int pairs = 0;      // B x H x ceil(m_tiles / 2): the launch's pairs of query tiles (TileOrder)
  int tiles = 0;      // B x H x m_tiles: the launch's query tiles
  // Drawn tiles (DrawOrder) where set: two u32, zero at launch, that the kernel leaves zero (tile_counter[0]: tiles
  // drawn past the grid's first; [1]: CTAs done, the last resets both). Null: the pairs of TileOrder, dealt.
  unsigned* tile_counter = nullptr;
  DrawOrder draw;
  // The split tail (draw.split.on()): the tail tiles' records (split_combine), tail tile t's for consumer warpgroup w
  // at records + (t kConsumers + w) pieces split_record_vecs x 128 float4s, and their counters (zero at launch, left
  // zero), tail tile t's for warpgroup w at split_counters[t kConsumers + w].
  float4* split_records = nullptr;
  unsigned* split_counters = nullptr;
};

constexpr int kSmemLimit = 227 * 1024;  // the dynamic shared memory a block may have (sm_90)

// Q buffers (kQStages): two where shared memory has room for them, so that the next tile's Q loads while this one
// runs (the streamed kernel needs them); one at D = 256 (Q is 64 KB there) and with 256-key tiles per tile (beside
// the O tile and three stages).
// The tile ring: the producer publishes the CTA's k-th tile (drawn from the counter or dealt by TileOrder) in slot
// k % kTileRing, the consumers read it there, so they have one path whichever order runs. 4 slots: the producer runs
// at most two tiles ahead of them (its Q buffers). A slot holds the tile and its piece (DrawOrder::Unit: -1 for a whole
// tile).
constexpr int kTileRing = 4;

template <int D, int BM, int BN, bool kStream, int kQStages_>
struct Layout {  // byte offsets from the 1024-aligned base
  static_assert(kQStages_ == 1 || kQStages_ == 2, "one or two Q buffers");
  static_assert(!kStream || kQStages_ == 2, "the streamed kernel stages O in the finished tile's Q buffer");
  static constexpr int kStages = stages_for<BN>(), kQStages = kQStages_;
  static constexpr int kTileQ = BM * D * 2, kTileKV = BN * D * 2;
  // The unstreamed kernel stages O in a tile of its own (not Q's) so that the next tile's Q can load during this
  // tile's epilogue; at D = 256 there is no room for it (stages_o). The streamed one stages O in its Q buffer.
  static constexpr bool kOTile = stages_o<D>() && !kStream;
  // The Q buffers from offset 0, then the O tile (if any), the K and V stages, the barriers, the tile ring.
  static constexpr int kO = kQStages * kTileQ, kK = kO + (kOTile ? kTileQ : 0), kV = kK + kStages * kTileKV,
                       kBar = kV + kStages * kTileKV;
  // q_full[], q_empty[], k_full[], v_full[], empty[], tile_full[], tile_empty[]
  static constexpr int kBars = 2 * kQStages + 3 * kStages + 2 * kTileRing;
  static constexpr int kRing = kBar + kBars * 8;
  static constexpr int kBytes = kRing + kTileRing * 8 + 1024;  // + alignment slack for align1024
  static constexpr bool kFits = kBytes <= kSmemLimit;
};

// q: (B, H, Sq, D), k, v: (B, Hk, Sk, D) through the maps -> o (B, H, Sq, D), lse (B, H, Sq).
// grid (min(pairs, the CTA cap), 1, 1) (TileOrder), WsShape<kConsumers>::kThreads threads,
// Layout<D, BM, BN, kStream, kQBufs>::kBytes of dynamic shared memory; BN keys per K/V tile (128, or kBlockNWide at
// D = 64 with two consumers). kStream: the consumers run the CTA's tiles as one stream of key steps (see the
// consumer); kQBufs: the Q buffers (Layout); kSplit: the split tail; kDiagHalf: the causal diagonal's half tiles
// (below).
template <class T, int D, int kConsumers, bool kLower, bool kPingpong, int BN, bool kStream, int kQBufs, bool kSplit,
          bool kDiagHalf>
__global__ void __launch_bounds__(WsShape<kConsumers>::kThreads, 1) fwd_sm90_kernel(const __grid_constant__ Sm90Args a) {
#if XF_SM90A_DEVICE
  using namespace sm90;
  using Shape = WsShape<kConsumers>;
  constexpr int BM = Shape::kBlockM, kWarps = 4 * kConsumers;  // kWarps: the consumer warps
  constexpr int kSchedBarrier = sched_barrier(kConsumers), kRealignBarrier = realign_barrier(kConsumers);
  using L = Layout<D, BM, BN, kStream, kQBufs>;
  static_assert(L::kFits, "over the 227 KB of shared memory a block may have");
  constexpr int kStages = L::kStages, kQStages = L::kQStages;
  static_assert((BN == 128 && D <= 128) || (BN == kBlockNWide && D == 64 && kConsumers == 2) ||
                    (BN == kBlockNHead256 && D == 256 && kConsumers == 2),
                "S's registers: see kBlockNWide, kBlockNHead256");
  // The streamed consumers compile at D <= 128 (at D = 256 O's 128 registers and the next tile's S do not fit beside
  // the epilogue: ptxas spilled 220-300 bytes); launch_band runs them with 256-key tiles only.
  static_assert(!kStream || D <= 128, "the streamed consumers spill at D = 256");
  // kSplit: the split tail (a.draw.split), in instantiations of its own (forward_split) so that every other one is
  // compiled as if it did not exist: its code in the stream loop, never run there, cost the causal forward 1% to 2%
  // (H200, session 19, run 2).
  static_assert(!kSplit || !kLower, "the split tail is for tiles without a mask");
  // kDiagHalf (streamed 256-key tiles under a causal band): a key step whose keys 128-255 no query of the tile sees
  // (the diagonal's tile of every other 128-query tile) issues S for keys 0-127 only, runs the softmax over them (S's
  // first 64 registers) and O += P V over them. In instantiations of their own (diag_half_for): the branch costs the
  // steps that never take it (the unmasked forward ran 0.99x with it compiled in; H200, session 20, run 6).
  static_assert(!kDiagHalf || (BN == kBlockNWide && kStream && !kSplit), "half steps: streamed 256-key tiles");
  constexpr int kRingWords = kSplit ? 2 : 1;  // a ring slot: the tile, and with kSplit its piece
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = align1024(smem_raw);
  const uint32_t base = smem_u32(smem);
  const uint32_t s_q = base, s_k = base + L::kK, s_v = base + L::kV, bar0 = base + L::kBar;
  auto bar_qfull = [&](int qb) { return bar0 + 8 * qb; };
  auto bar_qempty = [&](int qb) { return bar0 + 8 * (kQStages + qb); };
  auto bar_kfull = [&](int st) { return bar0 + 8 * (2 * kQStages + st); };
  auto bar_vfull = [&](int st) { return bar0 + 8 * (2 * kQStages + kStages + st); };
  auto bar_empty = [&](int st) { return bar0 + 8 * (2 * kQStages + 2 * kStages + st); };
  auto bar_tfull = [&](int slot) { return bar0 + 8 * (2 * kQStages + 3 * kStages + slot); };
  auto bar_tempty = [&](int slot) { return bar0 + 8 * (2 * kQStages + 3 * kStages + kTileRing + slot); };
  volatile int* tile_ring = reinterpret_cast<volatile int*>(smem + L::kRing);

  const int tid = threadIdx.x, wg = static_cast<int>(threadIdx.x / 128);  // unsigned: a shift where it is recomputed
  const TileOrder<BM> order{a.m_tiles, a.H, a.pairs};
  const bool drawn = a.tile_counter != nullptr;  // the tiles' order: drawn (DrawOrder) or dealt pairs (TileOrder)
  static_assert(TileOrder<BM>::kEnd == DrawOrder::kEnd, "one end marker");
  const Mask<kLower> mask(a.band, a.Sq, a.Sk);
  // The output rows of tile (q0, h, b): O's first row and lse's.
  auto out_rows = [&](int q0, int h, int b) {
    return static_cast<T*>(a.o) + (static_cast<int64_t>(b) * a.os.batch + static_cast<int64_t>(h) * a.os.head +
                                   static_cast<int64_t>(q0) * a.os.seq);
  };
  auto lse_rows = [&](int q0, int h, int b) { return a.lse + (static_cast<int64_t>(b) * a.H + h) * a.Sq + q0; };

  if (tid == 0) {
    tma_prefetch_map(&a.tm_q);
    tma_prefetch_map(&a.tm_k);
    tma_prefetch_map(&a.tm_v);
    for (int qb = 0; qb < kQStages; ++qb) {
      mbar_init(bar_qfull(qb), 1);
      // lane 0 of each consumer warp: once its last S = Q K^T of the tile is done, or (streamed, staging O in the Q
      // buffer) once its epilogue has read the buffer back
      mbar_init(bar_qempty(qb), kWarps);
    }
    for (int st = 0; st < kStages; ++st) {
      mbar_init(bar_kfull(st), 1);
      mbar_init(bar_vfull(st), 1);
      mbar_init(bar_empty(st), kWarps);  // lane 0 of each consumer warp
    }
    for (int slot = 0; slot < kTileRing; ++slot) {
      mbar_init(bar_tfull(slot), 1);         // the producer, once it has written the slot
      mbar_init(bar_tempty(slot), kWarps);   // lane 0 of each consumer warp, once its lanes have read it
    }
    mbar_init_fence();
  }
  __syncthreads();  // the last CTA-wide barrier: the roles split below

  // Both roles walk the same tiles and count the same loads: it = K/V stage uses so far (the ring runs on across
  // tiles: use it is stage it % kStages, its phase (it / kStages) & 1), qn = Q tiles loaded so far (tile qn uses Q
  // buffer qn % kQStages, phase (qn / kQStages) & 1). A tile whose queries see no key is not the consumers': the
  // producer loads nothing for it and hands it on to nobody, and the producer warpgroup's other warps write its out 0
  // and lse -inf. (Handed to the consumers through the ring, a run of such tiles longer than the ring deadlocked the
  // ping-pong schedule: one warpgroup read them all in its turn while the other, waiting for the turn, read none, so
  // the producer could not publish the next; H200, session 18, the sm90 test's Sq = 1000, Sk = 127 problem on 3 CTAs.)
  if (wg == 0) {
    // ---------------- producer ----------------
    setmaxnreg_dec<Shape::kProducerRegs>();
    if (tid == 0) {
      int it = 0, qn = 0;
      // Drawn: the CTA's first tile is n = its index, each later one the counter's next value past the grid's, drawn
      // as soon as the tile before is decoded, so the atomic's round trip runs under that tile's loads (a CTA holds at
      // most one drawn tile it has not started loading).
      // Every tile with keys to see (and the end) goes to the consumers through the ring, drawn or dealt: one path.
      int n_next = static_cast<int>(blockIdx.x), published = 0;
      for (int k = 0;; ++k) {
        int u, piece = -1;  // piece: of the split tail (DrawOrder::unit), -1 for a whole tile
        if (drawn) {
          if constexpr (kSplit) {
            const DrawOrder::Unit un = a.draw.unit(n_next);
            u = un.u, piece = un.piece;
          } else {
            u = a.draw.tile(n_next);
          }
          if (u != DrawOrder::kEnd) n_next = static_cast<int>(gridDim.x + atomicAdd(a.tile_counter, 1u));
        } else {
          u = order.tile(k, static_cast<int>(gridDim.x), static_cast<int>(blockIdx.x));
          if (u == TileOrder<BM>::kNone) continue;
        }
        int q0 = 0, h = 0, b = 0;
        TileRange tr{0, 0};
        if (u != TileOrder<BM>::kEnd) {
          q0 = order.q0(u), h = order.head(u), b = order.batch(u);
          tr = mask.key_tiles(q0, BM, BN);
          if constexpr (kSplit) tr = a.draw.piece_keys(tr, piece);
          if (tr.count == 0) continue;  // its queries see no key: the other warps of this warpgroup write it
        }
        const int slot = published % kTileRing;
        mbar_wait(bar_tempty(slot), ((published / kTileRing) & 1) ^ 1);  // the consumers have read its last tile
        tile_ring[kRingWords * slot] = u;
        if constexpr (kSplit) tile_ring[2 * slot + 1] = piece;
        mbar_arrive(bar_tfull(slot));  // release: the consumers' wait (acquire) sees the index
        ++published;
        if (u == TileOrder<BM>::kEnd) break;
        const int hk = h / a.G;
        const int qb = qn % kQStages;
        mbar_wait(bar_qempty(qb), ((qn / kQStages) & 1) ^ 1);  // the buffer's previous tile is done with it
        ++qn;
        mbar_arrive_expect_tx(bar_qfull(qb), L::kTileQ);  // the full box's bytes, zero-filled rows past Sq included
#pragma unroll
        for (int at = 0; at < D / 64; ++at)
          tma_load_4d(s_q + qb * L::kTileQ + at * (BM * 128), &a.tm_q, at * 64, q0, h, b, bar_qfull(qb));
        for (int j = 0; j < tr.count; ++j, ++it) {
          const int st = it % kStages, row = (tr.first + j) * BN;
          mbar_wait(bar_empty(st), ((it / kStages) & 1) ^ 1);
          mbar_arrive_expect_tx(bar_kfull(st), L::kTileKV);
#pragma unroll
          for (int at = 0; at < D / 64; ++at)
            tma_load_4d(s_k + st * L::kTileKV + at * (BN * 128), &a.tm_k, at * 64, row, hk, b, bar_kfull(st));
          mbar_arrive_expect_tx(bar_vfull(st), L::kTileKV);
#pragma unroll
          for (int at = 0; at < D / 64; ++at)
            tma_load_4d(s_v + st * L::kTileKV + at * (BN * 128), &a.tm_v, at * 64, row, hk, b, bar_vfull(st));
        }
      }
      if (drawn) {
        // The counter goes back to zero for the next launch: the last CTA to finish drawing resets it. Every CTA's
        // last draw (past the end) is ordered before its count by the fence, so the reset follows all draws.
        __threadfence();
        if (atomicAdd(a.tile_counter + 1, 1u) == gridDim.x - 1) {
          atomicExch(a.tile_counter, 0u);
          atomicExch(a.tile_counter + 1, 0u);
        }
      }
    } else if (tid >= 32) {
      // Warps 1-3: the launch's tiles whose queries see no key (out 0, lse -inf), whichever CTA would run them; CTA c
      // checks tiles 3 c + w - 1, stepping 3 x the grid (a few per warp: the common masks leave none, and the check is
      // a decode and the mask's key range).
      const int spare = tid / 32 - 1, lane = tid % 32;
      for (int u = 3 * static_cast<int>(blockIdx.x) + spare; u < a.tiles; u += 3 * static_cast<int>(gridDim.x)) {
        const int q0 = order.q0(u);
        if (mask.key_tiles(q0, BM, BN).count > 0) continue;
        const int h = order.head(u), b = order.batch(u);
        store_empty_tile<T, D>(lane, out_rows(q0, h, b), a.os.seq, min(BM, a.Sq - q0), lse_rows(q0, h, b));
      }
    }
  } else {
    // ---------------- consumers ----------------
    setmaxnreg_inc<Shape::kConsumerRegs>();
    const int cw = wg - 1, t = tid % 128, w = t / 32, lane = t % 32;
    // The wgmma descriptors' low words (sw128_desc_lo) of this warpgroup's Q rows (buffer 0) and of stage 0's K and V
    // tiles, built once and made opaque so that ptxas keeps them in registers: from the plain addresses it rebuilt
    // every descriptor for every k step of every tile, about 100 uniform-datapath instructions a tile at D = 64 (a
    // sixth of the tile loop; ncu, H200, run 28). A stage or Q buffer adds its offset, a k step its own
    // (ss_gemm_desc, rs_gemm_desc).
    uint32_t q_lo = sw128_desc_lo(s_q + cw * 64 * 128, 16), k_lo = sw128_desc_lo(s_k, 16),
             v_lo = sw128_desc_lo(s_v, BN * 128);
    asm volatile("" : "+r"(q_lo), "+r"(k_lo), "+r"(v_lo));
    constexpr uint32_t kStageLo = L::kTileKV >> 4;  // a stage's offset in a descriptor's start-address field
    constexpr uint32_t kQBufLo = L::kTileQ >> 4;    // a Q buffer's
    constexpr int kLast = kConsumers - 1;
    constexpr int kChains = D == 64 ? 4 : 1;  // the row max's chains (online_softmax)
    const int next = kConsumers == 2 ? 1 - cw : (cw == kLast ? 0 : cw + 1);  // ping-pong: whose turn follows ours
    // O: zeroed here once; a tile's first O += P V overwrites it (accumulate's `first`), so no tile zeroes it (32 moves
    // through uniform registers and back, 64 instructions a tile at D = 64: ncu, H200, session 17). What a tile's first
    // softmax multiplies by alpha = 0 before that is the tile before's O, finite or not, and is overwritten.
    float o[D / 2], s[BN / 2], m[2], l[2], alpha[2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    uint32_t p[BN / 16][4];
    // The CTA's k-th tile (TileOrder's encoding, kEnd past the last) and its piece, from the producer's ring: each k
    // read once, in order.
    auto tile_of = [&](int k) {
      const int slot = k % kTileRing;
      mbar_wait(bar_tfull(slot), (k / kTileRing) & 1);
      const DrawOrder::Unit un{tile_ring[kRingWords * slot], kSplit ? tile_ring[2 * slot + 1] : -1};
      __syncwarp();
      if (lane == 0) mbar_arrive(bar_tempty(slot));
      return un;
    };
    // A piece of the split tail (piece >= 0) at the end of its keys: its record, and the tile's result in o, m, l where
    // this warpgroup counts the tile's last piece (split_combine). True where the tile is to be written out: a whole
    // tile, or a piece that completed it.
    // Its branches go by warp votes (VOTEU: uniform predicates), not by the ring's value or a barrier's result directly:
    // with those, ptxas could not prove the consumer loops uniform past them and moved their counters and the wgmma
    // descriptors' words from uniform registers to per-thread ones (R2UR before every wgmma), and the whole forward grid
    // ran 2% to 4% slower, split or not (H200, session 19, run 1).
    auto tile_complete = [&](int piece) {
      if constexpr (!kSplit) {
        return true;
      } else {
        if (!__any_sync(0xffffffffu, piece >= 0)) return true;  // every lane read the same piece
        const int tail = a.draw.piece_tile(piece), pieces = a.draw.split.pieces;
        return split_combine<D>(o, m, l, a.scale_log2,
                                a.split_records + static_cast<int64_t>(tail * kConsumers + cw) * pieces *
                                                      (split_record_vecs(D) * 128),
                                a.draw.piece_index(piece), pieces, a.split_counters + (tail * kConsumers + cw), t,
                                1 + cw);
      }
    };
    // The GEMM steps both consumer loops run, by K/V stage use (stage use % kStages, phase (use / kStages) & 1).
    // S = Q K^T from Q buffer qb and the stage's K, issued once K has landed, not waited for.
    // half: keys 0-127 of the tile only (kDiagHalf; a uniform predicate).
    auto issue_scores = [&](int qb, int use, bool half = false) {
      const int st = use % kStages;
      mbar_wait(bar_kfull(st), (use / kStages) & 1);
      wgmma_fence();
      if constexpr (kDiagHalf)
        qk_gemm_desc_halves<T, D, BM>(s, sw128_desc_of(q_lo + qb * kQBufLo), sw128_desc_of(k_lo + st * kStageLo), half);
      else
        qk_gemm_desc<T, D, BN, BM>(s, sw128_desc_of(q_lo + qb * kQBufLo), sw128_desc_of(k_lo + st * kStageLo));
      wgmma_commit();
    };
    auto await_scores = [&]() {
      wgmma_wait<0>();
      reg_fence(s);
    };
    // O += P V of the stage once V has landed (first, a tile's first step: O = P V); the stage is released once the
    // wgmma is complete. half: over keys 0-127 only (their P; kDiagHalf).
    auto accumulate = [&](int use, bool first, bool half = false) {
      const int st = use % kStages;
      mbar_wait(bar_vfull(st), (use / kStages) & 1);
      wgmma_fence();
      if (kDiagHalf && half)
        rs_gemm_desc<T, D, 128>(o, *reinterpret_cast<const uint32_t(*)[8][4]>(&p[0]),
                                sw128_desc_of(v_lo + st * kStageLo), first ? 0 : 1);
      else
        rs_gemm_desc<T, D, BN>(o, p, sw128_desc_of(v_lo + st * kStageLo), first ? 0 : 1);
      wgmma_commit();
      wgmma_wait<0>();
      reg_fence(o);
      if (lane == 0) mbar_arrive(bar_empty(st));
    };
    if constexpr (kStream) {
      // The CTA's tiles as one stream of key steps. At the last step of a tile the warpgroup issues the next tile's
      // first S = Q K^T together with its last O += P V (under ping-pong: in the same turn), and runs the epilogue
      // under it: no tile starts with the tensor cores idle while every warpgroup computes its first softmax, and no
      // epilogue runs with nothing under it. With two Q buffers the next tile's Q has loaded by then (the producer
      // loads it as soon as the tile before last has released the buffer). Ping-pong turns run on across tiles (a
      // turn is one O += P V and the next S, whichever tiles they belong to), so they never realign. H200: see
      // docs/attention.md ("The streamed forward").
      struct Tile {
        int q0, h, b, first, count, qn, piece;  // qn: the tile's Q load (buffer qn % kQStages); piece: DrawOrder::Unit's
      };
      int k = 0, qn = 0;
      // The CTA's next tile or piece (every one the producer hands on has keys to see), or false past its last.
      auto next_tile = [&](Tile& nt) {
        const DrawOrder::Unit un = tile_of(k);
        if (un.u == TileOrder<BM>::kEnd) return false;
        nt.q0 = order.q0(un.u), nt.h = order.head(un.u), nt.b = order.batch(un.u), nt.piece = un.piece;
        TileRange tr = mask.key_tiles(nt.q0, BM, BN);
        if constexpr (kSplit) tr = a.draw.piece_keys(tr, un.piece);
        nt.first = tr.first, nt.count = tr.count, nt.qn = qn++;
        ++k;
        return true;
      };
      auto enter = [&](const Tile&) { m[0] = m[1] = -INFINITY, l[0] = l[1] = 0.f; };  // O: accumulate's first
      // Step j of tile c (stage use `use`): its S = Q K^T, issued; step 0 first waits for the tile's Q.
      auto issue_step = [&](const Tile& c, int j, int use, bool half) {
        if (j == 0) mbar_wait(bar_qfull(c.qn % kQStages), (c.qn / kQStages) & 1);
        issue_scores(c.qn % kQStages, use, half);
      };
      // Whether step j of tile c needs keys 0-127 of its 256 only (kDiagHalf): keys 128-255 lie at or past the end of
      // the last query's keys, so past every query's (a band's key range ends grow with the query). Under a causal mask
      // with 128 queries a tile that is the diagonal's tile of every other query tile: at S = 1024 a tenth of the key
      // steps' GEMM work, at 2048 a twentieth. By a warp vote, so that ptxas sees a uniform predicate (tile_complete).
      auto half_step = [&](const Tile& c, int j) {
        if constexpr (!kDiagHalf) {
          return false;
        } else {
          const int end = mask.keys(min(c.q0 + BM, a.Sq) - 1).hi;  // one past the last query's last key
          return __any_sync(0xffffffffu, (c.first + j) * BN + 128 >= end);
        }
      };
      // The mask's view of the softmax's tile (the keys of this thread's rows, and those every row of the tile sees),
      // computed at each step from the tile rather than held across the stream loop: held, ptxas scheduled row 0's
      // whole max and its 64 exponents' FFMAs before the first MUFU.EX2 (187-190 instructions in, against 99-101
      // computed here; tools/sass_stats.py's "MUFU lead"), and the exponentials bunched after a late start.
      // half (kDiagHalf): over keys 0-127 only, the first 64 registers of S and the first 8 P fragments. (Over all 256
      // keys, the stale half masked, the half steps ran 0.98x at S = 1024 causal; H200, session 24, run 1.)
      auto softmax = [&](const Tile& c, int j, bool half) {
        const int row0 = c.q0 + 64 * cw + 16 * w + lane / 4;  // this thread's rows: row0, row0 + 8
        const KeyRange keys[2] = {mask.keys(row0), mask.keys(row0 + 8)};
        const KeyRange common = mask.common_keys(c.q0, min(c.q0 + BM, a.Sq) - 1);
        if (kDiagHalf && half)
          softmax_tile<T, D, 128, kChains>(*reinterpret_cast<float(*)[64]>(&s[0]), o, m, l, alpha,
                                           *reinterpret_cast<uint32_t(*)[8][4]>(&p[0]), mask, keys, common,
                                           (c.first + j) * BN, lane, a.scale_log2);
        else
          softmax_tile<T, D, BN, kChains>(s, o, m, l, alpha, p, mask, keys, common, (c.first + j) * BN, lane,
                                          a.scale_log2);
      };
      // O / l to T staged through the warpgroup's rows of the tile's own Q buffer (store_out: 16-byte coalesced
      // stores; straight from the registers, four-byte stores of half sectors, the streamed forward ran 0.82x-0.97x at
      // D = 128 and 0.88x-0.97x at D = 64 with S <= 1024: H200, session 14's run 1). Those rows are free: the
      // warpgroup's S = Q K^T on them are complete (await_scores of the tile's last step), no other warpgroup reads
      // them, and the next tile's S reads the other buffer. Then the buffer goes back to the producer: this warp's
      // reads are done (__syncwarp orders its lanes'), its generic-proxy accesses before the next TMA write.
      // write_out: whether the tile is complete here (tile_complete: a whole tile, or a piece that completed it).
      auto epilogue = [&](const Tile& c, bool write_out) {
        const int qb = c.qn % kQStages;
        // store_out's staging addresses are a per-thread base and phase (session 17): ptxas may keep them across the
        // stream loop. (Before, with 16 addresses computed per register, hoisting them spilled 9 registers, and the
        // thread index was made opaque here; that also put the softmax's first MUFU 195 instructions after its first
        // FMNMX instead of 80, tools/sass_stats.py.)
        if (write_out)
          store_out<T, D, BM>(o, m, l, a.scale_log2, smem + qb * L::kTileQ, cw, t, out_rows(c.q0, c.h, c.b),
                              a.os.seq, min(BM, a.Sq - c.q0), lse_rows(c.q0, c.h, c.b));
        fence_proxy_async();
        __syncwarp();
        if (lane == 0) mbar_arrive(bar_qempty(qb));
      };
      Tile cur;
      if (next_tile(cur)) {
        int use = 0, j = 0;  // the step's stage use and its index in cur
        bool half = half_step(cur, 0);  // the step's S covers keys 0-127 of its tile only
        enter(cur);
        issue_step(cur, 0, use, half);
        await_scores();
        softmax(cur, 0, half);
        // Ping-pong: warpgroup 0 takes the first turn (the last one's signal); from there every warpgroup's turn is
        // signalled by the one before it, across tiles, and the last warpgroup skips its final signal, so that each
        // bar.sync meets exactly one set of arrivals.
        if (kPingpong && cw == kLast) named_barrier_arrive(kSchedBarrier + 0, 256);
        for (;;) {
          if constexpr (kPingpong) named_barrier_sync(kSchedBarrier + cw, 256);
          accumulate(use, j == 0, half);
          Tile nxt = cur;
          int nj = j + 1;
          if (nj == cur.count) {
            if (!next_tile(nxt)) break;
            nj = 0;
          }
          // A piece of the split tail meets the tile's other pieces here, before the next S = Q K^T is issued: the
          // records' loads and sums then have the registers S holds in flight (combined under it, ptxas spilled in the
          // stream loop).
          const bool write_out = nj != 0 || tile_complete(cur.piece);
          const bool next_half = half_step(nxt, nj);
          issue_step(nxt, nj, use + 1, next_half);
          if constexpr (kPingpong) named_barrier_arrive(kSchedBarrier + next, 256);
          if (nj == 0) {  // a tile boundary: cur's epilogue runs under the next tile's first S = Q K^T
            epilogue(cur, write_out);
            enter(nxt);
          }
          await_scores();
          softmax(nxt, nj, next_half);
          cur = nxt, j = nj, ++use, half = next_half;
        }
        if (kPingpong && cw != kLast) named_barrier_arrive(kSchedBarrier + next, 256);
        epilogue(cur, tile_complete(cur.piece));
      }
    } else {
      int it = 0, qn = 0;
      for (int k = 0;; ++k) {
        const DrawOrder::Unit un = tile_of(k);
        const int u = un.u;
        if (u == TileOrder<BM>::kEnd) break;
        const int q0 = order.q0(u), h = order.head(u), b = order.batch(u);
        // count > 0: the producer hands on no tile that sees no key
        TileRange tr = mask.key_tiles(q0, BM, BN);
        if constexpr (kSplit) tr = a.draw.piece_keys(tr, un.piece);
        const int row0 = q0 + 64 * cw + 16 * w + lane / 4;          // this thread's rows: row0, row0 + 8
        const KeyRange keys[2] = {mask.keys(row0), mask.keys(row0 + 8)};
        const KeyRange common = mask.common_keys(q0, min(q0 + BM, a.Sq) - 1);  // keys all the block's rows see
        m[0] = m[1] = -INFINITY, l[0] = l[1] = 0.f;
        const int qb = qn % kQStages;
        mbar_wait(bar_qfull(qb), (qn++ / kQStages) & 1);
        // S of tile j is in s: the last one releases Q (the producer loads the tile after next's into it); mask;
        // online softmax; O *= alpha; P -> 16-bit fragments.
        auto softmax = [&](int j) {
          if (j == tr.count - 1 && lane == 0) mbar_arrive(bar_qempty(qb));
          softmax_tile<T, D, BN, kChains>(s, o, m, l, alpha, p, mask, keys, common, (tr.first + j) * BN, lane,
                                          a.scale_log2);
        };
        if constexpr (!kPingpong) {
          for (int j = 0; j < tr.count; ++j) {
            issue_scores(qb, it + j);
            await_scores();
            softmax(j);
            accumulate(it + j, j == 0);
          }
        } else {
          // Ping-pong (FlashAttention-3's warp-group scheduling): the consumer warpgroups take turns on the tensor
          // cores, one issuing its GEMMs (O += P(j) V(j), then S(j + 1)) while the others run their softmax. Named
          // barrier kSchedBarrier + w is warpgroup w's turn: it waits there (bar.sync, 256 = its 128 threads + the
          // previous one's 128 arrivals) before its GEMMs and, once they are issued, signals the next one's (w + 1;
          // the last one's next is 0). The last warpgroup signals first so that warpgroup 0 starts, and skips its last
          // signal: each bar.sync then meets exactly one set of arrivals. kRealignBarrier keeps a persistent CTA's
          // tiles apart: the last warpgroup's first signal of a tile must not reach warpgroup 0 before its last wait
          // of the tile before (two arrivals would complete the barrier without it). The last tile is peeled off so
          // that no wgmma sits under a branch (ptxas serialises wgmmas in a path it cannot prove uniform: C7518).
          issue_scores(qb, it);
          await_scores();
          softmax(0);
          named_barrier_sync(kRealignBarrier, 128 * kConsumers);
          if (cw == kLast) named_barrier_arrive(kSchedBarrier + 0, 256);
          for (int j = 0; j + 1 < tr.count; ++j) {
            named_barrier_sync(kSchedBarrier + cw, 256);
            accumulate(it + j, j == 0);
            issue_scores(qb, it + (j + 1));  // S(j + 1): issued in our turn, softmax in the others'
            named_barrier_arrive(kSchedBarrier + next, 256);
            await_scores();
            softmax(j + 1);
          }
          named_barrier_sync(kSchedBarrier + cw, 256);
          accumulate(it + (tr.count - 1), tr.count == 1);
          // The last warpgroup skips its final signal (see above); the others give theirs to the next one, cw + 1 (the
          // two-warpgroup forms are written as constants: the kernel of runs 20-21, instruction for instruction).
          if (kConsumers == 2 ? cw == 0 : cw != kLast)
            named_barrier_arrive(kSchedBarrier + (kConsumers == 2 ? 1 : cw + 1), 256);
        }
        it += tr.count;
        if (!tile_complete(un.piece)) continue;  // a piece whose tile another CTA completes
        if constexpr (!stages_o<D>()) {
          store_out_direct<T, D>(o, m, l, a.scale_log2, cw, t, out_rows(q0, h, b), a.os.seq, min(BM, a.Sq - q0),
                                 lse_rows(q0, h, b));
        } else {
          named_barrier_sync(1 + cw, 128);  // the warpgroup's reads of the O tile for its previous tile are done
          store_out<T, D, BM>(o, m, l, a.scale_log2, smem + L::kO, cw, t, out_rows(q0, h, b), a.os.seq,
                              min(BM, a.Sq - q0), lse_rows(q0, h, b));
        }
      }
    }
  }
#endif
}

template <class T, int D, int kConsumers, bool kLower, bool kPingpong, int BN, bool kStream, int kQBufs,
          bool kSplit = false, bool kDiagHalf = false>
void launch(const Sm90Args& args, int ctas, cudaStream_t stream) {
  using Shape = WsShape<kConsumers>;
  using L = Layout<D, Shape::kBlockM, BN, kStream, kQBufs>;
  static std::atomic<uint64_t> done{0};
  auto kernel = fwd_sm90_kernel<T, D, kConsumers, kLower, kPingpong, BN, kStream, kQBufs, kSplit, kDiagHalf>;
  allow_smem(kernel, L::kBytes, done);
  kernel<<<static_cast<unsigned>(ctas), Shape::kThreads, L::kBytes, stream>>>(args);
  XF_CUDA_CHECK_LAUNCH("flash_attention (sm90 forward)");
}

// The instantiations with the split tail (kSplit; forward_split): D = 64's unmasked defaults, two consumers streamed with
// 256-key tiles and three per tile, both with ping-pong (their default schedule). D = 128 and 256 have none: H200,
// session 19 (run 2, an interleaved A/B against the tree before, the split in every kernel) D = 128 0.99x-1.01x.
constexpr bool split_built(int D, int consumers, int block_n, bool streamed) {
  return D == 64 && ((consumers == 2 && block_n == kBlockNWide && streamed) || (consumers == 3 && !streamed));
}

// The half steps of a causal band's diagonal tiles (the kernel's kDiagHalf) on streamed 256-key tiles, up to
// kDiagHalfMaxKeys keys. H200, session 24 (run 1, an interleaved A/B of one binary, D = 64, two repeats each, spreads
// <= 1%): 1.03x at S = 1024 causal (327 against 317 TFLOP/s), 1.01x at 2048, but 0.98x at 4096, where they are a
// thirty-second of the key steps and the branch (ptxas injects warpgroup.arrive around the conditional wgmmas) costs
// every step. XF_ATTENTION_SM90_DIAG_HALF=1 or 0 forces them on (a causal band on streamed tiles) or off.
constexpr int kDiagHalfMaxKeys = 2048;
bool diag_half_for(const AttentionBand& band, int Sk) {
  if (band.left >= 0 || band.full()) return false;  // the half steps are a causal band's (no left edge)
  const int forced = env_forced("XF_ATTENTION_SM90_DIAG_HALF");
  return forced >= 0 ? forced == 1 : Sk <= kDiagHalfMaxKeys;
}

template <class T, int D, int kConsumers, int BN, bool kStream, int kQBufs>
void launch_schedule(const Sm90Args& args, bool pingpong, int ctas, cudaStream_t stream) {
  if constexpr (split_built(D, kConsumers, BN, kStream)) {
    if (args.draw.split.on() && pingpong) {  // forward_split chose it: no mask
      launch<T, D, kConsumers, false, true, BN, kStream, kQBufs, true>(args, ctas, stream);
      return;
    }
  }
  if constexpr (BN == kBlockNWide && kStream) {
    if (pingpong && diag_half_for(args.band, args.Sk)) {
      launch<T, D, kConsumers, false, true, BN, kStream, kQBufs, false, true>(args, ctas, stream);
      return;
    }
  }
  if (args.band.left >= 0) {
    if (pingpong) launch<T, D, kConsumers, true, true, BN, kStream, kQBufs>(args, ctas, stream);
    else launch<T, D, kConsumers, true, false, BN, kStream, kQBufs>(args, ctas, stream);
  } else {
    if (pingpong) launch<T, D, kConsumers, false, true, BN, kStream, kQBufs>(args, ctas, stream);
    else launch<T, D, kConsumers, false, false, BN, kStream, kQBufs>(args, ctas, stream);
  }
}

// The consumers' loop and schedule (the kernel's comment). Streamed with 256-key tiles (D = 64, two consumers; by
// default without a mask), per tile otherwise. H200, session 14 (runs 1-2, interleaved A/B, two repeats each, spread
// <= 1%): streamed against per tile, D = 64 non-causal with 256-key tiles 0.98x / 1.06x / 1.04x at S = 512 / 1024 /
// 2048, and with ping-pong 1.00x / 1.07x / 1.05x; but with 128-key tiles (D = 128, causal D = 64) 0.89x-0.99x with
// ping-pong and 0.82x-0.97x free-running, and 0.99x-1.00x at S = 4096 (three consumers). So only the 256-key
// instantiations have a streamed form. Ping-pong where the stream runs, and in the per-tile loop where the block's
// queries see at least kPingpongMinKeys keys (free-running below). XF_ATTENTION_SM90_STREAM=0 runs 256-key tiles per
// tile too; XF_ATTENTION_SM90_PINGPONG=1 or 0 forces either schedule.
struct Schedule {
  bool streamed, pingpong;
};
Schedule schedule_for(int block_n, int Sk) {
  const bool streamed = block_n == kBlockNWide && env_flag_default_on("XF_ATTENTION_SM90_STREAM");
  const int forced = env_forced("XF_ATTENTION_SM90_PINGPONG");
  return {streamed, forced >= 0 ? forced == 1 : streamed || Sk >= kPingpongMinKeys};
}

template <class T, int D, int kConsumers, int BN = 128>
void launch_band(const Sm90Args& args, int ctas, cudaStream_t stream) {
  constexpr bool kStreams = BN == kBlockNWide;
  const auto [streamed, pingpong] = schedule_for(BN, args.Sk);
  if constexpr (kStreams) {
    if (streamed) {
      launch_schedule<T, D, kConsumers, BN, true, 2>(args, pingpong, ctas, stream);
      return;
    }
  }
  // Two Q buffers in the per-tile loop where they fit beside the O tile. H200, session 14 (run 3, interleaved A/B
  // against one, with the rest of the tree alike): 0.99x-1.02x over the grid (+1% to +2% at D = 128 from S = 2048).
  constexpr int kQBufs = Layout<D, 64 * kConsumers, BN, false, 2>::kFits ? 2 : 1;
  launch_schedule<T, D, kConsumers, BN, false, kQBufs>(args, pingpong, ctas, stream);
}

// The consumer warpgroups of a forward CTA (WsShape): 2, or 3 at D = 64 (FlashAttention-3's head-dim-64 shape, 192
// queries a CTA) where both sequences have at least kThreeConsumersMin tokens. H200, 2026-11-30 (an interleaved
// A/B over the D = 64 grid, two repeats each, within 1%): 3 consumers ran +5% to +12% from S = 4096 up (494 TFLOP/s
// at S = 16384), but -8% to -30% at S <= 2048 under a causal mask and at S = 512 (a 192-row tile's diagonal and
// tail waste more, and a CTA's few key tiles leave less to overlap); a short Sq wastes up to 191 rows a head.
// Under a causal band (no left edge) three consumers start at kThreeConsumersMinCausal: session 15 (run 4, the same
// kind of A/B, with the streamed 256-key loop and its MUFU-lead fix) had two consumers with 256-key tiles 1.02x the
// forward of three at S = 4096 causal (436 against 429 TFLOP/s; spreads <= 0.2%), 1.00x at 8192 causal and
// 0.99x-1.00x without a mask at 4096 and 8192.
// XF_ATTENTION_SM90_CONSUMERS=2 or 3 forces one (D = 128 and 256 always have 2: 160 registers cannot hold their O, S
// and P).
constexpr int kThreeConsumersMin = 4096;
constexpr int kThreeConsumersMinCausal = 8192;
int consumers_for(const Params& p) {
  if (p.D != 64) return 2;
  const int forced = env_int("XF_ATTENTION_SM90_CONSUMERS", 0);
  if (forced == 2 || forced == 3) return forced;
  const bool causal_band = !p.band.full() && p.band.left < 0;
  const int min_len = causal_band ? kThreeConsumersMinCausal : kThreeConsumersMin;
  return p.Sq >= min_len && p.Sk >= min_len ? 3 : 2;
}

// Keys per K/V tile (kBlockNWide's comment): 256 at D = 64 with two consumer warpgroups and either no mask or a band
// without a left edge (causal) over at least kWideMaskedMinKeys keys; 128 otherwise. H200, 2026-11-30 (run 31, an
// interleaved A/B over the D = 64 grid, two repeats each, forward spread <= 1.1%, the per-tile loop): 256 keys ran
// the unmasked forward +5% at S = 512, +1% at 1024 and +8% at 2048 (2 consumers), but -6% to 0% under a causal mask
// (a 256-key tile straddles the diagonal more often: more masked work) and -3% to -7% against three consumers from
// S = 4096. Session 14 (run 3, the same kind of A/B; 256-key tiles now run the streamed consumers): causal 0.91x at
// S = 512, 0.99x at 1024, 1.07x at 2048 (373 against 348 TFLOP/s); against three consumers 0.96x-0.99x from 4096.
// Session 17 (run 6, the same binary with XF_ATTENTION_SM90_BLOCK_N=256 against the default, after the streamed
// epilogue lost ~300 instructions a tile): causal 1.04x at S = 1024 (309 against 296), 0.97x at 512; hence 1024.
// XF_ATTENTION_SM90_BLOCK_N=128 or 256 forces either (at D = 64 with two consumers).
constexpr int kWideMaskedMinKeys = 1024;
int block_n_for(const Params& p, int consumers) {
  if (p.D == 256) return kBlockNHead256;
  if (p.D != 64 || consumers != 2) return 128;
  const int forced = env_int("XF_ATTENTION_SM90_BLOCK_N", 0);
  if (forced == 128 || forced == kBlockNWide) return forced;
  return p.band.full() || (p.band.left < 0 && p.Sk >= kWideMaskedMinKeys) ? kBlockNWide : 128;
}

template <class T>
void launch_shape(const Sm90Args& args, int D, int consumers, int block_n, int ctas, cudaStream_t stream) {
  if (D == 256) launch_band<T, 256, 2, kBlockNHead256>(args, ctas, stream);
  else if (D == 128) launch_band<T, 128, 2>(args, ctas, stream);  // 160 registers cannot hold D = 128's O, S and P
  else if (consumers == 3) launch_band<T, 64, 3>(args, ctas, stream);
  else if (block_n == kBlockNWide) launch_band<T, 64, 2, kBlockNWide>(args, ctas, stream);
  else launch_band<T, 64, 2>(args, ctas, stream);
}

}  // namespace

#ifdef XF_BUILD_SM90A
constexpr bool kSm90Built = true;  // CMakeLists.txt defines XF_BUILD_SM90A when 90a is among the architectures
#else
constexpr bool kSm90Built = false;
#endif

int sm90_device_sms() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or device: not an error here
    return 0;
  }
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices];  // 0 unknown, -1 not 9.0, else the SM count
  if (dev < 0 || dev >= kMaxDevices) return 0;
  int c = cached[dev].load(std::memory_order_relaxed);
  if (c == 0) {
    int major = 0, minor = 0, sms = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    c = major == 9 && minor == 0 && sms > 0 ? sms : -1;
    cached[dev].store(c, std::memory_order_relaxed);
  }
  return c > 0 ? c : 0;
}

int sm90_persistent_ctas(int units) {
  const int cap = env_int("XF_ATTENTION_SM90_CTAS", 0);
  return std::min(units, cap > 0 ? cap : sm90_device_sms());
}

std::string sm90_problem_refusal(const Params& p, DType dtype) {
  if (dtype != DType::bf16 && dtype != DType::f16) return "it computes in bf16 or f16";
  if (p.D != 64 && p.D != 128 && p.D != 256) return "head dim " + std::to_string(p.D) + " is not 64, 128 or 256";
  if (p.bias || p.drop.on || p.varlen) return "a bias, dropout or packed sequences";
  if (p.Sq < 1 || p.Sk < 1) return "an empty sequence";
  // The online softmax takes row maxima of the raw scores (the scale applied in the exponent) and hides keys with
  // -inf before scaling: both need scale > 0.
  if (!(p.scale_log2 > 0.f)) return "a scale that is not positive";
  if (p.B > 65535 || p.H > 65535) return "more than 65535 batch entries or heads (the backward's grid z, y)";
  // Tile indices are 32-bit (TileOrder): B x H x ceil(Sq / 128) query tiles of the forward and the dQ kernel and
  // B x Hk x ceil(Sk / 128) key blocks of the dK/dV kernel < 2^31.
  if (static_cast<int64_t>(p.B) * p.H * ((p.Sq + sm90::kBlockM - 1) / sm90::kBlockM) > INT32_MAX)
    return "2^31 or more query tiles";  // of 128 queries: fewer of 192
  if (static_cast<int64_t>(p.B) * p.Hk * ((p.Sk + 127) / 128) > INT32_MAX) return "2^31 or more key blocks";
  return "";
}

std::string sm90_refusal(const Params& p, DType dtype) {
  // The problem first, then the tensors and the switches, the device last: a machine without a GPU can check the
  // reasons.
  std::string why = sm90_problem_refusal(p, dtype);
  if (!why.empty()) return why;
  if (!p.vec) return "TMA needs 16-byte aligned tensors with strides that are multiples of 8 elements";
  // TMA takes no zero stride on an axis of more than one element (a broadcast q, k or v).
  if ((p.B > 1 && (p.qs.batch == 0 || p.ks.batch == 0)) || (p.H > 1 && p.qs.head == 0) || (p.Hk > 1 && p.ks.head == 0))
    return "a zero batch or head stride";
  if (!kSm90Built) return "this build has no sm_90a code (CMAKE_CUDA_ARCHITECTURES without 90a)";
  if (!env_flag_default_on("XF_ATTENTION_SM90")) return "XF_ATTENTION_SM90=0";
  if (sm90_device_sms() == 0) return "the device is not compute capability 9.0";
  return "";
}

bool sm90_head_map(CUtensorMap* map, DType dtype, const void* base, int D, int S, int heads, int B,
                   const HeadStrides& st, int box_rows, std::string* why) {
  return sm90::encode_head_map(map, dtype == DType::f16, base, D, S, heads, B, st.batch, st.head, st.seq,
                               static_cast<uint32_t>(box_rows), why);
}

// The split tail (DrawOrder's SplitTail) of an unmasked forward: its tiles all cost the same, so the last round, which
// holds tiles % CTAs of them (all of them when there are fewer tiles than CTAs), would run on that many CTAs while the
// others idle: 4096 query tiles on 132 CTAs are 31.03 rounds, run in 32, on the benchmark grid at every S. Split along
// their key tiles, the tail runs on up to every CTA, each piece's partial result (O, row max, row sum) combined by the
// warpgroup that ends the tile's last piece (sm90/attention.cuh, split_combine), so the last round takes a piece's time,
// not a tile's. Needs the caller's counters (one per tail tile and consumer warpgroup past the draw's two) and
// workspace (sm90_forward_workspace_bytes). XF_ATTENTION_SM90_SPLIT=0 turns it off (and XF_ATTENTION_SM90_DRAW=0: the
// pieces are drawn).
// Only for tiles of at least kSplitMinKeyTiles key tiles. H200, session 19 (run 4, the same binary, interleaved A/Bs):
// at S = 512 (two 256-key tiles, pieces of one) the split ran 386-390 TFLOP/s against 395-398 for the same tiles drawn
// whole; at 1024 (four) 454-458 against 453-455, at 2048 491-496 against 477-481 dealt in pairs.
namespace {
constexpr int kSplitMinKeyTiles = 4;
SplitTail forward_split(const Params& p, int consumers, int block_n) {
  if (!p.band.full() || p.tile_counter == nullptr || !env_flag_default_on("XF_ATTENTION_SM90_SPLIT") ||
      env_forced("XF_ATTENTION_SM90_DRAW") == 0)
    return {};
  const int key_tiles = (p.Sk + block_n - 1) / block_n;
  if (key_tiles < kSplitMinKeyTiles) return {};
  const Schedule sched = schedule_for(block_n, p.Sk);
  if (!split_built(p.D, consumers, block_n, sched.streamed) || !sched.pingpong) return {};
  const int block_m = 64 * consumers;
  const int64_t tiles = int64_t{(p.Sq + block_m - 1) / block_m} * p.H * p.B;  // < 2^31: sm90_problem_refusal
  const SplitTail split = split_tail(static_cast<int>(tiles), sm90_persistent_ctas(INT32_MAX), key_tiles);
  if (!split.on() || int64_t{split.tail} * consumers > p.tile_counter_words - 2) return {};
  return split;
}
}  // namespace

size_t sm90_forward_workspace_bytes(const Params& p) {
  const int consumers = consumers_for(p);
  const SplitTail split = forward_split(p, consumers, block_n_for(p, consumers));
  return split.on() ? static_cast<size_t>(split.tail) * consumers * split.pieces * sm90::split_record_bytes(p.D) : 0;
}

void launch_sm90_forward(const Params& p, DType dtype, cudaStream_t stream) {
  const int consumers = consumers_for(p), block_m = 64 * consumers;  // WsShape<consumers>::kBlockM
  const int block_n = block_n_for(p, consumers);
  Sm90Args args;
  std::string why;
  const bool ok = sm90_head_map(&args.tm_q, dtype, p.q, p.D, p.Sq, p.H, p.B, p.qs, block_m, &why) &&
                  sm90_head_map(&args.tm_k, dtype, p.k, p.D, p.Sk, p.Hk, p.B, p.ks, block_n, &why) &&
                  sm90_head_map(&args.tm_v, dtype, p.v, p.D, p.Sk, p.Hk, p.B, p.ks, block_n, &why);
  XF_CHECK(ok, "flash_attention", "the sm90 forward's tensor maps: ", why);
  args.o = p.o;
  args.lse = p.lse_out;
  args.os = p.os;
  args.H = p.H;
  args.G = p.G;
  args.Sq = p.Sq;
  args.Sk = p.Sk;
  args.band = p.band;
  args.scale_log2 = p.scale_log2;
  args.m_tiles = (p.Sq + block_m - 1) / block_m;
  args.pairs = (args.m_tiles + 1) / 2 * p.H * p.B;  // < 2^31: sm90_problem_refusal
  args.tiles = args.m_tiles * p.H * p.B;
  // Drawn tiles (DrawOrder) at D = 64 where the caller gave a counter; dealt pairs otherwise. Under a mask query tiles
  // cost different amounts, and drawn longest first they balance where pairs leave the last round part idle. H200,
  // session 18 (interleaved A/Bs, runs 1 and 2): drawn against dealt, causal, D = 64 +1% to +4% (S = 512 to 4096), D =
  // 128 -1% to -2% (docs/attention.md, "Drawn tiles"). Without a mask, tiles all cost the same, but drawn one at a time
  // in head order (chunks of one head: a head's tiles run at once on neighbouring CTAs, which share its K and V in L2)
  // they ran faster than the pairs too: session 19 (run 4, the same binary) 391 -> 398 TFLOP/s at S = 512, 445 -> 455 at
  // 1024 (D = 64; the drawn order with 16 MB chunks 395 and 453). The split tail (forward_split) draws its pieces.
  // XF_ATTENTION_SM90_DRAW=1 or 0 forces either order; XF_ATTENTION_SM90_DRAW_CHUNK=N sets the heads a chunk.
  const SplitTail split = forward_split(p, consumers, block_n);
  const int forced_draw = env_forced("XF_ATTENTION_SM90_DRAW");
  const bool drawn = (split.on() && p.forward_workspace != nullptr) ||
                     (p.tile_counter != nullptr && (forced_draw >= 0 ? forced_draw == 1 : p.D == 64));
  int ctas = 0;  // the kernel is persistent
  if (drawn) {
    const int heads = p.B * p.H;
    // K and V of a kv head over the keys, per query head that shares it (GQA: G of them).
    const int64_t kv_head_bytes = int64_t{2} * p.Sk * p.D * 2 / p.G;
    args.tile_counter = p.tile_counter;
    const int forced_chunk = env_int("XF_ATTENTION_SM90_DRAW_CHUNK", 0);
    const int chunk = forced_chunk > 0 ? forced_chunk : (p.band.full() ? 1 : draw_chunk_heads(heads, kv_head_bytes));
    args.draw = DrawOrder(args.m_tiles, heads, chunk,
                          p.forward_workspace != nullptr ? split : SplitTail{});
    if (args.draw.split.on()) {
      args.split_records = static_cast<float4*>(p.forward_workspace);
      args.split_counters = p.tile_counter + 2;
    }
    ctas = sm90_persistent_ctas(args.draw.units);
  } else {
    ctas = sm90_persistent_ctas(args.pairs);
  }
  if (dtype == DType::bf16) launch_shape<__nv_bfloat16>(args, p.D, consumers, block_n, ctas, stream);
  else launch_shape<__half>(args, p.D, consumers, block_n, ctas, stream);
}

}  // namespace xfr::cuda::fa
