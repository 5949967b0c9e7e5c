// CPU kernels of ops/embedding.h.
#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/cpu/parallel.h"
#include "ops/embedding.h"
#include "runtime/dispatch.h"

namespace xfr::cpu {

namespace {

// Least columns of the gradient table one backward task owns: 64 f32 are four cache lines per row.
constexpr int64_t kMinTaskCols = 64;
// Backward tasks per thread: a few, so uneven id distributions still balance.
constexpr int64_t kTasksPerThread = 4;

// Throws for the first id outside [0, vocab), before anything is read through it.
//   ids: (n)
template <class I>
void check_ids(const I* ids, int64_t n, int64_t vocab, const char* op) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= (ids[i] >= 0) & (ids[i] < vocab);  // branch-free: vectorises
  if (ok) return;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      throw Error(op, str_cat("token id ", static_cast<int64_t>(ids[i]), " out of range for vocabulary ", vocab,
                              " (position ", i, ")"));
}

// table: (V, C), ids: (*) -> y: (*, C)
void embedding_kernel(const Op&, const KernelContext& ctx, const std::vector<Tensor>& in, const std::vector<Tensor>& out) {
  const int64_t V = in[0].shape()[0], C = in[0].shape()[1], n = in[1].numel();
  const size_t row_bytes = static_cast<size_t>(C) * dtype_size(in[0].dtype());
  const char* table = static_cast<const char*>(in[0].raw_data());
  char* y = static_cast<char*>(out[0].raw_data());
  XF_DISPATCH_INDEX(in[1].dtype(), "embedding", I, {
    const I* ids = in[1].data<I>();
    check_ids(ids, n, V, "embedding");
    parallel_for(ctx, row_bytes == 0 ? 0 : n, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(C, 1)), [&](int64_t s, int64_t e) {
      for (int64_t t = s; t < e; ++t)
        std::memcpy(y + static_cast<size_t>(t) * row_bytes, table + static_cast<size_t>(ids[t]) * row_bytes, row_bytes);
    });
  });
}

// dy: (*, C), ids: (*) -> dtable: (V, C). The table is tiled into (vocab block x column block) tasks;
// each zeroes its tile and adds the rows of dy whose id falls in it, in token order. Every element's sum
// therefore runs over the same tokens in the same order whatever the tiling: deterministic.
void embedding_backward_kernel(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                               const std::vector<Tensor>& out) {
  const auto& op = static_cast<const EmbeddingBackwardOp&>(op_);
  const int64_t V = op.vocab, C = out[0].shape()[1], n = in[1].numel();
  if (V * C == 0) return;
  const int64_t threads = ctx.pool ? ctx.pool->size() : 1;
  const int64_t target = threads > 1 ? threads * kTasksPerThread : 1;
  // Fewer tokens than rows: zeroing the table dominates, so tasks take whole rows (contiguous memory).
  // More tokens than rows: the scatter dominates, so split columns first, which balances tasks whatever
  // the ids' frequencies.
  int64_t col_blocks, vocab_blocks;
  if (n < V) {
    vocab_blocks = std::min(V, target);
    col_blocks = std::max<int64_t>(1, std::min(target / vocab_blocks, C / kMinTaskCols));
  } else {
    col_blocks = std::max<int64_t>(1, std::min(target, C / kMinTaskCols));
    vocab_blocks = std::max<int64_t>(1, std::min(V, target / col_blocks));
  }
  XF_DISPATCH_INDEX(in[1].dtype(), "embedding_backward", I, {
    const I* ids = in[1].data<I>();
    check_ids(ids, n, V, "embedding_backward");
    XF_DISPATCH_FLOAT(out[0].dtype(), "embedding_backward", T, {
      const T* dy = in[0].data<T>();
      T* dt = out[0].data<T>();
      parallel_for(ctx, col_blocks * vocab_blocks, 1, [&](int64_t s, int64_t e) {
        for (int64_t task = s; task < e; ++task) {
          const int64_t vb = task / col_blocks, cb = task % col_blocks;
          const int64_t v0 = V * vb / vocab_blocks, v1 = V * (vb + 1) / vocab_blocks;
          const int64_t c0 = C * cb / col_blocks, c1 = C * (cb + 1) / col_blocks, w = c1 - c0;
          for (int64_t v = v0; v < v1; ++v) std::fill(dt + v * C + c0, dt + v * C + c1, T(0));
          for (int64_t t = 0; t < n; ++t) {
            const int64_t id = static_cast<int64_t>(ids[t]);
            if (id < v0 || id >= v1) continue;
            T* row = dt + id * C + c0;
            const T* g = dy + t * C + c0;
            for (int64_t c = 0; c < w; ++c) row[c] += g[c];
          }
        }
      });
    });
  });
}

}  // namespace

void register_embedding(KernelRegistry& r) {
  r.add("embedding", Device::Kind::cpu, embedding_kernel);
  r.add("embedding_backward", Device::Kind::cpu, embedding_backward_kernel);
}

}  // namespace xfr::cpu
