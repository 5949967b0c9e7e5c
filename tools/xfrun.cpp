// xfrun: the command line, a thin client of the library.
// Exit codes: 0 success, 1 runtime failure, 2 usage or config error (before anything is written).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <cblas.h>

#include <filesystem>
#include <fstream>

#include "factory/config.h"
#include "factory/predictor.h"
#include "ops/attention_backend.h"
#include "ops/grad.h"
#include "runtime/executor.h"
#include "factory/registry.h"
#include "factory/schema.h"
#include "factory/sweep.h"
#include "factory/sweep_report.h"
#include "factory/sweep_runner.h"
#include "factory/trainer.h"
#include "runtime/checkpoint.h"
#include "runtime/cpu/threadpool.h"
#include "runtime/error.h"
#include "runtime/kernel_registry.h"
#include "runtime/device_context.h"
#include "runtime/logging.h"

using namespace xfr;

namespace {

constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;

struct ConfigArgs {
  std::string config;  // empty: the embedded default
  std::vector<std::string> sets;
};

void add_config_args(CLI::App* cmd, ConfigArgs& a, bool required = false) {
  auto* opt = cmd->add_option("--config,-c", a.config, "YAML or JSON config (default: the embedded default)");
  if (required) opt->required();
  cmd->add_option("--set", a.sets, "override a config key: a.b.c=value (repeatable)");
}

Config load(const ConfigArgs& a) {
  if (a.config.empty()) return load_default_config(a.sets);
  return load_config(a.config, a.sets);
}

void print_components(bool as_json) {
  const Registry& reg = Registry::builtin();
  if (as_json) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& family : reg.families()) {
      nlohmann::json list = nlohmann::json::array();
      for (const auto& name : reg.names(family)) {
        const ComponentEntry* e = reg.find(family, name);
        nlohmann::json params = nlohmann::json::array();
        for (const auto& f : e->params.fields)
          params.push_back({{"name", f.name}, {"type", field_type_name(f)},
                            {"default", f.default_value ? nlohmann::json(*f.default_value) : nlohmann::json()},
                            {"doc", f.doc}});
        list.push_back({{"name", name}, {"doc", e->doc}, {"parameters", params}});
      }
      j[family] = list;
    }
    std::cout << j.dump(2) << "\n";
    return;
  }
  for (const auto& family : reg.families()) {
    std::cout << family << ":\n";
    for (const auto& name : reg.names(family)) {
      const ComponentEntry* e = reg.find(family, name);
      std::cout << "  " << name << "  " << e->doc << "\n";
      for (const auto& f : e->params.fields)
        std::cout << "      " << f.name << " (" << field_type_name(f) << (f.default_value ? ", default " + *f.default_value : "")
                  << "): " << f.doc << "\n";
    }
  }
}

void print_info() {
  std::cout << "xfrun " << xfrun_version() << "\n";
  const bool cuda_built =
#ifdef XF_WITH_CUDA
      true;
#else
      false;
#endif
  std::cout << "build: C++17, " << (cuda_built ? "CUDA backend built" : "CPU only (no CUDA backend in this build)")
            << "\n";
  std::cout << "devices:\n  cpu (" << ThreadPool(0).size() << " threads)\n";
  const int gpus = cuda_device_count();
  for (int i = 0; i < gpus; ++i) {
    try {
      std::cout << "  cuda:" << i << " " << make_device_context(Device::cuda(i))->describe() << "\n";
    } catch (const std::exception& e) {
      std::cout << "  cuda:" << i << " unusable: " << e.what() << "\n";
    }
  }
  if (gpus == 0) std::cout << "  cuda: none (" << cuda_unavailable_reason() << ")\n";
  std::cout << "BLAS: " << openblas_get_config() << "\n";
  for (auto kind : {Device::Kind::cpu, Device::Kind::cuda}) {
    const auto ops = KernelRegistry::builtin().ops(kind);
    if (ops.empty()) continue;
    std::cout << "kernels (" << (kind == Device::Kind::cpu ? "cpu" : "cuda") << ", " << ops.size() << "):";
    for (const auto& op : ops) std::cout << " " << op;
    std::cout << "\n";
  }
  // As xFormers' `python -m xformers.info`: every attention backend, available or not and why.
  std::string request;
  try {
    request = attention_backend_request_name(attention_backend_from_env());
  } catch (const Error&) {
    request = str_cat("'", std::getenv("XF_ATTENTION_BACKEND"), "', invalid: known are auto, native, cudnn, composite");
  }
  std::cout << "attention backends (XF_ATTENTION_BACKEND=" << request
            << "; scaled_dot_product picks the fused flash_attention op for unmasked (B, H, S, D) heads, and on a GPU "
               "auto runs it on cuDNN where cuDNN can, else natively; composite keeps the composite):\n";
  for (const AttentionBackendInfo& b : attention_backends_info()) {
    std::cout << "  " << b.name << ": " << (b.available ? "available" : "unavailable");
    if (!b.detail.empty()) std::cout << " (" << b.detail << ")";
    std::cout << "\n";
  }
}

