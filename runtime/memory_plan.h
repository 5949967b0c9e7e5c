// Liveness-based memory plan: buffers whose lifetimes do not overlap share bytes of one arena.
#pragma once
#include <cstddef>
#include <vector>

namespace xfr {

struct BufferRequest {
  size_t bytes = 0;
  int first_step = 0;  // the step that writes it
  int last_step = 0;   // the last step that reads it (inclusive)
};

struct MemoryPlan {
  std::vector<size_t> offsets;  // per request, into the arena
  size_t arena_bytes = 0;       // what the plan needs
  size_t unplanned_bytes = 0;   // the sum of all requests: what one buffer each would need
};

// Greedy by size (largest first), each buffer at the lowest offset that no live buffer overlaps;
// offsets are multiples of `alignment`.
MemoryPlan plan_memory(const std::vector<BufferRequest>& requests, size_t alignment = 64);

}  // namespace xfr
