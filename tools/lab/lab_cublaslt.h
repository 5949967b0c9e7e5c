// LAB_LT_CHECK for the kernel labs that call cuBLASLt directly (tools/lab/gemm_algo_search.cpp,
// tools/lab/overlap_optimizer.cu): on failure it names the statement and cuBLASLt's status and exits 3, as LAB_CHECK
// does for the runtime (lab_cuda.h, whose LAB_NAME rule applies).
#pragma once
#include <cublasLt.h>

#include <cstdio>
#include <cstdlib>

#include "tools/lab/lab_cuda.h"

#define LAB_LT_CHECK(stmt)                                                                                           \
  do {                                                                                                               \
    const cublasStatus_t lt_st_ = (stmt);                                                                            \
    if (lt_st_ != CUBLAS_STATUS_SUCCESS) {                                                                           \
      std::printf("%s: FATAL: `%s` failed: %s at %s:%d\n", LAB_NAME, #stmt, cublasLtGetStatusName(lt_st_), __FILE__, \
                  __LINE__);                                                                                         \
      std::exit(3);                                                                                                  \
    }                                                                                                                \
  } while (0)
