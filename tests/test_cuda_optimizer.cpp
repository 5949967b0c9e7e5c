// The device optimizer (runtime/device_optimizer.h) against the host Optimizer (runtime/optimizer.h, itself
// tested against float64 torch references in test_optimizer.cpp): AdamW and SGD updates, gradient norm and
// clipping, skipped steps, the loss-scale schedule, checkpoint state round trips and a CUDA-graph replay.
// Without XF_TEST_DEVICE=cuda and a GPU the device tests report as skipped; the config and dispatch checks
// at the end run everywhere.
#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "runtime/device_optimizer.h"
#include "runtime/error.h"
#include "runtime/optimizer.h"
#include "runtime/tensor.h"
#include "tests/cuda_testing.h"
#include "tests/optimizer_testing.h"

using namespace xfr;
using namespace xfr::testing;

namespace {

// Values the optimizer must never touch: parameter padding holds a sentinel, gradient padding NaN, so any
// read of it would poison a norm or an update.
constexpr float kParamPad = 777.0f;
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

// Slots of 1, 31, 257, 1000 elements (odd; around the 32-lane warp, the 256-thread block and the float4
// width), 40000 (more than one 16Ki-element chunk, with a ragged tail), an empty one, and a 33-element slot
// at an offset that is not a multiple of 4 (not 16-byte aligned: the kernels' scalar path; a ParamStore
// never lays one out so, but the Optimizer accepts it). Kinds vary so that every decay flag matters.
Layout make_layout() {
  struct Spec {
    size_t numel;
    ParamKind kind;
    size_t misalign;  // elements added to the 16-aligned offset
  };
  const Spec specs[] = {{1, ParamKind::bias, 0},       {31, ParamKind::weight, 0},   {257, ParamKind::norm, 0},
                        {0, ParamKind::weight, 0},     {1000, ParamKind::embedding, 0}, {40000, ParamKind::weight, 0},
                        {33, ParamKind::bias, 3},      {1, ParamKind::other, 0}};
  Layout l;
  size_t offset = 16;  // leading padding
  int i = 0;
  for (const Spec& s : specs) {
    ParamSlot slot;
    slot.name = "p" + std::to_string(i++);
    slot.kind = s.kind;
    slot.offset = offset + s.misalign;
    slot.numel = s.numel;
    l.slots.push_back(slot);
    offset = (slot.offset + s.numel + 15) / 16 * 16 + 16;  // next multiple of 16, then 16 of padding
  }
  l.flat_size = offset + 7;  // trailing padding, not a multiple of 4
  return l;
}

Tensor to_device(const std::vector<float>& v) {
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}).to_device(cuda_test_ctx());
}

void upload(const Tensor& dst, const std::vector<float>& v) {
  REQUIRE(static_cast<size_t>(dst.numel()) == v.size());
  cuda_test_ctx()->copy(dst.raw_data(), v.data(), v.size() * sizeof(float), CopyKind::host_to_device);
  cuda_test_ctx()->synchronize();
}

std::vector<float> download(const Tensor& t) {
  const Tensor h = t.to_host();
  const float* p = h.data<float>();
  return std::vector<float>(p, p + h.numel());
}

std::vector<double> slot_values(const Layout& l, const std::vector<float>& v) {
  std::vector<double> out;
  for (const ParamSlot& s : l.slots)
    for (size_t i = 0; i < s.numel; ++i) out.push_back(v[s.offset + i]);
  return out;
}

// Device result vs host result inside the slots, and the padding exactly `pad`. The kernels round every
// operation as the host code does, so the two should agree to the bit; the tolerance (1e-6 relative, about
// 8 float ulps, plus 1e-7 absolute near zero) allows only the one known difference: CUDA's double pow() in
// a bias correction may round a step size to the neighbouring float, a 6e-8 relative change of one update.
// The count of bit-identical elements is reported for the record.
void check_matches(const Layout& l, const std::vector<float>& got, const std::vector<float>& want, float pad,
                   const std::string& what) {
  REQUIRE(got.size() == want.size());
  check_close(slot_values(l, got), slot_values(l, want), 1e-7, 1e-6, what);
  const std::vector<bool> inside = in_slot_mask(l);
  size_t pad_changed = 0, differ = 0, total = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!inside[i]) {
      if (std::memcmp(&got[i], &pad, sizeof pad) != 0) ++pad_changed;
      continue;
    }
    ++total;
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) ++differ;
  }
  CHECK_MESSAGE(pad_changed == 0, what << ": " << pad_changed << " padding elements changed");
  MESSAGE(what << ": " << differ << " of " << total << " elements differ from the host in their bits");
}

