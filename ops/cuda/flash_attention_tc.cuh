// Tensor-core (bf16 / f16) kernels of ops/flash_attention.h, as templates: instantiated by
// flash_attention_tc_forward.cu (both dtypes) and flash_attention_tc_backward_{bf16,f16}.cu, three translation
// units that nvcc compiles in parallel (one file of all 112 kernels was the longest step of a build).
// The kernels, FlashAttention-2 style: mma.sync m16n8k16 with
// fp32 accumulators (ops/cuda/device/mma.cuh), tiles staged in shared memory by cp.async (double-buffered),
// fragments loaded by ldmatrix. Each kernel is instantiated for kMaxD = 32, 64, 128 or 256 (the head dim padded to
// a multiple of 16, zero columns, must fit); D == 32, 64, 128 and 256 are compile-time specialisations (kExact:
// no run-time bounds on the head-dim loops), every other D takes the generic instantiation of the next kMaxD with
// run-time bounds (D = 40 runs the 64-wide tile). Shared-memory rows are kMaxD + 8 elements long: the 16 extra
// bytes put the 8 rows that one ldmatrix reads in 8 different bank groups (a row length that is a multiple of
// 128 bytes would make that an 8-way conflict).
//
// Each forward, dQ and dK/dV kernel is also instantiated twice over its features kF (ops/cuda/flash_attention_mask.h),
// chosen on the host from the problem: "plain" (kPlain: no bias, no dropout, no packed sequences, a band without a
// lower bound: no mask, causal in either alignment, a right window), whose per-row state is the last visible key
// and nothing else, and "general" (kGeneral: everything; a bias, dropout, packed sequences or a left window). One
// mask helper (Mask) serves every kernel: the key (query) tiles a block visits, the keys every query of a block
// sees, element (i, j). In the plain instantiation a tile that all the block's queries see whole tests no element
// (its element loop is compiled apart); only the tiles on a causal diagonal or past Sk do. Both give the same bits.
//
//   forward     CTA = (b, h, 64 queries of a sequence), 4 warps x 16 query rows; loops over the key tiles of kBk
//               keys the block's queries see (AttentionBand: causal and windows skip the rest, so local attention
//               costs O(S W)): S = Q K^T (registers), + bias, masked, online softmax in registers (exp2 with scale
//               log2 e folded in), dropout on P, O += P V with P reused from the S accumulators as the A operand
//               (no shared-memory round trip). Only tiles that some query of the block does not fully see are
//               masked element by element. Query blocks are issued last first (the longest under causal).
//               The forward and dQ CTAs find their block, mask and key tiles alike (QueryBlock).
//   backward    Delta (ops/cuda/flash_attention.cu), then three kernels, no float atomics (deterministic):
//               1. dK, dV: CTA = (b, kv head, 64 keys), 8 warps; loops over the G query heads of the kv head and
//                  over the query tiles that see the keys. Phase A: S^T = K Q^T and dP^T = V dO^T (warp = 16 keys x
//                  half the query tile), P^T = exp2(S^T - lse), dS^T = P^T (dP^T z - Delta), both written to
//                  shared memory in 16 bits. Phase B: dV += (P^T z) dO, dK += dS^T Q (warp = 16 keys x half of the
//                  head dim, so the two accumulators fit registers).
//               2. dQ: CTA = (b, h, 64 queries), 4 warps x 16 rows, loops over key tiles like the forward: S,
//                  dP = dO V^T, dS in registers, dQ += dS K with dS reused as the A operand.
//               3. dbias (when the bias needs a gradient): CTA = (bias batch, bias head, 64 queries, 64 keys);
//                  for each (b, h) the bias element serves (the broadcast axes), S and dP of the tile, dS summed in
//                  registers, written once: no atomics even when the bias broadcasts. One instantiation per tile
//                  (a bias makes the problem general), with the general mask.
// Packed sequences: the grids tile the concatenated sequences (varlen_tiles); a CTA finds its sequence by a binary
// search over the offsets, and every row index is within the sequence.
#pragma once
#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/device/mma.cuh"
#include "ops/cuda/flash_attention_params.cuh"

namespace xfr::cuda::fa {

namespace {

template <int kMaxD>
struct Tiles {
  // Shared-memory row length in elements: kMaxD plus 8 (16 bytes) against ldmatrix bank conflicts.
  static constexpr int kStride = kMaxD + 8;
  // Forward / dQ: 64 queries per CTA = 4 warps x one 16-row MMA tile each.
  static constexpr int kBq = 64;
  static constexpr int kWarpsQ = 4;
  // Keys per tile of the forward / dQ loop. Registers per thread: O (or dQ) is 16 x kMaxD fp32 per warp =
  // kMaxD / 2 floats, S (and dP) 16 x kBk = kBk / 2 floats each. kMaxD 256 with 64-key tiles would need
  // 128 + 32 (+ 32 for dQ) floats plus addresses: over the 255-register limit; 32-key tiles keep it under.
  // Which limit each exact instantiation meets on the H200 (255 registers per thread, 64 K registers and 227 KB
  // of shared memory per SM). Registers per thread as ptxas reports them (CUDA 13.0, sm_90a, no spills), forward /
  // dQ / dK-dV, plain | general instantiation (CTAs per SM that the registers allow in brackets: 128 threads
  // forward and dQ, 256 dK/dV):
  //   kMaxD  32:  87 / 128 / 126 (5 / 4 / 2) | 128 / 162 / 181 (4 / 3 / 1): registers bound occupancy (shared
  //              memory, 25-49 KB a CTA, is far from the limit). The 64-wide tile this replaces for MiniLM's D = 32
  //              did twice the MMAs on zero columns and staged twice the shared memory.
  //   kMaxD  64: 122 / 135 / 154 (4 / 3 / 1) | 162 / 168 / 186 (3 / 3 / 1): registers; 45-73 KB of shared memory.
  //   kMaxD 128: 158 / 180 / 194 | 200 / 244 / 218: registers (O 64 + S 32 (+ dP 32 in dQ) floats per thread) and
  //              shared memory (85-121 KB) allow one or two CTAs per SM either way.
  //   kMaxD 256: 245 / 248 / 239 | 246 / 254 / 246: registers force kBk = 32 (see above); shared memory forces
  //              kBqKV = 32 for dK/dV (below).
  // The generic-D instantiations (kExact false) take at most a few more, mostly fewer; the general forward of
  // generic kMaxD 128 (D 65-127) spills 16 bytes (ptxas holds it at 168 registers, 3 CTAs).
  static constexpr int kBk = kMaxD <= 128 ? 64 : 32;
  // dK/dV kernel: 64 keys per CTA, 8 warps (4 x 16 key rows, x 2 halves of the query tile in phase A and of the
  // head dim in phase B, which keeps dK + dV at kMaxD / 2 floats per thread). Query tile: 64, or 32 at kMaxD 256
  // where shared memory is the limit (K, V: 2 x 64 x 264 x 2 B = 66 KB; Q, dO double-buffered: 4 x kBqKV x 528 B).
  static constexpr int kBkKV = 64;
  static constexpr int kWarpsKV = 8;
  static constexpr int kBqKV = kMaxD <= 128 ? 64 : 32;
  static constexpr int kPStride = kBqKV + 8;  // P^T / dS^T rows in shared memory, padded as above

