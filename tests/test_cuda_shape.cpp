// CUDA shape ops, embedding, sine positions, rotary and the KV-cache write against the CPU oracle.
// Shape ops in every element size (u8, f16/bf16, f32/i32, f64/i64): transpose of every axis pair and every
// permutation of a rank-4 tensor (tiled and run-gather paths), slices at odd offsets, pad_slice, concat and
// split (more pieces than one launch takes), also with every input and output one element off alignment.
// Embedding forward and its deterministic backward with repeated ids (two runs bit-identical), out-of-range
// ids. Without XF_TEST_DEVICE=cuda and a GPU these report as skipped.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "ops/embedding.h"
#include "ops/kv_cache.h"
#include "ops/positional.h"
#include "ops/rotary.h"
#include "ops/shape_ops.h"
#include "tests/cuda_testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

// Every element size the byte-copy kernels dispatch on.
const std::vector<DType>& copy_dtypes() {
  static const std::vector<DType> d{DType::f32, DType::bf16, DType::f16, DType::f64, DType::i32, DType::i64, DType::u8};
  return d;
}

// Random f32 values that survive conversion to `dt` meaningfully (u8 wants [0, 256), integers big values).
Tensor input_for(const Shape& shape, uint64_t seed, DType dt) {
  if (dt == DType::u8) return random_tensor(shape, seed, 0, 250);
  if (is_integer(dt)) return random_tensor(shape, seed, -1e6, 1e6);
  return random_tensor(shape, seed, -1, 1);
}

Tensor ids_tensor(const std::vector<int64_t>& v, const Shape& shape, DType dt) {
  if (dt == DType::i64) return Tensor::from_vector(v, shape);
  std::vector<int32_t> w(v.begin(), v.end());
  return Tensor::from_vector(w, shape);
}

std::vector<int64_t> random_ids(size_t n, int64_t vocab, uint64_t seed) {
  std::vector<int64_t> v(n);
  const auto r = random_doubles(n, seed, 0, static_cast<double>(vocab));
  for (size_t i = 0; i < n; ++i) v[i] = std::min<int64_t>(vocab - 1, static_cast<int64_t>(r[i]));
  return v;
}

}  // namespace

// ---- transpose, permute --------------------------------------------------------------------------------

XF_CUDA_TEST_CASE("cuda: transpose of every axis pair of a rank-4 tensor, every element size") {
  const Shape shape{3, 5, 33, 65};
  for (DType dt : copy_dtypes())
    for (int64_t a = 0; a < 4; ++a)
      for (int64_t b = a + 1; b < 4; ++b)
        check_cuda_op(TransposeOp(a, b), {input_for(shape, 1, dt)}, dt, str_cat("transpose ", a, ",", b));
  check_cuda_op(TransposeOp(-1, -2), {input_for(shape, 2, DType::f32)}, DType::f32, "transpose -1,-2");
}

XF_CUDA_TEST_CASE("cuda: permute by every permutation of a rank-4 tensor, every element size") {
  std::vector<int64_t> order{0, 1, 2, 3};
  do {
    for (DType dt : copy_dtypes()) {
      check_cuda_op(PermuteOp(order), {input_for({3, 33, 5, 65}, 3, dt)}, dt, "permute " + shape_str(order));
      // Size-1 axes drop out and neighbours merge before the copy.
      check_cuda_op(PermuteOp(order), {input_for({1, 31, 1, 33}, 4, dt)}, dt, "permute with unit axes " + shape_str(order));
    }
  } while (std::next_permutation(order.begin(), order.end()));
}

XF_CUDA_TEST_CASE("cuda: permute off alignment and with many partial tiles") {
  for (DType dt : {DType::f32, DType::bf16, DType::u8, DType::i64}) {
    check_cuda_op_both(PermuteOp({0, 2, 1}), {input_for({2, 257, 1000}, 5, dt)}, dt, "(B, S, C) -> (B, C, S)");
    check_cuda_op_both(PermuteOp({0, 2, 1, 3}), {input_for({2, 33, 7, 64}, 6, dt)}, dt, "(B, T, H, D) -> (B, H, T, D)");
    check_cuda_op_both(PermuteOp({3, 1, 2, 0}), {input_for({31, 3, 5, 33}, 7, dt)}, dt, "permute 3,1,2,0");
  }
}

