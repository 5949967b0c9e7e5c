#include "runtime/cpu/threadpool.h"

#include <algorithm>
#include <chrono>

#include "runtime/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace xfr {
namespace {

// True while this thread runs a chunk of any pool: a parallel_for issued then runs inline.
thread_local bool t_in_chunk = false;

struct InChunkScope {
  bool saved = t_in_chunk;
  InChunkScope() { t_in_chunk = true; }
  ~InChunkScope() { t_in_chunk = saved; }
};

// How long a waiting thread spins before sleeping. Long enough to cover the gap between two back-to-back
// parallel_for calls (a futex wake-up costs 5-50 us, which would dominate small loops), short enough that
// an idle pool stops burning cores almost at once.
constexpr auto kSpinTime = std::chrono::microseconds(50);
// Spins with a pause instruction first; after this many, yields the core each time instead, so that a pool
// larger than the machine does not starve the threads doing real work.
constexpr int kPauseSpins = 64;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#else
  std::this_thread::yield();
#endif
}

// Spins until pred() or kSpinTime has elapsed; returns pred().
template <class Pred>
bool spin_until(Pred pred) {
  for (int i = 0; i < kPauseSpins; ++i) {
    if (pred()) return true;
    cpu_relax();
  }
  const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return pred();
    std::this_thread::yield();
  }
  return true;
}

constexpr uint64_t kLow32 = 0xffffffffu;

}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads < 0) throw Error("threadpool", str_cat("thread count must be >= 0, got ", threads));
  if (threads == 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  size_ = threads;
  workers_.reserve(static_cast<size_t>(size_ - 1));
  try {
    for (int i = 1; i < size_; ++i) workers_.emplace_back([this] { worker_loop(); });
  } catch (...) {  // thread creation failed: stop the ones already started before reporting
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true);
    }
    work_cv_.notify_all();
    for (auto& t : workers_) t.join();
    throw;
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

int64_t ThreadPool::chunk_count(int64_t n, int64_t grain) const {
  if (n <= 0) return 0;
  grain = std::max<int64_t>(grain, 1);
  return std::min<int64_t>(size_, std::max<int64_t>(1, n / grain));
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const ChunkFn& fn) {
  const int64_t chunks = chunk_count(n, grain);
  if (chunks == 0) return;
  if (chunks == 1 || t_in_chunk) {  // single chunk or nested: run here, workers untouched
    fn(0, n);
    return;
  }

  std::lock_guard<std::mutex> run_lock(run_mu_);
  Job job{&fn, n, chunks, 0};
  {
    std::lock_guard<std::mutex> lk(mu_);
    job.generation = generation_.load(std::memory_order_relaxed) + 1;
    fn_ = &fn;
    n_ = n;
    chunks_ = chunks;
    done_.store(0, std::memory_order_relaxed);
    failed_.store(false, std::memory_order_relaxed);
    error_ = nullptr;
    claim_.store((job.generation & kLow32) << 32, std::memory_order_release);
    generation_.store(job.generation, std::memory_order_release);
  }
  work_cv_.notify_all();

  run_chunks(job);
  wait_until_done(chunks);

  if (failed_.load(std::memory_order_acquire)) {
    std::exception_ptr e;
    {
      std::lock_guard<std::mutex> lk(mu_);
      std::swap(e, error_);
    }
    std::rethrow_exception(e);
  }
}

void ThreadPool::wait_until_done(int64_t chunks) {
  auto finished = [&] { return done_.load(std::memory_order_acquire) == chunks; };
  if (spin_until(finished)) return;
  std::unique_lock<std::mutex> lk(mu_);
  done_cv_.wait(lk, finished);
}

void ThreadPool::run_chunks(const Job& job) {
  const uint64_t tag = job.generation & kLow32;
  const int64_t q = job.n / job.chunks, r = job.n % job.chunks;  // the first r chunks get one extra item
  for (;;) {
    uint64_t s = claim_.load(std::memory_order_acquire);
    int64_t index;
    for (;;) {
      if ((s >> 32) != tag) return;  // a later job replaced this one: it is finished
      index = static_cast<int64_t>(s & kLow32);
      if (index >= job.chunks) return;  // every chunk is taken
      if (claim_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) break;
    }

    if (!failed_.load(std::memory_order_relaxed)) {
      const int64_t begin = index * q + std::min(index, r);
      const int64_t end = begin + q + (index < r ? 1 : 0);
      try {
        InChunkScope scope;
        (*job.fn)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
        failed_.store(true, std::memory_order_relaxed);
      }
    }

    // The release half publishes this chunk's writes (and error_) to the caller's acquire load of done_.
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == job.chunks) {
      { std::lock_guard<std::mutex> lk(mu_); }  // the caller is either before its wait or inside it
      done_cv_.notify_all();
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    spin_until([&] {
      return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
    });
    Job job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      work_cv_.wait(lk, [&] { return stop_.load() || generation_.load(std::memory_order_relaxed) != seen; });
      if (stop_.load()) return;
      seen = generation_.load(std::memory_order_relaxed);
      job = Job{fn_, n_, chunks_, seen};
    }
    run_chunks(job);
  }
}

}  // namespace xfr
