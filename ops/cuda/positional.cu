// CUDA kernel of ops/positional.h: the sinusoidal table, one thread per element, computed in double and
// rounded once to the output dtype, as the CPU kernel does (so both agree to the last bit but for libm's
// last-ulp differences in double).
#include <cmath>

#include "ops/cuda/common.cuh"
#include "ops/positional.h"

namespace xfr::cuda {

namespace {

// -> y: (T, C), y[t, c] = sin(t * w_c) (c even) or cos(t * w_c) (c odd), w_c = exp(-ln(10000) * 2 floor(c/2) / C)
template <class T>
__global__ void sine_positions_table(T* __restrict__ y, int64_t seq_len, int64_t dim) {
  const double log_base = log(10000.0);  // the base of the original Transformer's frequencies
  const int64_t total = seq_len * dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / dim, c = i - t * dim;
    const double w = exp(-log_base * static_cast<double>(2 * (c / 2)) / static_cast<double>(dim));
    const double a = static_cast<double>(t) * w;
    // double -> float -> T: for f16/bf16 a double rounding, which differs from a direct one only when the
    // float lands exactly on a 16-bit tie (the CPU computes this table in f32/f64 only).
    y[i] = dev::from_float<T>(static_cast<float>(c % 2 == 0 ? sin(a) : cos(a)));
  }
}

// no inputs -> y: (T, C) in op.dtype
void sine_positions_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>&,
                           const std::vector<Tensor>& out) {
  const auto& op = static_cast<const SinePositionsOp&>(op_);
  const int64_t n = op.seq_len * op.dim;
  if (n == 0) return;
  const cudaStream_t s = stream_of(ctx);
  XF_CUDA_DISPATCH_FLOAT(out[0].dtype(), "sine_positions", T, {
    sine_positions_table<T><<<grid_1d(n), kBlock, 0, s>>>(static_cast<T*>(out[0].raw_data()), op.seq_len, op.dim);
    XF_CUDA_CHECK_LAUNCH("sine_positions_table");
  });
}

}  // namespace

void register_positional(KernelRegistry& r) { r.add("sine_positions", Device::Kind::cuda, sine_positions_kernel); }

}  // namespace xfr::cuda
