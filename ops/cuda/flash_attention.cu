// CUDA kernels of ops/flash_attention.h (flash_attention, flash_attention_backward): FlashAttention-2 style,
// online softmax, never an Sq x Sk buffer; the backward recomputes P from the saved log-sum-exp.
//
// bf16 / f16: tensor cores (mma.sync m16n8k16, fp32 accumulators; ops/cuda/device/mma.cuh), tiles staged in
// shared memory by cp.async (double-buffered), fragments loaded by ldmatrix. Each kernel is instantiated for
// kMaxD = 32, 64, 128 or 256 (the head dim padded to a multiple of 16, zero columns, must fit); D == 32, 64, 128
// and 256 are compile-time specialisations (kExact: no run-time bounds on the head-dim loops), every other D
// takes the generic instantiation of the next kMaxD with run-time bounds (D = 40 runs the 64-wide tile). Shared-memory rows are kMaxD + 8
// elements long: the 16 extra bytes put the 8 rows that one ldmatrix reads in 8 different bank groups (a
// row length that is a multiple of 128 bytes would make that an 8-way conflict).
//
//   forward     CTA = (b, h, 64 queries), 4 warps x 16 query rows; loops over key tiles of kBk keys:
//               S = Q K^T (registers), masked, online softmax in registers (exp2 with scale log2 e folded in),
//               dropout on P, O += P V with P reused from the S accumulators as the A operand (no shared-memory
//               round trip). Causal: key tiles past the CTA's last query are not visited; only tiles that
//               straddle the diagonal (or Sk) are masked element by element. Query blocks are issued last
//               first, so the longest causal blocks start first.
//   backward    three kernels, no float atomics (deterministic):
//               1. Delta[b,h,i] = sum_d dout * out - dlse (a warp per row);
//               2. dK, dV: CTA = (b, kv head, 64 keys), 8 warps; loops over the G query heads of the kv head and
//                  over query tiles (causal: from the first tile whose queries see the keys). Phase A: S^T = K
//                  Q^T and dP^T = V dO^T (warp = 16 keys x half the query tile), P^T = exp2(S^T - lse), dS^T =
//                  P^T (dP^T z - Delta), both written to shared memory in 16 bits. Phase B: dV += (P^T z) dO, dK
//                  += dS^T Q (warp = 16 keys x half of the head dim, so the two accumulators fit registers).
//               3. dQ: CTA = (b, h, 64 queries), 4 warps x 16 rows, loops over key tiles like the forward: S,
//                  dP = dO V^T, dS in registers, dQ += dS K with dS reused as the A operand.
// f32: a plain-FMA path with the same algorithm (a warp per query row, lanes over keys for the scores and
//      over head dims for the accumulators; the dK/dV kernel a warp per key row, lanes over queries). Correct,
//      not fast: training runs in bf16/f16.
//
// Dropout: the factor of element (b, h, i, j) is keep_scale or 0 from Philox stream element
// start + ((b H + h) Sq + i) Sk + j (runtime/rng.h), the CPU kernel's numbers, in every kernel.
#include <atomic>
#include <cmath>

#include "ops/cuda/common.cuh"
#include "ops/cuda/device/mma.cuh"
#include "ops/cuda/device/reduce.cuh"
#include "ops/cuda/device/types.cuh"
#include "ops/cuda/flash_attention_launch.h"
#include "ops/dropout.h"
#include "ops/flash_attention.h"
#include "runtime/rng.h"

namespace xfr::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- parameters shared by every kernel ---------------------------------------------------------------

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
  // Tensors (see each kernel for which it reads and writes). q, out, dout, dq: (B, H, Sq, D) logical, addressed
  // through qs; k, v, dk, dv: (B, Hk, Sk, D) logical, through ks; lse, dlse, delta: (B, H, Sq) f32 contiguous.
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
  int B = 0, H = 0, Hk = 0, G = 1, Sq = 0, Sk = 0, D = 0;
  HeadStrides qs, ks;  // element strides (batch, head, seq); the head dim is contiguous
  float scale = 1.f;       // softmax scale
  float scale_log2 = 1.f;  // scale * log2(e): scores go to exp2
  bool causal = false;
  bool vec = false;  // D and every stride % 8 == 0, every pointer 16-byte aligned: cp.async and 32-bit stores

  // Offsets of head (b, h) of q and of kv head (b, hk) of k.
  __device__ __forceinline__ int64_t q_head(int64_t b, int64_t h) const { return b * qs.batch + h * qs.head; }
  __device__ __forceinline__ int64_t k_head(int64_t b, int64_t hk) const { return b * ks.batch + hk * ks.head; }
  Dropout drop;
};

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

// Stream element of (bh = b H + h, i, j = 0).
__device__ __forceinline__ uint64_t drop_row(const Params& p, uint64_t start, int64_t bh, int64_t i) {
  return start + static_cast<uint64_t>((bh * p.Sq + i) * p.Sk);
}

// =====================================================================================================
// Tensor-core path (bf16 / f16)
// =====================================================================================================

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
  // of shared memory per SM). Registers per thread as ptxas reports them (CUDA 13.0, sm_90a), forward / dQ /
  // dK-dV:
  //   kMaxD  32: 116 / 128 / 148: registers bound occupancy (4 forward CTAs of 128 threads per SM; 4 x 25 KB of
  //              shared memory is far from the limit). The 64-wide tile this replaces for MiniLM's D = 32 did
  //              twice the MMAs on zero columns and staged twice the shared memory.
  //   kMaxD  64: 162 / 168 / 172: registers (3 forward CTAs per SM), 45 KB of shared memory each.
  //   kMaxD 128: 170 / 244 / 240: registers (O 64 + S 32 (+ dP 32 in dQ) floats per thread); shared memory
  //              85-121 KB, so one or two CTAs per SM either way.
  //   kMaxD 256: 243 / 248 / 255 (dK/dV spills 8 bytes): registers force kBk = 32 (see above); shared memory
  //              forces kBqKV = 32 for dK/dV (below).
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

