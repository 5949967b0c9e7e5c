// Sweeps: the sweep: section's schema, grid and random expansion, up-front validation of every trial,
// local runs of the built CLI (parallel trials, status file, resume after a kill, reports), the SLURM
// array script, and a real single-node SLURM cluster where one can start.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "factory/config.h"
#include "factory/sweep.h"
#include "factory/sweep_report.h"
#include "factory/sweep_runner.h"
#include "runtime/error.h"
#include "cli_runner.h"
#include "temp_dir.h"

using namespace xfr;
namespace fs = std::filesystem;
using json = nlohmann::json;
using xfr::testing::TempDir;

namespace {

std::string slurp(const std::string& p) { return xfr::testing::read_text(p); }
using xfr::testing::contains;
using xfr::testing::sh_quote;
const std::string& kTinyModel = xfr::testing::kTinyTextLm;

const std::string kGrid2x2 = R"(sweep:
  method: grid
  metric: {name: val_loss, goal: minimize}
  parameters:
    train.optimizer.lr: {values: [0.001, 0.01]}
    train.batch_size: {values: [2, 4]}
)";

std::string write_template(const TempDir& dir, const std::string& sweep, const std::string& name = "tpl.yaml") {
  std::string corpus;
  for (int i = 0; i < 40; ++i) corpus += "to be, or not to be, that is the question.\n";
  dir.write("text.txt", corpus);
  return dir.write(name, kTinyModel + sweep);
}

SweepPlan plan_from(const TempDir& dir, const std::string& sweep) { return load_sweep(write_template(dir, sweep)); }