  // Forward: Q (kBq rows) + K, V double-buffered (4 x kBk rows). 25 KB / 45 KB / 85 KB / 99 KB for kMaxD 32 / 64 /
  // 128 / 256.
  static constexpr size_t kFwdSmem = static_cast<size_t>(kBq + 4 * kBk) * kStride * 2;
  // dQ: Q, dO (2 x kBq rows) + K, V double-buffered. 30 KB / 54 KB / 102 KB / 132 KB.
  static constexpr size_t kDqSmem = static_cast<size_t>(2 * kBq + 4 * kBk) * kStride * 2;
  // dK/dV: K, V (2 x 64 rows) + Q, dO double-buffered (4 x kBqKV rows) + P^T, dS^T (2 x 64 x kPStride) + lse,
  // Delta double-buffered (4 x kBqKV floats). 49 KB / 73 KB / 121 KB / 143 KB (the H200 allows 227 KB per block).
  static constexpr size_t kKVSmem = static_cast<size_t>(2 * kBkKV + 4 * kBqKV) * kStride * 2 +
                                    static_cast<size_t>(2 * kBkKV) * kPStride * 2 + 4 * kBqKV * sizeof(float);
};

// Copies rows [row0, row0 + kRows) of a (rows, D) matrix `g` (row r at g + r * ld) into the shared tile `s`
// (kRows x stride), columns [0, dp) (dp: D rounded up to 16); rows >= rows and columns >= D become zeros, so that
// padded products add nothing and no NaN from uninitialised memory can reach a P = 0 entry. vec: cp.async in
// 16-byte chunks (the caller commits and waits); else plain loads and stores.
template <class T, int kRows, int kThreads>
__device__ __forceinline__ void load_tile(T* s, int stride, const T* g, int64_t ld, int64_t row0, int64_t rows, int D,
                                          int dp, bool vec) {
  if (vec) {
    const int chunks = dp / 8;  // 16-byte chunks per row; D % 8 == 0, so a chunk is all in or all out
    for (int c = threadIdx.x; c < kRows * chunks; c += kThreads) {
      const int r = c / chunks, col = (c % chunks) * 8;
      const int64_t row = row0 + r;
      const bool in = row < rows && col < D;
      dev::cp_async_16(s + r * stride + col, in ? g + row * ld + col : g, in ? 16 : 0);
    }
  } else {
    for (int e = threadIdx.x; e < kRows * dp; e += kThreads) {
      const int r = e / dp, col = e % dp;
      const int64_t row = row0 + r;
      s[r * stride + col] = row < rows && col < D ? g[row * ld + col] : dev::from_float<T>(0.f);
    }
  }
}

// Lane offsets of ldmatrix.x4 addresses (see device/mma.cuh).
//  "A pattern": matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15,
//  cols 8-15): row lane % 16, column (lane / 16) * 8. Non-transposed it gives an A fragment (16 rows x 16 k);
//  transposed, on a [k][n] tile it gives the B fragments of two 8-column n-tiles: {r0, r1} for columns 0-7
//  and {r2, r3} for columns 8-15.
//  "B pattern": matrices (rows 0-7, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 0-7), (rows 8-15,
//  cols 8-15): row (lane / 16) * 8 + lane % 8, column ((lane / 8) % 2) * 8. On an [n][k] tile it gives the B
//  fragments of two n-tiles: {r0, r1} for rows (n) 0-7 and {r2, r3} for rows 8-15.
__device__ __forceinline__ int a_row(int lane) { return lane % 16; }
__device__ __forceinline__ int a_col(int lane) { return (lane / 16) * 8; }
__device__ __forceinline__ int b_row(int lane) { return (lane / 16) * 8 + lane % 8; }
__device__ __forceinline__ int b_col(int lane) { return ((lane / 8) % 2) * 8; }

// acc (16 x 8 n-tiles) += A (16 rows x K, at `a_tile`, row-major, stride `sa`) * B^T where B is stored
// [n][k] (at `b_tile`, row-major, stride `sb`): acc[nt] covers n-rows nt*8 .. nt*8+7. ksteps: K / 16.
template <class T, int kNTiles, int kMaxK, bool kExactK>
__device__ __forceinline__ void mma_abt(float (&acc)[kNTiles][4], const T* a_tile, int sa, const T* b_tile, int sb,
                                        int ksteps, int lane) {
#pragma unroll
  for (int ks = 0; ks < kMaxK / 16; ++ks) {
    if (!kExactK && ks >= ksteps) break;
    uint32_t a[4];
    dev::ldmatrix_x4(a, a_tile + a_row(lane) * sa + ks * 16 + a_col(lane));
#pragma unroll
    for (int np = 0; np < kNTiles / 2; ++np) {
      uint32_t b[4];
      dev::ldmatrix_x4(b, b_tile + (np * 16 + b_row(lane)) * sb + ks * 16 + b_col(lane));
      dev::mma_16816<T>(acc[2 * np], a, b[0], b[1]);
      dev::mma_16816<T>(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// acc (16 x N, n-tiles of 8 starting at column n0 of B) += A (16 x 16 fragment `a`) * B where B is stored
// [k][n] (at `b_tile`, the 16 k-rows of this step, row-major, stride `sb`). npairs: N / 16 (run-time bound).
template <class T, int kNTiles, bool kExactN>
__device__ __forceinline__ void mma_ab(float (&acc)[kNTiles][4], const uint32_t (&a)[4], const T* b_tile, int sb,
                                       int n0, int npairs, int lane) {
#pragma unroll
  for (int np = 0; np < kNTiles / 2; ++np) {
    if (!kExactN && np >= npairs) break;
    uint32_t b[4];
    dev::ldmatrix_x4_trans(b, b_tile + a_row(lane) * sb + n0 + np * 16 + a_col(lane));
    dev::mma_16816<T>(acc[2 * np], a, b[0], b[1]);
    dev::mma_16816<T>(acc[2 * np + 1], a, b[2], b[3]);
  }
}

// The A fragment of k-step kk (16 keys) from S-shaped accumulators s[n-tile][4] (n-tiles 2kk and 2kk + 1).
template <class T, int kNTiles>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&s)[kNTiles][4], int kk) {
  a[0] = dev::pack2<T>(s[2 * kk][0], s[2 * kk][1]);
  a[1] = dev::pack2<T>(s[2 * kk][2], s[2 * kk][3]);
  a[2] = dev::pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
  a[3] = dev::pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// Stores rows of a 16 x (kNTiles * 8) fp32 accumulator tile to g (rows x D, row r at g + r * ld), times mul0 at
// row row0 + gr and mul1 at row0 + gr + 8 (gr = lane / 4), columns col0 + nt * 8 + 2t (+1); rows >= rows and
// columns >= D skipped.
template <class T, int kNTiles>
__device__ __forceinline__ void store_acc(T* g, int64_t ld, const float (&acc)[kNTiles][4], int64_t row0,
                                          int64_t rows, int D, int col0, float mul0, float mul1, bool vec, int lane) {
  const int gr = lane / 4, t = lane % 4;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int64_t row = row0 + gr + hr * 8;
    if (row >= rows) continue;
    T* grow = g + row * ld;
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      const int col = col0 + nt * 8 + 2 * t;
      if (col >= D) break;  // columns grow with nt
      const float mul = hr == 0 ? mul0 : mul1;
      const float x0 = acc[nt][2 * hr] * mul, x1 = acc[nt][2 * hr + 1] * mul;
      if (vec) {  // D even and the row 4-byte aligned: one 32-bit store of the pair (col + 1 < D as D % 8 == 0)
        *reinterpret_cast<uint32_t*>(grow + col) = dev::pack2<T>(x0, x1);
      } else {
        grow[col] = dev::from_float<T>(x0);
        if (col + 1 < D) grow[col + 1] = dev::from_float<T>(x1);
      }
    }
  }
}


// s scale_log2 rounded on its own, never fused into a following add or subtract: what the score had when a bias add
// (an instantiation with kBias) or a select came between, so every instantiation gives the same bits.
__device__ __forceinline__ float scaled(float s, float scale_log2) { return __fmul_rn(s, scale_log2); }

// Runs the element loop f of a tile: f(std::true_type) for a tile that needs the element mask, f(std::false_type)
// for one every query of the block sees whole, two bodies compiled apart, so a visible tile tests no element. The
// general instantiation keeps one body, f(masked) (the tile test inside it, per element): a second copy there
// costs registers (ptxas heuristics) for the rarer problems.
template <int kF, class F>
__device__ __forceinline__ void with_tile_mask(bool masked, F&& f) {
  if constexpr (kF == kGeneral) {
    f(masked);
  } else if (masked) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// What a forward and a dQ CTA set up alike: its (b, h), sequence and first query (init false: a varlen tile past
// its sequence, nothing to do), the offsets of its heads' rows at the sequence's first row (q, dq of (b, h); out,
// dout of (b, h); k, v of kv head h / G), the sequence's mask, the key tiles the block's queries visit, the padded head dim
// and the staging of its tiles.
template <class T, int kMaxD, bool kExact, int kF>
struct QueryBlock {
  using Tl = Tiles<kMaxD>;
  static constexpr int kBq = Tl::kBq, kBk = Tl::kBk, kStride = Tl::kStride, kThreads = 32 * Tl::kWarpsQ;
  int b = 0, h = 0, q0 = 0;
  Seq s{};
  int64_t qoff = 0, ooff = 0, kvoff = 0;
  Mask<has(kF, kBand)> mask;
  TileRange tr{};
  int dp = kMaxD, ksteps = kMaxD / 16;  // the head dim rounded up to 16 (kExact: kMaxD), and in k-steps of 16

  __device__ __forceinline__ bool init(const Params& p) {
    if (!block_of<has(kF, kVarlen), false>(p, kBq, b, h, q0, s)) return false;
    qoff = p.q_head(b, h) + s.q0 * p.qs.seq;
    ooff = p.o_head(b, h) + s.q0 * p.os.seq;
    kvoff = p.k_head(b, h / p.G) + s.k0 * p.ks.seq;
    mask = Mask<has(kF, kBand)>(p.band, s.Sq, s.Sk);
    tr = mask.key_tiles(q0, kBq, kBk);
    if (!kExact) dp = (p.D + 15) / 16 * 16, ksteps = dp / 16;
    return true;
  }
  // Stages the block's kBq rows of q ((B, H, Sq, D) logical) into sX ([kBq][kStride]).
  __device__ __forceinline__ void load_q(const Params& p, T* sX) const {
    load_tile<T, kBq, kThreads>(sX, kStride, static_cast<const T*>(p.q) + qoff, p.qs.seq, q0, s.Sq, p.D, dp, p.vec);
  }
  // The same rows of dout (out's strides).
  __device__ __forceinline__ void load_dout(const Params& p, T* sX) const {
    load_tile<T, kBq, kThreads>(sX, kStride, static_cast<const T*>(p.dout) + ooff, p.os.seq, q0, s.Sq, p.D, dp,
                                p.vec);
  }
  // Stages key tile kt of the range (kBk rows of K and of V) into buffer `buf` of sK, sV ([2][kBk][kStride]).
  __device__ __forceinline__ void load_kv(const Params& p, T* sK, T* sV, int kt, int buf) const {
    const int row0 = (tr.first + kt) * kBk;
    load_tile<T, kBk, kThreads>(sK + buf * kBk * kStride, kStride, static_cast<const T*>(p.k) + kvoff, p.ks.seq, row0,
                                s.Sk, p.D, dp, p.vec);
    load_tile<T, kBk, kThreads>(sV + buf * kBk * kStride, kStride, static_cast<const T*>(p.v) + kvoff, p.ks.seq, row0,
                                s.Sk, p.D, dp, p.vec);
  }
};

// ---- forward ----------------------------------------------------------------------------------------
// q: (B, H, Sq, D), k, v: (B, Hk, Sk, D) (logical; strides p.qs, p.ks), [bias] -> o (q's strides), lse_out.
// grid (B H, ceil(Sq / 64)) or varlen (H, varlen_tiles(Tq, nseq, 64)), 128 threads, Tiles<kMaxD>::kFwdSmem bytes
// of dynamic shared memory. kF: the features compiled in (flash_attention_mask.h).
template <class T, int kMaxD, bool kExact, int kF>
__global__ void __launch_bounds__(128) fwd_tc_kernel(Params p) {
  using Tl = Tiles<kMaxD>;
  constexpr int kBq = Tl::kBq, kBk = Tl::kBk, kStride = Tl::kStride;
  constexpr int kDT = kMaxD / 8;  // n-tiles of the output
  constexpr bool kHasBias = has(kF, kBias), kHasDrop = has(kF, kDropout), kHasVarlen = has(kF, kVarlen);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // [kBq][kStride]
  T* sK = sQ + kBq * kStride;              // [2][kBk][kStride]
  T* sV = sK + 2 * kBk * kStride;          // [2][kBk][kStride]

  QueryBlock<T, kMaxD, kExact, kF> blk;
  if (!blk.init(p)) return;
  blk.load_q(p, sQ);
  if (blk.tr.count > 0) blk.load_kv(p, sK, sV, 0, 0);
  dev::cp_async_commit();
  const int b = blk.b, h = blk.h, q0 = blk.q0, ksteps = blk.ksteps;
  const Seq& sq = blk.s;
  const TileRange tr = blk.tr;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, t = lane % 4;
  const int row_base = q0 + warp * 16;  // this warp's 16 queries; the thread holds rows gr and gr + 8
  // This thread's two rows: the keys they see and, in an instantiation with them, their lse rows (varlen: else
  // recomputed at the end), dropout stream rows and bias rows (null: no bias, or padding).
  KeyRange keys[2];
  int64_t lrow[2] = {0, 0};
  uint64_t drow[2] = {0, 0};
  const T* brow[2] = {nullptr, nullptr};
  const uint64_t dstart = kHasDrop && p.drop.on ? p.drop.start() : 0;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int i = row_base + gr + hr * 8;
    keys[hr] = blk.mask.keys(i);
    if (kHasVarlen) lrow[hr] = row_id(p, b, h, sq, i);
    if (kHasDrop) drow[hr] = drop_row(p, dstart, row_id(p, b, h, sq, i), sq);
    if (kHasBias) brow[hr] = p.bias && i < sq.Sq ? bias_row<T>(p, b, h, i) : nullptr;
  }
  // The keys every query of the block sees: a key tile within them needs no element mask.
  const KeyRange common = blk.mask.common_keys(q0, min(q0 + kBq, sq.Sq) - 1);

  float o[kDT][4];
#pragma unroll
  for (int i = 0; i < kDT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int kt = 0; kt < tr.count; ++kt) {
    dev::cp_async_wait<0>();
    __syncthreads();  // tile kt (and Q) landed; every warp is done with tile kt - 1, whose buffer is refilled now
    const int buf = kt & 1;
    if (kt + 1 < tr.count) {
      blk.load_kv(p, sK, sV, kt + 1, buf ^ 1);
      dev::cp_async_commit();
    }
    const T* tK = sK + buf * kBk * kStride;
    const T* tV = sV + buf * kBk * kStride;

    // S = Q K^T for this warp's 16 rows x kBk keys.
    float s[kBk / 8][4];
#pragma unroll
    for (int i = 0; i < kBk / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    mma_abt<T, kBk / 8, kMaxD, kExact>(s, sQ + warp * 16 * kStride, kStride, tK, kStride, ksteps, lane);

    // Into the exp2 domain, + bias; hidden keys (outside the band, past Sk) -inf.
    const int k0 = (tr.first + kt) * kBk;
    with_tile_mask<kF>(!blk.mask.covers(common, k0, k0 + kBk), [&](auto masked) {
#pragma unroll
      for (int nt = 0; nt < kBk / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = k0 + nt * 8 + 2 * t + (e & 1), hr = e / 2;
          float x = scaled(s[nt][e], p.scale_log2);
          if (masked && blk.mask.hides(keys[hr], j))
            x = -INFINITY;
          else if (kHasBias && brow[hr])
            x += dev::to_float(brow[hr][j]) * kLog2e;
          s[nt][e] = x;
        }
    });

    // Online softmax per row half (rows gr, gr + 8); the 4 lanes of a quad share a row.
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kBk / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * hr], s[nt][2 * hr + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[hr], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: keep every term 0, not NaN
      const float alpha = exp2f(m[hr] - m_use);
      m[hr] = m_new;
      l[hr] *= alpha;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        o[dt][2 * hr] *= alpha;
        o[dt][2 * hr + 1] *= alpha;
      }
#pragma unroll
      for (int nt = 0; nt < kBk / 8; ++nt) {
        const float p0 = exp2f(s[nt][2 * hr] - m_use), p1 = exp2f(s[nt][2 * hr + 1] - m_use);
        l[hr] += p0 + p1;  // this lane's part of the row sum, undropped
        float z0 = 1.f, z1 = 1.f;
        if (kHasDrop && p.drop.on && (p0 != 0.f || p1 != 0.f))
          drop_factor2(p.drop, drow[hr] + static_cast<uint64_t>(k0 + nt * 8 + 2 * t), z0, z1);
        s[nt][2 * hr] = p0 * z0;
        s[nt][2 * hr + 1] = p1 * z1;
      }
    }

    // O += P V: P from the S accumulators (rounded to T), V by transposed ldmatrix.
#pragma unroll
    for (int kk = 0; kk < kBk / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(a, s, kk);
      mma_ab<T, kDT, kExact>(o, a, tV + kk * 16 * kStride, kStride, 0, ksteps, lane);
    }
  }
  dev::cp_async_wait<0>();  // no copy may be left in flight at exit (no key tile still committed Q)

  // Epilogue: row sums over the quad, out = O / l, lse = (m + log2 l) ln 2.
  float inv[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float lt = l[hr];
    lt += __shfl_xor_sync(0xffffffffu, lt, 1);
    lt += __shfl_xor_sync(0xffffffffu, lt, 2);
    inv[hr] = lt > 0.f ? 1.f / lt : 0.f;  // a fully hidden row: out 0
    const int i = row_base + gr + hr * 8;
    const int64_t row = kHasVarlen ? lrow[hr] : row_id(p, b, h, sq, i);
    if (t == 0 && i < sq.Sq) p.lse_out[row] = lt > 0.f ? (m[hr] + log2f(lt)) * kLn2 : -INFINITY;
  }
  store_acc<T, kDT>(static_cast<T*>(p.o) + blk.ooff, p.os.seq, o, row_base, sq.Sq, p.D, 0, inv[0], inv[1], p.vec, lane);
}

// ---- backward: dQ -------------------------------------------------------------------------------------
// q, dout: (B, H, Sq, D), k, v: (B, Hk, Sk, D) (logical; strides p.qs, p.ks), [bias], lse, delta -> dq (q's
// strides). Grid as the forward's, 128 threads, Tiles<kMaxD>::kDqSmem bytes of dynamic shared memory.
template <class T, int kMaxD, bool kExact, int kF>
__global__ void __launch_bounds__(128) dq_tc_kernel(Params p) {
  using Tl = Tiles<kMaxD>;
  constexpr int kBq = Tl::kBq, kBk = Tl::kBk, kStride = Tl::kStride;
  constexpr int kDT = kMaxD / 8;
  constexpr bool kHasBias = has(kF, kBias), kHasDrop = has(kF, kDropout);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // [kBq][kStride]
  T* sdO = sQ + kBq * kStride;             // [kBq][kStride]
  T* sK = sdO + kBq * kStride;             // [2][kBk][kStride]
  T* sV = sK + 2 * kBk * kStride;          // [2][kBk][kStride]

  QueryBlock<T, kMaxD, kExact, kF> blk;
  if (!blk.init(p)) return;
  blk.load_q(p, sQ);
  blk.load_dout(p, sdO);
  if (blk.tr.count > 0) blk.load_kv(p, sK, sV, 0, 0);
  dev::cp_async_commit();
  const int b = blk.b, h = blk.h, q0 = blk.q0, ksteps = blk.ksteps;
  const Seq& sq = blk.s;
  const TileRange tr = blk.tr;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, t = lane % 4;
  const int row_base = q0 + warp * 16;
  const uint64_t dstart = kHasDrop && p.drop.on ? p.drop.start() : 0;
  // This thread's two rows: visible keys, lse2, Delta and, in an instantiation with them, the dropout stream rows
  // and bias rows.
  KeyRange keys[2];
  float lse2[2], dlt[2];
  uint64_t drow[2] = {0, 0};
  const T* brow[2] = {nullptr, nullptr};
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int i = row_base + gr + hr * 8;
    const bool valid = i < sq.Sq;
    const int64_t row = row_id(p, b, h, sq, i);
    keys[hr] = blk.mask.keys(i);
    lse2[hr] = lse2_of(p, row, valid);
    dlt[hr] = valid ? p.delta[row] : 0.f;
    if (kHasDrop) drow[hr] = drop_row(p, dstart, row, sq);
    if (kHasBias) brow[hr] = p.bias && valid ? bias_row<T>(p, b, h, i) : nullptr;
  }
  const KeyRange common = blk.mask.common_keys(q0, min(q0 + kBq, sq.Sq) - 1);
  float dq[kDT][4];
#pragma unroll
  for (int i = 0; i < kDT; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

  for (int kt = 0; kt < tr.count; ++kt) {
    dev::cp_async_wait<0>();
    __syncthreads();
    const int buf = kt & 1;
    if (kt + 1 < tr.count) {
      blk.load_kv(p, sK, sV, kt + 1, buf ^ 1);
      dev::cp_async_commit();
    }
    const T* tK = sK + buf * kBk * kStride;
    const T* tV = sV + buf * kBk * kStride;

    float s[kBk / 8][4], dpv[kBk / 8][4];
#pragma unroll
    for (int i = 0; i < kBk / 8; ++i) {
      s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
      dpv[i][0] = dpv[i][1] = dpv[i][2] = dpv[i][3] = 0.f;
    }
    mma_abt<T, kBk / 8, kMaxD, kExact>(s, sQ + warp * 16 * kStride, kStride, tK, kStride, ksteps, lane);    // Q K^T
    mma_abt<T, kBk / 8, kMaxD, kExact>(dpv, sdO + warp * 16 * kStride, kStride, tV, kStride, ksteps, lane); // dO V^T

    // dS = P (z dP - Delta), P = exp2(S scale log2e + bias log2e - lse2), into s.
    const int k0 = (tr.first + kt) * kBk;
    with_tile_mask<kF>(!blk.mask.covers(common, k0, k0 + kBk), [&](auto masked) {
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
#pragma unroll
        for (int nt = 0; nt < kBk / 8; ++nt) {
          float pe[2];
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int j = k0 + nt * 8 + 2 * t + c;
            const bool hidden = masked && blk.mask.hides(keys[hr], j);
            float x;
            if constexpr (kHasBias) {
              const float bias = !hidden && brow[hr] ? dev::to_float(brow[hr][j]) * kLog2e : 0.f;
              x = s[nt][2 * hr + c] * p.scale_log2 + bias;
            } else {
              x = scaled(s[nt][2 * hr + c], p.scale_log2);
            }
            pe[c] = hidden ? 0.f : exp2f(x - lse2[hr]);
          }
          float z0 = 1.f, z1 = 1.f;
          if (kHasDrop && p.drop.on && (pe[0] != 0.f || pe[1] != 0.f))
            drop_factor2(p.drop, drow[hr] + static_cast<uint64_t>(k0 + nt * 8 + 2 * t), z0, z1);
          s[nt][2 * hr] = pe[0] * (dpv[nt][2 * hr] * z0 - dlt[hr]);
          s[nt][2 * hr + 1] = pe[1] * (dpv[nt][2 * hr + 1] * z1 - dlt[hr]);
        }
      }
    });

