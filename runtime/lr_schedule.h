// Learning-rate schedules: the rate for a step, from the optimizer's base rate (OptimizerConfig::lr).
//
//   constant  base_lr
//   warmup    linear warmup, then base_lr (the same as constant; the name says what the config means)
//   cosine    warmup, then a half cosine from base_lr down to min_lr at total_steps; min_lr afterwards
//   linear    warmup, then a straight line from base_lr down to min_lr at total_steps; min_lr afterwards
//
// Every schedule honours warmup_steps: during steps 0 .. warmup_steps-1 the rate is
// base_lr * (step + 1) / warmup_steps, so the last warmup step reaches base_lr.
#pragma once
#include <cstdint>
#include <string>

namespace xfr {

struct ScheduleConfig {
  std::string name = "constant";  // constant | warmup | cosine | linear
  int64_t warmup_steps = 0;       // >= 0
  float min_lr = 0.0f;            // >= 0; the floor of cosine / linear (<= the base rate)
  int64_t total_steps = 0;        // cosine / linear: the step where the rate reaches min_lr (> warmup_steps)
};

// Throws xfr::Error("lr_schedule", ...) naming the field for an unknown name or an out-of-range value.
void validate_schedule(const ScheduleConfig& config);

// The learning rate at `step` (counted from 0; >= 0) for a base rate `base_lr` (finite, >= 0).
// Validates like validate_schedule(), and also that min_lr <= base_lr for cosine / linear.
float learning_rate(const ScheduleConfig& config, float base_lr, int64_t step);

}  // namespace xfr