std::string config_error(const std::string& sweep) {
  TempDir dir;
  try {
    plan_from(dir, sweep);
  } catch (const Error& e) {
    CHECK(e.op() == "config");
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("sweep grid: the cartesian product in row-major order, run_cap, each trial's config resolved") {
  TempDir dir;
  const SweepPlan plan = plan_from(dir, R"(sweep:
  parameters:
    train.optimizer.lr: {values: [0.001, 0.003, 0.01]}
    train.batch_size: {values: [2, 4]}
    model.stack_configs.0.multi_head_config.attention: {values: [{name: scaled_dot_product, causal: true},
                                                                  {name: scaled_dot_product, causal: false}]}
)");
  REQUIRE(plan.trials.size() == 12);
  REQUIRE(plan.configs.size() == 12);
  CHECK(plan.spec.method == "grid");
  CHECK(plan.spec.metric == "val_loss");
  CHECK(plan.spec.goal == "minimize");
  // The last parameter varies fastest.
  CHECK(plan.trials[0].label() == "train.optimizer.lr=0.001, train.batch_size=2, "
                                  "model.stack_configs.0.multi_head_config.attention={\"causal\":true,\"name\":\"scaled_dot_product\"}");
  CHECK(plan.trials[1].overrides[2].second.at("causal").text() == "false");
  CHECK(plan.trials[2].overrides[1].second.text() == "4");
  CHECK(plan.trials[4].overrides[0].second.text() == "0.003");
  CHECK(plan.trials[11].label().rfind("train.optimizer.lr=0.01, train.batch_size=4", 0) == 0);
  std::set<std::string> labels;
  for (const auto& t : plan.trials) labels.insert(t.label());
  CHECK(labels.size() == 12);
  // Each config holds its trial's values, defaults filled in, paths absolute.
  const ConfigNode& c5 = plan.configs[7].root;  // lr 0.003, batch 4, causal false
  CHECK(get_number(c5.at("train").at("optimizer"), "lr") == doctest::Approx(0.003));
  CHECK(get_int(c5.at("train"), "batch_size") == 4);
  CHECK_FALSE(get_bool(c5.at("model").at("stack_configs").at(0).at("multi_head_config").at("attention"), "causal"));
  CHECK(get_int(c5.at("train"), "grad_accum") == 1);
  CHECK(c5.at("data").at("path").text() == dir.file("text.txt"));
  CHECK_FALSE(c5.find("sweep"));
  // run_cap keeps the first trials.
  TempDir d2;
  const SweepPlan capped = plan_from(d2, "sweep:\n  run_cap: 5\n  parameters:\n    train.batch_size: {values: [1, 2, 3, 4, 5, 6, 7]}\n");
  REQUIRE(capped.trials.size() == 5);
  CHECK(capped.trials[4].label() == "train.batch_size=5");
}

TEST_CASE("sweep random: deterministic by seed, values within ranges, distributions") {
  SweepSpec spec;
  spec.method = "random";
  spec.num_trials = 2000;
  spec.seed = 7;
  SweepParameter lr;
  lr.key = "train.optimizer.lr";
  lr.is_range = true;
  lr.min = 1e-4;
  lr.max = 1e-1;
  lr.distribution = "log_uniform";
  SweepParameter layers = lr;
  layers.key = "model.stack_configs.0.num_layers";
  layers.min = 1;
  layers.max = 4;
  layers.distribution = "int_uniform";
  SweepParameter drop = lr;
  drop.key = "model.stack_configs.0.multi_head_config.attention.dropout";
  drop.min = 0.0;
  drop.max = 0.5;
  drop.distribution = "uniform";
  SweepParameter act;
  act.key = "model.stack_configs.0.feedforward_config.activation";
  for (const char* a : {"relu", "gelu", "squared_relu"}) act.values.push_back(ConfigNode::make_scalar(a));
  spec.parameters = {lr, layers, drop, act};

  const auto a = expand_sweep(spec), b = expand_sweep(spec);
  REQUIRE(a.size() == 2000);
  for (size_t i = 0; i < a.size(); ++i) REQUIRE(a[i].label() == b[i].label());
  spec.seed = 8;
  const auto c = expand_sweep(spec);
  size_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i].label() == c[i].label();
  CHECK(same < 10);

  std::vector<int> layer_counts(5, 0);
  std::set<std::string> acts;
  double log_sum = 0, drop_sum = 0;
  size_t below_1e3 = 0;
  for (const auto& t : a) {
    const double v = *t.overrides[0].second.as_double();
    CHECK(v >= 1e-4);
    CHECK(v <= 1e-1);
    log_sum += std::log10(v);
    below_1e3 += v < 1e-3;
    const auto n = t.overrides[1].second.as_int();
    REQUIRE(n.has_value());  // int_uniform writes integers
    REQUIRE(*n >= 1);
    REQUIRE(*n <= 4);
    ++layer_counts[static_cast<size_t>(*n)];
    const double d = *t.overrides[2].second.as_double();
    CHECK(d >= 0.0);
    CHECK(d < 0.5);
    drop_sum += d;
    acts.insert(t.overrides[3].second.text());
  }
  // log_uniform: log10 is uniform on [-4, -1] (mean -2.5, a third below 1e-3); uniform: mean 0.25;
  // int_uniform: both bounds included, about equally often; values: every one drawn.
  CHECK(log_sum / 2000 == doctest::Approx(-2.5).epsilon(0.03));
  CHECK(static_cast<double>(below_1e3) / 2000 == doctest::Approx(1.0 / 3).epsilon(0.1));
  CHECK(drop_sum / 2000 == doctest::Approx(0.25).epsilon(0.05));
  for (int k = 1; k <= 4; ++k) CHECK(layer_counts[k] == doctest::Approx(500).epsilon(0.15));
  CHECK(acts == std::set<std::string>{"relu", "gelu", "squared_relu"});
  // run_cap caps num_trials.
  spec.run_cap = 3;
  CHECK(expand_sweep(spec).size() == 3);

  // From a template: the same trials every time, each config valid.
  TempDir dir;
  const std::string rnd = R"(sweep:
  method: random
  num_trials: 6
  seed: 11
  parameters:
    train.optimizer.lr: {min: 1.0e-4, max: 1.0e-2, distribution: log_uniform}
    train.batch_size: {min: 1, max: 8, distribution: int_uniform}
)";
  const SweepPlan p1 = plan_from(dir, rnd), p2 = plan_from(dir, rnd);
  REQUIRE(p1.trials.size() == 6);
  for (size_t i = 0; i < 6; ++i) {
    CHECK(p1.trials[i].label() == p2.trials[i].label());
    const int64_t bs = get_int(p1.configs[i].root.at("train"), "batch_size");
    CHECK(bs >= 1);
    CHECK(bs <= 8);
  }
}