    // dQ += dS K: dS from the accumulators, K [key][dim] by transposed ldmatrix.
#pragma unroll
    for (int kk = 0; kk < kBk / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(a, s, kk);
      mma_ab<T, kDT, kExact>(dq, a, tK + kk * 16 * kStride, kStride, 0, ksteps, lane);
    }
  }
  dev::cp_async_wait<0>();
  store_acc<T, kDT>(static_cast<T*>(p.dq) + blk.qoff, p.qs.seq, dq, row_base, sq.Sq, p.D, 0, p.scale, p.scale, p.vec, lane);
}

// ---- backward: dK, dV ---------------------------------------------------------------------------------
// q, dout: (B, H, Sq, D), k, v: (B, Hk, Sk, D) (logical; strides p.qs, p.ks), [bias], lse, delta -> dk, dv (k's
// strides), summed over the G query heads of the kv head. grid (B Hk, ceil(Sk / 64)) or varlen (Hk,
// varlen_tiles(Tk, nseq, 64)), 256 threads, Tiles<kMaxD>::kKVSmem bytes. kF: the features compiled in.
template <class T, int kMaxD, bool kExact, int kF>
__global__ void __launch_bounds__(256, 1) dkdv_tc_kernel(Params p) {
  using Tl = Tiles<kMaxD>;
  constexpr int kBk = Tl::kBkKV, kBq = Tl::kBqKV, kStride = Tl::kStride, kPS = Tl::kPStride;
  constexpr int kThreads = 32 * Tl::kWarpsKV;
  constexpr int kHalfD = kMaxD / 2;     // head dims per warp in phase B
  constexpr int kDT = kHalfD / 8;       // its n-tiles
  constexpr int kQT = kBq / 2 / 8;      // query n-tiles per warp in phase A
  constexpr bool kHasBias = has(kF, kBias), kHasDrop = has(kF, kDropout);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // [kBk][kStride]
  T* sV = sK + kBk * kStride;              // [kBk][kStride]
  T* sQ = sV + kBk * kStride;              // [2][kBq][kStride]
  T* sdO = sQ + 2 * kBq * kStride;         // [2][kBq][kStride]
  T* sP = sdO + 2 * kBq * kStride;         // [kBk][kPS]: P^T z (keys x queries)
  T* sdS = sP + kBk * kPS;                 // [kBk][kPS]: dS^T
  float* sLse = reinterpret_cast<float*>(sdS + kBk * kPS);  // [2][kBq]: lse2 of the tile's queries
  float* sDelta = sLse + 2 * kBq;                           // [2][kBq]

  int b = 0, hk = 0, k0 = 0;
  Seq sk{};
  if (!block_of<has(kF, kVarlen), true>(p, kBk, b, hk, k0, sk)) return;
  const Mask<has(kF, kBand)> mask(p.band, sk.Sq, sk.Sk);
  const int dp = kExact ? kMaxD : (p.D + 15) / 16 * 16, ksteps = dp / 16;
  const int64_t qld = p.qs.seq, old = p.os.seq, kld = p.ks.seq;
  const int64_t kvoff = p.k_head(b, hk) + sk.k0 * kld;
  // The query tiles whose queries see some of these keys (per query head of the group).
  const TileRange tr = mask.query_tiles(k0, kBk, kBq);
  const int per_head = tr.count, iters = p.G * per_head;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, t = lane % 4;
  const int kw = warp % 4;  // this warp's 16 keys: k0 + kw * 16 ...
  const int half = warp / 4;  // phase A: half of the query tile; phase B: half of the head dim
  const uint64_t dstart = kHasDrop && p.drop.on ? p.drop.start() : 0;

  // Issues the loads of iteration `it` (head, query tile) into buffer `buf`.
  auto load_iter = [&](int it, int buf) {
    const int h = hk * p.G + it / per_head, i0 = (tr.first + it % per_head) * kBq;
    const int64_t qoff = p.q_head(b, h) + sk.q0 * qld, ooff = p.o_head(b, h) + sk.q0 * old;
    load_tile<T, kBq, kThreads>(sQ + buf * kBq * kStride, kStride, static_cast<const T*>(p.q) + qoff, qld, i0, sk.Sq,
                                p.D, dp, p.vec);
    load_tile<T, kBq, kThreads>(sdO + buf * kBq * kStride, kStride, static_cast<const T*>(p.dout) + ooff, old, i0,
                                sk.Sq, p.D, dp, p.vec);
    for (int r = threadIdx.x; r < kBq; r += kThreads) {
      const int i = i0 + r;
      const bool valid = i < sk.Sq;
      const int64_t row = row_id(p, b, h, sk, i);
      sLse[buf * kBq + r] = lse2_of(p, row, valid);
      sDelta[buf * kBq + r] = valid ? p.delta[row] : 0.f;
    }
  };

  load_tile<T, kBk, kThreads>(sK, kStride, static_cast<const T*>(p.k) + kvoff, kld, k0, sk.Sk, p.D, dp, p.vec);
  load_tile<T, kBk, kThreads>(sV, kStride, static_cast<const T*>(p.v) + kvoff, kld, k0, sk.Sk, p.D, dp, p.vec);
  if (iters > 0) load_iter(0, 0);
  dev::cp_async_commit();

  float dk[kDT][4], dv[kDT][4];
#pragma unroll
  for (int i = 0; i < kDT; ++i) {
    dk[i][0] = dk[i][1] = dk[i][2] = dk[i][3] = 0.f;
    dv[i][0] = dv[i][1] = dv[i][2] = dv[i][3] = 0.f;
  }
  const int pair0 = half * (kHalfD / 16);  // this warp's first head-dim pair (16 dims) in phase B
  const int npairs = max(0, min(kHalfD / 16, ksteps - pair0));

  for (int it = 0; it < iters; ++it) {
    dev::cp_async_wait<0>();
    __syncthreads();  // tile `it` landed; every warp is done with iteration it - 1 (its buffers, sP and sdS)
    const int buf = it & 1;
    if (it + 1 < iters) {
      load_iter(it + 1, buf ^ 1);
      dev::cp_async_commit();
    }
    const int h = hk * p.G + it / per_head, i0 = (tr.first + it % per_head) * kBq;
    const T* tQ = sQ + buf * kBq * kStride;
    const T* tdO = sdO + buf * kBq * kStride;
    const float* tLse = sLse + buf * kBq;
    const float* tDelta = sDelta + buf * kBq;

    // Phase A: S^T, dP^T for keys kw*16.. x queries half*kBq/2 .. (+kBq/2).
    const int qb = half * (kBq / 2);
    float st[kQT][4], dpt[kQT][4];
#pragma unroll
    for (int i = 0; i < kQT; ++i) {
      st[i][0] = st[i][1] = st[i][2] = st[i][3] = 0.f;
      dpt[i][0] = dpt[i][1] = dpt[i][2] = dpt[i][3] = 0.f;
    }
    mma_abt<T, kQT, kMaxD, kExact>(st, sK + kw * 16 * kStride, kStride, tQ + qb * kStride, kStride, ksteps, lane);
    mma_abt<T, kQT, kMaxD, kExact>(dpt, sV + kw * 16 * kStride, kStride, tdO + qb * kStride, kStride, ksteps, lane);
    // No element mask when every query of the tile sees every key of the CTA.
    const KeyRange common = mask.common_keys(i0, min(i0 + kBq, sk.Sq) - 1);
    with_tile_mask<kF>(!mask.covers(common, k0, k0 + kBk), [&](auto masked) {
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int kr = kw * 16 + gr + hr * 8;  // key row in the CTA's block
        const int j = k0 + kr;
#pragma unroll
        for (int nt = 0; nt < kQT; ++nt) {
          float pz[2], ds[2];
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int qr = qb + nt * 8 + 2 * t + c;  // query row in the tile
            const int i = i0 + qr;
            const bool hidden = masked && mask.hides(mask.keys(i), j);
            float x = scaled(st[nt][2 * hr + c], p.scale_log2);
            if (kHasBias && !hidden && p.bias && i < sk.Sq) x += dev::to_float(bias_row<T>(p, b, h, i)[j]) * kLog2e;
            const float pe = hidden ? 0.f : exp2f(x - tLse[qr]);
            float z = 1.f;
            if (kHasDrop && p.drop.on && pe != 0.f)
              z = drop_factor(p.drop, drop_row(p, dstart, row_id(p, b, h, sk, i), sk) + j);
            pz[c] = pe * z;
            ds[c] = pe * (dpt[nt][2 * hr + c] * z - tDelta[qr]);
          }
          const int col = qb + nt * 8 + 2 * t;
          *reinterpret_cast<uint32_t*>(sP + kr * kPS + col) = dev::pack2<T>(pz[0], pz[1]);
          *reinterpret_cast<uint32_t*>(sdS + kr * kPS + col) = dev::pack2<T>(ds[0], ds[1]);
        }
      }
    });
    __syncthreads();  // P^T, dS^T complete

    // Phase B: dV += (P^T z) dO, dK += dS^T Q over the tile's kBq queries, dims pair0*16 ...
