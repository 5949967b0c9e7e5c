// The results of a sweep, gathered from its folder (status.json, each trial's result.json and
// metrics.jsonl), so it works the same for local sweeps and for SLURM arrays writing to a shared folder.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace xfr {

struct SweepTrialResult {
  size_t index = 0;
  std::string status;           // pending | submitted | running | done | failed
  std::optional<int> exit_code;
  nlohmann::json params;        // swept key -> value
  int64_t steps = 0;            // the last step in metrics.jsonl
  std::optional<double> final_loss;
  std::optional<double> best_metric;  // min (minimize) or max (maximize) of the metric over the records
  std::optional<double> tokens_per_s;  // median over the records
  std::optional<double> wall_s;
  std::string dir;              // absolute
  bool best = false;
  std::vector<std::pair<int64_t, double>> loss_curve;    // (step, loss)
  std::vector<std::pair<int64_t, double>> metric_curve;  // (step, metric)
};

struct SweepReport {
  std::string dir, template_path, method, metric, goal;
  std::vector<std::string> parameters;
  std::vector<SweepTrialResult> trials;  // sorted by the metric (best first), trials without it last
};

// Throws xfr::Error("sweep", ...) when `dir` holds no status.json.
SweepReport gather_sweep_report(const std::string& dir);

// The table printed by `xfrun sweep-report` (best marked with '*').
std::string sweep_report_table(const SweepReport& report);
// The same rows.
std::string sweep_report_csv(const SweepReport& report);
std::string sweep_report_jsonl(const SweepReport& report);
// A self-contained page: every trial's loss curve and the metric against each swept parameter, as inline SVG.
std::string sweep_report_html(const SweepReport& report);
// Writes results.csv, results.jsonl and report.html into report.dir (atomically).
void write_sweep_report(const SweepReport& report);

}  // namespace xfr
