// Queries about a CUDA stream that several parts of the CUDA backend ask: the context (CudaContext::capturing), the
// pinned staging ring (host_staging.h) and the autotuners (ops/cuda/matmul.cu, ops/cuda/cudnn_attention.cpp), which
// cannot time candidates while a graph is being captured.
#pragma once

struct CUstream_st;

namespace xfr::cuda {

// Whether work issued on `stream` is being captured into a CUDA graph.
bool stream_capturing(CUstream_st* stream);

}  // namespace xfr::cuda