#pragma unroll
    for (int kq = 0; kq < kBq / 16; ++kq) {
      uint32_t a[4];
      dev::ldmatrix_x4(a, sP + (kw * 16 + a_row(lane)) * kPS + kq * 16 + a_col(lane));
      mma_ab<T, kDT, false>(dv, a, tdO + kq * 16 * kStride, kStride, pair0 * 16, npairs, lane);
      dev::ldmatrix_x4(a, sdS + (kw * 16 + a_row(lane)) * kPS + kq * 16 + a_col(lane));
      mma_ab<T, kDT, false>(dk, a, tQ + kq * 16 * kStride, kStride, pair0 * 16, npairs, lane);
    }
  }
  dev::cp_async_wait<0>();

  store_acc<T, kDT>(static_cast<T*>(p.dv) + kvoff, kld, dv, k0 + kw * 16, sk.Sk, p.D, pair0 * 16, 1.f, 1.f, p.vec,
                    lane);
  store_acc<T, kDT>(static_cast<T*>(p.dk) + kvoff, kld, dk, k0 + kw * 16, sk.Sk, p.D, pair0 * 16, p.scale, p.scale,
                    p.vec, lane);
}

// ---- backward: dbias ----------------------------------------------------------------------------------
// dbias (Bb, Hb, Sq, Sk) = dS summed over the (b, h) each bias element serves. grid (Bb Hb, ceil(Sq / 64),
// ceil(Sk / 64)), 128 threads (4 warps x 16 query rows of the 64 x 64 tile), kDbiasSmem bytes: Q, dO, K, V tiles
// of one (b, h) at a time (single-buffered: this kernel only runs when the bias is trained).
constexpr int kDbiasTile = 64;
template <int kMaxD>
constexpr size_t dbias_smem() {
  return static_cast<size_t>(4 * kDbiasTile) * Tiles<kMaxD>::kStride * 2;  // 135 KB at kMaxD 256
}

