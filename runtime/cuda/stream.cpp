#include "runtime/cuda/stream.h"

#include <cuda_runtime_api.h>

#include "runtime/cuda/check.h"

namespace xfr::cuda {

bool stream_capturing(CUstream_st* stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  XF_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

}  // namespace xfr::cuda
