// Inline-PTX helpers of the Hopper (sm_90a) kernels: the native attention forward (ops/cuda/flash_attention_sm90.cu)
// and its lab (tools/lab/attention_wgmma.cu): shared-memory matrix descriptors, wgmma fences, cp.async,
// mbarriers, TMA, setmaxnreg, named barriers. Each wrapper names the PTX ISA section its operand order comes from.
// Device code that uses them compiles only for sm_90a (guard it with XF_SM90A_DEVICE below).
#pragma once
#include <cuda.h>  // CUtensorMap (a type only; nothing from libcuda is linked)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "ops/cuda/device/mma.cuh"  // dev::pack2
#include "ops/cuda/device/types.cuh"  // dev::ex2

// True in the device pass for sm_90a (where wgmma, setmaxnreg and the TMA forms here exist); false in the host
// pass and for every other architecture of a multi-architecture build, whose kernel bodies are then empty (the
// host launches them only on a compute capability 9.0 device: ops/cuda/flash_attention_sm90.cu).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define XF_SM90A_DEVICE 1
#else
#define XF_SM90A_DEVICE 0
#endif

namespace xfr::cuda::sm90 {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- The 128-byte-swizzled shared-memory tile layout ---------------------------------------------------------
// Every Q, K, V (and O staging) tile of R rows x D bf16 columns is stored as D/64 "atoms", atom a holding columns
// [64a, 64a+64) of all R rows: atom a starts at byte a*R*128, row r of it at +r*128 (64 bf16 = 128 bytes = the
// swizzle width). Inside a row the 16-byte chunk c (columns 8c..8c+7 of the atom) sits at chunk position
// c ^ (r % 8): the 128B swizzle, which XORs address bits [4,7) with bits [7,10). That is a function of the
// address, so every atom must start at a multiple of 1024 bytes (8 rows x 128 B) for "r % 8" to be the row's
// phase; the kernels align the dynamic shared-memory base to 1024 and keep every tile a multiple of 16 KB.
// TMA with CU_TENSOR_MAP_SWIZZLE_128B and a 64-column box writes exactly this layout; the cp.async loader
// writes it by hand with sw128_chunk below.
__host__ __device__ constexpr uint32_t sw128_chunk(int row, int chunk) {
  return static_cast<uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// ---- wgmma shared-memory matrix descriptor (PTX ISA 9.7.15.5.1 "Matrix Descriptor Format") --------------------
//   bits  0-13  start address >> 4          bits 16-29  leading dimension byte offset (LBO) >> 4
//   bits 32-45  stride dimension byte offset (SBO) >> 4
//   bits 49-51  base offset (0: every atom starts 1024-aligned, see above)
//   bits 62-63  swizzle mode: 0 none, 1 = 128B, 2 = 64B, 3 = 32B
// Meaning of LBO / SBO with the 128B swizzle (CUTLASS's canonical GMMA layouts, in 16-byte units
// ((8,n),(8,k)) : ((1,LBO),(8,SBO)) for MN-major and ((8,n),2) : ((8,SBO),1) for K-major):
//   K-major (Q as A, K as B of S = Q K^T): rows of the M/N index are 128 B apart inside an 8-row group,
//     SBO = 1024 = the step between 8-row groups; the 16 k of one instruction (32 B) lie inside one swizzled
//     row, so LBO is unused (set to 16 B, encoded 1, as CUTLASS does). Stepping k by 16 inside an atom adds
//     32 B to the start address (the hardware applies the XOR to the final address).
//   MN-major (V as B of O = P V, imm-trans-b = 1; V tile is [key][d], d contiguous): the N index (d) runs
//     64 elements along a 128-B row, LBO = the step between 64-column atoms of N (R*128 bytes for an R-row
//     tile); the K index (key) runs down the rows, 128 B apart, SBO = 1024 = the step between 8-key groups.
//     Stepping k by 16 keys adds 16*128 = 2048 B (a multiple of 1024, so the swizzle phase is unchanged).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t saddr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return static_cast<uint64_t>((saddr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

// ---- wgmma ordering (PTX ISA 9.7.15.6 wgmma.fence / commit_group / wait_group) --------------------------------
// fence: before the first wgmma of a batch whenever its accumulator or A registers were touched by ordinary
// instructions. commit: closes the batch into a group. wait<N>: until at most N groups are pending.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// A compiler-only fence on registers that an in-flight wgmma writes: keeps the compiler from moving their
// reads above the wait (or their writes below the issue). Emits no instruction.
template <int N>
__device__ __forceinline__ void reg_fence(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// Orders this thread's generic-proxy shared-memory writes (ordinary stores, cp.async) before later async-proxy
// reads (wgmma operands, TMA); needs a barrier after it to cover the other threads' writes.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// ---- cp.async (PTX ISA 9.7.9.25) ------------------------------------------------------------------------------
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ---- mbarrier (PTX ISA 9.7.13.15) -----------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the async proxy (TMA's complete_tx) and the other threads.
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  fence_proxy_async();
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok != 0;
}
// Waits until the phase with this parity has completed. A pipeline bug would hang a kernel lab with no output on a
// machine the author cannot see, so where g_hang is set (the labs: host-mapped memory), after ~2^34 cycles (about
// 10 s at 1.7 GHz, thousands of times the longest kernel here) it records which barrier stalled and gives up the
// wait: the kernel runs on to its end with wrong data, and the lab, which reads g_hang after every case, reports
// the deadlock and stops. Where g_hang is null (production) it waits on: a deadlock hangs like any other.
// Neither path may trap: a __trap() anywhere in a setmaxnreg region makes ptxas (nvcc 13.0) allocate the whole
// kernel under the entry budget (168 registers at 384 threads) instead of the region's 240, which spilled the
// attention backward lab by 260-1064 bytes a kernel (a trap-free wait: none; see docs/attention.md).
// No printf here either: a function call inside the wgmma pipeline makes ptxas serialise every wgmma (C7510).
struct HangInfo {
  unsigned int set, block_x, block_y, block_z, thread, barrier, parity;
};
static __device__ HangInfo* g_hang;  // per translation unit; a lab sets it to a cudaHostAllocMapped buffer
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  if (mbar_try_wait(bar, parity)) return;
  const long long t0 = clock64();
  while (!mbar_try_wait(bar, parity)) {
    if (clock64() - t0 > (1ll << 34)) {
      volatile HangInfo* h = g_hang;
      if (h != nullptr) {  // plain stores (no host-memory atomics over PCIe); racing writers all tell the truth
        h->block_x = blockIdx.x, h->block_y = blockIdx.y, h->block_z = blockIdx.z;
        h->thread = threadIdx.x, h->barrier = bar, h->parity = parity;
        __threadfence_system();
        h->set = 1u;
        __threadfence_system();
        return;
      }
    }
  }
}

// ---- TMA (PTX ISA 9.7.9.27 cp.async.bulk.tensor) --------------------------------------------------------------
// Loads the box at (c0 = column, c1 = row) of a 2-D tensor map into shared memory at dst; the bytes count
// against the barrier's expected transaction count.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
// The same for a 4-D map: (c0 = column, c1 = row, c2, c3) (production's (D, S, heads, batch) view).
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                           uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
// 1-D bulk copy global -> shared (PTX ISA 9.7.9.25 cp.async.bulk): bytes a multiple of 16, both addresses 16-byte
// aligned; the bytes count against the barrier's expected transaction count (the backward's lse2 / Delta rows).
__device__ __forceinline__ void bulk_load_1d(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(bar)
               : "memory");
}
// 1-D bulk reduction shared -> global (PTX ISA 9.7.9.25 cp.reduce.async.bulk, bulk_group completion): global f32
// dst[i] += shared src[i] for bytes / 4 elements, done by the memory system (L2), not by the SM. bytes a multiple of
// 16, both addresses 16-byte aligned. The source must have been written through the generic proxy before a
// fence_proxy_async and a barrier; it may be overwritten once bulk_wait_read has returned for its group.
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst), "r"(src),
               "r"(bytes)
               : "memory");
}
// Stores the box at (c0 = column, c1 = row) of a 2-D tensor map from shared memory at src (laid out as the map's
// swizzle says), as a bulk group of this thread (bulk_commit, then bulk_wait_read before src is rewritten). src's
// generic-proxy writes must be ordered first: fence_proxy_async by each writer, then a barrier.
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, uint32_t src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(c0), "r"(c1), "r"(src)
               : "memory");
}
// Closes the thread's bulk operations issued so far into a group (cp.async.bulk.commit_group).
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Until at most N of the thread's bulk groups still read their shared-memory source (the source may be rewritten).
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
// Until at most N of the thread's bulk groups are pending at all (their global writes done).
template <int N>
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// ---- setmaxnreg (PTX ISA 9.7.17.1; sm_90a): all threads of a warpgroup execute the same one ----------------------
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

