// CUDA kernels of the row-wise ops against the CPU kernels (check_cuda_op's contract: the same rounded inputs,
// the CPU in f32, NaN-poisoned GPU outputs): layernorm, rmsnorm, softmax, cross-entropy, reduce and their
// backward ops, in f32, bf16 and f16, on awkward sizes that reach every kernel path (a warp per row, a block
// per row, the streaming kernels for rows too long for registers, 16-byte vector and scalar access, the
// two-stage column and row reductions). Also: the f32 statistics of 16-bit inputs, determinism of the
// reductions, misaligned pointers through the plain launchers. Without XF_TEST_DEVICE=cuda and a GPU these
// report as skipped.
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "ops/cross_entropy.h"
#include "ops/norm.h"
#include "ops/reduce.h"
#include "ops/softmax.h"
#include "tests/cuda_testing.h"

#ifdef XF_WITH_CUDA
#include "ops/cuda/norm_launch.h"
#include "runtime/cuda/context.h"
#endif

using namespace xfr;
using namespace xfr::testing;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

// check_cuda_op with a dtype per floating input: statistics inputs (mean, rstd, lse, dloss, dlse) stay f32 on
// the GPU when the data is 16-bit, as the ops' mixed-precision declarations require. Integer inputs pass
// unchanged. The CPU runs in f32 on the same (rounded) values.
void check_cuda_mixed(const Op& op, const std::vector<Tensor>& inputs_f32, const std::vector<DType>& dtypes,
                      const std::string& what, double tol_scale = 1.0) {
  REQUIRE(inputs_f32.size() == dtypes.size());
  const RoundedInputs in = rounded_inputs(inputs_f32, dtypes);
  const auto ref = run_op(op, in.cpu, &test_pool());
  const auto got = run_op_cuda(op, in.gpu);
  REQUIRE(ref.size() == got.size());
  for (size_t k = 0; k < ref.size(); ++k) {
    const std::string name = what + " [" + dtype_name(dtypes[0]) + "] output " + std::to_string(k);
    CHECK_MESSAGE(got[k].shape() == ref[k].shape(), name << ": shape");
    const DType od = got[k].dtype();
    const Tolerance tol = is_floating(od) ? cuda_tolerance(od) : tolerance(od);
    check_close(got[k].to_doubles(), ref[k].to_doubles(), tol.atol * tol_scale, tol.rtol * tol_scale, name);
  }
}

// The dtype the GPU keeps statistics in for data of dtype dt.
DType stat_dtype(DType dt) { return norm_stat_dtype(dt); }

// x rounded to dt and back: the values both backends see.
Tensor rounded(const Tensor& x, DType dt) { return as_dtype(as_dtype(x, dt), DType::f32); }

// (rows, C) pairs that reach every norm path: a warp per row (up to 256 packs of 16 bytes), a block per row
// (4096 with vectors, 2049 with scalars), scalar access (C not a multiple of the vector width: 31, 33, 2049,
// 4099) and the streaming kernels (rows too long for registers: 4099 scalars, 40000 vectors).
std::vector<std::pair<int64_t, int64_t>> norm_sizes() {
  std::vector<std::pair<int64_t, int64_t>> s;
  for (int64_t C : {31, 33, 64, 768, 1000, 4099})
    for (int64_t rows : {1, 31, 257}) s.push_back({rows, C});
  for (int64_t C : {64, 768, 1000}) s.push_back({1000, C});
  s.push_back({257, 384});  // 16-lane row groups of 3 packs (the encoder's 384-wide 16-bit rows)
  for (int64_t C : {2049, 4096})
    for (int64_t rows : {1, 31}) s.push_back({rows, C});
  s.push_back({3, 40000});
  return s;
}

std::string size_name(int64_t rows, int64_t C) { return "(" + std::to_string(rows) + ", " + std::to_string(C) + ")"; }

}  // namespace

// ---- layernorm / rmsnorm ------------------------------------------------------------------------------------------

XF_CUDA_TEST_CASE("cuda: layernorm forward matches the CPU (every path, affine combinations, f32 statistics)") {
  const double eps = 1e-5;
  uint64_t seed = 1;
  for (DType dt : cuda_float_dtypes())
    for (auto [rows, C] : norm_sizes())
      for (int affine = 0; affine < 4; ++affine) {
        const bool g = affine & 1, b = affine & 2;
        if (affine == 1 || affine == 2) {  // the single-parameter variants on a few sizes only
          if (C != 33 && C != 768) continue;
        }
        std::vector<Tensor> in{random_tensor({rows, C}, ++seed, -2.0, 3.0)};  // a mean away from 0
        if (g) in.push_back(random_tensor({C}, ++seed, 0.5, 1.5));
        if (b) in.push_back(random_tensor({C}, ++seed, -1.0, 1.0));
        check_cuda_op(LayerNormOp(eps, g, b), in, dt,
                      "layernorm " + size_name(rows, C) + " gamma=" + std::to_string(g) + " beta=" + std::to_string(b));
      }
}

