// CPU kernel of ops/matmul.h: OpenBLAS. f32 through sgemm (models), f64 through dgemm (references).
#include <cblas.h>

#include "ops/cpu/parallel.h"
#include "ops/matmul.h"
#include "runtime/dispatch.h"

namespace xfr::cpu {

namespace {

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), 1.0f, a, static_cast<int>(lda), b, static_cast<int>(ldb), 0.0f,
              c, static_cast<int>(ldc));
}
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
          int64_t ldb, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), 1.0, a, static_cast<int>(lda), b, static_cast<int>(ldb), 0.0, c,
              static_cast<int>(ldc));
}

template <class T>
void matmul_impl(const MatMulOp& op, const Tensor& A, const Tensor& B, const Tensor& C) {
  const auto d = matmul_dims(op, A.shape(), B.shape());
  const T* a = A.data<T>();
  const T* b = B.data<T>();
  T* c = C.data<T>();
  if (C.numel() == 0) return;
  if (d.k == 0) {
    std::fill(c, c + C.numel(), T(0));
    return;
  }
  // Leading dimensions of the row-major operands as stored.
  const int64_t lda = op.trans_a ? d.m : d.k, ldb = op.trans_b ? d.k : d.n;
  if (d.shared_b && !op.trans_a) {
    // Every batch's rows are consecutive rows of one (batch*M, K) matrix: a single large GEMM.
    gemm(false, op.trans_b, d.batch * d.m, d.n, d.k, a, lda, b, ldb, c, d.n);
    return;
  }
  const int64_t sa = d.m * d.k, sb = d.shared_b ? 0 : d.k * d.n, sc = d.m * d.n;
  for (int64_t i = 0; i < d.batch; ++i)
    gemm(op.trans_a, op.trans_b, d.m, d.n, d.k, a + i * sa, lda, b + i * sb, ldb, c + i * sc, d.n);
}

void matmul_kernel(const Op& op_, const KernelContext&, const std::vector<Tensor>& in,
                   const std::vector<Tensor>& out) {
  const auto& op = static_cast<const MatMulOp&>(op_);
  XF_DISPATCH_FLOAT(out[0].dtype(), "matmul", T, matmul_impl<T>(op, in[0], in[1], out[0]));
}

// a, b as matmul; d: the product's shape -> c = a b + d (the product rounded, then the sum: f32 and f64 only here)
void matmul_add_kernel(const Op& op_, const KernelContext&, const std::vector<Tensor>& in,
                       const std::vector<Tensor>& out) {
  const auto& op = static_cast<const MatMulAddOp&>(op_);
  XF_DISPATCH_FLOAT(out[0].dtype(), "matmul_add", T, {
    matmul_impl<T>(op.mm, in[0], in[1], out[0]);
    T* c = out[0].data<T>();
    const T* d = in[2].data<T>();
    for (int64_t i = 0; i < out[0].numel(); ++i) c[i] += d[i];
  });
}

}  // namespace

void register_matmul(KernelRegistry& r) {
  r.add("matmul", Device::Kind::cpu, matmul_kernel);
  r.add("matmul_add", Device::Kind::cpu, matmul_add_kernel);
}

}  // namespace xfr::cpu
