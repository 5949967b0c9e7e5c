// Learning-rate schedules; see lr_schedule.h.
#include "runtime/lr_schedule.h"

#include <cmath>

#include "runtime/error.h"

namespace xfr {
namespace {

bool decays_to_min(const std::string& name) { return name == "cosine" || name == "linear"; }

}  // namespace

void validate_schedule(const ScheduleConfig& c) {
  const bool known = c.name == "constant" || c.name == "warmup" || decays_to_min(c.name);
  XF_CHECK(known, "lr_schedule", "unknown schedule '", c.name, "' (known: constant, warmup, cosine, linear)");
  XF_CHECK(c.warmup_steps >= 0, "lr_schedule", "warmup_steps must be >= 0, got ", c.warmup_steps);
  XF_CHECK(std::isfinite(c.min_lr) && c.min_lr >= 0.0f, "lr_schedule", "min_lr must be finite and >= 0, got ",
           c.min_lr);
  XF_CHECK(c.total_steps >= 0, "lr_schedule", "total_steps must be >= 0, got ", c.total_steps);
  if (decays_to_min(c.name))
    XF_CHECK(c.total_steps > c.warmup_steps, "lr_schedule", c.name, " needs total_steps (", c.total_steps,
             ") > warmup_steps (", c.warmup_steps, ")");
}

float learning_rate(const ScheduleConfig& c, float base_lr, int64_t step) {
  validate_schedule(c);
  XF_CHECK(std::isfinite(base_lr) && base_lr >= 0.0f, "lr_schedule", "base lr must be finite and >= 0, got ",
           base_lr);
  XF_CHECK(step >= 0, "lr_schedule", "step must be >= 0, got ", step);
  const bool decay = decays_to_min(c.name);
  if (decay)
    XF_CHECK(c.min_lr <= base_lr, "lr_schedule", "min_lr (", c.min_lr, ") must be <= the base lr (", base_lr,
             ")");
  // In double: (step + 1) / warmup and the decay progress are ratios of large integers.
  const double base = base_lr;
  if (step < c.warmup_steps)
    return static_cast<float>(base * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps));
  if (!decay) return base_lr;
  if (step >= c.total_steps) return c.min_lr;
  const double progress =
      static_cast<double>(step - c.warmup_steps) / static_cast<double>(c.total_steps - c.warmup_steps);
  const double min_lr = c.min_lr;
  // 3.14159...: pi, so that the half cosine runs from 1 at progress 0 to -1 at progress 1.
  constexpr double kPi = 3.14159265358979323846;
  const double shape = c.name == "cosine" ? 0.5 * (1.0 + std::cos(kPi * progress)) : 1.0 - progress;
  return static_cast<float>(min_lr + (base - min_lr) * shape);
}

}  // namespace xfr