// The fused residual add (ops/norm.h has_residual / write_sum) on every row path: register rows, block rows
// and the streaming kernel (norm_sizes), with and without the sum written out. The GPU rounds x + residual to
// the dtype before the statistics, as the unfused add would store it; the reference is the CPU's plain
// layernorm of that rounded sum, so the f32 statistics compare at f32 tolerance and the sum exactly.
// A broadcast residual (a suffix of x's shape, row r adding row r % R) takes the same kernels: R = rows, R = 1 (a (C)
// residual) and, where rows allow, R = 40 with x seen as (rows / 40, 40, C) (GPT-2's position table, (T, C) under
// (B, T, C)), each with the sum written out.
XF_CUDA_TEST_CASE("cuda: layernorm with a fused residual add matches the CPU (sum written or not, broadcast rows)") {
  uint64_t seed = 100;
  for (DType dt : cuda_float_dtypes())
    for (auto [rows, C] : norm_sizes())
      for (int64_t R : {rows, int64_t(1), int64_t(40)}) {
        if (rows % R != 0 || (R != rows && (rows == 1 || rows == R))) continue;  // each R once
        for (bool write_sum : {false, true}) {
          if (R != rows && !write_sum) continue;  // the broadcast rows with the sum (the pre-norm first block's norm)
          const std::string what = "residual layernorm " + size_name(rows, C) + " residual rows " + std::to_string(R) +
                                   " write_sum=" + std::to_string(write_sum) + " [" + dtype_name(dt) + "]";
          const Shape xs = R == rows || R == 1 ? Shape{rows, C} : Shape{rows / R, R, C};
          const Shape rs = R == rows ? Shape{rows, C} : R == 1 ? Shape{C} : Shape{R, C};
          const Tensor x = random_tensor(xs, ++seed, -2.0, 3.0).to(dt), r = random_tensor(rs, ++seed, -1.0, 1.0).to(dt);
          const Tensor gm = random_tensor({C}, ++seed, 0.5, 1.5).to(dt),
                       bt = random_tensor({C}, ++seed, -1.0, 1.0).to(dt);
          const auto xv = x.to_doubles(), rv = r.to_doubles();
          std::vector<float> sv(xv.size());
          for (size_t i = 0; i < sv.size(); ++i)
            sv[i] = static_cast<float>(xv[i]) + static_cast<float>(rv[(i / C) % R * C + i % C]);
          const Tensor s = Tensor::from_vector(sv, xs).to(dt).to(DType::f32);  // the sum as dt stores it
          const auto ref =
              run_op(LayerNormOp(1e-5, true, true), {s, gm.to(DType::f32), bt.to(DType::f32)}, &test_pool());
          const auto got = run_op_cuda(LayerNormOp(1e-5, true, true, true, write_sum), {x, r, gm, bt});
          REQUIRE(got.size() == (write_sum ? 4u : 3u));
          const Tolerance tol = cuda_tolerance(dt);
          check_close(got[0].to_doubles(), ref[0].to_doubles(), tol.atol, tol.rtol, what + " y");
          check_close(got[1].to_doubles(), ref[1].to_doubles(), 1e-5, 1e-4, what + " mean");
          check_close(got[2].to_doubles(), ref[2].to_doubles(), 1e-5, 1e-4, what + " rstd");
          if (write_sum) CHECK_MESSAGE(got[3].to_doubles() == s.to_doubles(), what << " sum");
        }
      }
}

XF_CUDA_TEST_CASE("cuda: layernorm and rmsnorm save f32 statistics for 16-bit x") {
  for (DType dt : {DType::bf16, DType::f16}) {
    const auto ln = run_op_cuda(LayerNormOp(1e-5, true, true),
                                {random_tensor({4, 64}, 1).to(dt), random_tensor({64}, 2).to(dt),
                                 random_tensor({64}, 3).to(dt)});
    CHECK(ln[0].dtype() == dt);
    CHECK(ln[1].dtype() == DType::f32);
    CHECK(ln[2].dtype() == DType::f32);
    const auto rn = run_op_cuda(RMSNormOp(1e-6, false), {random_tensor({4, 64}, 1).to(dt)});
    CHECK(rn[0].dtype() == dt);
    CHECK(rn[1].dtype() == DType::f32);
  }
}

