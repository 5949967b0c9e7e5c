// Type dispatch: runs a body with `T` bound to the C++ type of a runtime DType.
#pragma once
#include <cstdint>
#include "runtime/dtype.h"
#include "runtime/error.h"

// Every dtype.
#define XF_DISPATCH_ALL(dtype, op, T, ...)                                   \
  switch (dtype) {                                                           \
    case ::xfr::DType::f32: { using T = float; __VA_ARGS__; break; }         \
    case ::xfr::DType::f64: { using T = double; __VA_ARGS__; break; }        \
    case ::xfr::DType::f16: { using T = ::xfr::f16; __VA_ARGS__; break; }    \
    case ::xfr::DType::bf16: { using T = ::xfr::bf16; __VA_ARGS__; break; }  \
    case ::xfr::DType::i32: { using T = int32_t; __VA_ARGS__; break; }       \
    case ::xfr::DType::i64: { using T = int64_t; __VA_ARGS__; break; }       \
    case ::xfr::DType::u8: { using T = uint8_t; __VA_ARGS__; break; }        \
    case ::xfr::DType::boolean: { using T = bool; __VA_ARGS__; break; }      \
  }

// The CPU compute types: f32 (what models run in) and f64 (references and gradient checks).
#define XF_DISPATCH_FLOAT(dtype, op, T, ...)                                          \
  switch (dtype) {                                                                    \
    case ::xfr::DType::f32: { using T = float; __VA_ARGS__; break; }                  \
    case ::xfr::DType::f64: { using T = double; __VA_ARGS__; break; }                 \
    default:                                                                          \
      throw ::xfr::Error(op, ::xfr::str_cat("the CPU backend computes in f32 or f64, not ", \
                                            ::xfr::dtype_name(dtype)));              \
  }

// Index types for gathers and targets.
#define XF_DISPATCH_INDEX(dtype, op, T, ...)                                          \
  switch (dtype) {                                                                    \
    case ::xfr::DType::i32: { using T = int32_t; __VA_ARGS__; break; }                \
    case ::xfr::DType::i64: { using T = int64_t; __VA_ARGS__; break; }                \
    default:                                                                          \
      throw ::xfr::Error(op, ::xfr::str_cat("indices must be i32 or i64, not ", ::xfr::dtype_name(dtype))); \
  }

namespace xfr {
// Conversions through double that also work for the 16-bit storage types.
template <class T> inline double to_double(T v) { return static_cast<double>(v); }
template <> inline double to_double<f16>(f16 v) { return static_cast<float>(v); }
template <> inline double to_double<bf16>(bf16 v) { return static_cast<float>(v); }
template <class T> inline T from_double(double v) { return static_cast<T>(v); }
template <> inline f16 from_double<f16>(double v) { return f16(static_cast<float>(v)); }
template <> inline bf16 from_double<bf16>(double v) { return bf16(static_cast<float>(v)); }
}  // namespace xfr
