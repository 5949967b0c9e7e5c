// Host helpers shared by the Hopper labs (tools/lab/attention_wgmma.cu, the attention forward,
// tools/lab/attention_wgmma_bwd.cu, its backward, and tools/lab/epilogue_gemm.cu): the device check they open with, the host-mapped hang record of
// mbar_wait, the per-case error check that stops the program on a sticky error, TMA tensor-map encoding through the
// runtime's driver entry point, bf16 decoding and the command line both labs share. Include after lab_cuda.h
// (LAB_NAME) and after the lab's device code (which brings ops/cuda/device/sm90/ptx.cuh: HangInfo, g_hang).
#pragma once
#include <cuda.h>  // CUtensorMap
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "lab_cuda.h"
#include "ops/cuda/device/sm90/tensor_map.h"  // the encoder (production's)
#include "ops/cuda/device/sm90/ptx.cuh"  // HangInfo, g_hang

namespace lab_host {

using xfr::cuda::sm90::HangInfo;

// Host-mapped record of an mbarrier wait that timed out (sm90::mbar_wait), readable after the context is lost.
inline volatile HangInfo* g_hang_host = nullptr;

inline void setup_hang_record() {
  void* h = nullptr;
  LAB_CHECK(cudaHostAlloc(&h, sizeof(HangInfo), cudaHostAllocMapped));
  std::memset(h, 0, sizeof(HangInfo));
  void* d = nullptr;
  LAB_CHECK(cudaHostGetDevicePointer(&d, h, 0));
  LAB_CHECK(cudaMemcpyToSymbol(xfr::cuda::sm90::g_hang, &d, sizeof(d)));
  g_hang_host = static_cast<volatile HangInfo*>(h);
}

// The labs' opening: the device line (name, SMs, memory, driver and runtime versions), the sm_90a check and the
// hang record. Returns 0, or 3 (the labs' status for a CUDA error) with a FATAL line when there is no device or it
// is not sm_90.
inline int open_sm90_device() {
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("%s: FATAL: no CUDA device\n", LAB_NAME);
    return 3;
  }
  cudaDeviceProp prop{};
  LAB_CHECK(cudaGetDeviceProperties(&prop, 0));
  int drv = 0, rt = 0;
  LAB_CHECK(cudaDriverGetVersion(&drv));
  LAB_CHECK(cudaRuntimeGetVersion(&rt));
  std::printf("%s: device %s (sm_%d%d, %d SMs, %.0f GiB), driver %d, runtime %d\n", LAB_NAME, prop.name, prop.major,
              prop.minor, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, drv, rt);
  if (prop.major != 9 || prop.minor != 0) {
    std::printf("%s: FATAL: the kernels are built for sm_90a only (wgmma, setmaxnreg)\n", LAB_NAME);
    return 3;
  }
  setup_hang_record();
  return 0;
}

// After a case's kernel: "" on success, else the error; a sticky error (the context is lost: every later call
// would fail too) is printed and ends the program with status 3. `what` names the kernel (and, in the backward
// lab, the variant and case) so the last line of a crashed run says where it crashed.
inline std::string case_error(cudaError_t launch_error, const char* what) {
  cudaError_t e = launch_error != cudaSuccess ? launch_error : cudaDeviceSynchronize();
  if (e == cudaSuccess) e = cudaGetLastError();
  if (e == cudaSuccess && g_hang_host != nullptr && g_hang_host->set) {
    // mbar_wait gave up a wait (ptx.cuh): the kernel finished with wrong data; later cases would be no better.
    std::printf("%s: FATAL: an mbarrier wait timed out (pipeline deadlock) in %s: block (%u,%u,%u) thread %u, barrier "
                "at shared 0x%x, waiting for parity %u\n",
                LAB_NAME, what, g_hang_host->block_x, g_hang_host->block_y, g_hang_host->block_z, g_hang_host->thread,
                g_hang_host->barrier, g_hang_host->parity);
    std::fflush(stdout);
    std::exit(3);
  }
  if (e == cudaSuccess) return "";
  std::string msg = std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
  (void)cudaGetLastError();  // clears a non-sticky error
  const cudaError_t again = cudaDeviceSynchronize();
  if (again != cudaSuccess || cudaGetLastError() != cudaSuccess) {
    std::printf("%s: FATAL: sticky CUDA error after %s; the context is unusable, stopping\n", LAB_NAME, msg.c_str());
    if (g_hang_host != nullptr && g_hang_host->set)
      std::printf("%s: FATAL: cause: an mbarrier wait timed out (pipeline deadlock): block (%u,%u,%u) "
                  "thread %u, barrier at shared 0x%x, waiting for parity %u\n",
                  LAB_NAME, g_hang_host->block_x, g_hang_host->block_y, g_hang_host->block_z, g_hang_host->thread,
                  g_hang_host->barrier, g_hang_host->parity);
    else
      std::printf("%s: FATAL: (no mbarrier timeout recorded: a fault such as an illegal address or "
                  "instruction)\n",
                  LAB_NAME);
    std::fflush(stdout);
    std::exit(3);
  }
  return msg;
}