XF_CUDA_TEST_CASE("cuda: layernorm backward matches the CPU (dx, dgamma, dbeta, dx sum column reductions)") {
  const double eps = 1e-5;
  uint64_t seed = 100;
  struct Flags {
    bool has_gamma, want_dgamma, want_dbeta, want_dx_sum;
  };
  const Flags flags[] = {{true, true, true, false},  {true, false, false, false}, {true, true, false, false},
                         {false, false, true, false}, {false, false, false, false}, {false, false, false, true}};
  for (DType dt : cuda_float_dtypes())
    for (auto [rows, C] : norm_sizes())
      for (const Flags& f : flags) {
        if (!(f.has_gamma && f.want_dgamma && f.want_dbeta) && C != 33 && C != 768 && C != 4099) continue;
        const Tensor x = random_tensor({rows, C}, ++seed, -2.0, 3.0);
        const Tensor gamma = random_tensor({C}, ++seed, 0.5, 1.5);
        const Tensor dy = random_tensor({rows, C}, ++seed, -1.0, 1.0);
        // The statistics as the forward saves them, from the x the GPU sees.
        const auto fwd = run_op(LayerNormOp(eps, false, false), {rounded(x, dt)});
        std::vector<Tensor> in{x, fwd[1], fwd[2]};
        std::vector<DType> dts{dt, stat_dtype(dt), stat_dtype(dt)};
        if (f.has_gamma) {
          in.push_back(gamma);
          dts.push_back(dt);
        }
        in.push_back(dy);
        dts.push_back(dt);
        check_cuda_mixed(LayerNormBackwardOp(f.has_gamma, f.want_dgamma, f.want_dbeta, false, f.want_dx_sum), in, dts,
                         "layernorm_backward " + size_name(rows, C) + " gamma=" + std::to_string(f.has_gamma) +
                             " dgamma=" + std::to_string(f.want_dgamma) + " dbeta=" + std::to_string(f.want_dbeta) +
                             " dx_sum=" + std::to_string(f.want_dx_sum));
        if (f.has_gamma && f.want_dgamma && f.want_dbeta) {  // a residual stream's gradient added in the same pass
          in.push_back(random_tensor({rows, C}, ++seed, -1.0, 1.0));
          dts.push_back(dt);
          check_cuda_mixed(LayerNormBackwardOp(true, true, true, true), in, dts,
                           "layernorm_backward with dadd " + size_name(rows, C));
          // GPT-2's call: and the sum of dx over the rows (a projection's bias gradient), in the same launches.
          check_cuda_mixed(LayerNormBackwardOp(true, true, true, true, true), in, dts,
                           "layernorm_backward with dadd and dx sum " + size_name(rows, C));
        }
      }
}

XF_CUDA_TEST_CASE("cuda: rmsnorm forward and backward match the CPU") {
  const double eps = 1e-6;
  uint64_t seed = 200;
  for (DType dt : cuda_float_dtypes())
    for (auto [rows, C] : norm_sizes())
      for (bool g : {true, false}) {
        const Tensor x = random_tensor({rows, C}, ++seed, -2.0, 3.0);
        const Tensor gamma = random_tensor({C}, ++seed, 0.5, 1.5);
        const Tensor dy = random_tensor({rows, C}, ++seed, -1.0, 1.0);
        const std::string what = size_name(rows, C) + " gamma=" + std::to_string(g);
        std::vector<Tensor> fin{x};
        if (g) fin.push_back(gamma);
        check_cuda_op(RMSNormOp(eps, g), fin, dt, "rmsnorm " + what);

        const auto fwd = run_op(RMSNormOp(eps, false), {rounded(x, dt)});
        std::vector<Tensor> in{x, fwd[1]};
        std::vector<DType> dts{dt, stat_dtype(dt)};
        if (g) {
          in.push_back(gamma);
          dts.push_back(dt);
        }
        in.push_back(dy);
        dts.push_back(dt);
        check_cuda_mixed(RMSNormBackwardOp(g, g), in, dts, "rmsnorm_backward " + what);
      }
}

XF_CUDA_TEST_CASE("cuda: norm parameter gradients are deterministic (the same bits on every run)") {
  // 4096 rows: many row groups, each writing a partial row, then the two-stage column reduction.
  for (DType dt : cuda_float_dtypes()) {
    const Tensor x = random_tensor({4096, 768}, 7).to(dt);
    const Tensor dy = random_tensor({4096, 768}, 8).to(dt);
    const Tensor gamma = random_tensor({768}, 9, 0.5, 1.5).to(dt);
    const auto fwd = run_op_cuda(LayerNormOp(1e-5, true, true), {x, gamma, random_tensor({768}, 10).to(dt)});
    const std::vector<Tensor> in{x, fwd[1].to_host(), fwd[2].to_host(), gamma, dy};
    const auto a = run_op_cuda(LayerNormBackwardOp(true, true, true, false, true), in);
    const auto b = run_op_cuda(LayerNormBackwardOp(true, true, true, false, true), in);
    REQUIRE(a.size() == 4);
    for (size_t k = 0; k < a.size(); ++k) CHECK(a[k].to_doubles() == b[k].to_doubles());
  }
}