TEST_CASE("sweep section: schema errors name the path, file:line:col and a did-you-mean") {
  const std::string e1 = config_error("sweep:\n  metod: grid\n  parameters:\n    train.batch_size: {values: [1]}\n");
  CHECK(contains(e1, "tpl.yaml:25:3: sweep.metod: unknown key 'metod'; did you mean 'method'?"));
  CHECK(contains(config_error("sweep:\n  method: random\n  parameters:\n    train.batch_size: {values: [1]}\n"),
                 "method random needs num_trials"));
  CHECK(contains(config_error("sweep:\n  parameters:\n    train.optimizer.lr: {min: 0.1, max: 1}\n"),
                 "method grid needs values"));
  CHECK(contains(config_error("sweep:\n  method: random\n  num_trials: 2\n  parameters:\n"
                              "    train.optimizer.lr: {min: 0, max: 1, distribution: log_uniform}\n"),
                 "log_uniform needs min > 0"));
  CHECK(contains(config_error("sweep:\n  method: random\n  num_trials: 2\n  parameters:\n"
                              "    train.optimizer.lr: {min: 0, max: 1, distribution: normal}\n"),
                 "sweep.parameters[\"train.optimizer.lr\"].distribution"));
  CHECK(contains(config_error("sweep:\n  parameters:\n    train.batch_size: {values: []}\n"), "expected a non-empty list"));
  CHECK(contains(config_error("sweep:\n  parameters:\n    train.batch_size: 4\n"), "expected {values: [...]}"));
  CHECK(contains(config_error("sweep:\n  metric: {name: loss, goal: lowest}\n  parameters:\n    train.batch_size: {values: [1]}\n"),
                 "sweep.metric.goal"));
  CHECK(contains(config_error("sweep:\n  method: grid\n"), "sweep.parameters"));
}

TEST_CASE("sweep up-front validation: an invalid trial stops the sweep, naming the trial and its overrides") {
  const std::string e = config_error(R"(sweep:
  parameters:
    model.stack_configs.0.multi_head_config.num_heads: {values: [2, 3]}
    train.steps: {values: [4, 0]}
)");
  INFO(e);
  CHECK(contains(e, "3 of 4 trials are invalid; nothing was run"));
  CHECK(contains(e, "trial 1 (model.stack_configs.0.multi_head_config.num_heads=2, train.steps=0)"));
  CHECK(contains(e, "train.steps: 0 is outside"));
  CHECK(contains(e, "trial 2 (model.stack_configs.0.multi_head_config.num_heads=3, train.steps=4)"));
  CHECK(contains(e, "must be divisible by num_heads 3"));
  CHECK_FALSE(contains(e, "trial 0 "));
  // A key that is not in the schema: a did-you-mean, per trial.
  CHECK(contains(config_error("sweep:\n  parameters:\n    train.batch_sise: {values: [2]}\n"),
                 "did you mean 'batch_size'?"));
}

TEST_CASE("sweep templates: the shipped ones under configs/sweeps/ expand and validate") {
  const std::string root = std::string(XF_SOURCE_DIR_FOR_TESTS) + "/configs/sweeps/";
  const SweepPlan a = load_sweep(root + "attention_seq_len.yaml");
  CHECK(a.trials.size() == 8);
  CHECK(a.spec.parameters.size() == 3);
  CHECK(fs::exists(config_path_value(a.configs[0].root.at("data"), "path")));
  const SweepPlan b = load_sweep(root + "lr_batch_grid.yaml");
  CHECK(b.trials.size() == 6);
  CHECK(b.trials[5].label() == "train.optimizer.lr=1.0e-2, train.batch_size=16");
}

#ifdef XF_CLI_PATH

