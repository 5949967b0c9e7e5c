// xfr::ThreadPool (runtime/cpu/threadpool.h).
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "runtime/cpu/threadpool.h"
#include "runtime/error.h"

using xfr::ThreadPool;

namespace {

// Sum of i over [0, n) computed through the pool, one partial sum per chunk.
int64_t pool_sum(ThreadPool& pool, int64_t n, int64_t grain) {
  std::atomic<int64_t> total{0};
  pool.parallel_for(n, grain, [&](int64_t b, int64_t e) {
    int64_t s = 0;
    for (int64_t i = b; i < e; ++i) s += i;
    total.fetch_add(s);
  });
  return total.load();
}

}  // namespace

TEST_CASE("threadpool size and chunk_count") {
  ThreadPool def;
  CHECK(def.size() >= 1);
  CHECK(def.size() == static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  ThreadPool p4(4);
  CHECK(p4.size() == 4);
  CHECK(p4.chunk_count(0, 1) == 0);
  CHECK(p4.chunk_count(-5, 1) == 0);
  CHECK(p4.chunk_count(1, 1) == 1);
  CHECK(p4.chunk_count(3, 1) == 3);
  CHECK(p4.chunk_count(100, 1) == 4);
  CHECK(p4.chunk_count(100, 30) == 3);  // every chunk keeps at least `grain` items
  CHECK(p4.chunk_count(100, 100) == 1);
  CHECK(p4.chunk_count(100, 1000) == 1);
  CHECK(p4.chunk_count(100, 0) == 4);   // grain clamped to 1
  CHECK(p4.chunk_count(100, -3) == 4);
  CHECK_THROWS_AS(ThreadPool(-1), xfr::Error);
}

TEST_CASE("threadpool sums over awkward n") {
  for (int threads : {1, 2, 3, 4, 8}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 2, 31, 33, 257, 1000000}) {
      for (int64_t grain : {1, 7, 32, 1000}) {
        CAPTURE(threads);
        CAPTURE(n);
        CAPTURE(grain);
        CHECK(pool_sum(pool, n, grain) == n * (n - 1) / 2);
      }
    }
  }
}

TEST_CASE("threadpool visits every index exactly once, in contiguous chunks of at least grain items") {
  ThreadPool pool(4);
  for (int64_t n : {1, 5, 31, 33, 257, 10007}) {
    for (int64_t grain : {1, 3, 64}) {
      CAPTURE(n);
      CAPTURE(grain);
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      for (auto& h : hits) h.store(0);
      std::mutex mu;
      std::vector<std::pair<int64_t, int64_t>> ranges;
      pool.parallel_for(n, grain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
        std::lock_guard<std::mutex> lk(mu);
        ranges.emplace_back(b, e);
      });
      bool once = true;
      for (auto& h : hits) once &= h.load() == 1;
      CHECK(once);
      std::sort(ranges.begin(), ranges.end());
      CHECK(static_cast<int64_t>(ranges.size()) == pool.chunk_count(n, grain));
      CHECK(static_cast<int64_t>(ranges.size()) <= pool.size());
      int64_t expect_begin = 0, smallest = n, largest = 0;
      for (auto& r : ranges) {
        CHECK(r.first == expect_begin);  // contiguous, no gaps or overlaps
        expect_begin = r.second;
        smallest = std::min(smallest, r.second - r.first);
        largest = std::max(largest, r.second - r.first);
      }
      CHECK(expect_begin == n);
      CHECK((smallest >= grain || ranges.size() == 1));
      CHECK(largest - smallest <= 1);  // balanced
    }
  }
}

TEST_CASE("threadpool runs small loops inline and uses the workers for large ones") {
  ThreadPool pool(4);
  const auto caller = std::this_thread::get_id();
  std::thread::id seen;
  pool.parallel_for(10, 10, [&](int64_t b, int64_t e) {  // n <= grain: one chunk, on the caller
    seen = std::this_thread::get_id();
    CHECK(b == 0);
    CHECK(e == 10);
  });
  CHECK(seen == caller);
  int calls = 0;
  pool.parallel_for(0, 1, [&](int64_t, int64_t) { ++calls; });
  CHECK(calls == 0);

  // With enough work per chunk, more than one thread takes part (retry: a worker may start late).
  bool used_worker = false;
  for (int attempt = 0; attempt < 50 && !used_worker; ++attempt) {
    std::mutex mu;
    std::vector<std::thread::id> ids;
    pool.parallel_for(4, 1, [&](int64_t, int64_t) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      std::lock_guard<std::mutex> lk(mu);
      ids.push_back(std::this_thread::get_id());
    });
    for (auto& id : ids) used_worker |= id != caller;
  }
  CHECK(used_worker);
}