std::vector<float> state_of(Optimizer& opt, const std::string& name) {
  for (const auto& [n, v] : opt.state())
    if (n == name) return *v;
  FAIL("no state buffer " << name);
  return {};
}

OptimizerConfig adamw_config(float wd, bool decay_all) {
  OptimizerConfig c;
  c.name = "adamw";
  c.weight_decay = wd;
  c.decay_biases = c.decay_norms = c.decay_embeddings = decay_all;
  return c;
}

OptimizerConfig sgd_config(float momentum, bool nesterov, float wd, bool decay_biases) {
  OptimizerConfig c;
  c.name = "sgd";
  c.momentum = momentum;
  c.nesterov = nesterov;
  c.weight_decay = wd;
  c.decay_biases = decay_biases;
  return c;
}

// The 16-bit parameter mirror step() rewrites: inside the slots, the device's updated parameters rounded to the
// mirror's dtype (as the executor's conversion rounds them), bit for bit; the padding as it was (`pad`, rounded).
void check_mirror(const Layout& l, const Tensor& dmirror, const Tensor& dparams, float pad, const std::string& what) {
  const int64_t n = static_cast<int64_t>(l.flat_size);
  const std::vector<double> got = dmirror.to_host().to(DType::f32).to_doubles();
  const std::vector<double> want = Tensor::from_vector(download(dparams), {n}).to(dmirror.dtype()).to(DType::f32).to_doubles();
  const double pad16 = Tensor::from_vector(std::vector<float>{pad}, {1}).to(dmirror.dtype()).to(DType::f32).to_doubles()[0];
  const std::vector<bool> inside = in_slot_mask(l);
  size_t differ = 0, pad_changed = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (inside[i]) differ += got[i] != want[i];
    else pad_changed += got[i] != pad16;
  }
  CHECK_MESSAGE(differ == 0, what << ": " << differ << " mirror elements are not the rounded parameters");
  CHECK_MESSAGE(pad_changed == 0, what << ": " << pad_changed << " mirror padding elements changed");
}

// `steps` updates on the host and on the device from the same parameters and gradients (new ones each step,
// of growing magnitude, under a changing learning rate), parameters compared after each, state at the end.
// mirror bf16 or f16: each device step also rewrites a 16-bit parameter mirror (checked after each step); f32: none.
void check_against_host(const OptimizerConfig& config, int steps, const std::string& what,
                        DType mirror = DType::f32) {
  DeviceContext* ctx = cuda_test_ctx();
  const Layout l = make_layout();
  auto host = make_optimizer(config, l.slots, l.flat_size);
  auto dev = make_device_optimizer(*ctx, *host);
  std::vector<float> params = random_buffer(l, 1, 1.0f, kParamPad);
  const Tensor dparams = to_device(params);
  const Tensor dgrads = Tensor::empty({static_cast<int64_t>(l.flat_size)}, DType::f32, ctx);
  // The mirror starts as the rounded initial parameters, padding (the sentinel) included.
  const Tensor dmirror = mirror == DType::f32 ? Tensor() : to_device(params).to(mirror);
  const DeviceOptimizer::ParamMirror pm = dmirror.defined() ? DeviceOptimizer::ParamMirror{dmirror.raw_data(), mirror}
                                                            : DeviceOptimizer::ParamMirror{};
  for (int k = 0; k < steps; ++k) {
    const std::vector<float> grads = random_buffer(l, 100 + k, 0.5f * (k + 1), kNaN);
    const float lr = 1e-2f * static_cast<float>(k + 1);  // a schedule: a new lr every step
    host->step(params.data(), grads.data(), lr, nullptr);
    upload(dgrads, grads);
    dev->set_lr(lr);
    dev->step(dparams.data<float>(), dgrads.data<float>(), pm);
    check_matches(l, download(dparams), params, kParamPad, what + ": params after step " + std::to_string(k + 1));
    if (dmirror.defined()) check_mirror(l, dmirror, dparams, kParamPad, what + ": mirror after step " + std::to_string(k + 1));
  }
  CHECK(dev->step_count() == host->step_count());
  auto back = make_optimizer(config, l.slots, l.flat_size);
  dev->download_state(*back);
  CHECK(back->step_count() == host->step_count());
  REQUIRE(back->state().size() == host->state().size());
  for (const auto& [name, v] : host->state())
    check_matches(l, state_of(*back, name), *v, 0.0f, what + ": " + name);
}

}  // namespace