namespace {

using xfr::testing::CliRun;
using xfr::testing::xfrun;

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < s.size()) {
    const size_t end = s.find('\n', start);
    out.push_back(s.substr(start, end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

}  // namespace

TEST_CASE("sweep cli: an invalid trial exits 2 before anything is written") {
  TempDir dir;
  const std::string tpl =
      write_template(dir, "sweep:\n  parameters:\n    model.stack_configs.0.multi_head_config.num_heads: {values: [2, 3]}\n");
  const CliRun r = xfrun({"sweep", "--template", tpl, "--out", dir.sub("sweep")}, dir.str());
  INFO(r.err);
  CHECK(r.rc == 2);
  CHECK(contains(r.err, "trial 1 (model.stack_configs.0.multi_head_config.num_heads=3)"));
  CHECK(contains(r.err, "divisible by num_heads 3"));
  CHECK_FALSE(fs::exists(dir.sub("sweep")));
  // Usage errors: exit 2 too.
  CHECK(xfrun({"sweep"}, dir.str()).rc == 2);
  CHECK(xfrun({"sweep", "--template", tpl, "--launcher", "pbs"}, dir.str()).rc == 2);
  CHECK(xfrun({"sweep", "--template", dir.sub("none.yaml")}, dir.str()).rc == 2);
  CHECK(xfrun({"sweep-report", dir.sub("nowhere")}, dir.str()).rc == 2);
  // A plain config (no sweep: section).
  const CliRun p = xfrun({"sweep", "--template", dir.write("plain.yaml", kTinyModel)}, dir.str());
  CHECK(p.rc == 2);
  CHECK(contains(p.err, "no sweep: section"));
}

TEST_CASE("sweep cli: 4 trials, 2 at a time; status, trial folders, report; resume reruns only unfinished trials") {
  TempDir dir, cwd;
  const std::string tpl = write_template(dir, kGrid2x2);
  const std::string out = cwd.sub("sw");
  const CliRun r = xfrun({"sweep", "--template", tpl, "--out", "sw", "--parallel", "2"}, cwd.str());
  INFO(r.err);
  REQUIRE(r.rc == 0);
  MESSAGE("4-trial local sweep, --parallel 2: " << r.wall_s << " s");
  const json st = read_sweep_status(out);
  REQUIRE(st.at("trials").size() == 4);
  std::set<std::string> devices;
  for (const auto& t : st.at("trials")) {
    CHECK(t.at("status") == "done");
    CHECK(t.at("exit_code") == 0);
    CHECK(t.at("attempts") == 1);
    CHECK(t.at("wall_s").get<double>() > 0);
    const std::string tdir = out + "/" + t.at("dir").get<std::string>();
    CHECK(fs::exists(tdir + "/metrics.jsonl"));
    CHECK(fs::exists(tdir + "/checkpoints/step_4/manifest.json"));
    CHECK(fs::exists(tdir + "/train.log"));
    CHECK(fs::exists(tdir + "/result.json"));
  }
  CHECK(st.at("trials")[3].at("overrides") == json{{"train.optimizer.lr", 0.01}, {"train.batch_size", 4}});
  // The trial config works from its own folder: absolute data path, out_dir the trial folder.
  const Config c3 = load_config(out + "/trial_3/config.resolved.yaml");
  CHECK(fs::path(c3.root.at("data").at("path").text()).is_absolute());
  CHECK(fs::equivalent(config_path_value(c3.root.at("data"), "path"), dir.file("text.txt")));
  CHECK(fs::equivalent(config_path_value(c3.root.at("runtime"), "out_dir"), out + "/trial_3"));
  CHECK(get_int(c3.root.at("train"), "batch_size") == 4);
  CHECK(get_number(c3.root.at("train").at("optimizer"), "lr") == doctest::Approx(0.01));

  // Report: printed, and results.csv / results.jsonl / report.html written.
  CHECK(contains(r.out, "  lr = train.optimizer.lr\n"));  // the table shortens keys
  CHECK(contains(r.out, "4 done, 0 failed"));
  const auto csv = lines_of(slurp(out + "/results.csv"));
  REQUIRE(csv.size() == 5);
  CHECK(csv[0] == "best,trial,status,train.optimizer.lr,train.batch_size,steps,final_loss,min_val_loss,tokens_per_s,wall_s,dir");
  int best = 0;
  for (size_t i = 1; i < csv.size(); ++i) best += csv[i].rfind("1,", 0) == 0;
  CHECK(best == 1);
  CHECK(csv[1].rfind("1,", 0) == 0);  // sorted: the best first
  std::vector<json> rows;
  for (const auto& l : lines_of(slurp(out + "/results.jsonl"))) rows.push_back(json::parse(l));
  REQUIRE(rows.size() == 4);
  CHECK(rows[0].at("best") == true);
  for (size_t i = 0; i < rows.size(); ++i) {
    CHECK(rows[i].at("status") == "done");
    CHECK(rows[i].at("steps") == 4);
    CHECK(rows[i].at("final_loss").is_number());
    CHECK(rows[i].at("tokens_per_s").get<double>() > 0);
    if (i > 0) CHECK(rows[i].at("best_metric").get<double>() >= rows[i - 1].at("best_metric").get<double>());
  }
  const std::string html = slurp(out + "/report.html");
  CHECK(contains(html, "<svg"));
  CHECK(contains(html, "<polyline"));
  CHECK(contains(html, "val_loss vs train.optimizer.lr"));
  CHECK_FALSE(contains(html, "<script"));
  {
    std::string rest = html;  // no external resource: the only URL is the SVG namespace
    for (size_t at; (at = rest.find("http://www.w3.org/2000/svg")) != std::string::npos;) rest.erase(at, 26);
    CHECK_FALSE(contains(rest, "http"));
  }
  // sweep-report gives the same table.
  const CliRun rep = xfrun({"sweep-report", out}, cwd.str());
  CHECK(rep.rc == 0);
  CHECK(contains(rep.out, "4 done, 0 failed"));

  // The same folder again without --resume: refused (exit 2), nothing touched.
  CHECK(xfrun({"sweep", "--template", tpl, "--out", "sw"}, cwd.str()).rc == 2);
  // Another template into this folder: refused.
  const std::string other = dir.write("other.yaml", kTinyModel + "sweep:\n  parameters:\n    train.batch_size: {values: [2, 3, 4, 5]}\n");
  CHECK(xfrun({"sweep", "--template", other, "--out", "sw", "--resume"}, cwd.str()).rc == 2);

  // A kill: trial 2 was running (its metrics lost), trial 1 had failed.
  json edited = read_sweep_status(out);
  edited["trials"][2]["status"] = "running";
  edited["trials"][2]["exit_code"] = nullptr;
  edited["trials"][1]["status"] = "failed";
  edited["trials"][1]["exit_code"] = 1;
  std::ofstream(out + "/status.json") << edited.dump(2);
  fs::remove(out + "/trial_2/metrics.jsonl");
  fs::remove(out + "/trial_2/result.json");
  fs::remove(out + "/trial_1/result.json");
  const auto m0 = fs::last_write_time(out + "/trial_0/metrics.jsonl");
  const auto m3 = fs::last_write_time(out + "/trial_3/metrics.jsonl");
  const std::string metrics3 = slurp(out + "/trial_3/metrics.jsonl");
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const CliRun again = xfrun({"sweep", "--template", tpl, "--out", "sw", "--parallel", "2", "--resume"}, cwd.str());
  INFO(again.err);
  REQUIRE(again.rc == 0);
  MESSAGE("resume of 2 trials: " << again.wall_s << " s");
  const json st2 = read_sweep_status(out);
  for (size_t i = 0; i < 4; ++i) {
    CHECK(st2["trials"][i].at("status") == "done");
    CHECK(st2["trials"][i].at("attempts") == (i == 1 || i == 2 ? 2 : 1));
  }
  CHECK(fs::last_write_time(out + "/trial_0/metrics.jsonl") == m0);
  CHECK(fs::last_write_time(out + "/trial_3/metrics.jsonl") == m3);
  CHECK(slurp(out + "/trial_3/metrics.jsonl") == metrics3);
  CHECK(fs::exists(out + "/trial_2/metrics.jsonl"));
  CHECK(contains(again.err, "trial 2 started"));
  CHECK_FALSE(contains(again.err, "trial 0 started"));
  // The rerun trial 2 starts over (its metrics were gone) and reaches the same losses as its first run:
  // trials are deterministic.
  const SweepReport report = gather_sweep_report(out);
  CHECK(report.trials.size() == 4);
  for (const auto& t : report.trials) CHECK(t.steps == 4);
}

TEST_CASE("sweep cli: a failing trial is marked failed with its exit code; the others finish; exit 1") {
  TempDir dir;
  const std::string tpl = write_template(dir, "sweep:\n  parameters:\n    data.path: {values: [text.txt, missing.txt, text.txt]}\n");
  const CliRun r = xfrun({"sweep", "--template", tpl, "--out", "sw", "--parallel", "2"}, dir.str());
  INFO(r.err);
  CHECK(r.rc == 1);
  const json st = read_sweep_status(dir.sub("sw"));
  CHECK(st["trials"][0].at("status") == "done");
  CHECK(st["trials"][1].at("status") == "failed");
  CHECK(st["trials"][1].at("exit_code") == 1);
  CHECK(st["trials"][2].at("status") == "done");
  CHECK(contains(slurp(dir.sub("sw/trial_1/train.log")), "missing.txt"));
  CHECK(contains(r.out, "failed (1)"));
  CHECK(contains(r.out, "2 done, 1 failed"));
  const SweepReport rep = gather_sweep_report(dir.sub("sw"));
  CHECK(rep.trials.back().index == 1);  // no metric: last
  CHECK_FALSE(rep.trials.back().best);
}

TEST_CASE("sweep slurm --dry-run: an array script whose task runs its trial") {
  TempDir dir, cwd;
  const std::string tpl = write_template(dir, kGrid2x2);
  const std::string out = cwd.sub("sl");
  const CliRun r = xfrun({"sweep", "--template", tpl, "--out", out, "--launcher", "slurm", "--parallel", "2", "--dry-run"},
                         cwd.str());
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const std::string script = slurp(out + "/sweep.sbatch");
  CHECK(contains(script, "#SBATCH --array=0-3%2\n"));
  CHECK(contains(script, "SLURM_ARRAY_TASK_ID"));
  CHECK(contains(script, "config.resolved.yaml"));
  for (int i = 0; i < 4; ++i) CHECK(fs::exists(out + "/trial_" + std::to_string(i) + "/config.resolved.yaml"));
  CHECK(read_sweep_status(out).at("trials")[0].at("status") == "pending");
  CHECK(slurm_array_spec({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8");
  // Run array task 1 as SLURM would; sweep-report gathers its result from the shared folder.
  const std::string cmd = "cd " + sh_quote(out) + " && SLURM_ARRAY_TASK_ID=1 bash sweep.sbatch > /dev/null 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
  const SweepReport rep = gather_sweep_report(out);
  size_t done = 0;
  for (const auto& t : rep.trials) {
    if (t.index == 1) {
      CHECK(t.status == "done");
      CHECK(t.steps == 4);
      CHECK(t.wall_s.has_value());
      CHECK(t.best);
    } else {
      CHECK(t.status == "pending");
    }
    done += t.status == "done";
  }
  CHECK(done == 1);
  // --resume writes a script for the three trials left.
  const CliRun again = xfrun({"sweep", "--template", tpl, "--out", out, "--launcher", "slurm", "--dry-run", "--resume"},
                             cwd.str());
  REQUIRE(again.rc == 0);
  CHECK(contains(slurp(out + "/sweep.sbatch"), "#SBATCH --array=0,2-3%1\n"));
}

namespace {

bool have(const char* prog) {
  return std::system((std::string("command -v ") + prog + " > /dev/null 2>&1").c_str()) == 0;
}

}  // namespace

// A real single-node SLURM cluster (slurmctld + slurmd, authenticated by munge) started in a temp folder,
// running a 4-trial array. Reported as skipped where SLURM is not installed or cannot start (it needs a
// munge key the daemons can read, and slurmd usually needs root for its cgroup/proctrack plugins).
TEST_CASE("sweep slurm cluster: a 4-trial array through slurmctld + slurmd") {
  if (!have("slurmctld") || !have("slurmd") || !have("munged") || !have("sbatch")) {
    MESSAGE("SKIPPED: slurmctld, slurmd, munged or sbatch is not installed (Debian: slurm-wlm, munge)");
    return;
  }
  TempDir dir;
  const std::string root = dir.str();
  const std::string user = std::getenv("USER") ? std::getenv("USER") : "root";
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  const std::string short_host = std::string(host).substr(0, std::string(host).find('.'));
  fs::create_directories(root + "/munge");
  fs::create_directories(root + "/state");
  fs::create_directories(root + "/spool");
  // munge: its own key, socket and pid file.
  const std::string munge_sock = root + "/munge/munge.socket";
  const std::string setup =
      "cd " + sh_quote(root) + " && dd if=/dev/urandom of=munge/munge.key bs=1024 count=1 2>/dev/null && chmod 400 munge/munge.key && "
      "munged --force --key-file=munge/munge.key --socket=" + sh_quote(munge_sock) +
      " --pid-file=munge/munged.pid --log-file=munge/munged.log --seed-file=munge/munged.seed > munge/start.log 2>&1";
  if (std::system(setup.c_str()) != 0) {
    MESSAGE("SKIPPED: munged cannot start here: " << slurp(root + "/munge/start.log") << slurp(root + "/munge/munged.log"));
    return;
  }
  const int port = 20000 + static_cast<int>(::getpid() % 10000) * 2;  // concurrent test runs apart
  const int cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::string conf = "ClusterName=xfrtest\nSlurmctldHost=" + short_host + "\nSlurmUser=" + user +
                     "\nSlurmctldPort=" + std::to_string(port) + "\nSlurmdPort=" + std::to_string(port + 1) + "\nAuthType=auth/munge\nCredType=cred/munge\n"
                     "AuthInfo=socket=" + munge_sock + "\nStateSaveLocation=" + root + "/state\nSlurmdSpoolDir=" + root +
                     "/spool\nSlurmctldPidFile=" + root + "/slurmctld.pid\nSlurmdPidFile=" + root +
                     "/slurmd.pid\nSlurmctldLogFile=" + root + "/slurmctld.log\nSlurmdLogFile=" + root +
                     "/slurmd.log\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSchedulerType=sched/builtin\n"
                     "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\nReturnToService=2\nMpiDefault=none\n"
                     "JobAcctGatherType=jobacct_gather/none\nNodeName=" + short_host + " CPUs=" + std::to_string(cpus) +
                     " State=UNKNOWN\nPartitionName=debug Nodes=" + short_host + " Default=YES MaxTime=INFINITE State=UP\n";
  dir.write("slurm.conf", conf);
  dir.write("cgroup.conf", "CgroupPlugin=autodetect\n");
  const std::string env = "SLURM_CONF=" + sh_quote(root + "/slurm.conf") + " ";
  auto stop = [&]() {
    // Let the array's job steps end first (a result.json is written just before its task exits), so that
    // no slurmstepd outlives the daemons.
    for (int i = 0; i < 40; ++i) {
      if (std::system((env + "squeue -h 2>/dev/null | grep -q .").c_str()) != 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    std::system(("[ -f " + sh_quote(root + "/slurmd.pid") + " ] && kill $(cat " + sh_quote(root + "/slurmd.pid") + ") 2>/dev/null; "
                 "[ -f " + sh_quote(root + "/slurmctld.pid") + " ] && kill $(cat " + sh_quote(root + "/slurmctld.pid") + ") 2>/dev/null; "
                 "[ -f " + sh_quote(root + "/munge/munged.pid") + " ] && kill $(cat " + sh_quote(root + "/munge/munged.pid") + ") 2>/dev/null; true")
                    .c_str());
  };
  const bool started = std::system((env + "slurmctld -c > " + sh_quote(root + "/ctld.out") + " 2>&1").c_str()) == 0 &&
                       std::system((env + "slurmd -c > " + sh_quote(root + "/slurmd.out") + " 2>&1").c_str()) == 0;
  bool up = false;
  for (int i = 0; started && i < 40 && !up; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    up = std::system((env + "sinfo -h -o %t 2>/dev/null | grep -q idle").c_str()) == 0;
  }
  if (!up) {
    MESSAGE("SKIPPED: a single-node SLURM cluster cannot start here: " << slurp(root + "/ctld.out") << slurp(root + "/slurmd.out")
                                                                          << slurp(root + "/slurmctld.log"));
    stop();
    return;
  }
  TempDir tdir;
  const std::string tpl = write_template(tdir, kGrid2x2);
  const std::string out = root + "/sweep";
  const std::string run = "cd " + sh_quote(root) + " && " + env + sh_quote(XF_CLI_PATH) + " sweep --template " + sh_quote(tpl) +
                          " --out " + sh_quote(out) + " --launcher slurm --parallel 2 > submit.log 2>&1";
  const int rc = std::system(run.c_str());
  INFO(slurp(root + "/submit.log"));
  CHECK(rc == 0);
  const auto t0 = std::chrono::steady_clock::now();
  size_t done = 0;
  for (int i = 0; i < 240 && done < 4; ++i) {  // up to 60 s
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    done = 0;
    for (int t = 0; t < 4; ++t) done += fs::exists(out + "/trial_" + std::to_string(t) + "/result.json");
  }
  CHECK(done == 4);
  MESSAGE("4-trial SLURM array (--parallel 2) finished in "
          << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s after submission");
  const SweepReport rep = gather_sweep_report(out);
  for (const auto& t : rep.trials) {
    CHECK(t.status == "done");
    CHECK(t.steps == 4);
  }
  stop();
}

#else

TEST_CASE("sweep cli: skipped (xfrun_cli was not built; XF_CLI_PATH undefined)" * doctest::skip()) {}

#endif
