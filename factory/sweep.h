// Sweeps: one config template plus a `sweep:` section, expanded into trials (grid or seeded random
// search over dotted config keys), every trial's config resolved and validated before any trial runs.
//
//   sweep:
//     method: grid                 # grid | random
//     num_trials: 8                # random: trials drawn
//     seed: 0                      # random: Philox seed of the draws
//     run_cap: 20                  # optional: at most this many trials (the first ones in order)
//     metric: {name: val_loss, goal: minimize}   # a metrics.jsonl field; minimize | maximize
//     parameters:
//       train.optimizer.lr: {min: 1.0e-4, max: 1.0e-2, distribution: log_uniform}
//       train.batch_size: {values: [8, 16]}
//
// The section's fields are declared once (sweep_section()) with the same schema machinery as the rest
// of the config, so unknown keys, types, ranges and choices are reported with path and file:line:col.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "factory/config.h"
#include "factory/schema.h"

namespace xfr {

// The schema of the `sweep:` section, of its `metric:` and of each entry of `parameters:`.
const Section& sweep_section();
const Section& sweep_metric_section();
const Section& sweep_parameter_section();

struct SweepParameter {
  std::string key;                 // dotted config path, as --set takes it
  std::vector<ConfigNode> values;  // `values: [...]` (empty for a range)
  bool is_range = false;           // {min, max, distribution}
  double min = 0, max = 0;
  std::string distribution = "uniform";  // uniform | log_uniform | int_uniform
  SourceLoc loc;
};

struct SweepSpec {
  std::string method = "grid";  // grid | random
  int64_t num_trials = 0;       // random
  uint64_t seed = 0;
  int64_t run_cap = 0;          // 0: no cap
  std::string metric = "val_loss";
  std::string goal = "minimize";  // minimize | maximize
  std::vector<SweepParameter> parameters;
};

// Validates a `sweep:` node (throws xfr::Error("config", ...) listing every problem).
SweepSpec parse_sweep_spec(const ConfigNode& sweep);

struct SweepTrial {
  size_t index = 0;
  std::vector<std::pair<std::string, ConfigNode>> overrides;  // (key, value), in parameter order
  std::string label() const;  // "train.optimizer.lr=0.001, train.batch_size=8"
};

// The trials of a spec, deterministically. Grid: the cartesian product in row-major order (the first
// parameter varies slowest, the last fastest, as itertools.product). Random: trial t draws parameter j
// from Philox4x32-10 stream elements 2(tP + j) and 2(tP + j) + 1 of `seed` (a 53-bit uniform u):
// values: values[floor(u n)]; uniform: min + u (max - min); log_uniform: exp of uniform in log space;
// int_uniform: an integer in [min, max], both included. run_cap keeps the first run_cap trials.
std::vector<SweepTrial> expand_sweep(const SweepSpec& spec);

// Applies a trial's overrides to `base` (a template without `sweep:`); nodes take `origin` as their file,
// so relative paths among the values resolve against the template's folder.
ConfigNode apply_trial(const ConfigNode& base, const SweepTrial& trial, const std::string& origin);

// Rewrites every path field of a validated config as an absolute path (relative ones resolve as the
// config says: against the file they were written in, or the working directory for --set values).
void make_paths_absolute(ConfigNode& root);

// A template loaded, its sweep parsed and expanded, and every trial's config resolved and validated.
struct SweepPlan {
  std::string template_path;  // absolute
  ConfigNode base;            // the template minus `sweep:`
  SweepSpec spec;
  std::vector<SweepTrial> trials;
  std::vector<Config> configs;  // one per trial, validated, paths absolute
};

// Throws xfr::Error("config", ...) when the template or its sweep section is invalid, or when any trial's
// config is: the message names each invalid trial with its overrides, then the config errors.
SweepPlan load_sweep(const std::string& template_path);
SweepPlan plan_sweep(const ConfigNode& template_root, const std::string& template_path);

}  // namespace xfr
