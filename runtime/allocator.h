// Aligned host memory. 64 bytes: one cache line and the widest vector load (AVX-512).
#pragma once
#include <cstddef>
#include <memory>

namespace xfr {

constexpr size_t kCpuAlignment = 64;

// Returns 64-byte-aligned memory of at least `bytes` (never null: throws xfr::Error("allocator") when out of memory).
void* cpu_allocate(size_t bytes);
void cpu_free(void* p);

}  // namespace xfr