// Number of key tiles the queries [q0, q0 + rows) visit: keys [0, min(Sk, q0 + rows)) when causal.
__device__ __forceinline__ int key_tiles(const Params& p, int q0, int rows, int bk) {
  const int end = p.causal ? min(p.Sk, q0 + rows) : p.Sk;
  return (end + bk - 1) / bk;
}

// ---- forward ----------------------------------------------------------------------------------------
// q: (B, H, Sq, D), k, v: (B, Hk, Sk, D) (logical; strides p.qs, p.ks) -> o: q's strides, lse_out: (B, H, Sq) f32.
// grid (B H, ceil(Sq / 64)), 128 threads, Tiles<kMaxD>::kFwdSmem bytes of dynamic shared memory.
template <class T, int kMaxD, bool kExact>
__global__ void __launch_bounds__(128) fwd_tc_kernel(Params p) {
  using Tl = Tiles<kMaxD>;
  constexpr int kBq = Tl::kBq, kBk = Tl::kBk, kStride = Tl::kStride, kThreads = 32 * Tl::kWarpsQ;
  constexpr int kDT = kMaxD / 8;  // n-tiles of the output
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // [kBq][kStride]
  T* sK = sQ + kBq * kStride;              // [2][kBk][kStride]
  T* sV = sK + 2 * kBk * kStride;          // [2][kBk][kStride]

  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H, hk = h / p.G;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kBq;  // last query block first (longest under causal)
  const int dp = kExact ? kMaxD : (p.D + 15) / 16 * 16, ksteps = dp / 16;
  const int64_t qld = p.qs.seq, kld = p.ks.seq;
  const T* qh = static_cast<const T*>(p.q) + p.q_head(b, h);
  const T* kh = static_cast<const T*>(p.k) + p.k_head(b, hk);
  const T* vh = static_cast<const T*>(p.v) + p.k_head(b, hk);
  const int ntiles = key_tiles(p, q0, kBq, kBk);

  load_tile<T, kBq, kThreads>(sQ, kStride, qh, qld, q0, p.Sq, p.D, dp, p.vec);
  if (ntiles > 0) {
    load_tile<T, kBk, kThreads>(sK, kStride, kh, kld, 0, p.Sk, p.D, dp, p.vec);
    load_tile<T, kBk, kThreads>(sV, kStride, vh, kld, 0, p.Sk, p.D, dp, p.vec);
  }
  dev::cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, t = lane % 4;
  const int row_base = q0 + warp * 16;  // this warp's 16 queries; the thread holds rows gr and gr + 8
  float o[kDT][4];
#pragma unroll
  for (int i = 0; i < kDT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const uint64_t dstart = p.drop.on ? p.drop.start() : 0;

  for (int kt = 0; kt < ntiles; ++kt) {
    dev::cp_async_wait<0>();
    __syncthreads();  // tile kt (and Q) landed; every warp is done with tile kt - 1, whose buffer is refilled now
    const int buf = kt & 1;
    if (kt + 1 < ntiles) {
      load_tile<T, kBk, kThreads>(sK + (buf ^ 1) * kBk * kStride, kStride, kh, kld, (kt + 1) * kBk, p.Sk, p.D, dp,
                                  p.vec);
      load_tile<T, kBk, kThreads>(sV + (buf ^ 1) * kBk * kStride, kStride, vh, kld, (kt + 1) * kBk, p.Sk, p.D, dp,
                                  p.vec);
      dev::cp_async_commit();
    }
    const T* tK = sK + buf * kBk * kStride;
    const T* tV = sV + buf * kBk * kStride;

    // S = Q K^T for this warp's 16 rows x kBk keys.
    float s[kBk / 8][4];
#pragma unroll
    for (int i = 0; i < kBk / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    mma_abt<T, kBk / 8, kMaxD, kExact>(s, sQ + warp * 16 * kStride, kStride, tK, kStride, ksteps, lane);

    // Scale into the exp2 domain; mask keys past Sk and (causal) keys after the query.
    const int k0 = kt * kBk;
    const bool masked_tile = k0 + kBk > p.Sk || (p.causal && k0 + kBk - 1 > q0);
#pragma unroll
    for (int nt = 0; nt < kBk / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nt][e] * p.scale_log2;
        if (masked_tile) {
          const int j = k0 + nt * 8 + 2 * t + (e & 1), i = row_base + gr + (e / 2) * 8;
          if (j >= p.Sk || (p.causal && j > i)) x = -INFINITY;
        }
        s[nt][e] = x;
      }

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
      const int i = row_base + gr + hr * 8;
#pragma unroll
      for (int nt = 0; nt < kBk / 8; ++nt) {
        const float p0 = exp2f(s[nt][2 * hr] - m_use), p1 = exp2f(s[nt][2 * hr + 1] - m_use);
        l[hr] += p0 + p1;  // this lane's part of the row sum, undropped
        float z0 = 1.f, z1 = 1.f;
        if (p.drop.on && (p0 != 0.f || p1 != 0.f))
          drop_factor2(p.drop, drop_row(p, dstart, bh, i) + static_cast<uint64_t>(k0 + nt * 8 + 2 * t), z0, z1);
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
  dev::cp_async_wait<0>();  // no copy may be left in flight at exit (ntiles == 0 still committed Q)

  // Epilogue: row sums over the quad, out = O / l, lse = (m + log2 l) ln 2.
  float inv[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float lt = l[hr];
    lt += __shfl_xor_sync(0xffffffffu, lt, 1);
    lt += __shfl_xor_sync(0xffffffffu, lt, 2);
    inv[hr] = lt > 0.f ? 1.f / lt : 0.f;  // a fully hidden row: out 0
    const int i = row_base + gr + hr * 8;
    if (t == 0 && i < p.Sq)
      p.lse_out[static_cast<int64_t>(bh) * p.Sq + i] = lt > 0.f ? (m[hr] + log2f(lt)) * kLn2 : -INFINITY;
  }
  store_acc<T, kDT>(static_cast<T*>(p.o) + p.q_head(b, h), qld, o, row_base, p.Sq, p.D, 0, inv[0], inv[1], p.vec,
                    lane);
}

// ---- backward: Delta ----------------------------------------------------------------------------------
// out, dout: (B, H, Sq, D) T (strides p.qs); dlse: (B, H, Sq) f32 or null -> delta: (B, H, Sq) f32. A warp per
// row; 256 threads.
template <class T>
__global__ void __launch_bounds__(256) delta_kernel(Params p, int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;  // (b H + h) Sq + i
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int64_t bh = row / p.Sq, off = p.q_head(bh / p.H, bh % p.H) + (row % p.Sq) * p.qs.seq;
  const T* o = static_cast<const T*>(p.out) + off;
  const T* d = static_cast<const T*>(p.dout) + off;
  float acc = 0.f;
  for (int c = lane; c < p.D; c += 32) acc += dev::to_float(o[c]) * dev::to_float(d[c]);
  acc = dev::warp_sum(acc);
  if (lane == 0) p.delta[row] = acc - (p.dlse ? p.dlse[row] : 0.f);
}

// lse in the exp2 domain for a P recomputation: +inf for a row with nothing visible (lse = -inf) or past Sq,
// so that exp2(s - lse2) is 0 there.
__device__ __forceinline__ float lse2_of(const Params& p, int64_t bh, int i) {
  if (i >= p.Sq) return INFINITY;
  const float l = p.lse[bh * p.Sq + i];
  return l == -INFINITY ? INFINITY : l * kLog2e;
}

// ---- backward: dQ -------------------------------------------------------------------------------------
// q, dout: (B, H, Sq, D), k, v: (B, Hk, Sk, D) (logical; strides p.qs, p.ks), lse, delta: (B, H, Sq) f32 -> dq
// (q's strides). grid (B H, ceil(Sq / 64)), 128 threads, Tiles<kMaxD>::kDqSmem bytes of dynamic shared memory.
template <class T, int kMaxD, bool kExact>
__global__ void __launch_bounds__(128) dq_tc_kernel(Params p) {
  using Tl = Tiles<kMaxD>;
  constexpr int kBq = Tl::kBq, kBk = Tl::kBk, kStride = Tl::kStride, kThreads = 32 * Tl::kWarpsQ;
  constexpr int kDT = kMaxD / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // [kBq][kStride]
  T* sdO = sQ + kBq * kStride;             // [kBq][kStride]
  T* sK = sdO + kBq * kStride;             // [2][kBk][kStride]
  T* sV = sK + 2 * kBk * kStride;          // [2][kBk][kStride]

  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H, hk = h / p.G;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kBq;
  const int dp = kExact ? kMaxD : (p.D + 15) / 16 * 16, ksteps = dp / 16;
  const int64_t qoff = p.q_head(b, h), qld = p.qs.seq, kld = p.ks.seq;
  const T* kh = static_cast<const T*>(p.k) + p.k_head(b, hk);
  const T* vh = static_cast<const T*>(p.v) + p.k_head(b, hk);
  const int ntiles = key_tiles(p, q0, kBq, kBk);

  load_tile<T, kBq, kThreads>(sQ, kStride, static_cast<const T*>(p.q) + qoff, qld, q0, p.Sq, p.D, dp, p.vec);
  load_tile<T, kBq, kThreads>(sdO, kStride, static_cast<const T*>(p.dout) + qoff, qld, q0, p.Sq, p.D, dp, p.vec);
  if (ntiles > 0) {
    load_tile<T, kBk, kThreads>(sK, kStride, kh, kld, 0, p.Sk, p.D, dp, p.vec);
    load_tile<T, kBk, kThreads>(sV, kStride, vh, kld, 0, p.Sk, p.D, dp, p.vec);
  }
  dev::cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, t = lane % 4;
  const int row_base = q0 + warp * 16;
  float lse2[2], dlt[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int i = row_base + gr + hr * 8;
    lse2[hr] = lse2_of(p, bh, i);
    dlt[hr] = i < p.Sq ? p.delta[static_cast<int64_t>(bh) * p.Sq + i] : 0.f;
  }
  float dq[kDT][4];
#pragma unroll
  for (int i = 0; i < kDT; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;
  const uint64_t dstart = p.drop.on ? p.drop.start() : 0;

  for (int kt = 0; kt < ntiles; ++kt) {
    dev::cp_async_wait<0>();
    __syncthreads();
    const int buf = kt & 1;
    if (kt + 1 < ntiles) {
      load_tile<T, kBk, kThreads>(sK + (buf ^ 1) * kBk * kStride, kStride, kh, kld, (kt + 1) * kBk, p.Sk, p.D, dp,
                                  p.vec);
      load_tile<T, kBk, kThreads>(sV + (buf ^ 1) * kBk * kStride, kStride, vh, kld, (kt + 1) * kBk, p.Sk, p.D, dp,
                                  p.vec);
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

    // dS = P (z dP - Delta), P = exp2(S scale log2e - lse2), into s.
    const int k0 = kt * kBk;
    const bool masked_tile = k0 + kBk > p.Sk || (p.causal && k0 + kBk - 1 > q0);
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int i = row_base + gr + hr * 8;
#pragma unroll
      for (int nt = 0; nt < kBk / 8; ++nt) {
        float pe[2];
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int j = k0 + nt * 8 + 2 * t + c;
          const bool hidden = masked_tile && (j >= p.Sk || (p.causal && j > i));
          pe[c] = hidden ? 0.f : exp2f(s[nt][2 * hr + c] * p.scale_log2 - lse2[hr]);
        }
        float z0 = 1.f, z1 = 1.f;
        if (p.drop.on && (pe[0] != 0.f || pe[1] != 0.f))
          drop_factor2(p.drop, drop_row(p, dstart, bh, i) + static_cast<uint64_t>(k0 + nt * 8 + 2 * t), z0, z1);
        s[nt][2 * hr] = pe[0] * (dpv[nt][2 * hr] * z0 - dlt[hr]);
        s[nt][2 * hr + 1] = pe[1] * (dpv[nt][2 * hr + 1] * z1 - dlt[hr]);
      }
    }

    // dQ += dS K: dS from the accumulators, K [key][dim] by transposed ldmatrix.
#pragma unroll
    for (int kk = 0; kk < kBk / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(a, s, kk);
      mma_ab<T, kDT, kExact>(dq, a, tK + kk * 16 * kStride, kStride, 0, ksteps, lane);
    }
  }
  dev::cp_async_wait<0>();
  store_acc<T, kDT>(static_cast<T*>(p.dq) + qoff, qld, dq, row_base, p.Sq, p.D, 0, p.scale, p.scale, p.vec, lane);
}

// ---- backward: dK, dV ---------------------------------------------------------------------------------
// q, dout: (B, H, Sq, D), k, v: (B, Hk, Sk, D) (logical; strides p.qs, p.ks), lse, delta: (B, H, Sq) f32 -> dk,
// dv (k's strides), summed over the G query heads of the kv head. grid (B Hk, ceil(Sk / 64)), 256 threads,
// Tiles<kMaxD>::kKVSmem bytes.
template <class T, int kMaxD, bool kExact>
__global__ void __launch_bounds__(256, 1) dkdv_tc_kernel(Params p) {
  using Tl = Tiles<kMaxD>;
  constexpr int kBk = Tl::kBkKV, kBq = Tl::kBqKV, kStride = Tl::kStride, kPS = Tl::kPStride;
  constexpr int kThreads = 32 * Tl::kWarpsKV;
  constexpr int kHalfD = kMaxD / 2;     // head dims per warp in phase B
  constexpr int kDT = kHalfD / 8;       // its n-tiles
  constexpr int kQT = kBq / 2 / 8;      // query n-tiles per warp in phase A
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // [kBk][kStride]
  T* sV = sK + kBk * kStride;              // [kBk][kStride]
  T* sQ = sV + kBk * kStride;              // [2][kBq][kStride]
  T* sdO = sQ + 2 * kBq * kStride;         // [2][kBq][kStride]
  T* sP = sdO + 2 * kBq * kStride;         // [kBk][kPS]: P^T z (keys x queries)
  T* sdS = sP + kBk * kPS;                 // [kBk][kPS]: dS^T
  float* sLse = reinterpret_cast<float*>(sdS + kBk * kPS);  // [2][kBq]: lse2 of the tile's queries
  float* sDelta = sLse + 2 * kBq;                           // [2][kBq]

  const int bhk = blockIdx.x, b = bhk / p.Hk, hk = bhk % p.Hk;
  const int k0 = blockIdx.y * kBk;
  const int dp = kExact ? kMaxD : (p.D + 15) / 16 * 16, ksteps = dp / 16;
  const int64_t kvoff = p.k_head(b, hk), qld = p.qs.seq, kld = p.ks.seq;
  // Query tiles: causal queries i < k0 see none of these keys.
  const int nq = (p.Sq + kBq - 1) / kBq;
  const int qt0 = p.causal ? min(nq, k0 / kBq) : 0;
  const int per_head = nq - qt0, iters = p.G * per_head;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, t = lane % 4;
  const int kw = warp % 4;  // this warp's 16 keys: k0 + kw * 16 ...
  const int half = warp / 4;  // phase A: half of the query tile; phase B: half of the head dim
  const uint64_t dstart = p.drop.on ? p.drop.start() : 0;

  // Issues the loads of iteration `it` (head, query tile) into buffer `buf`.
  auto load_iter = [&](int it, int buf) {
    const int h = hk * p.G + it / per_head, i0 = (qt0 + it % per_head) * kBq;
    const int64_t bh = static_cast<int64_t>(b) * p.H + h;
    const int64_t qoff = p.q_head(b, h);
    load_tile<T, kBq, kThreads>(sQ + buf * kBq * kStride, kStride, static_cast<const T*>(p.q) + qoff, qld, i0, p.Sq,
                                p.D, dp, p.vec);
    load_tile<T, kBq, kThreads>(sdO + buf * kBq * kStride, kStride, static_cast<const T*>(p.dout) + qoff, qld, i0,
                                p.Sq, p.D, dp, p.vec);
    for (int r = threadIdx.x; r < kBq; r += kThreads) {
      const int i = i0 + r;
      sLse[buf * kBq + r] = lse2_of(p, bh, i);
      sDelta[buf * kBq + r] = i < p.Sq ? p.delta[bh * p.Sq + i] : 0.f;
    }
  };

  load_tile<T, kBk, kThreads>(sK, kStride, static_cast<const T*>(p.k) + kvoff, kld, k0, p.Sk, p.D, dp, p.vec);
  load_tile<T, kBk, kThreads>(sV, kStride, static_cast<const T*>(p.v) + kvoff, kld, k0, p.Sk, p.D, dp, p.vec);
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
    const int h = hk * p.G + it / per_head, i0 = (qt0 + it % per_head) * kBq;
    const int64_t bh = static_cast<int64_t>(b) * p.H + h;
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
    const bool masked_tile = p.causal && k0 + kBk - 1 > i0;  // some key after some query of the tile
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
          const bool hidden = masked_tile && j > i;
          const float pe = hidden ? 0.f : exp2f(st[nt][2 * hr + c] * p.scale_log2 - tLse[qr]);
          float z = 1.f;
          if (p.drop.on && pe != 0.f && j < p.Sk) z = drop_factor(p.drop, drop_row(p, dstart, bh, i) + j);
          pz[c] = pe * z;
          ds[c] = pe * (dpt[nt][2 * hr + c] * z - tDelta[qr]);
        }
        const int col = qb + nt * 8 + 2 * t;
        *reinterpret_cast<uint32_t*>(sP + kr * kPS + col) = dev::pack2<T>(pz[0], pz[1]);
        *reinterpret_cast<uint32_t*>(sdS + kr * kPS + col) = dev::pack2<T>(ds[0], ds[1]);
      }
    }
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

  store_acc<T, kDT>(static_cast<T*>(p.dv) + kvoff, kld, dv, k0 + kw * 16, p.Sk, p.D, pair0 * 16, 1.f, 1.f, p.vec,
                    lane);
  store_acc<T, kDT>(static_cast<T*>(p.dk) + kvoff, kld, dk, k0 + kw * 16, p.Sk, p.D, pair0 * 16, p.scale, p.scale,
                    p.vec, lane);
}