// stmatrix (PTX ISA 9.7.14.5.16): a warp stores four 8 x 8 matrices of 16-bit values, one 16-byte row per lane
// address: lane l gives the shared address of row l % 8 of matrix l / 8, and register i of lane l holds elements
// 2 (l % 4), + 1 of row l / 4 of matrix i (the packed layout of an mma / wgmma accumulator fragment).
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}

// Barrier among `count` threads (a warpgroup: 128) on hardware barrier `id` (0 is __syncthreads').
__device__ __forceinline__ void named_barrier_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// Arrives at named barrier `id` without waiting: counts toward the `count` threads a bar.sync on it waits for.
__device__ __forceinline__ void named_barrier_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// named_barrier_sync that also returns whether any of the `count` threads passed pred true (bar.red.or: PTX ISA
// 9.7.13.1), so one thread's finding reaches the others with the barrier.
__device__ __forceinline__ bool named_barrier_any(int id, int count, bool pred) {
  uint32_t any;
  asm volatile(
      "{\n .reg .pred p, q;\n setp.ne.u32 p, %1, 0;\n bar.red.or.pred q, %2, %3, p;\n selp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(any)
      : "r"(static_cast<uint32_t>(pred)), "r"(id), "r"(count)
      : "memory");
  return any != 0;
}

using dev::ex2;  // 2^x (ops/cuda/device/types.cuh)

// Two floats to a pair of 16-bit values in one b32 (the A fragments, the epilogue): dev::pack2<T> of the mma.sync
// kernels' building blocks, one definition for both.
using ::xfr::cuda::dev::pack2;

}  // namespace xfr::cuda::sm90
