#include "runtime/memory_plan.h"

#include <algorithm>
#include <numeric>

namespace xfr {

MemoryPlan plan_memory(const std::vector<BufferRequest>& requests, size_t alignment) {
  MemoryPlan plan;
  plan.offsets.assign(requests.size(), 0);
  auto round_up = [&](size_t b) { return (b + alignment - 1) / alignment * alignment; };
  std::vector<size_t> order(requests.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return requests[a].bytes > requests[b].bytes; });

  std::vector<size_t> placed;  // request indices already given an offset
  for (size_t idx : order) {
    const auto& r = requests[idx];
    plan.unplanned_bytes += round_up(r.bytes);
    // Intervals of bytes taken by placed buffers live at the same time as r, sorted by offset.
    std::vector<std::pair<size_t, size_t>> busy;
    for (size_t p : placed) {
      const auto& q = requests[p];
      if (q.first_step <= r.last_step && r.first_step <= q.last_step)
        busy.emplace_back(plan.offsets[p], plan.offsets[p] + round_up(q.bytes));
    }
    std::sort(busy.begin(), busy.end());
    size_t offset = 0;
    const size_t need = round_up(r.bytes);
    for (const auto& [lo, hi] : busy) {
      if (offset + need <= lo) break;  // fits in the gap before this interval
      offset = std::max(offset, hi);
    }
    plan.offsets[idx] = offset;
    plan.arena_bytes = std::max(plan.arena_bytes, offset + need);
    placed.push_back(idx);
  }
  return plan;
}

}  // namespace xfr