// =====================================================================================================
// f32 path: plain FMA, a warp per row (8 warps per CTA). D <= 256: each lane holds dims lane + 32 c, c < 8.
// =====================================================================================================
constexpr int kF32Warps = 8;
constexpr int kF32Chunks = 8;  // 256 / 32

// q: (B, H, Sq, D), k, v: (B, Hk, Sk, D) (logical; strides p.qs, p.ks) -> o, lse_out. A warp per query row: lanes
// take 32 keys at a time for the scores, then the head dims for O += p v. Dynamic shared memory: kF32Warps x D
// floats (the query rows).
__global__ void __launch_bounds__(256) fwd_f32_kernel(Params p) {
  extern __shared__ float sq_all[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kF32Warps + warp;  // (b H + h) Sq + i
  if (row >= static_cast<int64_t>(p.B) * p.H * p.Sq) return;
  const int64_t bh = row / p.Sq;
  const int i = static_cast<int>(row % p.Sq), b = static_cast<int>(bh / p.H), h = static_cast<int>(bh % p.H);
  const int D = p.D;
  const int64_t kld = p.ks.seq, qrow = p.q_head(b, h) + i * p.qs.seq;
  const float* kh = static_cast<const float*>(p.k) + p.k_head(b, h / p.G);
  const float* vh = static_cast<const float*>(p.v) + p.k_head(b, h / p.G);
  float* sq = sq_all + warp * D;
  for (int d = lane; d < D; d += 32) sq[d] = static_cast<const float*>(p.q)[qrow + d];
  __syncwarp();
  const int kend = p.causal ? min(p.Sk, i + 1) : p.Sk;
  const uint64_t drow = p.drop.on ? drop_row(p, p.drop.start(), bh, i) : 0;
  float m = -INFINITY, l = 0.f, acc[kF32Chunks];
#pragma unroll
  for (int c = 0; c < kF32Chunks; ++c) acc[c] = 0.f;
  for (int j0 = 0; j0 < kend; j0 += 32) {
    const int j = j0 + lane;
    float s = -INFINITY;
    if (j < kend) {
      const float* kj = kh + j * kld;
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot = fmaf(sq[d], kj[d], dot);
      s = p.scale * dot;
    }
    const float m_new = fmaxf(m, dev::warp_max(s));  // finite: lane 0's key is visible
    const float alpha = expf(m - m_new);
    const float e = j < kend ? expf(s - m_new) : 0.f;
    l = l * alpha + dev::warp_sum(e);
    const float pz = p.drop.on && e != 0.f ? e * drop_factor(p.drop, drow + j) : e;
    m = m_new;
#pragma unroll
    for (int c = 0; c < kF32Chunks; ++c) acc[c] *= alpha;
    const int n = min(32, kend - j0);
    for (int jj = 0; jj < n; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, pz, jj);
      const float* vj = vh + (j0 + jj) * kld;
#pragma unroll
      for (int c = 0; c < kF32Chunks; ++c)
        if (lane + 32 * c < D) acc[c] = fmaf(pj, vj[lane + 32 * c], acc[c]);
    }
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
  float* orow = static_cast<float*>(p.o) + qrow;
#pragma unroll
  for (int c = 0; c < kF32Chunks; ++c)
    if (lane + 32 * c < D) orow[lane + 32 * c] = acc[c] * inv;
  if (lane == 0) p.lse_out[row] = l > 0.f ? m + logf(l) : -INFINITY;
}

// q, dout: (B, H, Sq, D), k, v: (B, Hk, Sk, D) (logical; strides p.qs, p.ks), lse, delta -> dq. A warp per query
// row. Shared: 2 x 8 x D floats.
__global__ void __launch_bounds__(256) dq_f32_kernel(Params p) {
  extern __shared__ float s_all[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kF32Warps + warp;
  if (row >= static_cast<int64_t>(p.B) * p.H * p.Sq) return;
  const int64_t bh = row / p.Sq;
  const int i = static_cast<int>(row % p.Sq), b = static_cast<int>(bh / p.H), h = static_cast<int>(bh % p.H);
  const int D = p.D;
  const int64_t kld = p.ks.seq, qrow = p.q_head(b, h) + i * p.qs.seq;
  const float* kh = static_cast<const float*>(p.k) + p.k_head(b, h / p.G);
  const float* vh = static_cast<const float*>(p.v) + p.k_head(b, h / p.G);
  float* sq = s_all + warp * 2 * D;
  float* sdo = sq + D;
  for (int d = lane; d < D; d += 32) {
    sq[d] = static_cast<const float*>(p.q)[qrow + d];
    sdo[d] = static_cast<const float*>(p.dout)[qrow + d];
  }
  __syncwarp();
  const float lse = p.lse[row], delta = p.delta[row];
  const int kend = lse == -INFINITY ? 0 : (p.causal ? min(p.Sk, i + 1) : p.Sk);
  const uint64_t drow = p.drop.on ? drop_row(p, p.drop.start(), bh, i) : 0;
  float acc[kF32Chunks];
#pragma unroll
  for (int c = 0; c < kF32Chunks; ++c) acc[c] = 0.f;
  for (int j0 = 0; j0 < kend; j0 += 32) {
    const int j = j0 + lane;
    float ds = 0.f;
    if (j < kend) {
      const float* kj = kh + j * kld;
      const float* vj = vh + j * kld;
      float s = 0.f, dpv = 0.f;
      for (int d = 0; d < D; ++d) {
        s = fmaf(sq[d], kj[d], s);
        dpv = fmaf(sdo[d], vj[d], dpv);
      }
      const float P = expf(p.scale * s - lse);
      const float z = p.drop.on ? drop_factor(p.drop, drow + j) : 1.f;
      ds = P * (z * dpv - delta);
    }
    const int n = min(32, kend - j0);
    for (int jj = 0; jj < n; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
      const float* kj = kh + (j0 + jj) * kld;
#pragma unroll
      for (int c = 0; c < kF32Chunks; ++c)
        if (lane + 32 * c < D) acc[c] = fmaf(dsj, kj[lane + 32 * c], acc[c]);
    }
  }
  float* dqrow = static_cast<float*>(p.dq) + qrow;
#pragma unroll
  for (int c = 0; c < kF32Chunks; ++c)
    if (lane + 32 * c < D) dqrow[lane + 32 * c] = p.scale * acc[c];
}

// q, dout: (B, H, Sq, D), k, v: (B, Hk, Sk, D) (logical; strides p.qs, p.ks), lse, delta -> dk, dv. A warp per
// key row of a kv head, lanes over 32 queries at a time of each of the G query heads. Shared: 2 x 8 x D floats
// (the key and value rows).
__global__ void __launch_bounds__(256) dkdv_f32_kernel(Params p) {
  extern __shared__ float s_all[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kF32Warps + warp;  // (b Hk + hk) Sk + j
  if (row >= static_cast<int64_t>(p.B) * p.Hk * p.Sk) return;
  const int64_t bhk = row / p.Sk;
  const int j = static_cast<int>(row % p.Sk), b = static_cast<int>(bhk / p.Hk), hk = static_cast<int>(bhk % p.Hk);
  const int D = p.D;
  const int64_t qld = p.qs.seq, krow = p.k_head(b, hk) + j * p.ks.seq;
  float* sk = s_all + warp * 2 * D;
  float* sv = sk + D;
  for (int d = lane; d < D; d += 32) {
    sk[d] = static_cast<const float*>(p.k)[krow + d];
    sv[d] = static_cast<const float*>(p.v)[krow + d];
  }
  __syncwarp();
  const uint64_t dstart = p.drop.on ? p.drop.start() : 0;
  float dk[kF32Chunks], dv[kF32Chunks];
#pragma unroll
  for (int c = 0; c < kF32Chunks; ++c) dk[c] = dv[c] = 0.f;
  const int istart = p.causal ? j : 0;  // queries i >= j see key j
  for (int g = 0; g < p.G; ++g) {
    const int64_t bh = static_cast<int64_t>(b) * p.H + hk * p.G + g;
    const float* qh = static_cast<const float*>(p.q) + p.q_head(b, hk * p.G + g);
    const float* doh = static_cast<const float*>(p.dout) + p.q_head(b, hk * p.G + g);
    for (int i0 = istart; i0 < p.Sq; i0 += 32) {
      const int i = i0 + lane;
      float pz = 0.f, ds = 0.f;
      if (i < p.Sq) {
        const float lse = p.lse[bh * p.Sq + i];
        if (lse != -INFINITY) {
          const float* qi = qh + i * qld;
          const float* doi = doh + i * qld;
          float s = 0.f, dpv = 0.f;
          for (int d = 0; d < D; ++d) {
            s = fmaf(qi[d], sk[d], s);
            dpv = fmaf(doi[d], sv[d], dpv);
          }
          const float P = expf(p.scale * s - lse);
          const float z = p.drop.on ? drop_factor(p.drop, drop_row(p, dstart, bh, i) + j) : 1.f;
          pz = P * z;
          ds = P * (z * dpv - p.delta[bh * p.Sq + i]);
        }
      }
      const int n = min(32, p.Sq - i0);
      for (int ii = 0; ii < n; ++ii) {
        const float pzi = __shfl_sync(0xffffffffu, pz, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
        const float* qi = qh + (i0 + ii) * qld;
        const float* doi = doh + (i0 + ii) * qld;
#pragma unroll
        for (int c = 0; c < kF32Chunks; ++c)
          if (lane + 32 * c < D) {
            dv[c] = fmaf(pzi, doi[lane + 32 * c], dv[c]);
            dk[c] = fmaf(dsi, qi[lane + 32 * c], dk[c]);
          }
      }
    }
  }
  float* dkrow = static_cast<float*>(p.dk) + krow;
  float* dvrow = static_cast<float*>(p.dv) + krow;
#pragma unroll
  for (int c = 0; c < kF32Chunks; ++c)
    if (lane + 32 * c < D) {
      dkrow[lane + 32 * c] = p.scale * dk[c];
      dvrow[lane + 32 * c] = dv[c];
    }
}

// =====================================================================================================
// Host side
// =====================================================================================================

// Raises the kernel's dynamic shared-memory limit once per device (past the default 48 KB).
template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes, std::atomic<uint64_t>& done) {
  int dev = 0;
  XF_CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = 1ull << (dev & 63);
  if (done.load(std::memory_order_acquire) & bit) return;
  XF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  done.fetch_or(bit, std::memory_order_acq_rel);
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// Whether every row of every tensor starts 16 bytes after an aligned base: D and all strides multiples of 8
// elements (16 bytes of bf16/f16; the f32 kernels do not use vec).
bool strides_vec(const Params& p) {
  const int64_t all = p.D | p.qs.batch | p.qs.head | p.qs.seq | p.ks.batch | p.ks.head | p.ks.seq;
  return all % 8 == 0;
}

Params make_params(const FlashAttentionArgs& a) {
  XF_CHECK(a.D >= 1 && a.D <= 256, "flash_attention", "the CUDA kernels support head dims 1 to 256, got ", a.D);
  XF_CHECK(a.Hk > 0 && a.H % a.Hk == 0, "flash_attention", "H ", a.H, " is not a multiple of Hk ", a.Hk);
  XF_CHECK(a.B * a.H <= INT32_MAX && a.Sq <= INT32_MAX && a.Sk <= INT32_MAX, "flash_attention", "sizes too large");
  XF_CHECK((a.Sq + 63) / 64 <= 65535 && (a.Sk + 63) / 64 <= 65535, "flash_attention", "Sq ", a.Sq, " or Sk ", a.Sk,
           " has more than 65535 blocks of 64");
  XF_CHECK(a.q_strides.seq > 0 && a.k_strides.seq > 0, "flash_attention",
           "FlashAttentionArgs needs the element strides of q and k (head_strides() for contiguous tensors)");
  Params p;
  p.B = static_cast<int>(a.B);
  p.H = static_cast<int>(a.H);
  p.Hk = static_cast<int>(a.Hk);
  p.G = static_cast<int>(a.H / a.Hk);
  p.Sq = static_cast<int>(a.Sq);
  p.Sk = static_cast<int>(a.Sk);
  p.D = static_cast<int>(a.D);
  p.qs = a.q_strides;
  p.ks = a.k_strides;
  p.scale = static_cast<float>(a.scale);
  p.scale_log2 = static_cast<float>(a.scale * 1.4426950408889634);
  p.causal = a.causal;
  if (a.dropout > 0.0) {
    p.drop.on = true;
    p.drop.threshold = dropout_keep_threshold(a.dropout);
    p.drop.keep_scale = static_cast<float>(1.0 / (1.0 - a.dropout));
    p.drop.seed = a.seed;
    p.drop.offset = a.offset;
    p.drop.offset_device = a.offset_device;
  }
  return p;
}

// Runs f.template operator()<kMaxD, kExact>() for the instantiation that covers head dim D: the exact tile for
// D = 32, 64, 128 and 256, else the generic one of the next kMaxD.
template <class F>
void with_head_dim(int D, F&& f) {
  if (D == 32) {
    f.template operator()<32, true>();
  } else if (D == 64) {
    f.template operator()<64, true>();
  } else if (D == 128) {
    f.template operator()<128, true>();
  } else if (D == 256) {
    f.template operator()<256, true>();
  } else if (D < 32) {
    f.template operator()<32, false>();
  } else if (D < 64) {
    f.template operator()<64, false>();
  } else if (D < 128) {
    f.template operator()<128, false>();
  } else {
    f.template operator()<256, false>();
  }
}

template <class T>
struct ForwardLaunch {
  const Params& p;
  cudaStream_t stream;
  template <int kMaxD, bool kExact>
  void operator()() const {
    using Tl = Tiles<kMaxD>;
    static std::atomic<uint64_t> done{0};
    auto kernel = fwd_tc_kernel<T, kMaxD, kExact>;
    allow_smem(kernel, Tl::kFwdSmem, done);
    const dim3 grid(static_cast<unsigned>(p.B * p.H), static_cast<unsigned>((p.Sq + Tl::kBq - 1) / Tl::kBq));
    kernel<<<grid, 32 * Tl::kWarpsQ, Tl::kFwdSmem, stream>>>(p);
  }
};

template <class T>
struct BackwardLaunch {
  const Params& p;
  cudaStream_t stream;
  template <int kMaxD, bool kExact>
  void operator()() const {
    using Tl = Tiles<kMaxD>;
    static std::atomic<uint64_t> done_dq{0}, done_kv{0};
    auto dq = dq_tc_kernel<T, kMaxD, kExact>;
    auto kv = dkdv_tc_kernel<T, kMaxD, kExact>;
    allow_smem(dq, Tl::kDqSmem, done_dq);
    allow_smem(kv, Tl::kKVSmem, done_kv);
    if (p.B * p.H > 0 && p.Sq > 0) {
      const dim3 grid(static_cast<unsigned>(p.B * p.H), static_cast<unsigned>((p.Sq + Tl::kBq - 1) / Tl::kBq));
      dq<<<grid, 32 * Tl::kWarpsQ, Tl::kDqSmem, stream>>>(p);
      XF_CUDA_CHECK_LAUNCH("flash_attention_backward dq");
    }
    if (p.B * p.Hk > 0 && p.Sk > 0) {
      const dim3 grid(static_cast<unsigned>(p.B * p.Hk), static_cast<unsigned>((p.Sk + Tl::kBkKV - 1) / Tl::kBkKV));
      kv<<<grid, 32 * Tl::kWarpsKV, Tl::kKVSmem, stream>>>(p);
      XF_CUDA_CHECK_LAUNCH("flash_attention_backward dkdv");
    }
  }
};

unsigned f32_blocks(int64_t rows) { return static_cast<unsigned>((rows + kF32Warps - 1) / kF32Warps); }

FlashAttentionArgs args_of(const FlashAttentionAttrs& attrs, const Tensor& q, const Tensor& k,
                           const KernelContext& ctx) {
  const FlashAttentionShape s = flash_attention_shape("flash_attention", attrs.layout, TensorMeta{q.shape(), q.dtype()},
                                                      TensorMeta{k.shape(), k.dtype()}, TensorMeta{k.shape(), k.dtype()});
  FlashAttentionArgs a;
  a.dtype = q.dtype();
  a.B = s.B;
  a.H = s.H;
  a.Sq = s.Sq;
  a.D = s.D;
  a.Hk = s.Hk;
  a.Sk = s.Sk;
  a.q_strides = s.q;
  a.k_strides = s.k;
  a.scale = attrs.scale;
  a.causal = attrs.causal;
  a.dropout = attrs.dropout;
  a.seed = ctx.rng_seed;
  a.offset = ctx.rng_offset;
  a.offset_device = ctx.rng_offset_device;
  return a;
}

// in: q (B, H, Sq, D) or (B, Sq, H, D), k, v (B, Hk, Sk, D) or (B, Sk, Hk, D); out: out (q's shape), lse (B, H, Sq)
// f32
void forward_kernel_fn(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                       const std::vector<Tensor>& out) {
  const auto& op = static_cast<const FlashAttentionOp&>(op_);
  launch_flash_attention_forward(args_of(op.a, in[0], in[1], ctx), in[0].raw_data(),
                                 in[1].raw_data(), in[2].raw_data(), out[0].raw_data(),
                                 static_cast<float*>(out[1].raw_data()), stream_of(ctx));
}

// in: q, k, v, out, dout, lse, [dlse]; out: dq (q's shape), dk, dv (k's shape)
void backward_kernel_fn(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                        const std::vector<Tensor>& out) {
  const auto& op = static_cast<const FlashAttentionBackwardOp&>(op_);
  const FlashAttentionArgs a = args_of(op.a, in[0], in[1], ctx);
  CudaContext& cc = context_of(ctx);
  const size_t ws_bytes = flash_attention_backward_workspace_bytes(a);
  // Stream-ordered: freed back to the pool after the kernels queued before the free (runtime/device_context.h).
  const std::shared_ptr<void> ws = ws_bytes > 0 ? cc.allocate(ws_bytes) : nullptr;
  launch_flash_attention_backward(a, in[0].raw_data(), in[1].raw_data(), in[2].raw_data(), in[3].raw_data(),
                                  in[4].raw_data(), static_cast<const float*>(in[5].raw_data()),
                                  op.has_dlse ? static_cast<const float*>(in[6].raw_data()) : nullptr,
                                  out[0].raw_data(), out[1].raw_data(), out[2].raw_data(), ws.get(), cc.stream());
}

}  // namespace

void launch_flash_attention_forward(const FlashAttentionArgs& a, const void* q, const void* k, const void* v,
                                    void* out, float* lse, CUstream_st* stream) {
  Params p = make_params(a);
  if (p.B * p.H == 0 || p.Sq == 0) return;
  p.q = q;
  p.k = k;
  p.v = v;
  p.o = out;
  p.lse_out = lse;
  p.vec = strides_vec(p) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);
  if (a.dtype == DType::f32) {
    fwd_f32_kernel<<<f32_blocks(int64_t{p.B} * p.H * p.Sq), 32 * kF32Warps, kF32Warps * p.D * sizeof(float),
                     stream>>>(p);
  } else if (a.dtype == DType::bf16) {
    with_head_dim(p.D, ForwardLaunch<__nv_bfloat16>{p, stream});
  } else if (a.dtype == DType::f16) {
    with_head_dim(p.D, ForwardLaunch<__half>{p, stream});
  } else {
    throw Error("flash_attention", str_cat("the CUDA kernels compute in bf16, f16 or f32, not ", dtype_name(a.dtype)));
  }
  XF_CUDA_CHECK_LAUNCH("flash_attention");
}

size_t flash_attention_backward_workspace_bytes(const FlashAttentionArgs& a) {
  return static_cast<size_t>(a.B * a.H * a.Sq) * sizeof(float);
}

void launch_flash_attention_backward(const FlashAttentionArgs& a, const void* q, const void* k, const void* v,
                                     const void* out, const void* dout, const float* lse, const float* dlse,
                                     void* dq, void* dk, void* dv, void* workspace, CUstream_st* stream) {
  Params p = make_params(a);
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = out;
  p.dout = dout;
  p.lse = lse;
  p.dlse = dlse;
  p.delta = static_cast<float*>(workspace);
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  p.vec = strides_vec(p) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(dout) && aligned16(dq) &&
          aligned16(dk) && aligned16(dv);
  const int64_t rows = int64_t{p.B} * p.H * p.Sq, kv_rows = int64_t{p.B} * p.Hk * p.Sk;
  if (rows > 0) {
    XF_CUDA_DISPATCH_FLOAT(a.dtype, "flash_attention_backward", T, {
      delta_kernel<T><<<f32_blocks(rows), 256, 0, stream>>>(p, rows);
    });
    XF_CUDA_CHECK_LAUNCH("flash_attention_backward delta");
  }
  // Every launch below has a non-empty grid; with Sq == 0 (or H == 0) dk and dv are still written (zeros).
  if (a.dtype == DType::f32) {
    if (rows > 0) dq_f32_kernel<<<f32_blocks(rows), 256, 2 * kF32Warps * p.D * sizeof(float), stream>>>(p);
    if (kv_rows > 0) dkdv_f32_kernel<<<f32_blocks(kv_rows), 256, 2 * kF32Warps * p.D * sizeof(float), stream>>>(p);
    XF_CUDA_CHECK_LAUNCH("flash_attention_backward");
  } else if (a.dtype == DType::bf16) {
    with_head_dim(p.D, BackwardLaunch<__nv_bfloat16>{p, stream});
  } else if (a.dtype == DType::f16) {
    with_head_dim(p.D, BackwardLaunch<__half>{p, stream});
  } else {
    throw Error("flash_attention_backward",
                str_cat("the CUDA kernels compute in bf16, f16 or f32, not ", dtype_name(a.dtype)));
  }
}

void register_flash_attention(KernelRegistry& r) {
  r.add("flash_attention", Device::Kind::cuda, forward_kernel_fn);
  r.add("flash_attention_backward", Device::Kind::cuda, backward_kernel_fn);
}

}  // namespace xfr::cuda
