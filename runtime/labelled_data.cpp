#include "runtime/labelled_data.h"

#include <vector>

#include "runtime/error.h"
#include "runtime/rng.h"

namespace xfr {

void majority_batch(const MajorityTask& task, uint64_t stream, uint64_t step, Tensor& inputs, Tensor& labels) {
  const int64_t B = inputs.dim(0), T = inputs.dim(1), K = task.num_symbols;
  XF_CHECK(T == task.seq_len && labels.numel() == B && inputs.dtype() == DType::i32 && labels.dtype() == DType::i32,
           "data", "majority batch: inputs ", inputs.desc(), " and labels ", labels.desc(), " do not match seq_len ",
           task.seq_len);
  XF_CHECK(K >= 2, "data", "majority needs data.num_symbols >= 2, got ", K);
  int32_t* x = inputs.data<int32_t>();
  int32_t* y = labels.data<int32_t>();
  // The stream's key mixes the seed with the stream id (golden-ratio constant: well-spread high bits),
  // so train and validation never share counters.
  const uint64_t key = task.seed ^ (0x9E3779B97F4A7C15ull * (stream + 1));
  std::vector<int64_t> counts(static_cast<size_t>(K));
  for (int64_t b = 0; b < B; ++b) {
    std::fill(counts.begin(), counts.end(), 0);
    const uint64_t base = (step * static_cast<uint64_t>(B) + static_cast<uint64_t>(b)) * static_cast<uint64_t>(T);
    for (int64_t t = 0; t < T; ++t) {
      // Multiply-shift maps a uniform 32-bit value onto [0, K) (bias below 2^-32 * K: negligible).
      const auto s = static_cast<int32_t>((static_cast<uint64_t>(philox_u32(key, base + static_cast<uint64_t>(t))) *
                                           static_cast<uint64_t>(K)) >> 32);
      x[b * T + t] = s;
      ++counts[static_cast<size_t>(s)];
    }
    int32_t best = 0;
    for (int64_t k = 1; k < K; ++k)
      if (counts[static_cast<size_t>(k)] > counts[static_cast<size_t>(best)]) best = static_cast<int32_t>(k);
    y[b] = best;
  }
}

}  // namespace xfr
