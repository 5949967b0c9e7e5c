// Optimizers, gradient clipping and learning-rate schedules against independent float64 references.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "runtime/cpu/threadpool.h"
#include "runtime/error.h"
#include "runtime/lr_schedule.h"
#include "runtime/optimizer.h"
#include "tests/optimizer_testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

// Values the optimizer must never touch: params padding holds a sentinel, gradient padding holds NaN so
// that any read of it would poison a norm or an update.
constexpr float kParamPad = 777.0f;
const float kGradPad = std::numeric_limits<float>::quiet_NaN();

// Slots at awkward sizes (1, 31, 33, 257: odd, around the 32-lane and 256-block edges of the kernels) plus
// one larger than the optimizer's 16Ki-element work chunk, with 16..31 elements of padding between slots.
Layout make_layout() {
  const size_t sizes[] = {1, 31, 33, 257, 40000};
  const ParamKind kinds[] = {ParamKind::bias, ParamKind::weight, ParamKind::norm, ParamKind::embedding,
                             ParamKind::weight};
  Layout l;
  size_t offset = 16;  // leading padding as well
  for (size_t i = 0; i < 5; ++i) {
    ParamSlot s;
    s.name = "p" + std::to_string(i);
    s.kind = kinds[i];
    s.offset = offset;
    s.numel = sizes[i];
    l.slots.push_back(s);
    offset = (offset + sizes[i] + 15) / 16 * 16 + 16;  // next multiple of 16, then 16 more of padding
  }
  ParamSlot gain;  // a scalar gain (kind other): never decays
  gain.name = "gain";
  gain.kind = ParamKind::other;
  gain.offset = offset;
  gain.numel = 1;
  l.slots.push_back(gain);
  l.flat_size = offset + 16 + 7;  // trailing padding, not a multiple of 16
  return l;
}

bool ref_decays(const OptimizerConfig& c, ParamKind k) {
  if (k == ParamKind::weight) return true;
  if (k == ParamKind::bias) return c.decay_biases;
  if (k == ParamKind::norm) return c.decay_norms;
  if (k == ParamKind::embedding) return c.decay_embeddings;
  return false;
}

// float64 AdamW, written from the torch.optim.AdamW documentation.
struct RefAdamW {
  OptimizerConfig c;
  std::vector<double> m, v;
  int64_t t = 0;
  void step(const Layout& l, std::vector<double>& p, const std::vector<float>& g, double lr) {
    if (m.empty()) m.assign(p.size(), 0.0), v.assign(p.size(), 0.0);
    ++t;
    const double b1 = c.beta1, b2 = c.beta2;
    for (const ParamSlot& s : l.slots) {
      const double wd = ref_decays(c, s.kind) ? c.weight_decay : 0.0;
      for (size_t i = s.offset; i < s.offset + s.numel; ++i) {
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * double(g[i]) * g[i];
        const double mhat = m[i] / (1.0 - std::pow(b1, double(t)));
        const double vhat = v[i] / (1.0 - std::pow(b2, double(t)));
        p[i] -= lr * mhat / (std::sqrt(vhat) + double(c.eps));
      }
    }
  }
};

// float64 SGD, written from the torch.optim.SGD documentation (dampening 0).
struct RefSgd {
  OptimizerConfig c;
  std::vector<double> buf;
  int64_t t = 0;
  void step(const Layout& l, std::vector<double>& p, const std::vector<float>& g, double lr) {
    if (buf.empty()) buf.assign(p.size(), 0.0);
    ++t;
    const double mu = c.momentum;
    for (const ParamSlot& s : l.slots) {
      const double wd = ref_decays(c, s.kind) ? c.weight_decay : 0.0;
      for (size_t i = s.offset; i < s.offset + s.numel; ++i) {
        double d = g[i] + wd * p[i];
        if (mu != 0.0) {
          buf[i] = t == 1 ? d : mu * buf[i] + d;
          d = c.nesterov ? d + mu * buf[i] : buf[i];
        }
        p[i] -= lr * d;
      }
    }
  }
};