// Writes every path field of `node` (validated against `s`) as an absolute path: a relative path means
// "relative to the config file" (or to the working directory for --set), so a printed config saved
// elsewhere would otherwise point at other files.
void absolute_paths(ConfigNode& node, const Section& s) {
  for (const auto& f : s.fields) {
    ConfigNode* v = node.find(f.name);
    if (!v || v->is_null_like()) continue;
    if (f.type == FieldType::path && v->is_scalar()) {
      *v = ConfigNode::make_scalar(resolve_path(*v, v->text(), ""), v->quoted(), v->loc());
    } else if (f.type == FieldType::section && v->is_map()) {
      absolute_paths(*v, *f.section);
    } else if (f.type == FieldType::section_list && v->is_list()) {
      for (size_t i = 0; i < v->size(); ++i)
        if (v->at(i).is_map()) absolute_paths(v->at(i), *f.section);
    } else if (f.type == FieldType::component && v->is_map() && v->find("name")) {
      if (const ComponentEntry* e = Registry::builtin().find(f.family, v->at("name").text())) absolute_paths(*v, e->params);
    }
  }
}

int describe(const Config& cfg, bool as_json) {
  LoadedData data = load_data(cfg);
  const int64_t B = get_int(cfg.root.at("train"), "batch_size"), T = get_int(cfg.root.at("data"), "seq_len");
  const std::string precision = get_string(cfg.root.at("train"), "precision");
  // The graphs a GPU would run: activations in the compute dtype of train.precision.
  Model model = make_model(cfg, data.vocab_size, B, make_null_logger(), compute_dtype_of(precision));
  const auto& slots = model.store->slots();
  nlohmann::json params = nlohmann::json::array();
  size_t embedding_params = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    params.push_back({{"name", slots[i].name}, {"shape", model.store->shape(slots[i].name)}, {"numel", slots[i].numel},
                      {"init", model.init.rules[i]}});
    if (slots[i].kind == ParamKind::embedding) embedding_params += slots[i].numel;
  }
  const size_t total = model.store->num_params();
  // FLOPs per token (forward): 2 per weight of every matmul, plus attention's q k^T and p v (4 T C per
  // layer, the non-causal count; causal attention does half). Training: 3x (forward + backward).
  int64_t layers = 0, width = 0;
  const ConfigNode& stacks = model.model_config.at("stack_configs");
  for (size_t i = 0; i < stacks.size(); ++i) {
    layers += get_int(stacks.at(i), "num_layers");
    width = get_int(stacks.at(i), "dim_model");
  }
  const double fwd_flops = 2.0 * static_cast<double>(total - embedding_params) +
                           4.0 * static_cast<double>(layers) * static_cast<double>(T) * static_cast<double>(width);
  // Memory of a training step, estimated before anything runs: weights, gradients and AdamW's two moments
  // (f32 flat buffers), the activation arena of the compiled training graph (its liveness plan, in the
  // compute dtype of train.precision), and on a GPU cuBLASLt's workspace and the token buffers.
  const Gradients grads = gradients(model.train_graph.loss);
  ExecutorOptions plan_only;
  plan_only.allocate = false;
  Executor ex(*model.train_graph.graph, {model.train_graph.loss}, grads, model.store, plan_only);
  const size_t weights = model.store->flat_size() * 4, activations = ex.memory_plan().arena_bytes;
  const size_t workspace = kCudaWorkspaceBytes;
  const size_t inputs = static_cast<size_t>(2 * B * T) * 4;  // tokens and targets (i32)
  const size_t gpu_total = 4 * weights + activations + workspace + inputs;
  const auto out_shape = model.train_graph.logits.shape();
  if (as_json) {
    nlohmann::json j = {{"total_params", total}, {"parameters", params}, {"vocab_size", data.vocab_size},
                        {"output_shape", out_shape}, {"forward_flops_per_token", fwd_flops},
                        {"train_flops_per_token", 3 * fwd_flops},
                        {"memory_bytes", {{"weights", weights}, {"gradients", weights}, {"optimizer", 2 * weights},
                                          {"activations", activations},
                                          {"total", 4 * weights + activations}}},
                        {"gpu_memory_bytes", {{"precision", precision}, {"weights", weights}, {"gradients", weights},
                                              {"optimizer", 2 * weights}, {"activations", activations},
                                              {"workspace", workspace + inputs}, {"total", gpu_total}}}};
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  for (const auto& p : params)
    std::cout << p["name"].get<std::string>() << "  " << p["shape"].dump() << "  " << p["numel"].get<size_t>() << "  "
              << p["init"].get<std::string>() << "\n";
  std::cout << "total parameters: " << total << "\n";
  std::cout << "output: " << nlohmann::json(out_shape).dump() << " (batch " << B << ", seq_len " << T << ")\n";
  std::cout << "FLOPs per token: forward " << fwd_flops << ", training " << 3 * fwd_flops << "\n";
  std::cout << "training-step memory: weights " << weights << " B, gradients " << weights << " B, optimizer "
            << 2 * weights << " B, activations " << activations << " B, total " << 4 * weights + activations << " B\n";
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::cout << "GPU training-step memory (" << precision << "): weights " << weights / gib << " GiB, gradients "
            << weights / gib << " GiB, optimizer " << 2 * weights / gib << " GiB, activations " << activations / gib
            << " GiB, workspace " << (workspace + inputs) / gib << " GiB, total " << gpu_total / gib << " GiB\n";
  return 0;
}