#ifdef XF_WITH_CUDA
// The backward's column sums of its partial rows finish in the last blocks of one launch (ops/cuda/rowwise.cuh,
// ColumnFinish), counting them in the context's launch counters, which must be left at zero: a later launch that found
// them counted would add partial rows not yet written. Three launches on GPT-2's shape (the full resident grid), each
// with new dy and dadd, each checked against the CPU, then the counters read back. (Session 28 also had the grouped
// kernel sum its own partial rows after a wait for all its blocks: correct, but 48-50 against 41 us a call, reverted.)
XF_CUDA_TEST_CASE("cuda: the layernorm backward's own column sums leave the launch counters zeroed") {
  DeviceContext* ctx = cuda_test_ctx();
  auto& cc = *static_cast<cuda::CudaContext*>(ctx);
  const int64_t rows = 16384, C = 768;
  const DType dt = DType::bf16;
  const Tensor x = random_tensor({rows, C}, 21, -2.0, 3.0).to(dt), gamma = random_tensor({C}, 22, 0.5, 1.5).to(dt);
  const auto ref_fwd = run_op(LayerNormOp(1e-5, true, false), {x.to(DType::f32), gamma.to(DType::f32)}, &test_pool());
  const Tensor xd = x.to_device(ctx), gd = gamma.to_device(ctx);
  const Tensor mean = ref_fwd[1].to_device(ctx), rstd = ref_fwd[2].to_device(ctx);
  for (uint64_t seed : {23, 24, 25}) {
    const Tensor dy = random_tensor({rows, C}, seed).to(dt), dadd = random_tensor({rows, C}, seed + 10).to(dt);
    const Tensor dyd = dy.to_device(ctx), daddd = dadd.to_device(ctx);
    Tensor dx = Tensor::empty({rows, C}, dt, ctx), dgamma = Tensor::empty({C}, dt, ctx);
    Tensor dbeta = Tensor::empty({C}, dt, ctx), dsum = Tensor::empty({C}, dt, ctx);
    cuda::launch_layernorm_backward(dt, xd.raw_data(), mean.data<float>(), rstd.data<float>(), gd.raw_data(),
                                    dyd.raw_data(), daddd.raw_data(), dx.raw_data(), dgamma.raw_data(),
                                    dbeta.raw_data(), dsum.raw_data(), rows, C, cc.workspace(), cc.workspace_bytes(),
                                    cc.stream(), cc.launch_counters());
    const auto ref =
        run_op(LayerNormBackwardOp(true, true, true, true, true),
               {x.to(DType::f32), ref_fwd[1], ref_fwd[2], gamma.to(DType::f32), dy.to(DType::f32), dadd.to(DType::f32)},
               &test_pool());
    const Tolerance tol = cuda_tolerance(dt);
    const std::string what = "layernorm backward (16384, 768) bf16, dy seed " + std::to_string(seed);
    check_close(dx.to_doubles(), ref[0].to_doubles(), tol.atol, tol.rtol, what + " dx");
    // Sums over 16384 rows: bf16 rounding of the result plus fp32 summation (the same tolerance as the lab's).
    check_close(dgamma.to_doubles(), ref[1].to_doubles(), 2e-2, 2e-2, what + " dgamma");
    check_close(dbeta.to_doubles(), ref[2].to_doubles(), 2e-2, 2e-2, what + " dbeta");
    check_close(dsum.to_doubles(), ref[3].to_doubles(), 2e-2, 2e-2, what + " dx sum");
    std::vector<unsigned> words(static_cast<size_t>(cc.launch_counters().n), 7u);
    ctx->copy(words.data(), cc.launch_counters().words, words.size() * sizeof(unsigned), CopyKind::device_to_host);
    ctx->synchronize();
    CHECK_MESSAGE(std::all_of(words.begin(), words.end(), [](unsigned w) { return w == 0u; }), what);
  }
}
#endif

// ---- softmax -----------------------------------------------------------------------------------------------------

namespace {

// An additive mask of `shape` with finite biases in [-2, 0] and about one entry in `inf_every` at -inf.
Tensor random_mask(const Shape& shape, uint64_t seed, int inf_every) {
  auto v = random_doubles(static_cast<size_t>(numel_of(shape)), seed, -2.0, 0.0);
  std::mt19937_64 rng(seed ^ 0x5eed);
  if (inf_every > 0)
    for (auto& m : v)
      if (rng() % static_cast<uint64_t>(inf_every) == 0) m = -kInf;
  return Tensor::from_vector(v, shape).to(DType::f32);
}

}  // namespace

XF_CUDA_TEST_CASE("cuda: softmax forward matches the CPU (sizes, scale, causal, broadcast masks)") {
  uint64_t seed = 300;
  for (DType dt : cuda_float_dtypes()) {
    // Row lengths through every path: warp, block (2049 scalar, 4096 vector), scalar (31, 33, 2049, 4099),
    // streaming (4099 scalar, 20000 vector).
    for (int64_t Sk : {31, 33, 64, 768, 1000, 2049, 4096, 4099, 20000}) {
      const int64_t Sq = Sk >= 2049 ? 3 : 31;
      const Shape xs{2, 3, Sq, Sk};
      const Tensor x = random_tensor(xs, ++seed, -4.0, 4.0);
      const std::string what = "softmax Sk=" + std::to_string(Sk);
      check_cuda_op(SoftmaxOp(1.0, false, false), {x}, dt, what);
      check_cuda_op(SoftmaxOp(0.125, true, false), {x}, dt, what + " causal");
      // Masks: per key (Sk), per (Sq, Sk), per batch (B, 1, Sq, Sk), per (B, 1, 1, Sk), per row (Sq, 1).
      for (const Shape& ms : {Shape{Sk}, Shape{Sq, Sk}, Shape{2, 1, Sq, Sk}, Shape{2, 1, 1, Sk}, Shape{Sq, 1}}) {
        const Tensor m = random_mask(ms, ++seed, ms.back() == 1 ? 0 : 7);
        check_cuda_op(SoftmaxOp(0.5, false, true), {x, m}, dt, what + " mask " + shape_str(ms));
        check_cuda_op(SoftmaxOp(0.5, true, true), {x, m}, dt, what + " causal mask " + shape_str(ms));
      }
    }
    // Causal with Sq != Sk (top-left aligned) and a rank-2 input.
    for (auto [Sq, Sk] : {std::pair<int64_t, int64_t>{7, 33}, {33, 7}, {1, 1}, {257, 257}}) {
      const Tensor x = random_tensor({Sq, Sk}, ++seed, -4.0, 4.0);
      check_cuda_op(SoftmaxOp(1.0, true, false), {x}, dt,
                    "softmax causal (" + std::to_string(Sq) + ", " + std::to_string(Sk) + ")");
    }
    // A rank-1 input (one row).
    check_cuda_op(SoftmaxOp(2.0, false, false), {random_tensor({1000}, ++seed, -4.0, 4.0)}, dt, "softmax rank 1");
  }
}