// Largest |a - b| / (abs_tol + rel_tol * |b|) over the slots; <= 1 means within tolerance.
double worst_error(const Layout& l, const std::vector<float>& a, const std::vector<double>& b, double abs_tol,
                   double rel_tol) {
  double worst = 0;
  for (const ParamSlot& s : l.slots)
    for (size_t i = s.offset; i < s.offset + s.numel; ++i)
      worst = std::max(worst, std::abs(double(a[i]) - b[i]) / (abs_tol + rel_tol * std::abs(b[i])));
  return worst;
}

void check_padding(const Layout& l, const std::vector<float>& params, Optimizer& opt) {
  const std::vector<bool> inside = in_slot_mask(l);
  size_t bad_params = 0, bad_state = 0;
  for (size_t i = 0; i < params.size(); ++i)
    if (!inside[i] && std::memcmp(&params[i], &kParamPad, sizeof(float)) != 0) ++bad_params;
  for (auto& [name, buf] : opt.state()) {
    REQUIRE(buf->size() == l.flat_size);
    for (size_t i = 0; i < buf->size(); ++i)
      if (!inside[i] && (*buf)[i] != 0.0f) ++bad_state;
  }
  CHECK(bad_params == 0);
  CHECK(bad_state == 0);
}

// Runs `steps` steps of the optimizer and the reference on the same gradients, at a varying learning rate
// (as a schedule would give), and returns the worst normalised error.
template <class Ref>
double run_against_reference(const OptimizerConfig& cfg, Ref ref, int steps, double abs_tol, double rel_tol) {
  const Layout l = make_layout();
  std::vector<float> params = random_buffer(l, 1, 1.0f, kParamPad);
  std::vector<double> ref_params(params.begin(), params.end());
  auto opt = make_optimizer(cfg, l.slots, l.flat_size);
  for (int s = 0; s < steps; ++s) {
    // Gradients of mixed magnitudes: some steps small enough that eps matters in AdamW.
    const float scale = s % 2 == 0 ? 0.5f : 1e-4f;
    const std::vector<float> grads = random_buffer(l, 100 + s, scale, kGradPad);
    const float lr = cfg.lr * (1.0f - 0.1f * s);
    opt->step(params.data(), grads.data(), lr, nullptr);
    ref.step(l, ref_params, grads, lr);
  }
  CHECK(opt->step_count() == steps);
  check_padding(l, params, *opt);
  return worst_error(l, params, ref_params, abs_tol, rel_tol);
}

}  // namespace

TEST_CASE("optimizer: decays() follows the kind and the config flags") {
  OptimizerConfig c;
  CHECK(decays(c, ParamKind::weight));
  CHECK_FALSE(decays(c, ParamKind::bias));
  CHECK_FALSE(decays(c, ParamKind::norm));
  CHECK_FALSE(decays(c, ParamKind::embedding));
  CHECK_FALSE(decays(c, ParamKind::other));
  c.decay_biases = c.decay_norms = c.decay_embeddings = true;
  CHECK(decays(c, ParamKind::bias));
  CHECK(decays(c, ParamKind::norm));
  CHECK(decays(c, ParamKind::embedding));
  CHECK_FALSE(decays(c, ParamKind::other));
}

TEST_CASE("optimizer: AdamW matches a float64 reference over several steps") {
  OptimizerConfig c;
  c.name = "adamw";
  c.lr = 1e-2f;
  c.weight_decay = 0.1f;
  SUBCASE("default decay mask") {}
  SUBCASE("everything but other decays") { c.decay_biases = c.decay_norms = c.decay_embeddings = true; }
  SUBCASE("no weight decay, other betas") {
    c.weight_decay = 0.0f;
    c.beta1 = 0.5f;
    c.beta2 = 0.9f;
    c.eps = 1e-6f;
  }
  RefAdamW ref;
  ref.c = c;
  // Each step moves a parameter by about lr; float rounding of the update and of p gives ~1e-7 relative.
  CHECK(run_against_reference(c, ref, 6, 1e-6, 1e-5) <= 1.0);
}