XF_CUDA_TEST_CASE("device optimizer: AdamW matches the host step for step, with and without decay per slot kind") {
  check_against_host(adamw_config(0.1f, false), 5, "adamw wd=0.1 (weights only)");
  check_against_host(adamw_config(0.1f, true), 5, "adamw wd=0.1 (every kind but other)");
  check_against_host(adamw_config(0.0f, false), 3, "adamw wd=0");
  OptimizerConfig c = adamw_config(0.05f, false);
  c.beta1 = 0.8f;
  c.beta2 = 0.95f;  // bias corrections far from 1 over the first steps
  c.eps = 1e-6f;
  check_against_host(c, 4, "adamw beta 0.8/0.95 eps=1e-6");
  check_against_host(adamw_config(0.1f, false), 3, "adamw wd=0.1, bf16 mirror", DType::bf16);
  check_against_host(adamw_config(0.1f, true), 3, "adamw wd=0.1, f16 mirror", DType::f16);
}

XF_CUDA_TEST_CASE("device optimizer: SGD (plain, momentum, Nesterov) matches the host step for step") {
  check_against_host(sgd_config(0.0f, false, 0.01f, false), 3, "sgd plain wd=0.01");
  check_against_host(sgd_config(0.9f, false, 0.0f, false), 4, "sgd momentum=0.9");
  check_against_host(sgd_config(0.9f, true, 0.05f, true), 4, "sgd nesterov wd=0.05 (biases decay)");
  check_against_host(sgd_config(0.5f, false, 0.02f, false), 4, "sgd momentum=0.5 wd=0.02");
  check_against_host(sgd_config(0.0f, false, 0.01f, false), 2, "sgd plain, bf16 mirror", DType::bf16);
  check_against_host(sgd_config(0.9f, true, 0.05f, true), 2, "sgd nesterov, f16 mirror", DType::f16);
}

XF_CUDA_TEST_CASE("device optimizer: gradient norm and clipping match clip_grad_norm; the norm is deterministic") {
  DeviceContext* ctx = cuda_test_ctx();
  const Layout l = make_layout();
  const OptimizerConfig config = adamw_config(0.01f, false);
  // 0.25: as 1/4 gradient-accumulation steps (a power of two, so the host's pre-multiplied gradients are
  // exact). Norms of ~ sqrt(41k / 3) * 0.25 ~ 29: max_norm 1 clips, 1e4 does not.
  const float multiplier = 0.25f;
  for (const float max_norm : {1.0f, 1e4f}) {
    CAPTURE(max_norm);
    auto host = make_optimizer(config, l.slots, l.flat_size);
    auto dev = make_device_optimizer(*ctx, *host);
    dev->set_grad_multiplier(multiplier);
    std::vector<float> params = random_buffer(l, 3, 1.0f, kParamPad);
    const Tensor dparams = to_device(params);
    for (int k = 0; k < 3; ++k) {
      const std::vector<float> raw = random_buffer(l, 40 + k, 1.0f, kNaN);
      const Tensor dgrads = to_device(raw);
      std::vector<float> g = raw;
      for (float& x : g) x *= multiplier;
      const float lr = 1e-2f;
      const float host_norm = clip_grad_norm(g.data(), l.slots, max_norm, nullptr);
      host->step(params.data(), g.data(), lr, nullptr);

      dev->set_lr(lr);
      dev->clip_grad_norm(dgrads.data<float>(), max_norm);
      const StepScalars s = dev->read_scalars();
      // The same double sums in another order: equal to well within one float ulp (6e-8).
      CHECK(s.grad_norm == doctest::Approx(host_norm).epsilon(1e-6));
      const double want_clip = host_norm > max_norm ? max_norm / (static_cast<double>(host_norm) + 1e-6) : 1.0;
      CHECK(s.clip_factor == doctest::Approx(want_clip).epsilon(1e-6));
      CHECK(s.found_inf == 0);
      dev->step(dparams.data<float>(), dgrads.data<float>());
      // A clip factor one ulp away rounds some gradients differently: still far inside the tolerance.
      check_matches(l, download(dparams), params, kParamPad, "clipped adamw step " + std::to_string(k + 1));
      const StepScalars after = dev->read_scalars();
      CHECK(after.clip_factor == 1.0f);  // per-step fields reset by the step
      CHECK(after.step_count == k + 1);
    }
  }
  // Deterministic: the same bits every time; equal to the host's global_grad_norm; padding (NaN) unread.
  auto host = make_optimizer(config, l.slots, l.flat_size);
  auto dev = make_device_optimizer(*ctx, *host);
  const std::vector<float> raw = random_buffer(l, 77, 3.0f, kNaN);
  const Tensor dgrads = to_device(raw);
  dev->grad_norm(dgrads.data<float>());
  const float first = dev->last_grad_norm();
  for (int i = 0; i < 5; ++i) {
    dev->grad_norm(dgrads.data<float>());
    const float again = dev->last_grad_norm();
    CHECK(std::memcmp(&first, &again, sizeof first) == 0);
  }
  CHECK(std::isfinite(first));
  CHECK(first == doctest::Approx(global_grad_norm(raw.data(), l.slots, nullptr)).epsilon(1e-6));
  CHECK(dev->read_scalars().clip_factor == 1.0f);  // grad_norm alone never clips
}