// x: (rows, D) bf16 row-major; box: 64 columns (128 B, the swizzle width) x box_rows rows, 128B swizzle (the
// encoder is production's: ops/cuda/device/sm90/tensor_map.h).
inline CUtensorMap make_tensor_map(const __nv_bfloat16* x, uint64_t rows, int D, int box_rows) {
  CUtensorMap m;
  const uint64_t dims[2] = {static_cast<uint64_t>(D), rows};                        // innermost first
  const uint64_t strides[1] = {static_cast<uint64_t>(D) * sizeof(__nv_bfloat16)};  // bytes, dims 1..rank-1
  std::string why;
  if (!xfr::cuda::sm90::encode_sw128_map(&m, false, x, 2, dims, strides, static_cast<uint32_t>(box_rows), &why)) {
    std::printf("%s: FATAL: %s rows=%llu D=%d box_rows=%d\n", LAB_NAME, why.c_str(),
                static_cast<unsigned long long>(rows), D, box_rows);
    std::exit(3);
  }
  return m;
}

// A 4-D (D, S, heads, B) view of a (B, heads, S, D) 16-bit tensor with element strides (batch, head, seq) (D
// contiguous), box (64, box_rows, 1, 1), 128B swizzle: rows past S read as zeros (production's encode_head_map,
// exiting with status 3 when the driver refuses).
inline CUtensorMap make_tensor_map_4d(const void* x, int D, int S, int heads, int B, int64_t batch_stride,
                                      int64_t head_stride, int64_t seq_stride, int box_rows, bool f16 = false) {
  CUtensorMap m;
  std::string why;
  if (!xfr::cuda::sm90::encode_head_map(&m, f16, x, D, S, heads, B, batch_stride, head_stride, seq_stride,
                                        static_cast<uint32_t>(box_rows), &why)) {
    std::printf("%s: FATAL: %s (4-D map D=%d S=%d heads=%d B=%d box_rows=%d)\n", LAB_NAME, why.c_str(), D, S, heads, B,
                box_rows);
    std::exit(3);
  }
  return m;
}

inline float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- command line: [--variant a[,b,...]] [--quick] [--d 64|128] [--causal 0|1] [--s S] [--reps N] ----------------
struct Options {
  std::vector<std::string> variants;  // empty: all
  std::vector<int> dims{64, 128}, causal{0, 1}, seqs{512, 2048, 8192};
  int reps = 10;
  bool quick = false, d_given = false, causal_given = false;
};

struct VariantName {
  const char* name;
  const char* what;
};

// prog: the binary's name; quick_doc: what --quick does. --quick only sets S = 512 here; a lab that narrows it
// further reads Options::quick (and d_given / causal_given, so an explicit --d or --causal still wins).
[[noreturn]] inline void usage(const char* msg, const char* prog, const char* quick_doc,
                               const std::vector<VariantName>& variants) {
  std::printf(
      "%s: %s\nusage: %s [--variant %s[,...]] [--quick] [--d 64|128] [--causal 0|1] [--s S] [--reps N]\n"
      "  --quick: %s. Variants:",
      LAB_NAME, msg, prog, variants.empty() ? "?" : variants[0].name, quick_doc);
  for (const auto& v : variants) std::printf(" %s (%s);", v.name, v.what);
  std::printf("\n");
  std::exit(2);
}

inline Options parse(int argc, char** argv, const char* prog, const char* quick_doc,
                     const std::vector<VariantName>& variants) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str(), prog, quick_doc, variants);
      return argv[++i];
    };
    auto to_int = [&](const std::string& s) {
      char* end = nullptr;
      const long v = std::strtol(s.c_str(), &end, 10);
      if (s.empty() || *end != '\0') usage(("not an integer: " + s).c_str(), prog, quick_doc, variants);
      return static_cast<int>(v);
    };
    if (a == "--variant") {
      std::string list = value();
      for (size_t pos = 0; pos <= list.size();) {
        const size_t comma = std::min(list.find(',', pos), list.size());
        const std::string name = list.substr(pos, comma - pos);
        bool known = false;
        for (const auto& v : variants) known |= name == v.name;
        if (!known) usage(("unknown variant '" + name + "'").c_str(), prog, quick_doc, variants);
        o.variants.push_back(name);
        pos = comma + 1;
      }
    } else if (a == "--quick") {
      o.seqs = {512};
      o.quick = true;
    } else if (a == "--d") {
      o.dims = {to_int(value())};
      o.d_given = true;
    } else if (a == "--causal") {
      o.causal = {to_int(value()) != 0};
      o.causal_given = true;
    } else if (a == "--s") {
      o.seqs = {to_int(value())};
    } else if (a == "--reps") {
      o.reps = std::max(1, to_int(value()));
    } else if (a == "--help" || a == "-h") {
      usage("help", prog, quick_doc, variants);
    } else {
      usage(("unknown argument '" + a + "'").c_str(), prog, quick_doc, variants);
    }
  }
  return o;
}

}  // namespace lab_host
