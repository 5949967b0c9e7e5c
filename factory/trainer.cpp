#include "factory/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include <nlohmann/json.hpp>

#include "factory/schema.h"
#include "ops/grad.h"
#include "runtime/checkpoint.h"
#include "runtime/cpu/threadpool.h"
#include "runtime/error.h"
#include "runtime/executor.h"
#include "runtime/file_io.h"
#include "runtime/lr_schedule.h"
#include "runtime/optimizer.h"
#include "runtime/device_context.h"
#include "factory/train_step.h"
#include "runtime/rng.h"

namespace xfr {

namespace fs = std::filesystem;

LoadedData load_data(const Config& config) {
  const ConfigNode& data = config.root.at("data");
  const ConfigNode& model = config.root.at("model");
  const std::string kind = get_string(data, "kind");
  const int64_t seq_len = get_int(data, "seq_len");
  const uint64_t seed = static_cast<uint64_t>(get_int(config.root.at("runtime"), "seed"));
  LoadedData d;
  if (kind == "majority") {  // labelled sequences: no token stream
    MajorityTask task;
    task.num_symbols = get_int(data, "num_symbols");
    task.seq_len = seq_len;
    task.seed = seed;
    d.labelled = task;
    d.vocab_size = task.num_symbols;
  } else {
    // Token streams: runtime/data's loader, fed from the validated config.
    DataConfig dc;
    dc.kind = kind;
    if (kind == "text" || kind == "tokens") dc.path = config_path_value(data, "path");
    dc.seq_len = seq_len;
    dc.val_fraction = get_number(data, "val_fraction");
    dc.tokenizer = get_string(data, "tokenizer");
    dc.dtype = get_string(data, "token_dtype");
    // Token files need the id bound; for the rest, coverage is checked below as a config error.
    dc.vocab_size = kind == "tokens" ? get_int(model, "vocab_size") : 0;
    dc.synthetic.num_symbols = get_int(data, "num_symbols");
    dc.synthetic.num_tokens = get_int(data, "num_examples") * dc.synthetic.example_len();
    dc.seed = seed;
    Dataset ds = load_dataset(dc);
    d.source = ds.source;
    d.split = ds.split;
    if (ds.tokenizer) d.tokenizer = std::make_shared<Tokenizer>(*ds.tokenizer);
    d.vocab_size = ds.vocab_size;
  }
  if (has_value(model, "vocab_size")) {
    const int64_t mv = get_int(model, "vocab_size");
    XF_CHECK(mv >= d.vocab_size, "config", "model.vocab_size ", mv, " does not cover the data's ", d.vocab_size,
             " token ids");
    d.vocab_size = mv;
  }
  return d;
}

void place_on_device(Model& model, Device device) {
  if (device.is_cpu()) {
    model.device_ctx.reset();
    model.device_store.reset();
    return;
  }
  if (!model.device_ctx || model.device_ctx->device() != device) model.device_ctx = make_device_context(device);
  model.device_store = std::make_shared<ParamStore>(*model.store, model.device_ctx.get());
}

OptimizerConfig optimizer_config(const Config& config) {
  const ConfigNode& oc = config.root.at("train").at("optimizer");
  OptimizerConfig o;
  o.name = get_string(oc, "name");
  o.lr = static_cast<float>(get_number(oc, "lr"));
  o.beta1 = static_cast<float>(*oc.at("betas").at(0).as_double());
  o.beta2 = static_cast<float>(*oc.at("betas").at(1).as_double());
  o.eps = static_cast<float>(get_number(oc, "eps"));
  o.weight_decay = static_cast<float>(get_number(oc, "weight_decay"));
  o.momentum = static_cast<float>(get_number(oc, "momentum"));
  o.nesterov = get_bool(oc, "nesterov");
  o.decay_biases = get_bool(oc, "decay_biases");
  o.decay_norms = get_bool(oc, "decay_norms");
  o.decay_embeddings = get_bool(oc, "decay_embeddings");
  return o;
}

Model make_model(const Config& config, int64_t vocab_size, int64_t batch, const Logger& logger, DType compute_dtype) {
  Model m;
  m.model_config = config.root.at("model");
  m.model_config.set("vocab_size", ConfigNode::make_scalar(std::to_string(vocab_size)));
  const int64_t T = get_int(config.root.at("data"), "seq_len");
  // Positional tables default to data.seq_len: fix that length in the model config, so graphs built for
  // shorter sequences (inference) keep the trained table shapes.
  ConfigNode& first = m.model_config.at("stack_configs").at(0);
  if (ConfigNode* pos = first.find("position_encoding_config"); pos && pos->is_map() && !has_value(*pos, "seq_len"))
    pos->set("seq_len", ConfigNode::make_scalar(std::to_string(T)));
  m.train_graph = build_model(m.model_config, batch, T, /*training=*/true, nullptr, compute_dtype);
  m.eval_graph = build_model(m.model_config, batch, T, /*training=*/false, nullptr, compute_dtype);
  m.store = std::make_shared<ParamStore>(*m.train_graph.graph);
  const uint64_t seed = static_cast<uint64_t>(get_int(config.root.at("runtime"), "seed"));
  m.init = initialize_weights(*m.train_graph.graph, *m.store, get_string(m.model_config, "weight_init"),
                              m.train_graph.init_gain, seed);
  check_initialised(m.init, get_string(m.model_config, "check_init"), logger);
  return m;
}

namespace {

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  return s >= 3600 ? str_cat(s / 3600, "h", (s % 3600) / 60, "m") : str_cat(s / 60, "m", s % 60, "s");
}


}  // namespace