TEST_CASE("optimizer: SGD variants match a float64 reference over several steps") {
  OptimizerConfig c;
  c.name = "sgd";
  c.lr = 0.05f;
  c.weight_decay = 0.0f;
  SUBCASE("plain") { c.momentum = 0.0f; }
  SUBCASE("plain + weight decay") {
    c.momentum = 0.0f;
    c.weight_decay = 0.01f;
  }
  SUBCASE("momentum") { c.momentum = 0.9f; }
  SUBCASE("momentum + weight decay") {
    c.momentum = 0.9f;
    c.weight_decay = 0.01f;
    c.decay_norms = true;
  }
  SUBCASE("nesterov") {
    c.momentum = 0.8f;
    c.nesterov = true;
  }
  SUBCASE("nesterov + weight decay") {
    c.momentum = 0.8f;
    c.nesterov = true;
    c.weight_decay = 0.05f;
    c.decay_biases = c.decay_embeddings = true;
  }
  RefSgd ref;
  ref.c = c;
  CHECK(run_against_reference(c, ref, 6, 1e-6, 1e-5) <= 1.0);
}

TEST_CASE("optimizer: weight decay touches only the decaying kinds") {
  const Layout l = make_layout();
  for (const char* name : {"adamw", "sgd"}) {
    CAPTURE(name);
    OptimizerConfig c;
    c.name = name;
    c.weight_decay = 0.5f;
    c.decay_norms = true;  // bias, embedding, other stay undecayed
    const float lr = 0.1f;
    std::vector<float> params = random_buffer(l, 7, 1.0f, kParamPad);
    const std::vector<float> before = params;
    // Zero gradients: AdamW's Adam term is exactly 0 / (0 + eps) = 0 and SGD's gradient is only wd * p,
    // so each slot is either scaled by (1 - lr*wd) or left bit-identical.
    std::vector<float> grads(l.flat_size, kGradPad);
    for (const ParamSlot& s : l.slots) std::fill(grads.begin() + s.offset, grads.begin() + s.offset + s.numel, 0.0f);
    auto opt = make_optimizer(c, l.slots, l.flat_size);
    opt->step(params.data(), grads.data(), lr, nullptr);
    for (const ParamSlot& s : l.slots) {
      CAPTURE(s.name);
      const bool decayed = s.kind == ParamKind::weight || s.kind == ParamKind::norm;
      size_t wrong = 0;
      for (size_t i = s.offset; i < s.offset + s.numel; ++i) {
        const float expect = decayed ? before[i] * (1.0f - lr * c.weight_decay) : before[i];
        if (std::abs(params[i] - expect) > 1e-6f * std::abs(expect)) ++wrong;
        if (!decayed && params[i] != before[i]) ++wrong;
      }
      CHECK(wrong == 0);
    }
    check_padding(l, params, *opt);
  }
}