// ---- slice, pad_slice, concat, split ------------------------------------------------------------------

XF_CUDA_TEST_CASE("cuda: slice at odd offsets on every axis, every element size") {
  for (DType dt : copy_dtypes()) {
    const Tensor x = input_for({5, 33, 31}, 8, dt);
    for (int64_t axis = 0; axis < 3; ++axis)
      for (auto [s, e] : {std::pair<int64_t, int64_t>{1, 4}, {3, -1}, {0, 5}, {2, 2}, {-3, -1}}) {
        const std::string what = str_cat("slice axis ", axis, " [", s, ", ", e, ")");
        check_cuda_op_both(SliceOp(axis, s, e), {x}, dt, what);
      }
    // Rows that are multiples of 16 bytes: the 16-byte unit.
    check_cuda_op(SliceOp(1, 1, 4), {input_for({4, 33, 32}, 9, dt)}, dt, "slice of 16-byte rows");
  }
}

XF_CUDA_TEST_CASE("cuda: pad_slice (slice's adjoint) at odd offsets, every element size") {
  for (DType dt : copy_dtypes()) {
    const Tensor g = input_for({5, 3, 31}, 10, dt);
    check_cuda_op_both(PadSliceOp(1, 2, 9), {g}, dt, "pad_slice axis 1");
    check_cuda_op_both(PadSliceOp(2, 1, 40), {g}, dt, "pad_slice axis 2");
    check_cuda_op_both(PadSliceOp(0, 0, 5), {g}, dt, "pad_slice without padding");
    check_cuda_op_both(PadSliceOp(-1, 9, 40), {g}, dt, "pad_slice at the end");
  }
}

XF_CUDA_TEST_CASE("cuda: concat and split on every axis, and more pieces than one launch takes") {
  for (DType dt : copy_dtypes()) {
    for (int64_t axis = 0; axis < 3; ++axis) {
      Shape s1{5, 3, 31}, s2{5, 3, 31}, s3{5, 3, 31};
      s1[static_cast<size_t>(axis)] = 1;
      s2[static_cast<size_t>(axis)] = 4;
      s3[static_cast<size_t>(axis)] = 7;
      check_cuda_op_both(ConcatOp(axis), {input_for(s1, 11, dt), input_for(s2, 12, dt), input_for(s3, 13, dt)}, dt,
                 str_cat("concat axis ", axis));
      Shape sx{5, 12, 31};
      sx[static_cast<size_t>(axis)] = 12;
      check_cuda_op_both(SplitOp(axis, {1, 5, 0, 6}), {input_for(sx, 14, dt)}, dt, str_cat("split axis ", axis));
    }
    // The packed q/k/v projection's single-row copies: weights (33, 40) stacked on axis 0, biases (33), and back.
    check_cuda_op_both(ConcatOp(0), {input_for({33, 40}, 16, dt), input_for({33, 40}, 17, dt), input_for({33, 40}, 18, dt)},
                       dt, "concat of weights on axis 0");
    check_cuda_op_both(ConcatOp(0), {input_for({33}, 19, dt), input_for({33}, 20, dt), input_for({33}, 21, dt)}, dt,
                       "concat of biases");
    check_cuda_op_both(SplitOp(0, {33, 33, 33}), {input_for({99, 40}, 22, dt)}, dt, "split of a stacked gradient");
    // Parts 64-byte aligned: views of the input, no kernel (SplitOp::view_of).
    check_cuda_op_both(SplitOp(0, {32, 64, 32}), {input_for({128, 64}, 23, dt)}, dt, "split into aligned views");
    std::vector<Tensor> many;
    for (int i = 0; i < 20; ++i) many.push_back(input_for({3, 1 + i % 3, 5}, 100 + static_cast<uint64_t>(i), dt));
    check_cuda_op_both(ConcatOp(1), many, dt, "concat of 20 inputs");
    check_cuda_op_both(SplitOp(-1, std::vector<int64_t>(19, 1)), {input_for({3, 2, 19}, 15, dt)}, dt, "split into 19");
  }
}