template <class T, int kMaxD, bool kExact>
__global__ void __launch_bounds__(128) dbias_tc_kernel(Params p) {
  constexpr int kB = kDbiasTile, kStride = Tiles<kMaxD>::kStride, kThreads = 128, kNT = kB / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // [kB][kStride]
  T* sdO = sQ + kB * kStride;
  T* sK = sdO + kB * kStride;
  T* sV = sK + kB * kStride;

  const int bb = static_cast<int>(blockIdx.x) / p.Hb, hb = static_cast<int>(blockIdx.x) % p.Hb;
  const int q0 = static_cast<int>(blockIdx.y) * kB, k0 = static_cast<int>(blockIdx.z) * kB;
  const Seq s = seq_of<false>(p, 0);  // a bias excludes varlen: every batch entry is the whole (Sq, Sk)
  const Mask<true> mask(p.band, s.Sq, s.Sk);  // with a bias: the general instantiations' mask
  const int dp = kExact ? kMaxD : (p.D + 15) / 16 * 16, ksteps = dp / 16;
  const int64_t qld = p.qs.seq, old = p.os.seq, kld = p.ks.seq;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, t = lane % 4;
  const int row_base = q0 + warp * 16;
  const uint64_t dstart = p.drop.on ? p.drop.start() : 0;
  const int last = min(q0 + kB, s.Sq) - 1;
  // Whether any query of the tile sees any of its keys (else the tile's dbias is 0), and whether every query sees
  // every key (no element mask).
  const bool any = mask.sees_any(q0, last, k0, min(k0 + kB, s.Sk));
  const bool masked = !mask.covers(mask.common_keys(q0, last), k0, k0 + kB);
  const int nb = p.Bb == 1 ? p.B : 1, nh = p.Hb == 1 ? p.H : 1;

  float acc[kNT][4];
#pragma unroll
  for (int i = 0; i < kNT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  for (int pair = 0; any && pair < nb * nh; ++pair) {
    const int b = p.Bb == 1 ? pair / nh : bb, h = p.Hb == 1 ? pair % nh : hb;
    const int64_t qoff = p.q_head(b, h), ooff = p.o_head(b, h), kvoff = p.k_head(b, h / p.G);
    __syncthreads();  // every warp is done with the previous pair's tiles
    load_tile<T, kB, kThreads>(sQ, kStride, static_cast<const T*>(p.q) + qoff, qld, q0, s.Sq, p.D, dp, p.vec);
    load_tile<T, kB, kThreads>(sdO, kStride, static_cast<const T*>(p.dout) + ooff, old, q0, s.Sq, p.D, dp, p.vec);
    load_tile<T, kB, kThreads>(sK, kStride, static_cast<const T*>(p.k) + kvoff, kld, k0, s.Sk, p.D, dp, p.vec);
    load_tile<T, kB, kThreads>(sV, kStride, static_cast<const T*>(p.v) + kvoff, kld, k0, s.Sk, p.D, dp, p.vec);
    dev::cp_async_commit();
    dev::cp_async_wait<0>();
    __syncthreads();
    float sc[kNT][4], dpv[kNT][4];
#pragma unroll
    for (int i = 0; i < kNT; ++i) {
      sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.f;
      dpv[i][0] = dpv[i][1] = dpv[i][2] = dpv[i][3] = 0.f;
    }
    mma_abt<T, kNT, kMaxD, kExact>(sc, sQ + warp * 16 * kStride, kStride, sK, kStride, ksteps, lane);
    mma_abt<T, kNT, kMaxD, kExact>(dpv, sdO + warp * 16 * kStride, kStride, sV, kStride, ksteps, lane);
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int i = row_base + gr + hr * 8;
      const bool valid = i < s.Sq;
      const int64_t row = row_id(p, b, h, s, i);
      const float lse2 = lse2_of(p, row, valid), dl = valid ? p.delta[row] : 0.f;
      const KeyRange keys = mask.keys(i);
      const T* brow = valid ? bias_row<T>(p, b, h, i) : nullptr;
      const uint64_t drow = drop_row(p, dstart, row, s);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int j = k0 + nt * 8 + 2 * t + c;
          if (!valid || (masked && mask.hides(keys, j))) continue;  // hidden: dS = 0
          const float pe = exp2f(sc[nt][2 * hr + c] * p.scale_log2 + dev::to_float(brow[j]) * kLog2e - lse2);
          const float z = p.drop.on && pe != 0.f ? drop_factor(p.drop, drow + j) : 1.f;
          acc[nt][2 * hr + c] += pe * (dpv[nt][2 * hr + c] * z - dl);
        }
    }
  }
  const bool vec = p.Sk % 8 == 0 && (reinterpret_cast<uintptr_t>(p.dbias) & 15u) == 0;
  store_acc<T, kNT>(static_cast<T*>(p.dbias) + static_cast<int64_t>(blockIdx.x) * s.Sq * s.Sk, s.Sk, acc, row_base,
                    s.Sq, s.Sk, k0, 1.f, 1.f, vec, lane);
}