XF_CUDA_TEST_CASE("cuda: softmax of fully masked rows is zeros, not NaN") {
  for (DType dt : cuda_float_dtypes())
    for (int64_t Sk : {33, 768, 20000}) {
      const int64_t Sq = 5;
      auto mv = random_doubles(static_cast<size_t>(Sq * Sk), 1, -1.0, 0.0);
      for (int64_t j = 0; j < Sk; ++j) {
        mv[static_cast<size_t>(1 * Sk + j)] = -kInf;  // row 1 fully masked
        mv[static_cast<size_t>(3 * Sk + j)] = -kInf;  // row 3 fully masked
      }
      const Tensor m = Tensor::from_vector(mv, {Sq, Sk}).to(DType::f32);
      const Tensor x = random_tensor({2, Sq, Sk}, 2, -3.0, 3.0);
      check_cuda_op(SoftmaxOp(1.0, false, true), {x, m}, dt, "softmax fully masked rows Sk=" + std::to_string(Sk));
      const auto y = run_op_cuda(SoftmaxOp(1.0, false, true), {x.to(dt), m.to(dt)})[0].to_doubles();
      for (int64_t j = 0; j < Sk; ++j) CHECK(y[static_cast<size_t>(1 * Sk + j)] == 0.0);
    }
}

XF_CUDA_TEST_CASE("cuda: softmax backward matches the CPU (dx, dz, zero where y == 0 even for infinite dy)") {
  uint64_t seed = 400;
  for (DType dt : cuda_float_dtypes())
    for (int64_t Sk : {31, 33, 64, 768, 1000, 2049, 4096, 4099, 20000}) {
      const int64_t Sq = Sk >= 2049 ? 3 : 31;
      const Shape xs{2, Sq, Sk};
      // y: a causal softmax (zeros above the diagonal) rounded to dt, as the forward would hand it over.
      const Tensor y = rounded(run_op(SoftmaxOp(1.0, true, false), {random_tensor(xs, ++seed, -4.0, 4.0)})[0], dt);
      auto dyv = random_doubles(static_cast<size_t>(y.numel()), ++seed, -1.0, 1.0);
      const auto yv = y.to_doubles();
      for (size_t i = 0; i < dyv.size(); ++i)
        if (yv[i] == 0.0 && i % 3 == 0) dyv[i] = kInf;  // never reaches dx: y == 0 there
      const Tensor dy = Tensor::from_vector(dyv, xs).to(DType::f32);
      const std::string what = "softmax_backward Sk=" + std::to_string(Sk);
      check_cuda_op(SoftmaxBackwardOp(1.0, false), {y, dy}, dt, what);
      check_cuda_op(SoftmaxBackwardOp(0.125, false), {y, dy}, dt, what + " scale");
      check_cuda_op(SoftmaxBackwardOp(0.125, true), {y, dy}, dt, what + " dz");
    }
}

// ---- cross-entropy -----------------------------------------------------------------------------------------------

namespace {

Tensor targets_of(const std::vector<int64_t>& t, DType dt) {
  const Tensor t64 = Tensor::from_vector(t, {static_cast<int64_t>(t.size())});
  return dt == DType::i64 ? t64 : t64.to(dt);
}

// Targets in [0, V), every `ignore_every`-th row (when > 0) ignore_index instead.
std::vector<int64_t> some_targets(int64_t N, int64_t V, uint64_t seed, int64_t ignore, int ignore_every) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> t(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n)
    t[static_cast<size_t>(n)] = ignore_every > 0 && n % ignore_every == 1 ? ignore : static_cast<int64_t>(rng() % V);
  return t;
}

int64_t count_valid(const std::vector<int64_t>& t, int64_t ignore) {
  int64_t n = 0;
  for (int64_t v : t) n += v != ignore;
  return n;
}

}  // namespace