TrainResult train(const Config& config, const TrainOptions& o) {
  const ConfigNode& root = config.root;
  const ConfigNode& train = root.at("train");
  const ConfigNode& rt = root.at("runtime");
  const ConfigNode& data_cfg = root.at("data");
  const Device device = resolve_device(get_string(rt, "device"), "runtime.device");
  const std::string precision = get_string(train, "precision");
  if (device.is_cpu() && precision != "fp32")
    throw Error("config", "precision '" + precision + "' needs a CUDA device; the CPU computes in fp32",
                "train.precision");
  auto log = [&](auto&&... args) {
    if (o.logger) o.logger->info(std::forward<decltype(args)>(args)...);
  };
  const int threads = static_cast<int>(get_int(rt, "threads"));
  ThreadPool pool(threads);
  const uint64_t seed = static_cast<uint64_t>(get_int(rt, "seed"));
  const int64_t B = get_int(train, "batch_size"), T = get_int(data_cfg, "seq_len");
  const int64_t steps = get_int(train, "steps"), accum = get_int(train, "grad_accum");

  LoadedData data = load_data(config);
  std::shared_ptr<DeviceContext> device_ctx = make_device_context(device);
  Model model = make_model(config, data.vocab_size, B, o.logger, compute_dtype_of(precision));
  const std::string task = get_string(model.model_config, "task");
  const bool classify = task == "classification";
  XF_CHECK(classify == data.labelled.has_value(), "config",
           classify ? "model.task classification needs labelled data (data.kind: majority)"
                    : "data.kind majority gives labelled sequences: it needs model.task classification");
  const std::string out_dir = config_path_value(rt, "out_dir");
  fs::create_directories(out_dir);

  const OptimizerConfig ocfg = optimizer_config(config);

  // The training step (executor, optimizer, clipping, loss scaling; on a GPU a captured CUDA graph) and
  // the evaluation executor, over one parameter store.
  TrainStepOptions tso;
  tso.device_ctx = device_ctx;
  tso.pool = &pool;
  tso.seed = seed;
  tso.optimizer = ocfg;
  tso.grad_accum = accum;
  tso.grad_clip = get_number(train, "grad_clip");
  tso.compute_dtype = compute_dtype_of(precision);
  tso.cuda_graph = get_bool(rt, "cuda_graph");
  tso.logger = o.logger;
  TrainStep ts(model.train_graph, model.store, tso);
  ExecutorOptions eopt;
  eopt.pool = &pool;
  eopt.seed = seed;
  eopt.device_ctx = device_ctx;
  eopt.cuda_graph = get_bool(rt, "cuda_graph");
  Executor eval_ex(*model.eval_graph.graph, {model.eval_graph.loss}, Gradients{}, ts.store_ptr(), eopt);
  Optimizer* optimizer = &ts.host_optimizer();
  if (device_ctx)
    log("device: {} {}, precision {}{}", device.str(), device_ctx->describe(), precision,
        tso.cuda_graph && accum == 1 ? ", training step as a CUDA graph" : "");
  const ConfigNode& sc = train.at("schedule");
  ScheduleConfig scfg;
  scfg.name = get_string(sc, "name");
  scfg.warmup_steps = get_int(sc, "warmup_steps");
  scfg.min_lr = static_cast<float>(get_number(sc, "min_lr"));
  scfg.total_steps = steps;
  validate_schedule(scfg);

  // Batches: token windows (language modelling) or labelled sequences (classification).
  std::unique_ptr<BatchSampler> sampler;
  std::unique_ptr<EvalBatches> val;
  uint64_t labelled_step = 0;
  Tensor label_inputs = Tensor::empty({B, T}, DType::i32), labels = Tensor::empty({B}, DType::i32);
  if (data.source) {
    sampler = std::make_unique<BatchSampler>(data.split.train, B, T, seed, "train");
    if (data.split.val) val = std::make_unique<EvalBatches>(data.split.val, B, T, get_int(train, "eval_steps"));
  }
  const bool has_val = val != nullptr || data.labelled.has_value();
  auto bind_train_batch = [&](Executor& train_ex, int64_t) {
    if (sampler) {
      const Batch b = sampler->next();
      train_ex.bind(model.train_graph.tokens, b.inputs);
      train_ex.bind(model.train_graph.targets, b.targets);
    } else {
      majority_batch(*data.labelled, 0, labelled_step++, label_inputs, labels);
      train_ex.bind(model.train_graph.tokens, label_inputs);
      train_ex.bind(model.train_graph.targets, labels);
    }
  };

  int64_t start = 0;
  if (!o.resume.empty()) {
    std::optional<std::string> dir;
    if (o.resume == "auto") dir = find_latest_checkpoint(out_dir);
    else dir = o.resume;
    if (dir) {
      const LoadedCheckpoint ck = load_checkpoint(*dir, *model.store, optimizer);
      ts.sync_from_host();
      start = ck.step;
      if (sampler) sampler->set_state(ck.state.at("sampler"));
      else labelled_step = ck.state.at("labelled_step").get<uint64_t>();
      ts.executor().set_runs(ck.state.at("executor_runs").get<uint64_t>());
      log("resumed from {} (step {})", *dir, start);
    } else {
      log("no complete checkpoint under {}: starting fresh", out_dir);
    }
  }

  const std::string metrics_path = (fs::path(out_dir) / "metrics.jsonl").string();
  std::ofstream metrics(metrics_path, start > 0 ? std::ios::app : std::ios::trunc);
  auto evaluate = [&]() -> double {
    double sum = 0;
    int64_t n = 0;
    if (val) {
      val->reset();
      Batch b;
      while (val->next(&b)) {
        eval_ex.bind(model.eval_graph.tokens, b.inputs);
        eval_ex.bind(model.eval_graph.targets, b.targets);
        eval_ex.run();
        sum += eval_ex.get(model.eval_graph.loss).item();
        ++n;
      }
    } else if (data.labelled) {
      for (int64_t i = 0; i < get_int(train, "eval_steps"); ++i) {  // fixed validation batches
        Tensor vin = Tensor::empty({B, T}, DType::i32), vlab = Tensor::empty({B}, DType::i32);
        majority_batch(*data.labelled, 1, static_cast<uint64_t>(i), vin, vlab);
        eval_ex.bind(model.eval_graph.tokens, vin);
        eval_ex.bind(model.eval_graph.targets, vlab);
        eval_ex.run();
        sum += eval_ex.get(model.eval_graph.loss).item();
        ++n;
      }
    }
    return n ? sum / static_cast<double>(n) : -1;
  };

  TrainResult result;
  result.out_dir = out_dir;
  const int64_t params = static_cast<int64_t>(model.store->num_params());
  log("model: {} parameters, {} train tokens, {} val tokens, vocab {}; {} steps of {} x {} tokens (x{} accumulation)",
      params, data.split.train ? data.split.train->size() : 0, data.split.val ? data.split.val->size() : 0,
      data.vocab_size, steps, B, T, accum);
  if (start == 0) {
    result.initial_val_loss = evaluate();
    if (result.initial_val_loss >= 0) log("step 0: val_loss {:.4f}", result.initial_val_loss);
  }
  const int64_t log_every = get_int(train, "log_every"), eval_every = get_int(train, "eval_every");
  const int64_t ckpt_every = get_int(train, "checkpoint_every"), keep = get_int(train, "keep_checkpoints");
  const auto t_start = std::chrono::steady_clock::now();
  auto t_window = t_start;
  int64_t window_tokens = 0;
  for (int64_t step = start; step < steps; ++step) {
    const float lr = learning_rate(scfg, ocfg.lr, step);
    const StepResult sr = ts.step(bind_train_batch, lr);
    const double loss = sr.loss;
    const float norm = sr.grad_norm;
    window_tokens += B * T * accum;
    result.losses.push_back(loss);
    if (step == start) result.first_loss = loss;
    result.final_loss = loss;
    if (o.on_step) o.on_step(step + 1, loss);
    const bool last = step + 1 == steps;
    const bool do_eval = has_val && ((eval_every > 0 && (step + 1) % eval_every == 0) || last);
    double val_loss = -1;
    if (do_eval) val_loss = evaluate();
    if ((step + 1) % log_every == 0 || last || do_eval) {
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - t_window).count();
      const double tps = dt > 0 ? static_cast<double>(window_tokens) / dt : 0;
      const double elapsed = std::chrono::duration<double>(now - t_start).count();
      const double eta = elapsed / static_cast<double>(step + 1 - start) * static_cast<double>(steps - step - 1);
      nlohmann::json rec = {{"step", step + 1}, {"loss", loss}, {"lr", lr}, {"grad_norm", norm}, {"tokens_per_s", tps},
                            {"elapsed_s", elapsed}};
      if (val_loss >= 0) rec["val_loss"] = val_loss;
      if (tso.compute_dtype == DType::f16 && device_ctx) rec["loss_scale"] = sr.loss_scale;
      metrics << rec.dump() << "\n" << std::flush;
      const std::string line = str_cat("step ", step + 1, "/", steps, "  loss ", std::to_string(loss).substr(0, 6),
                                        val_loss >= 0 ? "  val_loss " + std::to_string(val_loss).substr(0, 6) : "",
                                        "  lr ", lr, "  ", static_cast<int64_t>(tps), " tok/s  ETA ", format_duration(eta));
      if (o.progress_line && !do_eval && !last) {
        std::fprintf(stderr, "\r%s\033[K", line.c_str());
      } else {
        if (o.progress_line) std::fprintf(stderr, "\r\033[K");
        log("{}", line);
      }
      t_window = now;
      window_tokens = 0;
    }
    if (val_loss >= 0) result.final_val_loss = val_loss;
    if (last || (ckpt_every > 0 && (step + 1) % ckpt_every == 0)) {
      ts.sync_to_host();  // device parameters and optimizer state into the host store and optimizer
      nlohmann::json state = {{"executor_runs", ts.executor().runs()}, {"loss", loss}};
      if (sampler) state["sampler"] = sampler->state();
      else state["labelled_step"] = labelled_step;
      if (data.tokenizer) state["tokenizer"] = data.tokenizer->to_json();
      save_checkpoint(out_dir, step + 1, *model.store, optimizer, state);
      prune_checkpoints(out_dir, static_cast<int>(keep));
    }
  }
  result.steps = steps;
  ts.sync_to_host();
  if (device_ctx) {
    const MemoryStats ms = device_ctx->memory_stats();
    log("GPU memory: peak {:.2f} GiB in tensors, {:.2f} GiB reserved", ms.peak_bytes / 1073741824.0,
        ms.reserved_bytes / 1073741824.0);
  }
  if (task == "causal_lm" && data.tokenizer) {
    const ConfigNode& inf = root.at("infer");
    const std::string prompt = get_string(inf, "prompt");
    std::vector<int32_t> ids = data.tokenizer->encode(prompt.empty() ? "\n" : prompt);
    const auto out = generate(model, ids, get_int(inf, "max_new_tokens"), get_number(inf, "temperature"),
                              get_int(inf, "top_k"), get_number(inf, "top_p"), seed, &pool);
    result.sample = prompt + data.tokenizer->decode(out);
    write_file_atomic((fs::path(out_dir) / "sample.txt").string(), result.sample.data(), result.sample.size());
  }
  return result;
}

}  // namespace xfr
