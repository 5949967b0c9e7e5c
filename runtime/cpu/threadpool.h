// xfr::ThreadPool: persistent workers for the CPU backend's data-parallel loops.
//
//   ThreadPool pool(4);                       // 3 workers + the calling thread
//   pool.parallel_for(n, 4096, [&](int64_t begin, int64_t end) { for (...) ... });
//
// parallel_for splits [0, n) into chunk_count(n, grain) contiguous chunks of at least `grain` items (at
// most size() of them, sizes differing by at most one), runs them on the workers with the calling thread
// taking part, and returns when all are done. The first exception thrown by any chunk is rethrown in the
// caller (chunks not yet started are then skipped); no exception escapes a worker thread.
//
// Inline cases, which never touch the workers: n <= grain (a single chunk), a pool of size 1, and nested
// calls, i.e. parallel_for called from inside a chunk of any ThreadPool (the thread is already one of the
// parallel participants, and waiting on a pool from inside a chunk could deadlock). A per-thread flag
// marks "inside a chunk"; there is no other global state, and callers own their pools.
//
// Several threads may call parallel_for on the same pool: their jobs run one after the other.
// Waiting (workers for work, the caller for completion) spins for a few tens of microseconds before
// sleeping on a condition variable, so back-to-back loops cost microseconds, and idle pools cost nothing.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace xfr {

class ThreadPool {
 public:
  using ChunkFn = std::function<void(int64_t begin, int64_t end)>;

  // threads: total parallelism including the calling thread; 0 = std::thread::hardware_concurrency()
  // (1 if unknown). Throws xfr::Error for threads < 0.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();  // joins the workers; must not run while a parallel_for on this pool is in flight
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return size_; }

  // Number of chunks parallel_for(n, grain, ...) uses: 0 for n <= 0, else min(size(), max(1, n / grain))
  // with grain clamped to >= 1, so every chunk has at least `grain` items.
  int64_t chunk_count(int64_t n, int64_t grain) const;

  void parallel_for(int64_t n, int64_t grain, const ChunkFn& fn);

 private:
  struct Job {
    const ChunkFn* fn;
    int64_t n;
    int64_t chunks;
    uint64_t generation;
  };

  void worker_loop();
  void run_chunks(const Job& job);  // claims and runs chunks of `job` until none is left
  void wait_until_done(int64_t chunks);

  int size_ = 1;
  std::vector<std::thread> workers_;

  std::mutex run_mu_;  // serializes parallel_for calls from different threads

  // Publication of a job: the descriptor below is written under mu_ before generation_ is bumped.
  std::mutex mu_;
  std::condition_variable work_cv_;  // workers sleep here for a new generation (or stop)
  std::condition_variable done_cv_;  // the caller sleeps here for done_ == chunks
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  const ChunkFn* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunks_ = 0;

  // Chunk claims: (low 32 bits of the generation) << 32 | next chunk index. Tagging claims with the
  // generation makes a late worker's claim on a finished job fail instead of taking a chunk of the next.
  std::atomic<uint64_t> claim_{0};
  std::atomic<int64_t> done_{0};     // chunks finished (or skipped after a failure) in the current job
  std::atomic<bool> failed_{false};  // a chunk threw: skip the chunks not yet started
  std::exception_ptr error_;         // the first exception, guarded by mu_
};

}  // namespace xfr
