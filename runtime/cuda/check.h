// Error macros for CUDA runtime and cuBLAS(Lt) calls: each names the failing statement, the error and
// where it was issued, as an xfr::Error("cuda", ...). Only CUDA-side sources include this header.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "runtime/error.h"

namespace xfr::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* stmt, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t st, const char* stmt, const char* file, int line);

}  // namespace xfr::cuda

#define XF_CUDA_CHECK(stmt)                                                                  \
  do {                                                                                       \
    const cudaError_t xf_err_ = (stmt);                                                      \
    if (xf_err_ != cudaSuccess) ::xfr::cuda::throw_cuda_error(xf_err_, #stmt, __FILE__, __LINE__); \
  } while (0)

#define XF_CUBLAS_CHECK(stmt)                                                                  \
  do {                                                                                         \
    const cublasStatus_t xf_st_ = (stmt);                                                      \
    if (xf_st_ != CUBLAS_STATUS_SUCCESS) ::xfr::cuda::throw_cublas_error(xf_st_, #stmt, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: a bad launch configuration shows here; faults inside the kernel show at the
// next synchronize().
#define XF_CUDA_CHECK_LAUNCH(kernel_name) XF_CUDA_CHECK(cudaGetLastError())