// ---- embedding ------------------------------------------------------------------------------------------

XF_CUDA_TEST_CASE("cuda: embedding gathers rows (vector and scalar paths, i32 and i64 ids)") {
  const int64_t V = 37;
  for (DType dt : cuda_float_dtypes())
    for (DType it : {DType::i32, DType::i64})
      for (int64_t C : {1, 31, 64, 257}) {
        const Tensor table = random_tensor({V, C}, 16, -1, 1);
        const Tensor ids = ids_tensor(random_ids(33, V, 17), {3, 11}, it);
        check_cuda_op_both(EmbeddingOp(), {table, ids}, dt, str_cat("embedding C=", C, " ids ", dtype_name(it)));
      }
}

XF_CUDA_TEST_CASE("cuda: embedding backward sums repeated ids deterministically") {
  for (DType dt : cuda_float_dtypes())
    for (DType it : {DType::i32, DType::i64})
      for (int64_t C : {1, 31, 64, 257}) {
        // Few distinct ids among many tokens (heavy repeats; most of the 37 rows unused), and more rows
        // than tokens.
        for (auto [V, hi, n] : {std::array<int64_t, 3>{37, 7, 1000}, std::array<int64_t, 3>{1000, 1000, 33}}) {
          const std::vector<int64_t> idv = random_ids(static_cast<size_t>(n), hi, 18);
          const Tensor ids = ids_tensor(idv, {n}, it);
          const Tensor dy = random_tensor({n, C}, 19, -1, 1);
          const EmbeddingBackwardOp op(V);
          const std::string what = str_cat("embedding_backward V=", V, " n=", n, " C=", C, " ids ", dtype_name(it));
          check_cuda_op_both(op, {dy, ids}, dt, what);
          const auto a = run_op_cuda(op, {dy.to(dt), ids}), b = run_op_cuda(op, {dy.to(dt), ids});
          CHECK_MESSAGE(a[0].to_doubles() == b[0].to_doubles(), what << ": two runs differ");
        }
      }
}

XF_CUDA_TEST_CASE("cuda: embedding with ids out of range: NaN rows forward, ignored backward") {
  const int64_t V = 5, C = 8;
  for (DType dt : cuda_float_dtypes()) {
    const Tensor table = random_tensor({V, C}, 20, -1, 1).to(dt);
    const auto y = run_op_cuda(EmbeddingOp(), {table, ids_tensor({0, -1, 4, 5}, {4}, DType::i32)})[0].to_doubles();
    const auto t = table.to_doubles();
    for (int64_t c = 0; c < C; ++c) {
      CHECK(y[static_cast<size_t>(c)] == t[static_cast<size_t>(c)]);
      CHECK(std::isnan(y[static_cast<size_t>(C + c)]));
      CHECK(y[static_cast<size_t>(2 * C + c)] == t[static_cast<size_t>(4 * C + c)]);
      CHECK(std::isnan(y[static_cast<size_t>(3 * C + c)]));
    }
    // The backward equals the CPU's with the invalid tokens' gradients dropped.
    const Tensor dy = random_tensor({4, C}, 21, -1, 1);
    const auto got = run_op_cuda(EmbeddingBackwardOp(V), {dy.to(dt), ids_tensor({0, -1, 4, 5}, {4}, DType::i64)});
    std::vector<double> dyv = dy.to(dt).to_doubles();
    std::fill(dyv.begin() + C, dyv.begin() + 2 * C, 0.0);
    std::fill(dyv.begin() + 3 * C, dyv.end(), 0.0);
    const auto ref = run_op(EmbeddingBackwardOp(V), {Tensor::from_vector(dyv, {4, C}).to(DType::f32),
                                                     ids_tensor({0, 0, 4, 0}, {4}, DType::i64)});
    const Tolerance tol = cuda_tolerance(dt);
    check_close(got[0].to_doubles(), ref[0].to_doubles(), tol.atol, tol.rtol, "embedding_backward with invalid ids");
  }
}