TEST_CASE("threadpool rethrows the first exception in the caller, and stays usable") {
  ThreadPool pool(4);
  for (int64_t bad : {0, 500, 999}) {  // the chunk of the caller, a middle one, the last one
    CAPTURE(bad);
    CHECK_THROWS_WITH_AS(pool.parallel_for(1000, 1,
                                           [&](int64_t b, int64_t e) {
                                             if (b <= bad && bad < e) throw std::runtime_error("chunk failed");
                                           }),
                         "chunk failed", std::runtime_error);
    CHECK(pool_sum(pool, 1000, 1) == 999 * 1000 / 2);
  }
  // Every chunk throws: exactly one exception comes out.
  CHECK_THROWS_AS(pool.parallel_for(1000, 1, [](int64_t, int64_t) { throw xfr::Error("op", "boom"); }),
                  xfr::Error);
  // Inline paths propagate too.
  CHECK_THROWS_AS(pool.parallel_for(5, 10, [](int64_t, int64_t) { throw std::logic_error("inline"); }),
                  std::logic_error);
  ThreadPool single(1);
  CHECK_THROWS_AS(single.parallel_for(100, 1, [](int64_t, int64_t) { throw std::logic_error("single"); }),
                  std::logic_error);
  CHECK(pool_sum(pool, 100000, 1) == int64_t(99999) * 100000 / 2);
}

TEST_CASE("threadpool nested parallel_for runs inline without deadlock") {
  ThreadPool pool(4);
  ThreadPool other(3);
  std::atomic<int64_t> total{0};
  pool.parallel_for(64, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      // Same pool and another pool, from workers and from the caller's own chunk.
      total.fetch_add(pool_sum(pool, 100, 1));
      total.fetch_add(pool_sum(other, 10, 1));
    }
  });
  CHECK(total.load() == 64 * (4950 + 45));
  // A nested call whose chunk throws: the exception reaches the outer caller.
  CHECK_THROWS_AS(pool.parallel_for(8, 1,
                                    [&](int64_t, int64_t) {
                                      pool.parallel_for(8, 1, [](int64_t b, int64_t e) {
                                        if (b <= 3 && 3 < e) throw std::runtime_error("inner");
                                      });
                                    }),
                  std::runtime_error);
}

TEST_CASE("threadpool many repeated calls, and calls from several threads at once") {
  ThreadPool pool(4);
  bool all_ok = true;
  for (int rep = 0; rep < 20000; ++rep) {
    const int64_t n = 1 + rep % 97;
    all_ok &= pool_sum(pool, n, 1) == n * (n - 1) / 2;
  }
  CHECK(all_ok);

  std::atomic<int> failures{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t) {
    callers.emplace_back([&, t] {
      for (int rep = 0; rep < 500; ++rep) {
        const int64_t n = 100 + 37 * t + rep;
        if (pool_sum(pool, n, 4) != n * (n - 1) / 2) failures.fetch_add(1);
      }
    });
  }
  for (auto& c : callers) c.join();
  CHECK(failures.load() == 0);
}

TEST_CASE("threadpool construction and destruction, idle and after work") {
  for (int rep = 0; rep < 50; ++rep) {
    ThreadPool idle(4);
    ThreadPool busy(3);
    CHECK(pool_sum(busy, 1000, 1) == 999 * 1000 / 2);
  }
  // Destroyed right after a loop: no worker may still touch it.
  for (int rep = 0; rep < 200; ++rep) {
    auto pool = std::make_unique<ThreadPool>(4);
    CHECK(pool_sum(*pool, 64, 1) == 63 * 64 / 2);
    pool.reset();
  }
}

TEST_CASE("threadpool overhead of a parallel_for over 1e5 trivial items (informational)") {
  ThreadPool pool(std::max(2, static_cast<int>(std::thread::hardware_concurrency())));
  std::vector<float> v(100000, 1.f);
  auto time_us = [&](bool touch) {
    auto loop = [&] {
      pool.parallel_for(static_cast<int64_t>(v.size()), 1024, [&](int64_t b, int64_t e) {
        if (touch)
          for (int64_t i = b; i < e; ++i) v[static_cast<size_t>(i)] += 1.f;
      });
    };
    for (int i = 0; i < 100; ++i) loop();  // warm up
    const int reps = 2000;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) loop();
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / reps;
  };
  const double empty_us = time_us(false);
  const double add_us = time_us(true);
  MESSAGE("parallel_for(1e5 items, grain 1024) on " << pool.size() << " threads: " << empty_us
                                                     << " us per call with an empty body, " << add_us
                                                     << " us adding 1 to each item");
  CHECK(v[0] == 1.f + 2100);
  CHECK(v[v.size() - 1] == 1.f + 2100);
  // No timing assertion: speed belongs to benchmarks; this case only reports it.
}