struct SweepArgs {
  std::string templ, out, devices = "cpu", launcher = "local", report_dir;
  int parallel = 1;
  bool resume = false, dry_run = false;
};

// xfrun sweep: plan (every trial validated first: exit 2 before anything is written), run, report.
int sweep_command(const SweepArgs& a, const Logger& logger) {
  const SweepPlan plan = load_sweep(a.templ);
  SweepOptions o;
  o.out_dir = a.out.empty() ? "out/sweeps/" + std::filesystem::path(a.templ).stem().string() : a.out;
  o.parallel = a.parallel;
  o.devices.clear();
  for (size_t start = 0; start <= a.devices.size();) {
    const size_t end = a.devices.find(',', start);
    const std::string d = a.devices.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!d.empty()) o.devices.push_back(d);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  o.resume = a.resume;
  o.dry_run = a.dry_run;
  o.launcher = a.launcher;
  std::error_code ec;
  o.exe = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  XF_CHECK(!ec, "sweep", "cannot find this executable (/proc/self/exe)");
  o.logger = logger;
  const SweepOutcome r = run_sweep(plan, o);
  if (a.launcher != "local" || a.dry_run) return 0;
  const SweepReport rep = gather_sweep_report(o.out_dir);
  write_sweep_report(rep);
  std::cout << sweep_report_table(rep);
  logger->info("{} trials ({} run, {} already done) in {:.1f} s; results: {}/results.csv, {}/report.html", r.trials,
               r.launched, r.skipped, r.wall_s, rep.dir, rep.dir);
  return r.failed > 0 ? kExitRuntime : 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"xfrun: train and run transformer models described by a config"};
  app.require_subcommand(1);
  ConfigArgs train_args, validate_args, print_args, describe_args, infer_args;
  std::string device, out, resume, checkpoint, prompt;
  int64_t seed = -1;
  bool json = false;

  auto* train_cmd = app.add_subcommand("train", "train the model of a config");
  add_config_args(train_cmd, train_args);
  train_cmd->add_option("--device", device, "auto | cpu | cuda | cuda:N (overrides runtime.device)");
  train_cmd->add_option("--out", out, "output folder (overrides runtime.out_dir)");
  train_cmd->add_option("--resume", resume, "auto (newest complete checkpoint) or a checkpoint folder");
  train_cmd->add_option("--seed", seed, "overrides runtime.seed");

  auto* validate_cmd = app.add_subcommand("validate", "check a config; prints ok or every error");
  add_config_args(validate_cmd, validate_args);
  auto* print_cmd = app.add_subcommand(
      "print-config", "the resolved config, defaults filled in, paths made absolute, as YAML");
  add_config_args(print_cmd, print_args);
  auto* describe_cmd = app.add_subcommand("describe", "parameters, their init rules and memory of a config's model");
  add_config_args(describe_cmd, describe_args);
  describe_cmd->add_flag("--json", json, "machine-readable output");
  auto* components_cmd = app.add_subcommand("components", "every registered component and its parameters");
  components_cmd->add_flag("--json", json, "machine-readable output");
  app.add_subcommand("info", "version, build options, devices, BLAS, kernels");
  app.add_subcommand("config-reference", "the config reference in markdown (docs/config.md)");
  auto* infer_cmd = app.add_subcommand("infer", "generate from a trained causal LM");
  add_config_args(infer_cmd, infer_args);
  infer_cmd->add_option("--checkpoint", checkpoint, "a checkpoint folder (step_N)")->required();
  infer_cmd->add_option("--prompt", prompt, "text to continue (default: infer.prompt)");
  std::string input_path, output_path;
  infer_cmd->add_option("--input", input_path, "JSONL records {\"tokens\": [...]} or {\"text\": ...}, one per line");
  infer_cmd->add_option("--output", output_path, "JSONL results (default: stdout)");

  SweepArgs sweep_args;
  auto* sweep_cmd = app.add_subcommand("sweep", "grid or random search from a config template with a sweep: section");
  sweep_cmd->add_option("--template,-t", sweep_args.templ, "the template: a config plus a sweep: section")->required();
  sweep_cmd->add_option("--out", sweep_args.out, "sweep folder (default: out/sweeps/<template name>)");
  sweep_cmd->add_option("--parallel,-j", sweep_args.parallel, "trials at a time (slurm: the array's %P)")
      ->check(CLI::PositiveNumber);
  sweep_cmd->add_option("--devices", sweep_args.devices, "cpu or cuda:0,cuda:1,...: given to trials round-robin");
  sweep_cmd->add_flag("--resume", sweep_args.resume, "run only the trials that are not done");
  sweep_cmd->add_flag("--dry-run", sweep_args.dry_run, "validate and list the trials (slurm: write the script, no sbatch)");
  sweep_cmd->add_option("--launcher", sweep_args.launcher, "local (processes here) or slurm (an sbatch array)")
      ->check(CLI::IsMember({"local", "slurm"}));
  auto* report_cmd = app.add_subcommand("sweep-report", "the results table of a sweep folder; writes results.csv, "
                                                        "results.jsonl and report.html there");
  report_cmd->add_option("dir", sweep_args.report_dir, "the sweep folder")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }

  Logger logger = make_stderr_logger();
  try {
    if (app.got_subcommand("components")) {
      print_components(json);
      return 0;
    }
    if (app.got_subcommand("config-reference")) {
      std::cout << config_reference_markdown(Registry::builtin());
      return 0;
    }
    if (app.got_subcommand("info")) {
      print_info();
      return 0;
    }
    if (app.got_subcommand("validate")) {
      load(validate_args);
      std::cout << "ok\n";
      return 0;
    }
    if (app.got_subcommand("print-config")) {
      Config cfg = load(print_args);
      absolute_paths(cfg.root, Registry::builtin().root());
      std::cout << to_yaml(cfg.root);
      return 0;
    }
    if (app.got_subcommand("sweep")) return sweep_command(sweep_args, logger);
    if (app.got_subcommand("sweep-report")) {
      const SweepReport rep = gather_sweep_report(sweep_args.report_dir);
      write_sweep_report(rep);
      std::cout << sweep_report_table(rep);
      return 0;
    }
    if (app.got_subcommand("describe")) return describe(load(describe_args), json);
    if (app.got_subcommand("train")) {
      ConfigArgs a = train_args;
      if (!device.empty()) a.sets.push_back("runtime.device=" + device);
      if (!out.empty()) a.sets.push_back("runtime.out_dir=" + out);
      if (seed >= 0) a.sets.push_back("runtime.seed=" + std::to_string(seed));
      const Config cfg = load(a);
      TrainOptions opt;
      opt.logger = logger;
      opt.resume = resume;
      opt.progress_line = isatty(fileno(stderr));
      const TrainResult r = train(cfg, opt);
      if (r.initial_val_loss >= 0)
        logger->info("validation loss {:.4f} -> {:.4f}", r.initial_val_loss, r.final_val_loss);
      if (!r.sample.empty()) std::cout << "---- sample ----\n" << r.sample << "\n----------------\n";
      logger->info("metrics: {}/metrics.jsonl, checkpoints: {}/checkpoints", r.out_dir, r.out_dir);
      return 0;
    }
    if (app.got_subcommand("infer")) {
      const Config cfg = load(infer_args);
      verify_checkpoint(checkpoint);
      LoadedData data = load_data(cfg);
      Model model = make_model(cfg, data.vocab_size, 1, make_null_logger());
      const LoadedCheckpoint ck = load_checkpoint(checkpoint, *model.store, nullptr);
      std::unique_ptr<Tokenizer> tok;
      if (ck.state.contains("tokenizer")) tok = std::make_unique<Tokenizer>(Tokenizer::from_json(ck.state["tokenizer"]));
      else if (data.tokenizer) tok = std::make_unique<Tokenizer>(*data.tokenizer);
      ThreadPool pool(static_cast<int>(get_int(cfg.root.at("runtime"), "threads")));
      if (!input_path.empty()) {
        std::ifstream in(input_path);
        if (!in) throw Error("infer", "cannot read --input '" + input_path + "'");
        std::ofstream file;
        if (!output_path.empty()) file.open(output_path);
        std::ostream& out = output_path.empty() ? std::cout : file;
        Predictor predictor(model, &pool);
        std::string line;
        for (int64_t n = 1; std::getline(in, line); ++n) {
          if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
          nlohmann::json rec;
          try {
            rec = nlohmann::json::parse(line);
          } catch (const nlohmann::json::exception& e) {
            throw Error("infer", str_cat(input_path, ":", n, ": not JSON (", e.what(), ")"));
          }
          try {
            out << predictor.run_record(rec, tok.get()).dump() << "\n";
          } catch (const Error& e) {
            throw Error("infer", str_cat(input_path, ":", n, ": ", e.message()));
          }
        }
        return 0;
      }
      XF_CHECK(tok != nullptr, "infer", "generation needs a text model (a tokenizer); use --input for token ids");
      const ConfigNode& inf = cfg.root.at("infer");
      const std::string p = prompt.empty() ? get_string(inf, "prompt") : prompt;
      const auto ids = generate(model, tok->encode(p.empty() ? "\n" : p), get_int(inf, "max_new_tokens"),
                                get_number(inf, "temperature"), get_int(inf, "top_k"), get_number(inf, "top_p"),
                                static_cast<uint64_t>(get_int(cfg.root.at("runtime"), "seed")), &pool);
      std::cout << p << tok->decode(ids) << "\n";
      return 0;
    }
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return e.op() == "config" ? kExitUsage : kExitRuntime;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kExitRuntime;
  }
  return 0;
}
