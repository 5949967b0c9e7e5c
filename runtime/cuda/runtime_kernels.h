// The few kernels the runtime itself needs (gradient accumulation, dtype conversion); op kernels live
// in ops/cuda/.
#pragma once
#include <cstddef>

#include "runtime/device_context.h"
#include "runtime/dtype.h"

struct CUstream_st;

namespace xfr::cuda {

// dst[i] += float(src[i]), i < n; src is f32, f16 or bf16. overwrite: dst[i] = float(src[i]) (dst not read).
void launch_accumulate_f32(float* dst, const void* src, DType src_dtype, size_t n, bool overwrite, CUstream_st* stream);
// launch_accumulate_f32 for each of `count` entries of a device table (runtime/device_context.h), one launch.
void launch_accumulate_f32_batch(const F32Accumulation* table, size_t count, size_t max_n, bool overwrite,
                                 CUstream_st* stream);
// dst[i] = (dst_dtype) src[i] for floating dtypes f32/f16/bf16 (round to nearest even), i < n.
void launch_convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t n, CUstream_st* stream);

}  // namespace xfr::cuda
