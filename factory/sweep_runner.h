// Running a planned sweep: trial folders with their resolved configs, a status file rewritten atomically
// after every state change, trials as separate `xfrun train` processes (local launcher) or as a SLURM
// array job (slurm launcher).
//
// <out>/status.json                 the sweep's state (see docs/sweeps.md)
// <out>/trial_<i>/config.resolved.yaml   the trial's config: defaults filled in, paths absolute,
//                                        runtime.out_dir = the trial folder
// <out>/trial_<i>/train.log         the trial process's stdout and stderr
// <out>/trial_<i>/result.json       written when the trial process ends: exit code, wall time
// <out>/trial_<i>/metrics.jsonl, checkpoints/   written by the trial
// <out>/sweep.sbatch                the SLURM array script (launcher slurm)
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "factory/sweep.h"
#include "runtime/logging.h"

namespace xfr {

struct SweepOptions {
  std::string out_dir;                     // the sweep folder (created)
  int parallel = 1;                        // local: trials at a time; slurm: the array's %P
  std::vector<std::string> devices{"cpu"}; // assigned round-robin to running trials (train --device)
  bool resume = false;                     // run only trials not done; the plan must match status.json
  bool dry_run = false;                    // local: print the plan only; slurm: write the script, no sbatch
  std::string launcher = "local";          // local | slurm
  std::string exe;                         // the xfrun binary the trials run (absolute)
  Logger logger;                           // progress (null: silent)
};

struct SweepOutcome {
  size_t trials = 0, launched = 0, done = 0, failed = 0, skipped = 0;  // skipped: already done (resume)
  double wall_s = 0;
  std::string status_path, sbatch_path, slurm_job;
  bool submitted = false;
};

// Throws xfr::Error("config", ...) for usage problems found before anything runs (an existing sweep
// without --resume, a plan that does not match the status file, a bad device or launcher).
SweepOutcome run_sweep(const SweepPlan& plan, const SweepOptions& options);

// The SLURM array script for `indices` of the sweep in `out_dir` (absolute).
std::string slurm_script(const std::string& out_dir, const std::string& exe, const std::vector<size_t>& indices,
                         int parallel, const std::vector<std::string>& devices, const std::string& job_name);

// "0-3" or "1,3,5-7" for sorted indices.
std::string slurm_array_spec(const std::vector<size_t>& indices);

// Reads <out>/status.json (throws xfr::Error("sweep", ...) when missing or not JSON).
nlohmann::json read_sweep_status(const std::string& out_dir);

}  // namespace xfr