XF_CUDA_TEST_CASE("device optimizer: found_inf skips the whole update (params, state and step count unchanged)") {
  DeviceContext* ctx = cuda_test_ctx();
  const Layout l = make_layout();
  const OptimizerConfig config = adamw_config(0.1f, false);
  auto host = make_optimizer(config, l.slots, l.flat_size);
  auto dev = make_device_optimizer(*ctx, *host);
  std::vector<float> params = random_buffer(l, 5, 1.0f, kParamPad);
  const Tensor dparams = to_device(params);
  dev->set_lr(1e-2f);
  int64_t skipped = 0;
  for (const float bad : {kNaN, kInf, -kInf}) {
    CAPTURE(bad);
    std::vector<float> grads = random_buffer(l, 6, 1.0f, kNaN);
    grads[l.slots[5].offset + 12345] = bad;  // inside the 40000-element slot
    const Tensor dgrads = to_device(grads);
    dev->grad_norm(dgrads.data<float>());
    const StepScalars s = dev->read_scalars();
    CHECK(s.found_inf == 1);
    CHECK_FALSE(std::isfinite(s.grad_norm));
    dev->step(dparams.data<float>(), dgrads.data<float>());
    ++skipped;
    const StepScalars after = dev->read_scalars();
    CHECK(after.step_count == 0);
    CHECK(after.last_step_skipped == 1);
    CHECK(after.skipped_steps == skipped);
    CHECK(after.found_inf == 0);  // consumed by the step
    CHECK(download(dparams) == std::vector<float>(params));
  }
  // Set by another kernel (here a copy) rather than by grad_norm: skipped just the same.
  const std::vector<float> clean = random_buffer(l, 8, 1.0f, kNaN);
  const Tensor dclean = to_device(clean);
  const int32_t one = 1;
  ctx->copy(reinterpret_cast<char*>(dev->scalars_device()) + offsetof(StepScalars, found_inf), &one, sizeof one,
            CopyKind::host_to_device);
  // With a parameter mirror: a skipped step leaves it as it was, too.
  const Tensor dmirror = to_device(params).to(DType::bf16);
  const std::vector<double> mirror_before = dmirror.to_host().to(DType::f32).to_doubles();
  dev->step(dparams.data<float>(), dclean.data<float>(), {dmirror.raw_data(), DType::bf16});
  ++skipped;
  CHECK(dev->read_scalars().skipped_steps == skipped);
  CHECK(download(dparams) == std::vector<float>(params));
  CHECK(dmirror.to_host().to(DType::f32).to_doubles() == mirror_before);
  auto back = make_optimizer(config, l.slots, l.flat_size);
  dev->download_state(*back);
  for (const auto& [name, v] : back->state()) {
    CAPTURE(name);
    CHECK(*v == std::vector<float>(l.flat_size, 0.0f));  // untouched by the skipped steps
  }
  // The next clean step is the first real one (bias correction of step 1), as on the host.
  host->step(params.data(), clean.data(), 1e-2f, nullptr);
  dev->grad_norm(dclean.data<float>());
  dev->step(dparams.data<float>(), dclean.data<float>());
  CHECK(dev->read_scalars().last_step_skipped == 0);
  CHECK(dev->step_count() == 1);
  check_matches(l, download(dparams), params, kParamPad, "first step after skipped ones");
}