XF_CUDA_TEST_CASE("cuda: cross_entropy forward matches the CPU (vocabularies up to 50304, ignore_index, smoothing)") {
  // Every output, the optional dlogits (for dloss = 1, written in the forward's pass) included: run_op_cuda plans it.
  uint64_t seed = 500;
  for (DType dt : cuda_float_dtypes())
    for (int64_t V : {31, 33, 64, 1000, 4099, 50304})
      for (int64_t N : {1, 31, 257, 1000}) {
        if (V == 50304 && N == 1000) continue;  // the CPU reference's time; 257 rows already take every path
        const Tensor logits = random_tensor({N, V}, ++seed, -6.0, 6.0);
        for (double ls : {0.0, 0.1})
          for (DType it : {DType::i64, DType::i32}) {
            if (it == DType::i32 && ls != 0.0) continue;
            const int64_t ignore = ls == 0.0 ? -100 : 3;
            const auto t = some_targets(N, V, ++seed, ignore, 4);
            const std::string what = "cross_entropy (" + std::to_string(N) + ", " + std::to_string(V) +
                                     ") ls=" + std::to_string(ls) + " " + dtype_name(it);
            check_cuda_mixed(CrossEntropyOp(ignore, ls), {logits, targets_of(t, it)}, {dt, it}, what);
          }
      }
}

XF_CUDA_TEST_CASE("cuda: cross_entropy loss and lse are f32 for 16-bit logits; all rows ignored gives 0") {
  for (DType dt : cuda_float_dtypes()) {
    const Tensor logits = random_tensor({5, 33}, 1, -3.0, 3.0).to(dt);
    const auto out = run_op_cuda(CrossEntropyOp(-100, 0.0), {logits, targets_of({-100, -100, -100, -100, -100}, DType::i64)});
    CHECK(out[0].dtype() == DType::f32);
    CHECK(out[1].dtype() == DType::f32);
    CHECK(out[0].to_doubles() == std::vector<double>{0.0});
    check_cuda_mixed(CrossEntropyOp(-100, 0.1), {logits.to(DType::f32), targets_of({-100, -100, -100, -100, -100}, DType::i64)},
                     {dt, DType::i64}, "cross_entropy all ignored");
  }
}

XF_CUDA_TEST_CASE("cuda: cross_entropy with an invalid target gives a NaN loss (the kernel cannot throw)") {
  const Tensor logits = random_tensor({4, 33}, 1, -3.0, 3.0);
  const auto out = run_op_cuda(CrossEntropyOp(-100, 0.0), {logits, targets_of({0, 5, 33, 2}, DType::i64)});
  CHECK(std::isnan(out[0].item()));
}

XF_CUDA_TEST_CASE("cuda: cross_entropy backward matches the CPU (dloss on the device, dlse, ignore, smoothing)") {
  uint64_t seed = 600;
  for (DType dt : cuda_float_dtypes())
    for (int64_t V : {31, 33, 64, 1000, 4099, 50304})
      for (int64_t N : {1, 31, 257, 1000}) {
        if (V == 50304 && N == 1000) continue;
        const Tensor logits = random_tensor({N, V}, ++seed, -6.0, 6.0);
        for (double ls : {0.0, 0.1})
          for (bool with_dlse : {false, true}) {
            const int64_t ignore = -100;
            const auto t = some_targets(N, V, ++seed, ignore, 4);
            const Tensor tg = targets_of(t, ls == 0.0 ? DType::i64 : DType::i32);
            const auto fwd = run_op(CrossEntropyOp(ignore, ls), {rounded(logits, dt), tg});
            // dloss = n_valid makes the per-row weight 1, so dlogits is of order 1 and the comparison bites.
            const Tensor dloss = Tensor::full({1}, static_cast<double>(std::max<int64_t>(1, count_valid(t, ignore))));
            std::vector<Tensor> in{logits, fwd[1], tg, dloss};
            std::vector<DType> dts{dt, DType::f32, tg.dtype(), DType::f32};
            if (with_dlse) {
              in.push_back(random_tensor({N}, ++seed, -1.0, 1.0));
              dts.push_back(DType::f32);
            }
            check_cuda_mixed(CrossEntropyBackwardOp(ignore, ls, with_dlse), in, dts,
                             "cross_entropy_backward (" + std::to_string(N) + ", " + std::to_string(V) +
                                 ") ls=" + std::to_string(ls) + " dlse=" + std::to_string(with_dlse));
          }
      }
}

// ---- reduce ------------------------------------------------------------------------------------------------------

namespace {

struct ReduceCase {
  Shape shape;
  std::vector<int64_t> axes;
};

// Leading axes (column reductions, the bias gradient), trailing axes (row reductions), middle axes, all axes,
// size-1 axes, and interleaved (generic) patterns with the innermost axis kept or reduced.
std::vector<ReduceCase> reduce_cases() {
  return {
      {{257, 1000}, {0}},        {{257, 1000}, {1}},       {{257, 1000}, {}},     {{1000, 31}, {0}},
      {{31, 4099}, {1}},         {{1000, 4099}, {1}},      {{4099, 33}, {0}},     {{16, 1024, 768}, {0, 1}},
      {{4, 31, 33}, {1}},        {{4, 31, 64}, {-2}},      {{3, 1, 5}, {1}},      {{1, 64}, {0}},
      {{1 << 20}, {0}},          {{5, 7, 9, 11}, {0, 2}},  {{5, 7, 9, 11}, {1, 3}}, {{6, 4, 5}, {0, 2}},
      {{2, 3, 4, 5, 6}, {0, 2, 4}}, {{33}, {}},
  };
}

}  // namespace