TEST_CASE("optimizer: state round trip resumes bit-identically") {
  const Layout l = make_layout();
  for (const char* name : {"adamw", "sgd"}) {
    CAPTURE(name);
    OptimizerConfig c;
    c.name = name;
    c.weight_decay = 0.01f;
    std::vector<float> a = random_buffer(l, 3, 1.0f, kParamPad);
    auto opt_a = make_optimizer(c, l.slots, l.flat_size);
    for (int s = 0; s < 3; ++s) opt_a->step(a.data(), random_buffer(l, 50 + s, 1.0f, kGradPad).data(), 1e-2f, nullptr);
    // "Checkpoint": copy the parameters, the named state and the step count into a fresh optimizer.
    std::vector<float> b = a;
    auto opt_b = make_optimizer(c, l.slots, l.flat_size);
    auto sa = opt_a->state(), sb = opt_b->state();
    REQUIRE(sa.size() == sb.size());
    for (size_t i = 0; i < sa.size(); ++i) {
      REQUIRE(sa[i].first == sb[i].first);
      *sb[i].second = *sa[i].second;
    }
    opt_b->set_step_count(opt_a->step_count());
    for (int s = 3; s < 5; ++s) {
      const std::vector<float> g = random_buffer(l, 50 + s, 1.0f, kGradPad);
      opt_a->step(a.data(), g.data(), 1e-2f, nullptr);
      opt_b->step(b.data(), g.data(), 1e-2f, nullptr);
    }
    CHECK(opt_b->step_count() == 5);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("optimizer: state buffers are named as torch names them") {
  const Layout l = make_layout();
  OptimizerConfig c;
  auto adamw = make_optimizer(c, l.slots, l.flat_size);
  auto st = adamw->state();
  REQUIRE(st.size() == 2);
  CHECK(st[0].first == "exp_avg");
  CHECK(st[1].first == "exp_avg_sq");
  c.name = "sgd";
  auto sgd = make_optimizer(c, l.slots, l.flat_size);
  REQUIRE(sgd->state().size() == 1);
  CHECK(sgd->state()[0].first == "momentum_buffer");
  CHECK(sgd->state()[0].second->size() == l.flat_size);
  c.momentum = 0.0f;
  CHECK(make_optimizer(c, l.slots, l.flat_size)->state().empty());
}

TEST_CASE("optimizer: config and layout validation") {
  const Layout l = make_layout();
  auto message_of = [&](const OptimizerConfig& c) -> std::string {
    try {
      make_optimizer(c, l.slots, l.flat_size);
    } catch (const Error& e) {
      CHECK(e.op() == "optimizer");
      return e.what();
    }
    return "";
  };
  OptimizerConfig c;
  c.name = "adam";
  CHECK(message_of(c) == "[optimizer] unknown optimizer 'adam' (known: adamw, sgd)");
  auto expect_field = [&](OptimizerConfig bad, const char* field) {
    CAPTURE(field);
    const std::string msg = message_of(bad);
    CHECK(msg.find(field) != std::string::npos);
  };
  OptimizerConfig bad;
  bad.lr = -1.0f;
  expect_field(bad, "lr");
  bad = {};
  bad.lr = std::numeric_limits<float>::quiet_NaN();
  expect_field(bad, "lr");
  bad = {};
  bad.beta1 = 1.0f;
  expect_field(bad, "beta1");
  bad = {};
  bad.beta2 = -0.1f;
  expect_field(bad, "beta2");
  bad = {};
  bad.eps = 0.0f;
  expect_field(bad, "eps");
  bad = {};
  bad.weight_decay = -0.01f;
  expect_field(bad, "weight_decay");
  bad = {};
  bad.name = "sgd";
  bad.momentum = -0.5f;
  expect_field(bad, "momentum");
  bad = {};
  bad.name = "sgd";
  bad.momentum = 0.0f;
  bad.nesterov = true;
  expect_field(bad, "nesterov");

  OptimizerConfig ok;
  std::vector<ParamSlot> slots = l.slots;
  slots.back().offset = l.flat_size;  // one element past the end
  CHECK_THROWS_AS(make_optimizer(ok, slots, l.flat_size), Error);
  slots = l.slots;
  slots[1].offset = slots[0].offset;  // overlaps slot 0
  CHECK_THROWS_AS(make_optimizer(ok, slots, l.flat_size), Error);

  auto opt = make_optimizer(ok, l.slots, l.flat_size);
  std::vector<float> p(l.flat_size, 0.0f), g(l.flat_size, 0.0f);
  CHECK_THROWS_AS(opt->step(p.data(), g.data(), -1.0f, nullptr), Error);
  CHECK(opt->step_count() == 0);
  CHECK_THROWS_AS(opt->set_step_count(-1), Error);
}

TEST_CASE("optimizer: a thread pool gives bit-identical results") {
  const Layout l = make_layout();
  ThreadPool pool(4);
  for (const char* name : {"adamw", "sgd"}) {
    CAPTURE(name);
    OptimizerConfig c;
    c.name = name;
    c.weight_decay = 0.01f;
    c.nesterov = true;
    std::vector<float> serial = random_buffer(l, 21, 1.0f, kParamPad), parallel = serial;
    auto opt_s = make_optimizer(c, l.slots, l.flat_size);
    auto opt_p = make_optimizer(c, l.slots, l.flat_size);
    for (int s = 0; s < 3; ++s) {
      const std::vector<float> g = random_buffer(l, 200 + s, 1.0f, kGradPad);
      opt_s->step(serial.data(), g.data(), 1e-2f, nullptr);
      opt_p->step(parallel.data(), g.data(), 1e-2f, &pool);
    }
    CHECK(std::memcmp(serial.data(), parallel.data(), serial.size() * sizeof(float)) == 0);
    check_padding(l, parallel, *opt_p);
  }
  std::vector<float> g_serial = random_buffer(l, 22, 1.0f, kGradPad), g_parallel = g_serial;
  const float n_serial = global_grad_norm(g_serial.data(), l.slots, nullptr);
  CHECK(global_grad_norm(g_parallel.data(), l.slots, &pool) == n_serial);  // exactly: same summation order
  CHECK(clip_grad_norm(g_serial.data(), l.slots, 1.0f, nullptr) == n_serial);
  CHECK(clip_grad_norm(g_parallel.data(), l.slots, 1.0f, &pool) == n_serial);
  CHECK(std::memcmp(g_serial.data(), g_parallel.data(), g_serial.size() * sizeof(float)) == 0);
}

TEST_CASE("optimizer: global_grad_norm matches a float64 reference and skips padding") {
  const Layout l = make_layout();
  const std::vector<float> g = random_buffer(l, 11, 3.0f, kGradPad);
  double ref = 0;
  for (const ParamSlot& s : l.slots)
    for (size_t i = s.offset; i < s.offset + s.numel; ++i) ref += double(g[i]) * g[i];
  ref = std::sqrt(ref);
  const float norm = global_grad_norm(g.data(), l.slots, nullptr);
  CHECK(std::isfinite(norm));
  CHECK(norm == doctest::Approx(ref).epsilon(1e-7));
  CHECK(global_grad_norm(g.data(), {}, nullptr) == 0.0f);
}

TEST_CASE("optimizer: clip_grad_norm below, above and at non-finite norms") {
  const Layout l = make_layout();
  const std::vector<float> g0 = random_buffer(l, 12, 1.0f, kGradPad);
  const float norm0 = global_grad_norm(g0.data(), l.slots, nullptr);
  REQUIRE(norm0 > 1.0f);

  SUBCASE("below the threshold: returned, nothing scaled") {
    std::vector<float> g = g0;
    CHECK(clip_grad_norm(g.data(), l.slots, norm0 * 2.0f, nullptr) == norm0);
    CHECK(std::memcmp(g.data(), g0.data(), g.size() * sizeof(float)) == 0);
  }
  SUBCASE("above the threshold: scaled by max_norm / (norm + 1e-6)") {
    std::vector<float> g = g0;
    const float max_norm = norm0 / 4.0f;
    CHECK(clip_grad_norm(g.data(), l.slots, max_norm, nullptr) == norm0);
    const double scale = double(max_norm) / (double(norm0) + 1e-6);
    const std::vector<bool> inside = in_slot_mask(l);
    size_t wrong = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      if (!inside[i]) {
        if (!std::isnan(g[i])) ++wrong;  // padding untouched
      } else if (std::abs(g[i] - g0[i] * scale) > 1e-6 * std::abs(g0[i] * scale)) {
        ++wrong;
      }
    }
    CHECK(wrong == 0);
    CHECK(global_grad_norm(g.data(), l.slots, nullptr) == doctest::Approx(max_norm).epsilon(1e-5));
  }
  SUBCASE("non-finite: returned, nothing scaled") {
    for (float bad : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
      std::vector<float> g = g0;
      g[l.slots[3].offset + 100] = bad;
      const std::vector<float> before = g;
      const float n = clip_grad_norm(g.data(), l.slots, 1.0f, nullptr);
      CHECK_FALSE(std::isfinite(n));
      CHECK(std::isnan(n) == std::isnan(bad));
      CHECK(std::memcmp(g.data(), before.data(), g.size() * sizeof(float)) == 0);
    }
  }
  SUBCASE("max_norm must be positive") {
    std::vector<float> g = g0;
    CHECK_THROWS_AS(clip_grad_norm(g.data(), l.slots, 0.0f, nullptr), Error);
    CHECK_THROWS_AS(clip_grad_norm(g.data(), l.slots, std::numeric_limits<float>::quiet_NaN(), nullptr), Error);
  }
}

// ---- learning-rate schedules ---------------------------------------------------------------------

TEST_CASE("lr_schedule: constant and warmup") {
  ScheduleConfig c;
  CHECK(learning_rate(c, 0.1f, 0) == 0.1f);
  CHECK(learning_rate(c, 0.1f, 1000000) == 0.1f);
  for (const char* name : {"constant", "warmup"}) {
    CAPTURE(name);
    c.name = name;
    c.warmup_steps = 10;
    CHECK(learning_rate(c, 0.1f, 0) == doctest::Approx(0.01));
    CHECK(learning_rate(c, 0.1f, 4) == doctest::Approx(0.05));
    CHECK(learning_rate(c, 0.1f, 9) == 0.1f);   // warmup - 1 reaches the base rate
    CHECK(learning_rate(c, 0.1f, 10) == 0.1f);  // warmup
    CHECK(learning_rate(c, 0.1f, 500) == 0.1f);
  }
}

TEST_CASE("lr_schedule: cosine at key steps") {
  ScheduleConfig c;
  c.name = "cosine";
  c.warmup_steps = 10;
  c.total_steps = 110;
  c.min_lr = 0.01f;
  const float base = 0.1f;
  CHECK(learning_rate(c, base, 0) == doctest::Approx(0.01));
  CHECK(learning_rate(c, base, 9) == doctest::Approx(0.1));
  CHECK(learning_rate(c, base, 10) == doctest::Approx(0.1));   // decay starts at base
  CHECK(learning_rate(c, base, 60) == doctest::Approx(0.055)); // middle: halfway between base and min
  const double quarter = 0.01 + 0.09 * 0.5 * (1.0 + std::cos(3.14159265358979323846 * 0.25));
  CHECK(learning_rate(c, base, 35) == doctest::Approx(quarter));
  CHECK(learning_rate(c, base, 110) == doctest::Approx(0.01));  // total
  CHECK(learning_rate(c, base, 100000) == 0.01f);               // beyond: floored at min_lr
  c.warmup_steps = 0;
  c.min_lr = 0.0f;
  CHECK(learning_rate(c, base, 0) == base);
  CHECK(learning_rate(c, base, 55) == doctest::Approx(0.05));
  CHECK(learning_rate(c, base, 110) == 0.0f);
}

TEST_CASE("lr_schedule: linear at key steps") {
  ScheduleConfig c;
  c.name = "linear";
  c.warmup_steps = 4;
  c.total_steps = 104;
  c.min_lr = 0.0f;
  const float base = 1.0f;
  CHECK(learning_rate(c, base, 0) == doctest::Approx(0.25));
  CHECK(learning_rate(c, base, 3) == 1.0f);
  CHECK(learning_rate(c, base, 4) == 1.0f);
  CHECK(learning_rate(c, base, 54) == doctest::Approx(0.5));
  CHECK(learning_rate(c, base, 79) == doctest::Approx(0.25));
  CHECK(learning_rate(c, base, 104) == 0.0f);
  CHECK(learning_rate(c, base, 200) == 0.0f);
  c.min_lr = 0.2f;
  CHECK(learning_rate(c, base, 54) == doctest::Approx(0.6));
  CHECK(learning_rate(c, base, 104) == doctest::Approx(0.2));
  CHECK(learning_rate(c, base, 105) == doctest::Approx(0.2));
}

TEST_CASE("lr_schedule: validation names the field") {
  auto message_of = [](const ScheduleConfig& c, float base, int64_t step) -> std::string {
    try {
      learning_rate(c, base, step);
    } catch (const Error& e) {
      CHECK(e.op() == "lr_schedule");
      return e.what();
    }
    return "";
  };
  ScheduleConfig c;
  c.name = "exponential";
  CHECK(message_of(c, 0.1f, 0).find("unknown schedule 'exponential'") != std::string::npos);
  c = {};
  c.warmup_steps = -1;
  CHECK(message_of(c, 0.1f, 0).find("warmup_steps") != std::string::npos);
  c = {};
  c.min_lr = -0.1f;
  CHECK(message_of(c, 0.1f, 0).find("min_lr") != std::string::npos);
  c = {};
  c.total_steps = -5;
  CHECK(message_of(c, 0.1f, 0).find("total_steps") != std::string::npos);
  c = {};
  c.name = "cosine";
  c.warmup_steps = 10;
  c.total_steps = 10;
  CHECK(message_of(c, 0.1f, 0).find("total_steps") != std::string::npos);
  c.total_steps = 100;
  c.min_lr = 0.5f;
  CHECK(message_of(c, 0.1f, 0).find("min_lr") != std::string::npos);
  c.min_lr = 0.0f;
  CHECK(message_of(c, 0.1f, -1).find("step") != std::string::npos);
  CHECK(message_of(c, -0.1f, 0).find("base lr") != std::string::npos);
  CHECK(message_of(c, 0.1f, 0).empty());
  CHECK_NOTHROW(validate_schedule(c));
}