XF_CUDA_TEST_CASE("device optimizer: loss scaling halves and skips on overflow, grows after growth_interval clean steps") {
  DeviceContext* ctx = cuda_test_ctx();
  const Layout l = make_layout();
  const OptimizerConfig config = adamw_config(0.1f, false);
  auto host = make_optimizer(config, l.slots, l.flat_size);
  auto dev = make_device_optimizer(*ctx, *host);
  LossScalerConfig sc;
  sc.growth_interval = 3;  // small, so growth shows within a dozen steps
  auto scaler = make_loss_scaler(*ctx, sc);
  LossScalerStats st = scaler->stats();
  CHECK(st.scale == 65536.0f);
  CHECK(st.growth_tracker == 0);
  CHECK(st.overflow_steps == 0);

  std::vector<float> params = random_buffer(l, 9, 1.0f, kParamPad);
  const Tensor dparams = to_device(params);
  const Tensor dgrads = Tensor::empty({static_cast<int64_t>(l.flat_size)}, DType::f32, ctx);
  // The schedule torch's GradScaler follows, kept alongside.
  float scale = 65536.0f;
  int64_t tracker = 0, overflows = 0, clean_steps = 0;
  const bool overflow[] = {false, true, false, false, false, false, true, true, false, false, false, false, false};
  for (size_t k = 0; k < sizeof overflow / sizeof overflow[0]; ++k) {
    CAPTURE(k);
    const std::vector<float> grads = random_buffer(l, 300 + static_cast<uint32_t>(k), 1.0f, kNaN);
    std::vector<float> scaled = grads;  // as the backward of loss * scale gives them: exact, scale is 2^n
    for (float& x : scaled) x *= scale;
    if (overflow[k]) scaled[l.slots[4].offset + 7] = k % 2 ? kInf : kNaN;
    upload(dgrads, scaled);
    const float lr = 1e-2f;
    dev->set_lr(lr);
    dev->grad_norm(dgrads.data<float>(), scaler.get());
    const StepScalars s = dev->read_scalars();
    CHECK(s.found_inf == (overflow[k] ? 1 : 0));
    if (!overflow[k]) {
      CHECK(s.inv_loss_scale == 1.0f / scale);
      // The norm of the unscaled gradients, as after GradScaler.unscale_.
      CHECK(s.grad_norm == doctest::Approx(global_grad_norm(grads.data(), l.slots, nullptr)).epsilon(1e-6));
    }
    dev->step(dparams.data<float>(), dgrads.data<float>());
    scaler->update(*dev);

    if (overflow[k]) {
      scale *= 0.5f;
      tracker = 0;
      ++overflows;
    } else {
      host->step(params.data(), grads.data(), lr, nullptr);
      ++clean_steps;
      if (++tracker == sc.growth_interval) {
        scale *= 2.0f;
        tracker = 0;
      }
    }
    st = scaler->stats();
    CHECK(st.scale == scale);
    CHECK(st.growth_tracker == tracker);
    CHECK(st.overflow_steps == overflows);
    CHECK(dev->read_scalars().last_step_skipped == (overflow[k] ? 1 : 0));
    check_matches(l, download(dparams), params, kParamPad, "loss-scaled step " + std::to_string(k));
  }
  CHECK(dev->step_count() == clean_steps);
  CHECK(host->step_count() == clean_steps);

  // set_state restores a checkpointed scale and tracker.
  scaler->set_state(1024.0f, 2);
  st = scaler->stats();
  CHECK(st.scale == 1024.0f);
  CHECK(st.growth_tracker == 2);
  CHECK_THROWS_AS(scaler->set_state(0.0f, 0), Error);
  CHECK_THROWS_AS(scaler->set_state(1.0f, -1), Error);
}