XF_CUDA_TEST_CASE("cuda: reduce sum, mean and max match the CPU over leading, trailing, middle and mixed axes") {
  uint64_t seed = 700;
  for (DType dt : cuda_float_dtypes())
    for (const ReduceCase& c : reduce_cases())
      for (ReduceKind kind : {ReduceKind::sum, ReduceKind::mean, ReduceKind::max})
        for (bool keepdim : {false, true}) {
          if (keepdim && kind == ReduceKind::mean) continue;  // keepdim only reshapes: sum and max cover it
          const Tensor x = random_tensor(c.shape, ++seed, -1.0, 1.0);
          // A sum of n terms in [-1, 1) in two fp32 orders differs by ~sqrt(n) * 2^-24 * sqrt(n) (seen on
          // the H200: 2.2e-5 on a 16384-term column sum whose value cancelled to 0.018), past atol 1e-5:
          // scale the tolerance by sqrt(n) / 32 for long sums.
          int64_t n = 1;
          for (int64_t a : c.axes) n *= c.shape[static_cast<size_t>(a < 0 ? a + static_cast<int64_t>(c.shape.size()) : a)];
          if (c.axes.empty()) n = numel_of(c.shape);
          const double scale = kind == ReduceKind::sum ? std::max(1.0, std::sqrt(static_cast<double>(n)) / 32.0) : 1.0;
          check_cuda_op(ReduceOp(kind, c.axes, keepdim), {x}, dt,
                        std::string("reduce ") + reduce_kind_name(kind) + " " + shape_str(c.shape) + " axes " +
                            shape_str(c.axes) + " keepdim=" + std::to_string(keepdim),
                        scale);
        }
}

XF_CUDA_TEST_CASE("cuda: reduce max takes the first of tied maxima (exact arg-max on every path)") {
  uint64_t seed = 800;
  for (DType dt : cuda_float_dtypes())
    for (const ReduceCase& c : reduce_cases()) {
      // Small integers: many ties, exact in every dtype.
      auto v = random_doubles(static_cast<size_t>(numel_of(c.shape)), ++seed, 0.0, 4.0);
      for (auto& e : v) e = std::floor(e);
      const Tensor x = Tensor::from_vector(v, c.shape).to(DType::f32);
      check_cuda_op(ReduceOp(ReduceKind::max, c.axes, false), {x}, dt,
                    "reduce max ties " + shape_str(c.shape) + " axes " + shape_str(c.axes));
    }
}

XF_CUDA_TEST_CASE("cuda: reduce max propagates the first NaN") {
  std::vector<double> v(static_cast<size_t>(8 * 300), 0.0);
  v[5 * 300 + 17] = std::nan("");
  v[5 * 300 + 200] = std::nan("");
  v[2 * 300 + 3] = 1.0;
  const Tensor x = Tensor::from_vector(v, {8, 300}).to(DType::f32);
  const auto rows = run_op_cuda(ReduceOp(ReduceKind::max, {1}, false), {x});
  CHECK(std::isnan(rows[0].to_doubles()[5]));
  CHECK(rows[1].to_doubles()[5] == 17);
  CHECK(rows[1].to_doubles()[2] == 3);
  const auto all = run_op_cuda(ReduceOp(ReduceKind::max, {}, false), {x});
  CHECK(std::isnan(all[0].item()));
  CHECK(all[1].item() == 5 * 300 + 17);
  const auto cols = run_op_cuda(ReduceOp(ReduceKind::max, {0}, false), {x});
  CHECK(std::isnan(cols[0].to_doubles()[17]));
  CHECK(cols[1].to_doubles()[17] == 5);
}

XF_CUDA_TEST_CASE("cuda: reduce of empty slices: sums 0, means NaN") {
  const Tensor x = Tensor::zeros({3, 0});
  CHECK(run_op_cuda(ReduceOp(ReduceKind::sum, {1}, false), {x})[0].to_doubles() == std::vector<double>{0, 0, 0});
  CHECK(std::isnan(run_op_cuda(ReduceOp(ReduceKind::mean, {1}, false), {x})[0].to_doubles()[1]));
}

XF_CUDA_TEST_CASE("cuda: reduce sums are deterministic (the bias gradient of 16k rows, a full reduction)") {
  for (DType dt : cuda_float_dtypes()) {
    const Tensor rows = random_tensor({16384, 768}, 1).to(dt);
    const auto a = run_op_cuda(ReduceOp(ReduceKind::sum, {0}, false), {rows})[0].to_doubles();
    const auto b = run_op_cuda(ReduceOp(ReduceKind::sum, {0}, false), {rows})[0].to_doubles();
    CHECK(a == b);
    const Tensor flat = random_tensor({3 << 20}, 2).to(dt);
    CHECK(run_op_cuda(ReduceOp(ReduceKind::sum, {}, false), {flat})[0].item() ==
          run_op_cuda(ReduceOp(ReduceKind::sum, {}, false), {flat})[0].item());
  }
}