// ---- launchers ----------------------------------------------------------------------------------------

// Runs f.template operator()<kMaxD, kExact, kF>() for the features kF of the instantiation that runs p
// (flash_attention_mask.h: plain when p needs none of them, else general).
template <int kMaxD, bool kExact, class F>
void with_features(const Params& p, F& f) {
  if (kernel_features(p) == kPlain) {
    f.template operator()<kMaxD, kExact, kPlain>();
  } else {
    f.template operator()<kMaxD, kExact, kGeneral>();
  }
}

// The same, first choosing the tile for head dim p.D: the exact one for D = 32, 64, 128 and 256, else the generic
// one of the next kMaxD.
template <class F>
void with_instantiation(const Params& p, F&& f) {
  const int D = p.D;
  if (D == 32) {
    with_features<32, true>(p, f);
  } else if (D == 64) {
    with_features<64, true>(p, f);
  } else if (D == 128) {
    with_features<128, true>(p, f);
  } else if (D == 256) {
    with_features<256, true>(p, f);
  } else if (D < 32) {
    with_features<32, false>(p, f);
  } else if (D < 64) {
    with_features<64, false>(p, f);
  } else if (D < 128) {
    with_features<128, false>(p, f);
  } else {
    with_features<256, false>(p, f);
  }
}