XF_CUDA_TEST_CASE("device optimizer: the default loss scaler doubles after 2000 clean steps and never grows to inf") {
  DeviceContext* ctx = cuda_test_ctx();
  Layout l;  // one 4-element slot: the schedule is what is tested, not the update
  l.slots.push_back(ParamSlot{"w", ParamKind::weight, 0, 4});
  l.flat_size = 4;
  auto host = make_optimizer(adamw_config(0.0f, false), l.slots, l.flat_size);
  auto dev = make_device_optimizer(*ctx, *host);
  auto scaler = make_loss_scaler(*ctx);  // defaults: 2^16, x2 after 2000 clean steps, x0.5 on overflow
  const Tensor dparams = to_device(std::vector<float>{1, 2, 3, 4});
  const Tensor dgrads = to_device(std::vector<float>{0.5f, -0.5f, 0.25f, 0});
  dev->set_lr(1e-3f);
  auto clean_step = [&] {
    dev->grad_norm(dgrads.data<float>(), scaler.get());
    dev->step(dparams.data<float>(), dgrads.data<float>());
    scaler->update(*dev);
  };
  for (int i = 0; i < 1999; ++i) clean_step();
  LossScalerStats st = scaler->stats();
  CHECK(st.scale == 65536.0f);
  CHECK(st.growth_tracker == 1999);
  clean_step();
  st = scaler->stats();
  CHECK(st.scale == 131072.0f);
  CHECK(st.growth_tracker == 0);
  CHECK(dev->step_count() == 2000);

  // A scale that would grow to inf stays where it is (torch keeps the old one).
  LossScalerConfig big;
  big.init_scale = std::ldexp(1.0f, 127);  // 2^127: the largest power of two a float holds
  big.growth_interval = 1;
  auto near_max = make_loss_scaler(*ctx, big);
  const Tensor zeros = to_device(std::vector<float>(4, 0.0f));  // stay finite at any scale
  dev->grad_norm(zeros.data<float>(), near_max.get());
  dev->step(dparams.data<float>(), zeros.data<float>());
  near_max->update(*dev);
  st = near_max->stats();
  CHECK(st.scale == std::ldexp(1.0f, 127));
  CHECK(st.growth_tracker == 0);
}