XF_CUDA_TEST_CASE("cuda: reduce_max_backward routes dy to the arg-max (simple and generic layouts)") {
  uint64_t seed = 900;
  for (DType dt : cuda_float_dtypes())
    for (const ReduceCase& c : reduce_cases()) {
      for (bool keepdim : {false, true}) {
        const Tensor x = random_tensor(c.shape, ++seed, -1.0, 1.0);
        const auto fwd = run_op(ReduceOp(ReduceKind::max, c.axes, keepdim), {rounded(x, dt)});
        const Tensor dy = random_tensor(fwd[0].shape(), ++seed, -1.0, 1.0);
        check_cuda_op(ReduceMaxBackwardOp(c.axes, keepdim, c.shape), {dy, fwd[1]}, dt,
                      "reduce_max_backward " + shape_str(c.shape) + " axes " + shape_str(c.axes) +
                          " keepdim=" + std::to_string(keepdim));
      }
    }
}

// ---- plain launchers with misaligned pointers -----------------------------------------------------------------

#ifdef XF_WITH_CUDA
XF_CUDA_TEST_CASE("cuda: launchers take misaligned pointers (scalar fallback of the vector paths)") {
  DeviceContext* ctx = cuda_test_ctx();
  CUstream_st* stream = static_cast<cuda::CudaContext*>(ctx)->stream();
  const int64_t rows = 37, C = 768;  // C a multiple of every vector width: only the offset breaks alignment
  for (DType dt : cuda_float_dtypes()) {
    const Tensor x = random_tensor({rows, C}, 1, -2.0, 3.0).to(dt);
    const Tensor gamma = random_tensor({C}, 2, 0.5, 1.5).to(dt);
    const Tensor dy = random_tensor({rows, C}, 3).to(dt);
    // Device copies one element past a 256-byte aligned start.
    const size_t es = dtype_size(dt);
    auto shifted = [&](const Tensor& h) {
      Tensor buf = Tensor::empty({h.numel() + 1}, dt, ctx);
      Tensor v = buf.carve(es, h.shape(), dt);
      v.copy_from(h);
      return std::make_pair(buf, v);
    };
    auto [xb, xd] = shifted(x);
    auto [gb, gd] = shifted(gamma);
    auto [db, dyd] = shifted(dy);
    auto [yb, yd] = shifted(Tensor::zeros({rows, C}, dt));
    auto [dxb, dxd] = shifted(Tensor::zeros({rows, C}, dt));
    auto [dgb, dgd] = shifted(Tensor::zeros({C}, dt));
    Tensor mean = Tensor::empty({rows}, DType::f32, ctx), rstd = Tensor::empty({rows}, DType::f32, ctx);
    cuda::launch_layernorm_forward(dt, xd.raw_data(), nullptr, nullptr, gd.raw_data(), nullptr, yd.raw_data(), mean.data<float>(),
                                   rstd.data<float>(), rows, C, 1e-5, stream);
    const auto ref = run_op(LayerNormOp(1e-5, true, false), {x.to(DType::f32), gamma.to(DType::f32)});
    const Tolerance tol = cuda_tolerance(dt);
    check_close(yd.to_doubles(), ref[0].to_doubles(), tol.atol, tol.rtol, std::string("misaligned layernorm y ") + dtype_name(dt));
    check_close(rstd.to_doubles(), ref[2].to_doubles(), 1e-5, 1e-4, "misaligned layernorm rstd");

    cuda::launch_layernorm_backward(dt, xd.raw_data(), mean.data<float>(), rstd.data<float>(), gd.raw_data(),
                                    dyd.raw_data(), nullptr, dxd.raw_data(), dgd.raw_data(), nullptr, nullptr, rows, C,
                                    static_cast<cuda::CudaContext*>(ctx)->workspace(),
                                    static_cast<cuda::CudaContext*>(ctx)->workspace_bytes(), stream);
    const auto bref = run_op(LayerNormBackwardOp(true, true, false),
                             {x.to(DType::f32), ref[1], ref[2], gamma.to(DType::f32), dy.to(DType::f32)});
    check_close(dxd.to_doubles(), bref[0].to_doubles(), tol.atol, tol.rtol, "misaligned layernorm dx");
    check_close(dgd.to_doubles(), bref[1].to_doubles(), tol.atol, tol.rtol, "misaligned layernorm dgamma");

    cuda::launch_softmax_backward(dt, yd.raw_data(), dyd.raw_data(), dxd.raw_data(), nullptr, rows, C, 1.0, stream);
    const auto sref = run_op(SoftmaxBackwardOp(1.0, false), {yd.to_host().to(DType::f32), dy.to(DType::f32)});
    check_close(dxd.to_doubles(), sref[0].to_doubles(), tol.atol, tol.rtol, "misaligned softmax_backward dx");
  }
}
#endif
