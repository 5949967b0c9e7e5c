// Kernels by (op name, device). The set is one explicit list per backend (ops/cpu/register.cpp,
// ops/cuda/register.cu), so a build without CUDA simply has no CUDA entries, and a graph that needs a
// missing kernel is refused by name when it is compiled, never in the middle of training.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "runtime/device.h"
#include "runtime/op.h"
#include "runtime/tensor.h"

namespace xfr {

class ThreadPool;
class DeviceContext;

struct KernelContext {
  ThreadPool* pool = nullptr;   // CPU: the pool to parallelise over (null: run serially)
  uint64_t rng_seed = 0;        // Philox key for ops that draw random numbers
  uint64_t rng_offset = 0;      // where this node's random numbers start in the stream
  // CUDA graphs replay launches with their arguments frozen, so a replayed step reads the per-run part
  // of its offset from device memory: when set, the random numbers start at *rng_offset_device +
  // rng_offset (CUDA kernels only).
  const uint64_t* rng_offset_device = nullptr;
  Device device;
  DeviceContext* device_ctx = nullptr;  // non-CPU devices: stream, allocator, library handles
  // The f32 outputs handed in for 16-bit results (Op::stores_f32) are added to, not stored (Op::adds_f32).
  bool add_f32_outputs = false;
  // (CUDA) The ones column: the step's 16-bit activation x (M, K) is the view of rows at least K + kOnesColumnPad long
  // whose column K is ones and the next seven zeros (ones_column_ld: rows start 128 bytes apart). A GEMM over the stored rows, dW_ext (N, K + 8) = gᵀ [x | 1 | 0], then has
  // g's column sums in its column K: a linear layer's bias gradient out of its weight-gradient GEMM, no pass over g
  // of its own. The executor sets it where a layernorm's y is read only by linear layers and (through a reshape)
  // their weight gradients: the layernorm writes the 8 columns after each row of y, linear reads x through the view,
  // linear_weight_grad reads the stored rows whole. Kernels check the view's row stride; the 8 columns' values are
  // the executor's promise.
  bool ones_column = false;
};

// The ones column and seven zeros: a GEMM reads K + 8 columns, 16-byte rows when K % 8 == 0 (cuBLASLt's fast kernels
// and the norms' 16-byte stores).
inline constexpr int64_t kOnesColumnPad = 8;
// The stored rows' length for K columns of `elem_bytes`-byte elements: K + 8 rounded up to 128 bytes. Rows 1552 bytes
// apart (GPT-2's 768 + 8 in bf16) start off the 128-byte lines, and the forward GEMMs that read them lost 5-8% (H200,
// session 25); 832 keeps each row on its own lines for 8% more bytes stored.
inline constexpr int64_t ones_column_ld(int64_t K, int64_t elem_bytes) {
  const int64_t per_line = 128 / elem_bytes;
  return (K + kOnesColumnPad + per_line - 1) / per_line * per_line;
}

// in: the node's inputs; out: its outputs, already allocated (contiguous) and to be written entirely.
using KernelFn = void (*)(const Op& op, const KernelContext& ctx, const std::vector<Tensor>& in,
                          const std::vector<Tensor>& out);

class KernelRegistry {
 public:
  void add(const std::string& op, Device::Kind device, KernelFn fn);
  KernelFn find(const std::string& op, Device::Kind device) const;  // null when absent
  KernelFn get(const std::string& op, Device device) const;         // throws naming op and device
  std::vector<std::string> ops(Device::Kind device) const;

  // Every kernel this build has (immutable once built).
  static const KernelRegistry& builtin();

 private:
  std::map<std::pair<std::string, Device::Kind>, KernelFn> kernels_;
};

// Runs one op eagerly: validates, allocates contiguous outputs, runs the kernel. Inputs may be strided
// views; they are made contiguous first. Tests and benchmarks use this; models use graphs.
// The device is the inputs' (they must agree), or `device_ctx`'s when given (ops without inputs).
std::vector<Tensor> run_op(const Op& op, const std::vector<Tensor>& inputs, ThreadPool* pool = nullptr,
                           uint64_t rng_seed = 0, uint64_t rng_offset = 0, DeviceContext* device_ctx = nullptr);

// Backend registration functions (one per backend, each an explicit list).
void register_cpu_kernels(KernelRegistry& registry);
#ifdef XF_WITH_CUDA
void register_cuda_kernels(KernelRegistry& registry);
#endif

}  // namespace xfr