XF_CUDA_TEST_CASE("device optimizer: state round trips through download/upload, and training continues identically") {
  DeviceContext* ctx = cuda_test_ctx();
  const Layout l = make_layout();
  for (const OptimizerConfig& config : {adamw_config(0.1f, false), sgd_config(0.9f, true, 0.01f, false),
                                        sgd_config(0.0f, false, 0.01f, false)}) {
    CAPTURE(config.name);
    CAPTURE(config.momentum);
    auto ref = make_optimizer(config, l.slots, l.flat_size);  // the host reference, never interrupted
    auto dev = make_device_optimizer(*ctx, *ref);
    std::vector<float> params = random_buffer(l, 11, 1.0f, kParamPad);
    const Tensor dparams = to_device(params);
    const Tensor dgrads = Tensor::empty({static_cast<int64_t>(l.flat_size)}, DType::f32, ctx);
    auto train = [&](DeviceOptimizer& d, int from, int to) {
      for (int k = from; k < to; ++k) {
        const std::vector<float> grads = random_buffer(l, 500 + k, 1.0f, kNaN);
        ref->step(params.data(), grads.data(), 1e-2f, nullptr);
        upload(dgrads, grads);
        d.set_lr(1e-2f);
        d.step(dparams.data<float>(), dgrads.data<float>());
      }
    };
    train(*dev, 0, 3);
    // download: into a fresh host optimizer (a checkpoint save would write it)
    auto saved = make_optimizer(config, l.slots, l.flat_size);
    dev->download_state(*saved);
    CHECK(saved->step_count() == 3);
    for (const auto& [name, v] : ref->state()) check_matches(l, state_of(*saved, name), *v, 0.0f, "downloaded " + name);
    // upload: a new device optimizer made from the saved host state continues as the reference does
    auto resumed = make_device_optimizer(*ctx, *saved);
    CHECK(resumed->step_count() == 3);
    train(*resumed, 3, 5);
    check_matches(l, download(dparams), params, kParamPad, "params after resuming");
    auto end = make_optimizer(config, l.slots, l.flat_size);
    resumed->download_state(*end);
    CHECK(end->step_count() == 5);
    for (const auto& [name, v] : ref->state()) check_matches(l, state_of(*end, name), *v, 0.0f, "resumed " + name);
    // upload then download is bit-exact
    dev->upload_state(*ref);
    auto again = make_optimizer(config, l.slots, l.flat_size);
    dev->download_state(*again);
    CHECK(again->step_count() == ref->step_count());
    for (const auto& [name, v] : ref->state()) CHECK_MESSAGE(state_of(*again, name) == *v, name);
  }

  // A host optimizer of another kind or layout is refused by name.
  auto dev = make_device_optimizer(*ctx, *make_optimizer(adamw_config(0.0f, false), l.slots, l.flat_size));
  auto expect_refused = [&](Optimizer& host, const std::string& needle) {
    try {
      dev->upload_state(host);
      FAIL("upload_state accepted a mismatched optimizer, expected '" << needle << "'");
    } catch (const Error& e) {
      CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
    }
    CHECK_THROWS_AS(dev->download_state(host), Error);
  };
  auto sgd = make_optimizer(sgd_config(0.9f, false, 0.0f, false), l.slots, l.flat_size);
  expect_refused(*sgd, "host optimizer is 'sgd'");
  auto bigger = make_optimizer(adamw_config(0.0f, false), l.slots, l.flat_size + 16);
  expect_refused(*bigger, "flat size");
  std::vector<ParamSlot> moved = l.slots;
  moved[1].offset += 1;
  auto shifted = make_optimizer(adamw_config(0.0f, false), moved, l.flat_size);
  expect_refused(*shifted, "slot 1");
}

XF_CUDA_TEST_CASE("device optimizer: a captured step (clip, update, loss scale) replays like the host; host inputs "
                  "are refused while capturing") {
  DeviceContext* ctx = cuda_test_ctx();
  const Layout l = make_layout();
  const OptimizerConfig config = adamw_config(0.1f, false);
  auto host = make_optimizer(config, l.slots, l.flat_size);
  auto dev = make_device_optimizer(*ctx, *host);
  auto scaler = make_loss_scaler(*ctx);
  std::vector<float> params = random_buffer(l, 13, 1.0f, kParamPad);
  const Tensor dparams = to_device(params);
  const Tensor dgrads = Tensor::zeros({static_cast<int64_t>(l.flat_size)}, DType::f32, ctx);
  const float max_norm = 1.0f;  // gradients of norm ~118 (41.6k elements in [-1, 1]): every step clips
  ctx->synchronize();

  ctx->begin_capture();
  bool refused = false;
  try {
    dev->set_lr(1.0f);
  } catch (const Error& e) {
    refused = std::string(e.what()).find("while capturing") != std::string::npos;
  }
  dev->clip_grad_norm(dgrads.data<float>(), max_norm, scaler.get());
  dev->step(dparams.data<float>(), dgrads.data<float>());
  scaler->update(*dev);
  const std::shared_ptr<void> graph = ctx->end_capture();
  CHECK_MESSAGE(refused, "set_lr must be refused while the stream is capturing");
  // Capturing ran nothing.
  CHECK(download(dparams) == params);
  CHECK(dev->step_count() == 0);

  float scale = 65536.0f;
  for (int k = 0; k < 5; ++k) {
    CAPTURE(k);
    std::vector<float> grads = random_buffer(l, 900 + k, 1.0f, kNaN);
    std::vector<float> scaled = grads;  // exact: the scale is a power of two
    for (float& x : scaled) x *= scale;
    const bool overflow = k == 2;
    if (overflow) scaled[l.slots[2].offset] = kInf;
    upload(dgrads, scaled);
    const float lr = 1e-2f * static_cast<float>(k + 1);
    dev->set_lr(lr);  // outside the graph, ordered before its launch
    ctx->replay(graph);
    if (overflow) {
      scale *= 0.5f;
    } else {
      clip_grad_norm(grads.data(), l.slots, max_norm, nullptr);
      host->step(params.data(), grads.data(), lr, nullptr);
    }
    ctx->synchronize();
    // A clip factor one ulp away from the host's rounds some gradients differently: inside the tolerance.
    check_matches(l, download(dparams), params, kParamPad, "replay " + std::to_string(k));
    CHECK(scaler->stats().scale == scale);
  }
  CHECK(dev->step_count() == 4);
  CHECK(dev->read_scalars().skipped_steps == 1);
  CHECK(scaler->stats().overflow_steps == 1);
}

