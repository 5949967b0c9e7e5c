#include "runtime/allocator.h"

#include <cstdlib>

#include "runtime/error.h"

namespace xfr {

void* cpu_allocate(size_t bytes) {
  const size_t rounded = ((bytes + kCpuAlignment - 1) / kCpuAlignment) * kCpuAlignment;
  void* p = std::aligned_alloc(kCpuAlignment, rounded == 0 ? kCpuAlignment : rounded);
  if (!p) throw Error("allocator", str_cat("out of host memory allocating ", bytes, " bytes"));
  return p;
}

void cpu_free(void* p) { std::free(p); }

}  // namespace xfr
