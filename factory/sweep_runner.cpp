#include "factory/sweep_runner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "runtime/error.h"
#include "runtime/file_io.h"

namespace xfr {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string iso_time(double t) {
  const std::time_t s = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&s, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string trial_dir_name(size_t i) { return "trial_" + std::to_string(i); }

json overrides_json(const SweepTrial& t) {
  json o = json::object();
  for (const auto& [k, v] : t.overrides) o[k] = to_json(v);
  return o;
}

std::string sh_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

bool on_path(const std::string& prog) {
  const char* path = std::getenv("PATH");
  if (!path) return false;
  std::string p = path;
  size_t start = 0;
  while (start <= p.size()) {
    const size_t end = p.find(':', start);
    const std::string dir = p.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!dir.empty() && ::access((fs::path(dir) / prog).c_str(), X_OK) == 0) return true;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return false;
}

class StatusFile {
 public:
  StatusFile(std::string path, json j) : path_(std::move(path)), j_(std::move(j)) {}
  json& trial(size_t i) { return j_["trials"][i]; }
  json& root() { return j_; }
  void save() {
    j_["updated"] = iso_time(now_s());
    write_file_atomic(path_, j_.dump(2) + "\n");
  }

 private:
  std::string path_;
  json j_;
};

}  // namespace

json read_sweep_status(const std::string& out_dir) {
  const std::string p = (fs::path(out_dir) / "status.json").string();
  XF_CHECK(fs::exists(p), "config", p, ": no sweep status here (not a sweep folder)");
  const auto bytes = read_file(p);
  try {
    return json::parse(bytes.begin(), bytes.end());
  } catch (const json::exception& e) {
    throw Error("sweep", p + ": not JSON (" + e.what() + ")");
  }
}

std::string slurm_array_spec(const std::vector<size_t>& idx) {
  std::string s;
  for (size_t i = 0; i < idx.size();) {
    size_t j = i;
    while (j + 1 < idx.size() && idx[j + 1] == idx[j] + 1) ++j;
    if (!s.empty()) s += ",";
    s += std::to_string(idx[i]);
    if (j > i) s += "-" + std::to_string(idx[j]);
    i = j + 1;
  }
  return s;
}

std::string slurm_script(const std::string& out_dir, const std::string& exe, const std::vector<size_t>& indices,
                         int parallel, const std::vector<std::string>& devices, const std::string& job_name) {
  const bool cuda = !devices.empty() && devices[0].rfind("cuda", 0) == 0;
  std::string s;
  s += "#!/bin/bash\n";
  s += "# xfrun sweep: one array task per trial; SLURM_ARRAY_TASK_ID is the trial index.\n";
  s += "# Resubmit with: sbatch " + (fs::path(out_dir) / "sweep.sbatch").string() + "\n";
  s += "#SBATCH --job-name=" + job_name + "\n";
  s += "#SBATCH --array=" + slurm_array_spec(indices) + "%" + std::to_string(std::max(1, parallel)) + "\n";
  s += "#SBATCH --output=" + out_dir + "/slurm-%A_%a.out\n";
  s += "#SBATCH --chdir=" + out_dir + "\n";
  s += "#SBATCH --ntasks=1\n";
  if (cuda) s += "#SBATCH --gres=gpu:1\n";
  s += "set -u\n";
  s += "XFRUN=" + sh_quote(exe) + "\n";
  s += "SWEEP=" + sh_quote(out_dir) + "\n";
  s += "ID=\"${SLURM_ARRAY_TASK_ID:?not run as an array task}\"\n";
  s += "TRIAL=\"$SWEEP/trial_$ID\"\n";
  s += "rm -f \"$TRIAL/result.json\"\n";
  s += "RESUME=\"\"\n";
  s += "if [ -f \"$TRIAL/metrics.jsonl\" ]; then RESUME=\"--resume auto\"; else rm -rf \"$TRIAL/checkpoints\"; fi\n";
  s += "START=$(date +%s.%N)\n";
  s += "\"$XFRUN\" train --config \"$TRIAL/config.resolved.yaml\" --device " + std::string(cuda ? "cuda" : "cpu") +
       " $RESUME > \"$TRIAL/train.log\" 2>&1\n";
  s += "RC=$?\n";
  s += "END=$(date +%s.%N)\n";
  s += "WALL=$(awk \"BEGIN { printf \\\"%.3f\\\", $END - $START }\")\n";
  s += "printf '{\"exit_code\": %d, \"wall_s\": %s, \"started\": %s, \"ended\": %s, \"host\": \"%s\", "
       "\"launcher\": \"slurm\", \"job\": \"%s\"}\\n' \"$RC\" \"$WALL\" \"$START\" \"$END\" \"$(hostname)\" "
       "\"${SLURM_ARRAY_JOB_ID:-}_${ID}\" > \"$TRIAL/.result.json.tmp\" && mv -f \"$TRIAL/.result.json.tmp\" "
       "\"$TRIAL/result.json\"\n";
  s += "exit $RC\n";
  return s;
}

SweepOutcome run_sweep(const SweepPlan& plan, const SweepOptions& o) {
  const double t0 = now_s();
  auto log = [&](const std::string& msg) {
    if (o.logger) o.logger->info("{}", msg);
  };
  XF_CHECK(o.launcher == "local" || o.launcher == "slurm", "config", "--launcher: '", o.launcher, "' is not local or slurm");
  XF_CHECK(o.parallel >= 1, "config", "--parallel must be at least 1");
  XF_CHECK(!o.devices.empty(), "config", "--devices: empty list");
  for (const auto& d : o.devices) {
    const bool ok = d == "cpu" || d == "cuda" ||
                    (d.rfind("cuda:", 0) == 0 && d.size() > 5 && d.find_first_not_of("0123456789", 5) == std::string::npos);
    XF_CHECK(ok, "config", "--devices: '", d, "' is not cpu, cuda or cuda:N");
  }
  XF_CHECK(!o.out_dir.empty(), "config", "no sweep output folder");
  XF_CHECK(o.dry_run || !o.exe.empty(), "config", "no xfrun binary to run the trials with");
  const fs::path out = fs::absolute(o.out_dir).lexically_normal();
  const std::string status_path = (out / "status.json").string();

  SweepOutcome r;
  r.trials = plan.trials.size();
  r.status_path = status_path;

  // The status file: fresh, or the one being resumed (which must describe the same trials).
  json params = json::array();
  for (const auto& p : plan.spec.parameters) params.push_back(p.key);
  json st;
  const bool exists = fs::exists(status_path);
  if (exists && !o.resume) {
    throw Error("config", str_cat(out.string(), " already holds a sweep (status.json); pass --resume to continue it, "
                                               "or choose another --out"));
  }
  if (exists) {
    st = read_sweep_status(out.string());
    const json& trials = st.at("trials");
    XF_CHECK(trials.size() == plan.trials.size(), "config", status_path, " has ", trials.size(), " trials, the template ",
             plan.trials.size(), ": not the same sweep");
    for (size_t i = 0; i < plan.trials.size(); ++i)
      XF_CHECK(trials[i].at("overrides") == overrides_json(plan.trials[i]), "config", status_path, ": trial ", i,
               " was (", trials[i].at("overrides").dump(), "), the template now gives (", plan.trials[i].label(),
               "): not the same sweep");
  } else {
    st = json::object();
    st["version"] = 1;
    st["template"] = plan.template_path;
    st["method"] = plan.spec.method;
    st["metric"] = {{"name", plan.spec.metric}, {"goal", plan.spec.goal}};
    st["parameters"] = params;
    st["created"] = iso_time(t0);
    json trials = json::array();
    for (const auto& t : plan.trials)
      trials.push_back({{"index", t.index}, {"dir", trial_dir_name(t.index)}, {"overrides", overrides_json(t)},
                        {"status", "pending"}, {"exit_code", nullptr}, {"wall_s", nullptr}, {"device", nullptr},
                        {"attempts", 0}});
    st["trials"] = trials;
  }
  st["launcher"] = o.launcher;

  // Which trials run: every one not done (a result.json written by a SLURM task counts too).
  std::vector<size_t> todo;
  for (size_t i = 0; i < plan.trials.size(); ++i) {
    json& t = st["trials"][i];
    const fs::path res = out / trial_dir_name(i) / "result.json";
    if (t.at("status") != "done" && fs::exists(res)) {
      try {
        const auto b = read_file(res.string());
        const json rj = json::parse(b.begin(), b.end());
        const int rc = rj.at("exit_code").get<int>();
        t["status"] = rc == 0 ? "done" : "failed";
        t["exit_code"] = rc;
        if (rj.contains("wall_s")) t["wall_s"] = rj["wall_s"];
      } catch (const std::exception&) {
      }
    }
    if (t.at("status") == "done") ++r.skipped;
    else todo.push_back(i);
  }

  if (o.dry_run && o.launcher == "local") {
    log(str_cat("dry run: ", plan.trials.size(), " trials (", todo.size(), " to run) into ", out.string()));
    for (size_t i : todo) log(str_cat("  trial ", i, ": ", plan.trials[i].label()));
    r.wall_s = now_s() - t0;
    return r;
  }

  // Trial folders and configs: written for every trial to run (done ones are left alone).
  fs::create_directories(out);
  for (size_t i : todo) {
    const fs::path dir = out / trial_dir_name(i);
    fs::create_directories(dir);
    ConfigNode root = plan.configs[i].root;
    ConfigNode& rt = root.at("runtime");
    rt.set("out_dir", ConfigNode::make_scalar(dir.string(), true));
    write_file_atomic((dir / "config.resolved.yaml").string(),
                      "# xfrun sweep trial " + std::to_string(i) + ": " + plan.trials[i].label() + "\n# template: " +
                          plan.template_path + "\n" + to_yaml(root));
  }
  StatusFile status(status_path, st);
  status.save();

  if (o.launcher == "slurm") {
    const std::string job = "xfrun-sweep-" + fs::path(plan.template_path).stem().string();
    r.sbatch_path = (out / "sweep.sbatch").string();
    if (todo.empty()) {
      log("every trial is done; nothing to submit");
      r.wall_s = now_s() - t0;
      return r;
    }
    write_file_atomic(r.sbatch_path, slurm_script(out.string(), o.exe, todo, o.parallel, o.devices, job));
    fs::permissions(r.sbatch_path, fs::perms::owner_exec | fs::perms::group_exec, fs::perm_options::add);
    if (o.dry_run || !on_path("sbatch")) {
      log(str_cat(o.dry_run ? "dry run" : "sbatch not found", ": wrote ", r.sbatch_path, " (", todo.size(),
                  " trials); submit it with: sbatch ", r.sbatch_path));
      r.wall_s = now_s() - t0;
      return r;
    }
    const std::string cmd = "sbatch --parsable " + sh_quote(r.sbatch_path) + " 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    XF_CHECK(p != nullptr, "sweep", "cannot run sbatch");
    std::string reply;
    char buf[256];
    while (std::fgets(buf, sizeof buf, p)) reply += buf;
    const int rc = ::pclose(p);
    while (!reply.empty() && (reply.back() == '\n' || reply.back() == '\r')) reply.pop_back();
    XF_CHECK(rc == 0, "sweep", "sbatch failed: ", reply);
    r.slurm_job = reply.substr(0, reply.find(';'));
    r.submitted = true;
    for (size_t i : todo) {
      json& t = status.trial(i);
      t["status"] = "submitted";
      t["slurm_job"] = r.slurm_job + "_" + std::to_string(i);
      t["attempts"] = t.value("attempts", 0) + 1;
    }
    status.root()["slurm_job"] = r.slurm_job;
    status.save();
    log(str_cat("submitted ", todo.size(), " trials as SLURM array job ", r.slurm_job, " (", r.sbatch_path, ")"));
    r.wall_s = now_s() - t0;
    return r;
  }

  // ---- local launcher: N processes at a time ----
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  std::vector<int> device_load(o.devices.size(), 0);
  size_t rr = 0;
  struct Running {
    size_t trial;
    size_t device;
    double start;
  };
  std::map<pid_t, Running> running;
  size_t next = 0;
  while (next < todo.size() || !running.empty()) {
    while (next < todo.size() && running.size() < static_cast<size_t>(o.parallel)) {
      const size_t i = todo[next++];
      // Least-loaded device, ties broken round-robin.
      size_t dev = rr % o.devices.size();
      for (size_t k = 0; k < o.devices.size(); ++k) {
        const size_t d = (rr + k) % o.devices.size();
        if (device_load[d] < device_load[dev]) dev = d;
      }
      ++rr;
      const fs::path dir = out / trial_dir_name(i);
      fs::remove(dir / "result.json");
      std::vector<std::string> args = {o.exe, "train", "--config", (dir / "config.resolved.yaml").string(), "--device",
                                       o.devices[dev]};
      if (fs::exists(dir / "metrics.jsonl")) args.insert(args.end(), {"--resume", "auto"});
      else fs::remove_all(dir / "checkpoints");  // a trial without its metrics starts over
      const int64_t cfg_threads = get_int(plan.configs[i].root.at("runtime"), "threads");
      const int threads = cfg_threads > 0 ? static_cast<int>(cfg_threads)
                                          : static_cast<int>(std::max(1u, hw / static_cast<unsigned>(o.parallel)));
      if (cfg_threads == 0) args.insert(args.end(), {"--set", "runtime.threads=" + std::to_string(threads)});
      const std::string log_path = (dir / "train.log").string();
      const pid_t parent = ::getpid();
      const pid_t pid = ::fork();
      XF_CHECK(pid >= 0, "sweep", "fork failed");
      if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a killed sweep takes its trials with it
        if (::getppid() != parent) ::_exit(126);
        const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        const int in = ::open("/dev/null", O_RDONLY);
        if (fd < 0 || in < 0) ::_exit(126);
        ::dup2(in, 0);
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        const std::string t = std::to_string(threads);
        ::setenv("OPENBLAS_NUM_THREADS", t.c_str(), 1);
        ::setenv("OMP_NUM_THREADS", t.c_str(), 1);
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        ::execv(argv[0], argv.data());
        ::_exit(127);
      }
      const double start = now_s();
      running[pid] = Running{i, dev, start};
      ++device_load[dev];
      ++r.launched;
      json& t = status.trial(i);
      t["status"] = "running";
      t["device"] = o.devices[dev];
      t["exit_code"] = nullptr;
      t["wall_s"] = nullptr;
      t["started"] = iso_time(start);
      t["attempts"] = t.value("attempts", 0) + 1;
      status.save();
      log(str_cat("trial ", i, " started on ", o.devices[dev], ": ", plan.trials[i].label()));
    }
    int wst = 0;
    const pid_t pid = ::waitpid(-1, &wst, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      throw Error("sweep", "waitpid failed");
    }
    auto it = running.find(pid);
    if (it == running.end()) continue;
    const Running run = it->second;
    running.erase(it);
    --device_load[run.device];
    const double end = now_s(), wall = end - run.start;
    const int rc = WIFEXITED(wst) ? WEXITSTATUS(wst) : 128 + (WIFSIGNALED(wst) ? WTERMSIG(wst) : 0);
    const fs::path dir = out / trial_dir_name(run.trial);
    const json res = {{"exit_code", rc}, {"wall_s", wall}, {"started", run.start}, {"ended", end},
                      {"launcher", "local"}, {"device", o.devices[run.device]}};
    write_file_atomic((dir / "result.json").string(), res.dump() + "\n");
    json& t = status.trial(run.trial);
    t["status"] = rc == 0 ? "done" : "failed";
    t["exit_code"] = rc;
    t["wall_s"] = wall;
    t["ended"] = iso_time(end);
    status.save();
    if (rc == 0) ++r.done;
    else ++r.failed;
    char secs[32];
    std::snprintf(secs, sizeof secs, " in %.2f s", wall);
    log(str_cat("trial ", run.trial, rc == 0 ? " done" : " FAILED (exit " + std::to_string(rc) + ", see " +
                                                      (dir / "train.log").string() + ")",
                secs));
  }
  r.wall_s = now_s() - t0;
  return r;
}

}  // namespace xfr