namespace {

// A context of a device this build has no optimizer for: every call of make_device_optimizer must refuse
// it before touching it.
class ForeignContext final : public DeviceContext {
 public:
  Device device() const override { return Device::cuda(0); }
  std::shared_ptr<void> allocate(size_t) override { throw Error("foreign", "allocate called"); }
  void copy(void*, const void*, size_t, CopyKind) override { throw Error("foreign", "copy called"); }
  void memset_zero(void*, size_t) override { throw Error("foreign", "memset_zero called"); }
  void accumulate_f32(float*, const void*, DType, size_t, bool) override { throw Error("foreign", "add called"); }
  void accumulate_f32_batch(const F32Accumulation*, size_t, size_t, bool) override {
    throw Error("foreign", "batched add called");
  }
  void convert(void*, DType, const void*, DType, size_t) override { throw Error("foreign", "convert called"); }
  void synchronize() override {}
  MemoryStats memory_stats() const override { return {}; }
  std::shared_ptr<void> record_event() override { throw Error("foreign", "record_event called"); }
  bool capturing() const override { return false; }
  double elapsed_ms(const std::shared_ptr<void>&, const std::shared_ptr<void>&) override {
    throw Error("foreign", "elapsed_ms called");
  }
  void begin_capture() override { throw Error("foreign", "begin_capture called"); }
  std::shared_ptr<void> end_capture() override { throw Error("foreign", "end_capture called"); }
  void replay(const std::shared_ptr<void>&) override { throw Error("foreign", "replay called"); }
  void reset_peak() override {}
  std::string describe() const override { return "a foreign device"; }
};

}  // namespace

TEST_CASE("device optimizer: a context without a device optimizer is refused with a clear message") {
  auto ctx = std::make_shared<ForeignContext>();
  const Layout l = make_layout();
  auto host = make_optimizer(adamw_config(0.1f, false), l.slots, l.flat_size);
#ifdef XF_WITH_CUDA
  const std::string needle = "needs a CUDA context";  // a non-CUDA context in a CUDA build
#else
  const std::string needle = "no CUDA backend";  // any context in a CPU-only build
#endif
  try {
    make_device_optimizer(*ctx, *host);
    FAIL("make_device_optimizer accepted a foreign context");
  } catch (const Error& e) {
    CHECK(e.op() == "optimizer");
    CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
  }
  try {
    make_loss_scaler(*ctx);
    FAIL("make_loss_scaler accepted a foreign context");
  } catch (const Error& e) {
    CHECK(e.op() == "loss_scaler");
    CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
  }
}

TEST_CASE("loss scaler config: out-of-range values are refused by name") {
  CHECK_NOTHROW(validate_loss_scaler_config(LossScalerConfig{}));
  auto refused = [](LossScalerConfig c, const std::string& field) {
    try {
      validate_loss_scaler_config(c);
      FAIL("accepted a bad " << field);
    } catch (const Error& e) {
      CHECK_MESSAGE(std::string(e.what()).find(field) != std::string::npos, e.what());
    }
  };
  LossScalerConfig c;
  c.init_scale = 0.0f;
  refused(c, "init_scale");
  c = {};
  c.init_scale = kInf;
  refused(c, "init_scale");
  c = {};
  c.growth_factor = 1.0f;
  refused(c, "growth_factor");
  c = {};
  c.backoff_factor = 1.0f;
  refused(c, "backoff_factor");
  c = {};
  c.backoff_factor = kNaN;
  refused(c, "backoff_factor");
  c = {};
  c.growth_interval = 0;
  refused(c, "growth_interval");
}