template <class T>
struct ForwardLaunch {
  const Params& p;
  cudaStream_t stream;
  template <int kMaxD, bool kExact, int kF>
  void operator()() const {
    using Tl = Tiles<kMaxD>;
    static std::atomic<uint64_t> done{0};
    auto kernel = fwd_tc_kernel<T, kMaxD, kExact, kF>;
    allow_smem(kernel, Tl::kFwdSmem, done);
    const dim3 grid(static_cast<unsigned>((p.varlen ? 1 : p.B) * p.H), static_cast<unsigned>(tiles_y(p, p.Sq, Tl::kBq)));
    kernel<<<grid, 32 * Tl::kWarpsQ, Tl::kFwdSmem, stream>>>(p);
    XF_CUDA_CHECK_LAUNCH("flash_attention");
  }
};

template <class T>
struct BackwardLaunch {
  const Params& p;
  cudaStream_t stream;
  template <int kMaxD, bool kExact, int kF>
  void operator()() const {
    using Tl = Tiles<kMaxD>;
    static std::atomic<uint64_t> done_dq{0}, done_kv{0}, done_db{0};
    auto dq = dq_tc_kernel<T, kMaxD, kExact, kF>;
    auto kv = dkdv_tc_kernel<T, kMaxD, kExact, kF>;
    allow_smem(dq, Tl::kDqSmem, done_dq);
    allow_smem(kv, Tl::kKVSmem, done_kv);
    const int bx = p.varlen ? 1 : p.B;
    if (bx * p.H > 0 && p.Sq > 0) {
      const dim3 grid(static_cast<unsigned>(bx * p.H), static_cast<unsigned>(tiles_y(p, p.Sq, Tl::kBq)));
      dq<<<grid, 32 * Tl::kWarpsQ, Tl::kDqSmem, stream>>>(p);
      XF_CUDA_CHECK_LAUNCH("flash_attention_backward dq");
    }
    if (bx * p.Hk > 0 && p.Sk > 0) {
      const dim3 grid(static_cast<unsigned>(bx * p.Hk), static_cast<unsigned>(tiles_y(p, p.Sk, Tl::kBkKV)));
      kv<<<grid, 32 * Tl::kWarpsKV, Tl::kKVSmem, stream>>>(p);
      XF_CUDA_CHECK_LAUNCH("flash_attention_backward dkdv");
    }
    // Only with a bias, so only from the general instantiation (one dbias kernel per head-dim tile).
    if constexpr (kF == kGeneral) {
      if (p.dbias && p.Bb * p.Hb > 0 && p.Sq > 0 && p.Sk > 0) {
        auto db = dbias_tc_kernel<T, kMaxD, kExact>;
        allow_smem(db, dbias_smem<kMaxD>(), done_db);
        const dim3 grid(static_cast<unsigned>(p.Bb * p.Hb),
                        static_cast<unsigned>((p.Sq + kDbiasTile - 1) / kDbiasTile),
                        static_cast<unsigned>((p.Sk + kDbiasTile - 1) / kDbiasTile));
        db<<<grid, 128, dbias_smem<kMaxD>(), stream>>>(p);
        XF_CUDA_CHECK_LAUNCH("flash_attention_backward dbias");
      }
    }
  }
};

}  // namespace

// The backward for one dtype, in its own translation unit (flash_attention_tc_backward_bf16.cu / _f16.cu).
template <class T>
void launch_tc_backward_typed(const Params& p, cudaStream_t stream);

}  // namespace xfr::cuda::fa
