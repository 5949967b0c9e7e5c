// AdamW, SGD and gradient-norm clipping over flat float32 buffers. See optimizer.h for the contract.
#include "runtime/optimizer.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "runtime/error.h"

#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#define XF_OPT_SQRT_SSE 1
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define XF_OPT_SQRT_NEON 1
#endif

namespace xfr {
namespace {

// Elements per parallel work item. 16Ki floats is 64 KiB per stream: ~10-20 us of AdamW work, large
// enough to amortise a task dispatch (~1 us) and small enough to balance a 100k-parameter model
// over a dozen threads. A multiple of 16 keeps chunk starts 64-byte aligned when slot offsets are.
constexpr size_t kChunk = 16384;

// Elements per inner block of the AdamW kernel: 256 floats x 5 streams (p, g, m, v, sqrt(v)) = 5 KiB,
// well inside L1, so splitting the update into three loops over a block still reads memory once.
constexpr size_t kBlock = 256;

// x[i] = sqrt(x[i]). A plain std::sqrt loop is not vectorised by GCC without -fno-math-errno (it keeps
// a scalar call to set errno for negative inputs), so use the ISA's vector square root where there is
// one; IEEE requires it to be correctly rounded, hence identical to std::sqrt.
inline void sqrt_inplace(float* x, size_t n) {
  size_t i = 0;
#if defined(XF_OPT_SQRT_SSE)
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(x + i, _mm_sqrt_ps(_mm_loadu_ps(x + i)));
#elif defined(XF_OPT_SQRT_NEON)
  for (; i + 4 <= n; i += 4) vst1q_f32(x + i, vsqrtq_f32(vld1q_f32(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::sqrt(x[i]);
}

// Splits every slot into pieces of at most kChunk elements (empty slots give no piece).
template <class Chunk>
std::vector<Chunk> split_slots(const std::vector<ParamSlot>& slots) {
  std::vector<Chunk> chunks;
  for (size_t s = 0; s < slots.size(); ++s) {
    const size_t begin = slots[s].offset, end = slots[s].offset + slots[s].numel;
    for (size_t b = begin; b < end; b += kChunk) chunks.push_back(Chunk{s, b, std::min(end, b + kChunk)});
  }
  return chunks;
}

struct NormChunk {
  size_t slot, begin, end;
};

// Runs fn(first, last) over [0, n) work items, on the pool when there is one and more than one item.
void for_each_range(ThreadPool* pool, size_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n == 0) return;
  if (pool == nullptr || n == 1) {
    fn(0, static_cast<int64_t>(n));
    return;
  }
  // Grain 1: each item is already a kChunk-sized piece of work.
  pool->parallel_for(static_cast<int64_t>(n), 1, fn);
}

// Sum of squares of g[0, n) in double. Eight independent accumulators give the compiler independent
// lanes to vectorise (a single accumulator is a serial dependency chain it may not reorder).
double sum_squares(const float* __restrict g, size_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) {
      const double x = g[i + k];
      acc[k] += x * x;
    }
  double tail = 0;
  for (; i < n; ++i) tail += static_cast<double>(g[i]) * g[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

// Per-chunk sums of squares, then a serial sum in chunk order: the result does not depend on how the
// pool splits the work.
double total_sum_squares(const float* grads, const std::vector<NormChunk>& chunks, ThreadPool* pool) {
  std::vector<double> partial(chunks.size(), 0.0);
  for_each_range(pool, chunks.size(), [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c)
      partial[c] = sum_squares(grads + chunks[c].begin, chunks[c].end - chunks[c].begin);
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

bool is_nonneg_finite(float x) { return std::isfinite(x) && x >= 0.0f; }

// ---- AdamW ----------------------------------------------------------------------------------------

// torch.optim.AdamW, single-tensor path, for one contiguous range:
//   p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;
//   p -= step_size * m / (sqrt(v) / bc2_sqrt + eps),  step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t)
struct AdamWScalars {
  float decay;  // 1 - lr*wd (1 where the slot does not decay)
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float step_size, bc2_sqrt, eps;
};

void adamw_range(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                 size_t n, const AdamWScalars& s) {
  const float decay = s.decay, b1 = s.beta1, a1 = s.one_minus_beta1, b2 = s.beta2, a2 = s.one_minus_beta2;
  const float step_size = s.step_size, bc2_sqrt = s.bc2_sqrt, eps = s.eps;
  alignas(64) float root[kBlock];
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t len = std::min(kBlock, n - b);
    float* __restrict pb = p + b;
    const float* __restrict gb = g + b;
    float* __restrict mb = m + b;
    float* __restrict vb = v + b;
    for (size_t i = 0; i < len; ++i) {
      const float gi = gb[i];
      mb[i] = b1 * mb[i] + a1 * gi;
      const float vi = b2 * vb[i] + a2 * gi * gi;
      vb[i] = vi;
      root[i] = vi;
    }
    sqrt_inplace(root, len);
    for (size_t i = 0; i < len; ++i) {
      const float denom = root[i] / bc2_sqrt + eps;
      pb[i] = pb[i] * decay - step_size * mb[i] / denom;
    }
  }
}

class AdamW final : public Optimizer {
 public:
  AdamW(OptimizerConfig config, std::vector<ParamSlot> slots, size_t flat_size)
      : Optimizer(std::move(config), std::move(slots), flat_size),
        exp_avg_(flat_size, 0.0f),
        exp_avg_sq_(flat_size, 0.0f) {}

  void step(float* params, const float* grads, float lr, ThreadPool* pool) override {
    XF_CHECK(is_nonneg_finite(lr), "optimizer", "adamw: lr must be finite and >= 0, got ", lr);
    ++step_count_;
    // Scalars in double, as torch computes them from Python floats, then rounded once to float.
    const double t = static_cast<double>(step_count_);
    const double bc1 = 1.0 - std::pow(static_cast<double>(config_.beta1), t);
    const double bc2 = 1.0 - std::pow(static_cast<double>(config_.beta2), t);
    AdamWScalars decaying{};
    decaying.decay = static_cast<float>(1.0 - static_cast<double>(lr) * config_.weight_decay);
    decaying.beta1 = config_.beta1;
    decaying.one_minus_beta1 = static_cast<float>(1.0 - config_.beta1);
    decaying.beta2 = config_.beta2;
    decaying.one_minus_beta2 = static_cast<float>(1.0 - config_.beta2);
    decaying.step_size = static_cast<float>(lr / bc1);
    decaying.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    decaying.eps = config_.eps;
    AdamWScalars plain = decaying;
    plain.decay = 1.0f;  // p * 1.0f == p exactly, so non-decaying slots share the kernel

    float* m = exp_avg_.data();
    float* v = exp_avg_sq_.data();
    for_each_range(pool, chunks_.size(), [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        const Chunk& ch = chunks_[c];
        const size_t o = ch.begin;
        adamw_range(params + o, grads + o, m + o, v + o, ch.end - ch.begin,
                    slot_decays_[ch.slot] ? decaying : plain);
      }
    });
  }

  std::vector<std::pair<std::string, std::vector<float>*>> state() override {
    return {{"exp_avg", &exp_avg_}, {"exp_avg_sq", &exp_avg_sq_}};
  }

 private:
  std::vector<float> exp_avg_, exp_avg_sq_;
};

// ---- SGD ------------------------------------------------------------------------------------------

enum class SgdMode { plain, momentum, nesterov };

// torch.optim.SGD (dampening 0) for one contiguous range:
//   d = g + wd*p (decaying slots only);  buf = mu*buf + d;  d = nesterov ? d + mu*buf : buf;  p -= lr*d
// The momentum buffer starts at zero, so the first step gives buf = d exactly, as torch's clone does.
template <bool kDecay, SgdMode kMode>
void sgd_range(float* __restrict p, const float* __restrict g, float* __restrict buf, size_t n, float lr,
               float wd, float mu) {
  for (size_t i = 0; i < n; ++i) {
    float d = g[i];
    if (kDecay) d = d + wd * p[i];
    if (kMode != SgdMode::plain) {
      const float b = mu * buf[i] + d;
      buf[i] = b;
      d = kMode == SgdMode::nesterov ? d + mu * b : b;
    }
    p[i] = p[i] - lr * d;
  }
}

template <SgdMode kMode>
void sgd_dispatch(bool decay, float* p, const float* g, float* buf, size_t n, float lr, float wd, float mu) {
  if (decay)
    sgd_range<true, kMode>(p, g, buf, n, lr, wd, mu);
  else
    sgd_range<false, kMode>(p, g, buf, n, lr, wd, mu);
}

class Sgd final : public Optimizer {
 public:
  Sgd(OptimizerConfig config, std::vector<ParamSlot> slots, size_t flat_size)
      : Optimizer(std::move(config), std::move(slots), flat_size) {
    if (config_.momentum != 0.0f) momentum_buffer_.assign(flat_size, 0.0f);
  }

  void step(float* params, const float* grads, float lr, ThreadPool* pool) override {
    XF_CHECK(is_nonneg_finite(lr), "optimizer", "sgd: lr must be finite and >= 0, got ", lr);
    ++step_count_;
    const float wd = config_.weight_decay, mu = config_.momentum;
    // torch skips the decay term entirely when weight_decay == 0 (so 0 * inf never makes a NaN).
    const bool any_decay = wd != 0.0f;
    const SgdMode mode = mu == 0.0f ? SgdMode::plain : config_.nesterov ? SgdMode::nesterov : SgdMode::momentum;
    float* buf = momentum_buffer_.empty() ? nullptr : momentum_buffer_.data();
    for_each_range(pool, chunks_.size(), [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) {
        const Chunk& ch = chunks_[c];
        const size_t o = ch.begin, n = ch.end - ch.begin;
        const bool decay = any_decay && slot_decays_[ch.slot];
        float* b = buf ? buf + o : nullptr;
        switch (mode) {
          case SgdMode::plain: sgd_dispatch<SgdMode::plain>(decay, params + o, grads + o, b, n, lr, wd, mu); break;
          case SgdMode::momentum: sgd_dispatch<SgdMode::momentum>(decay, params + o, grads + o, b, n, lr, wd, mu); break;
          case SgdMode::nesterov: sgd_dispatch<SgdMode::nesterov>(decay, params + o, grads + o, b, n, lr, wd, mu); break;
        }
      }
    });
  }

  std::vector<std::pair<std::string, std::vector<float>*>> state() override {
    if (momentum_buffer_.empty()) return {};
    return {{"momentum_buffer", &momentum_buffer_}};
  }

 private:
  std::vector<float> momentum_buffer_;  // empty for plain SGD (momentum == 0), as torch keeps none
};

}  // namespace

// ---- config, base class, factory -----------------------------------------------------------------

bool decays(const OptimizerConfig& config, ParamKind kind) {
  switch (kind) {
    case ParamKind::weight: return true;
    case ParamKind::bias: return config.decay_biases;
    case ParamKind::norm: return config.decay_norms;
    case ParamKind::embedding: return config.decay_embeddings;
    case ParamKind::other: return false;
  }
  return false;
}

void validate_optimizer_config(const OptimizerConfig& c) {
  const bool adamw = c.name == "adamw", sgd = c.name == "sgd";
  XF_CHECK(adamw || sgd, "optimizer", "unknown optimizer '", c.name, "' (known: adamw, sgd)");
  // Every comparison with NaN is false, so a NaN fails each check below.
  XF_CHECK(is_nonneg_finite(c.lr), "optimizer", "lr must be finite and >= 0, got ", c.lr);
  XF_CHECK(is_nonneg_finite(c.weight_decay), "optimizer", "weight_decay must be finite and >= 0, got ",
           c.weight_decay);
  if (adamw) {
    XF_CHECK(c.beta1 >= 0.0f && c.beta1 < 1.0f, "optimizer", "beta1 must be in [0, 1), got ", c.beta1);
    XF_CHECK(c.beta2 >= 0.0f && c.beta2 < 1.0f, "optimizer", "beta2 must be in [0, 1), got ", c.beta2);
    XF_CHECK(std::isfinite(c.eps) && c.eps > 0.0f, "optimizer", "eps must be finite and > 0, got ", c.eps);
  } else {
    XF_CHECK(is_nonneg_finite(c.momentum), "optimizer", "momentum must be finite and >= 0, got ", c.momentum);
    // torch refuses the same: Nesterov's look-ahead is defined through the momentum buffer.
    XF_CHECK(!c.nesterov || c.momentum > 0.0f, "optimizer", "nesterov requires momentum > 0");
  }
}

Optimizer::Optimizer(OptimizerConfig config, std::vector<ParamSlot> slots, size_t flat_size)
    : config_(std::move(config)), slots_(std::move(slots)), flat_size_(flat_size) {
  validate_optimizer_config(config_);
  for (const ParamSlot& s : slots_)
    XF_CHECK(s.numel <= flat_size_ && s.offset <= flat_size_ - s.numel, "optimizer", "slot '", s.name,
             "' [", s.offset, ", ", s.offset + s.numel, ") does not fit in the flat buffers of ", flat_size_,
             " elements");
  std::vector<size_t> order(slots_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return slots_[a].offset < slots_[b].offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    const ParamSlot& a = slots_[order[i - 1]];
    const ParamSlot& b = slots_[order[i]];
    XF_CHECK(a.numel == 0 || b.numel == 0 || a.offset + a.numel <= b.offset, "optimizer", "slots '", a.name,
             "' and '", b.name, "' overlap");
  }
  chunks_ = split_slots<Chunk>(slots_);
  slot_decays_.resize(slots_.size());
  for (size_t i = 0; i < slots_.size(); ++i) slot_decays_[i] = decays(config_, slots_[i].kind) ? 1 : 0;
}

void Optimizer::set_step_count(int64_t steps) {
  XF_CHECK(steps >= 0, "optimizer", "step count must be >= 0, got ", steps);
  step_count_ = steps;
}

std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& config, std::vector<ParamSlot> slots,
                                          size_t flat_size) {
  validate_optimizer_config(config);
  if (config.name == "adamw") return std::make_unique<AdamW>(config, std::move(slots), flat_size);
  return std::make_unique<Sgd>(config, std::move(slots), flat_size);
}

// ---- gradient norm and clipping -------------------------------------------------------------------

float global_grad_norm(const float* grads, const std::vector<ParamSlot>& slots, ThreadPool* pool) {
  return static_cast<float>(std::sqrt(total_sum_squares(grads, split_slots<NormChunk>(slots), pool)));
}

float clip_grad_norm(float* grads, const std::vector<ParamSlot>& slots, float max_norm, ThreadPool* pool) {
  XF_CHECK(max_norm > 0.0f, "clip_grad_norm", "max_norm must be > 0, got ", max_norm);
  const std::vector<NormChunk> chunks = split_slots<NormChunk>(slots);
  const double norm = std::sqrt(total_sum_squares(grads, chunks, pool));
  if (!std::isfinite(norm) || !(norm > static_cast<double>(max_norm))) return static_cast<float>(norm);
  // 1e-6: torch's guard against dividing by a zero norm; kept so the scale matches torch's.
  const float scale = static_cast<float>(static_cast<double>(max_norm) / (norm + 1e-6));
  for_each_range(pool, chunks.size(), [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      float* __restrict g = grads + chunks[c].begin;
      const size_t n = chunks[c].end - chunks[c].begin;
      for (size_t i = 0; i < n; ++i) g[i] *= scale;
    }
  });
  return static_cast<float>(norm);
}

}  // namespace xfr