// ---- sine positions, rotary, kv cache -----------------------------------------------------------------

XF_CUDA_TEST_CASE("cuda: sine_positions matches the CPU table") {
  for (DType dt : cuda_float_dtypes())
    for (auto [T, C] : {std::pair<int64_t, int64_t>{33, 31}, {257, 64}, {1000, 2}, {1, 1}}) {
      // The CPU computes the table in f32 or f64 only: compare the GPU's `dt` table with the CPU's f32 one.
      const auto ref = run_op(SinePositionsOp(T, C, DType::f32), {}, &test_pool());
      const auto got = run_op_cuda(SinePositionsOp(T, C, dt), {});
      CHECK(got[0].dtype() == dt);
      const Tolerance tol = cuda_tolerance(dt);
      check_close(got[0].to_doubles(), ref[0].to_doubles(), tol.atol, tol.rtol,
                  str_cat("sine_positions T=", T, " C=", C, " [", dtype_name(dt), "]"));
    }
}

XF_CUDA_TEST_CASE("cuda: rotary forward and inverse (its backward), offsets, vector and scalar paths") {
  for (DType dt : cuda_float_dtypes())
    for (const Shape& shape : {Shape{2, 3, 33, 64}, Shape{5, 31, 6}, Shape{7, 2}, Shape{1, 1, 1000, 16}})
      for (int64_t offset : {0, 100})
        for (bool inverse : {false, true})
          check_cuda_op_both(RotaryOp(offset, inverse), {random_tensor(shape, 22, -1, 1)}, dt,
                     str_cat("rotary ", shape_str(shape), " offset=", offset, " inverse=", inverse));
}

XF_CUDA_TEST_CASE("cuda: rotary on (B, S, H, hd) heads (seq_axis -3, the bshd attention layout)") {
  for (DType dt : cuda_float_dtypes())
    for (const Shape& shape : {Shape{2, 33, 3, 64}, Shape{1, 17, 5, 6}, Shape{1, 1000, 2, 16}})
      for (bool inverse : {false, true})
        check_cuda_op_both(RotaryOp(7, inverse, -3), {random_tensor(shape, 27, -1, 1)}, dt,
                   str_cat("rotary bshd ", shape_str(shape), " inverse=", inverse));
}

XF_CUDA_TEST_CASE("cuda: kv_cache_write replaces one row per (batch, head) at a device-side position") {
  for (DType dt : copy_dtypes())
    for (int64_t D : {31, 64})
      for (int32_t pos : {0, 5, 16}) {
        const Tensor cache = input_for({2, 3, 17, D}, 23, dt), update = input_for({2, 3, 1, D}, 24, dt);
        check_cuda_op(KvCacheWriteOp(), {cache, update, Tensor::from_vector(std::vector<int32_t>{pos}, {1})}, dt,
                      str_cat("kv_cache_write D=", D, " pos=", pos));
      }
  // A position outside the cache writes nothing (the CPU kernel throws; the GPU cannot stop the stream).
  const Tensor cache = random_tensor({2, 3, 17, 8}, 25, -1, 1), update = random_tensor({2, 3, 1, 8}, 26, -1, 1);
  for (int32_t pos : {-1, 17}) {
    const auto got = run_op_cuda(KvCacheWriteOp(), {cache, update, Tensor::from_vector(std::vector<int32_t>{pos}, {1})});
    CHECK(got[0].to_doubles() == cache.to_doubles());
  }
}
