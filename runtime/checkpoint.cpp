#include "runtime/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <system_error>
#include <utility>
#include <vector>

#include "runtime/error.h"
#include "runtime/file_io.h"
#include "runtime/safetensors.h"

namespace xfr {

namespace fs = std::filesystem;

namespace {

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "state.json";
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kManifestFormat = "xfrun-checkpoint";
// Bumped whenever the folder layout changes incompatibly; a loader refuses versions it does not know.
constexpr int kManifestVersion = 1;
// Folder names longer than this many digits cannot hold an int64 step and are not checkpoints.
constexpr size_t kMaxStepDigits = 18;

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw Error("checkpoint", where + ": " + what);
}

std::string hex32(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

// The step of a folder named step_<digits>, or -1.
int64_t parse_step_name(const std::string& name) {
  const std::string prefix = "step_";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return -1;
  const std::string digits = name.substr(prefix.size());
  if (digits.size() > kMaxStepDigits) return -1;
  int64_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

// step_<N> folders under <out_dir>/checkpoints, newest first.
std::vector<std::pair<int64_t, fs::path>> list_step_dirs(const std::string& out_dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  const fs::path root = fs::path(out_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_directory(ec)) continue;
    const int64_t step = parse_step_name(it->path().filename().string());
    if (step >= 0) out.emplace_back(step, it->path());
  }
  if (ec) fail(root.string(), "cannot list: " + ec.message());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

std::string metadata_value(const SafetensorsHeader& h, const std::string& key, const std::string& file) {
  auto it = h.metadata.find(key);
  if (it == h.metadata.end()) fail(file, "metadata has no '" + key + "'");
  return it->second;
}

// A verified checkpoint folder: the manifest and the bytes of every file it lists.
struct VerifiedFiles {
  int64_t step = 0;
  std::map<std::string, std::vector<uint8_t>> files;
};

VerifiedFiles read_verified(const std::string& step_dir) {
  const fs::path dir(step_dir);
  const std::string manifest_path = (dir / kManifestFile).string();
  std::error_code ec;
  if (!fs::exists(manifest_path, ec)) fail(step_dir, "no manifest.json (an interrupted or foreign save)");
  const std::vector<uint8_t> mbytes = read_file(manifest_path);
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(mbytes.begin(), mbytes.end());
  } catch (const nlohmann::json::exception& e) {
    fail(manifest_path, std::string("not valid JSON: ") + e.what());
  }
  VerifiedFiles v;
  try {
    if (m.at("format").get<std::string>() != kManifestFormat) fail(manifest_path, "format is not " + std::string(kManifestFormat));
    const int version = m.at("version").get<int>();
    if (version != kManifestVersion)
      fail(manifest_path, str_cat("version ", version, " is not the supported ", kManifestVersion));
    v.step = m.at("step").get<int64_t>();
    const auto& files = m.at("files");
    if (!files.is_object()) fail(manifest_path, "\"files\" is not an object");
    for (auto it = files.begin(); it != files.end(); ++it) {
      const std::string& name = it.key();
      // Only plain names: a manifest must not point outside its folder.
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
        fail(manifest_path, "lists an invalid file name '" + name + "'");
      const uint64_t size = it.value().at("size").get<uint64_t>();
      const std::string crc = it.value().at("crc32").get<std::string>();
      const std::string path = (dir / name).string();
      if (!fs::exists(path, ec)) fail(step_dir, "missing file " + name + " listed in the manifest");
      std::vector<uint8_t> bytes = read_file(path);
      if (bytes.size() != size)
        fail(path, str_cat("size ", bytes.size(), " does not match the manifest's ", size, " (truncated or replaced)"));
      const std::string actual = hex32(crc32(bytes.data(), bytes.size()));
      if (actual != crc) fail(path, "CRC-32 " + actual + " does not match the manifest's " + crc + " (corrupted)");
      v.files.emplace(name, std::move(bytes));
    }
  } catch (const nlohmann::json::exception& e) {
    fail(manifest_path, std::string("malformed: ") + e.what());
  }
  for (const char* required : {kModelFile, kStateFile})
    if (!v.files.count(required)) fail(manifest_path, std::string("does not list ") + required);
  return v;
}

// The shape a state tensor of parameter slot `s` gets: the parameter's.
Shape slot_shape(const ParamStore& store, const ParamSlot& s, const std::string& what) {
  XF_CHECK(store.has(s.name), "checkpoint", what, ": optimizer slot '", s.name, "' is not a parameter of the store");
  const ParamSlot& ps = store.slot(s.name);
  XF_CHECK(ps.numel == s.numel, "checkpoint", what, ": optimizer slot '", s.name, "' has ", s.numel,
           " elements but the parameter has ", ps.numel);
  return store.shape(s.name);
}

// Checks that a file holds exactly `expected` (name -> shape), all F32; names the first offender.
void check_tensors(const SafetensorsHeader& h, const std::map<std::string, Shape>& expected, const std::string& file) {
  std::set<std::string> seen;
  for (const auto& e : h.entries) {
    auto it = expected.find(e.name);
    if (it == expected.end()) fail(file, "unexpected tensor '" + e.name + "' (not in the model being loaded)");
    if (e.dtype != "F32") fail(file, "tensor '" + e.name + "' is " + e.dtype + ", expected F32");
    const Shape shape = safetensors_entry_shape(e, file);
    if (shape != it->second)
      fail(file, "tensor '" + e.name + "' has shape " + shape_str(shape) + ", expected " + shape_str(it->second));
    seen.insert(e.name);
  }
  for (const auto& [name, shape] : expected)
    if (!seen.count(name)) fail(file, "missing tensor '" + name + "' " + shape_str(shape));
}

}  // namespace

std::string checkpoint_dir(const std::string& out_dir, int64_t step) {
  return (fs::path(out_dir) / "checkpoints" / ("step_" + std::to_string(step))).string();
}

std::string save_checkpoint(const std::string& out_dir, int64_t step, const ParamStore& store, Optimizer* optimizer,
                            const nlohmann::json& state) {
  XF_CHECK(step >= 0, "checkpoint", "step ", step, " is negative");
  XF_CHECK(store.params_flat().device().is_cpu(), "checkpoint", "the parameter store is on ",
           store.params_flat().device().str(), "; saving needs it on the CPU");
  const std::string dir = checkpoint_dir(out_dir, step);
  const std::string where = dir;

  // Serialise state.json first: a value that JSON cannot hold (invalid UTF-8) fails before any file is touched.
  std::string state_text;
  try {
    state_text = state.dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {
    fail(where, std::string("state cannot be written as JSON: ") + e.what());
  }

  // Tensors: views into the flat buffers, written without copies.
  std::vector<std::pair<std::string, Tensor>> model;
  for (const ParamSlot& s : store.slots()) model.emplace_back(s.name, store.param(s.name));
  std::vector<std::pair<std::string, Tensor>> opt_tensors;
  std::map<std::string, std::string> opt_meta;
  if (optimizer) {
    for (auto& [sname, buf] : optimizer->state()) {
      XF_CHECK(buf->size() == optimizer->flat_size(), "checkpoint", "optimizer state '", sname, "' has ", buf->size(),
               " elements, expected ", optimizer->flat_size());
      for (const ParamSlot& s : optimizer->slots()) {
        const Shape shape = slot_shape(store, s, where);
        opt_tensors.emplace_back(sname + "." + s.name,
                                 Tensor::wrap(buf->data() + s.offset, shape, DType::f32, Device::cpu(), nullptr));
      }
    }
    const OptimizerConfig& c = optimizer->config();
    opt_meta = {{"optimizer", c.name},
                {"step_count", std::to_string(optimizer->step_count())},
                // Informational (the config file is authoritative): what produced this state.
                {"lr", str_cat(c.lr)},
                {"beta1", str_cat(c.beta1)},
                {"beta2", str_cat(c.beta2)},
                {"eps", str_cat(c.eps)},
                {"weight_decay", str_cat(c.weight_decay)},
                {"momentum", str_cat(c.momentum)}};
  }

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, "cannot create folder: " + ec.message());
  // Make the new folder entries durable (checkpoints/ in out_dir, step_<N> in checkpoints/).
  fsync_directory((fs::path(out_dir) / "checkpoints").string());
  fsync_directory(out_dir.empty() ? std::string(".") : out_dir);

  // An existing manifest would vouch for files about to be replaced: remove it first.
  const fs::path manifest_path = fs::path(dir) / kManifestFile;
  if (fs::exists(manifest_path, ec)) {
    fs::remove(manifest_path, ec);
    if (ec) fail(manifest_path.string(), "cannot remove the old manifest: " + ec.message());
    fsync_directory(dir);
  }

  nlohmann::json files = nlohmann::json::object();
  auto record = [&](const char* name, const FileDigest& d) {
    files[name] = {{"size", d.size}, {"crc32", hex32(d.crc32)}};
  };
  record(kModelFile, save_safetensors((fs::path(dir) / kModelFile).string(), model,
                                      {{"format", "pt"}, {"producer", "xfrun"}, {"step", std::to_string(step)}}));
  if (optimizer) {
    record(kOptimizerFile, save_safetensors((fs::path(dir) / kOptimizerFile).string(), opt_tensors, opt_meta));
  } else {
    fs::remove(fs::path(dir) / kOptimizerFile, ec);  // a stale one from an earlier save would mislead a reader
  }
  record(kStateFile, write_file_atomic((fs::path(dir) / kStateFile).string(), state_text));

  const nlohmann::json manifest = {
      {"format", kManifestFormat}, {"version", kManifestVersion}, {"step", step}, {"files", files}};
  write_file_atomic(manifest_path.string(), manifest.dump(2) + "\n");
  return dir;
}

void load_model_weights(const std::string& path, ParamStore& store) {
  XF_CHECK(store.params_flat().device().is_cpu(), "checkpoint", "the parameter store is on ",
           store.params_flat().device().str(), "; loading needs it on the CPU");
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail(path, "no such file");
  const std::vector<uint8_t> bytes = read_file(path);
  const SafetensorsHeader h = parse_safetensors_header(bytes.data(), bytes.size(), bytes.size(), path);
  std::map<std::string, Shape> expected;
  for (const ParamSlot& s : store.slots()) expected[s.name] = store.shape(s.name);
  check_tensors(h, expected, path);
  const SafetensorsFile f = parse_safetensors(bytes, path);
  for (const auto& [name, t] : f.tensors) store.param(name).copy_from(t);
}

int64_t verify_checkpoint(const std::string& step_dir) { return read_verified(step_dir).step; }

LoadedCheckpoint load_checkpoint(const std::string& step_dir, ParamStore& store, Optimizer* optimizer) {
  XF_CHECK(store.params_flat().device().is_cpu(), "checkpoint", "the parameter store is on ",
           store.params_flat().device().str(), "; loading needs it on the CPU");
  const VerifiedFiles v = read_verified(step_dir);
  const fs::path dir(step_dir);

  // ---- check everything before touching the store or the optimizer --------------------------------
  const std::string model_name = (dir / kModelFile).string();
  const std::vector<uint8_t>& model_bytes = v.files.at(kModelFile);
  const SafetensorsHeader mh = parse_safetensors_header(model_bytes.data(), model_bytes.size(), model_bytes.size(), model_name);
  std::map<std::string, Shape> expected;
  for (const ParamSlot& s : store.slots()) expected[s.name] = store.shape(s.name);
  check_tensors(mh, expected, model_name);

  const std::string opt_name = (dir / kOptimizerFile).string();
  SafetensorsHeader oh;
  int64_t step_count = 0;
  std::vector<std::pair<std::string, std::vector<float>*>> opt_state;
  if (optimizer) {
    auto it = v.files.find(kOptimizerFile);
    if (it == v.files.end()) fail(step_dir, "has no optimizer state (saved without an optimizer)");
    oh = parse_safetensors_header(it->second.data(), it->second.size(), it->second.size(), opt_name);
    const std::string saved = metadata_value(oh, "optimizer", opt_name);
    if (saved != optimizer->config().name)
      fail(opt_name, "holds '" + saved + "' state but the optimizer is '" + optimizer->config().name + "'");
    const std::string sc = metadata_value(oh, "step_count", opt_name);
    try {
      size_t used = 0;
      step_count = std::stoll(sc, &used);
      if (used != sc.size() || step_count < 0) throw std::invalid_argument(sc);
    } catch (const std::exception&) {
      fail(opt_name, "step_count '" + sc + "' is not a non-negative integer");
    }
    opt_state = optimizer->state();
    std::map<std::string, Shape> oexpected;
    for (auto& [sname, buf] : opt_state) {
      XF_CHECK(buf->size() == optimizer->flat_size(), "checkpoint", "optimizer state '", sname, "' has ", buf->size(),
               " elements, expected ", optimizer->flat_size());
      for (const ParamSlot& s : optimizer->slots()) oexpected[sname + "." + s.name] = slot_shape(store, s, step_dir);
    }
    check_tensors(oh, oexpected, opt_name);
  }

  LoadedCheckpoint out;
  out.step = v.step;
  const std::vector<uint8_t>& state_bytes = v.files.at(kStateFile);
  try {
    out.state = nlohmann::json::parse(state_bytes.begin(), state_bytes.end());
  } catch (const nlohmann::json::exception& e) {
    fail((dir / kStateFile).string(), std::string("not valid JSON: ") + e.what());
  }

  // ---- commit ---------------------------------------------------------------------------------------
  float* params = store.params();
  for (const auto& e : mh.entries) {
    const ParamSlot& s = store.slot(e.name);
    std::memcpy(params + s.offset, model_bytes.data() + mh.data_start + e.begin, e.end - e.begin);
  }
  if (optimizer) {
    const std::vector<uint8_t>& ob = v.files.at(kOptimizerFile);
    std::map<std::string, const SafetensorsEntry*> by_name;
    for (const auto& e : oh.entries) by_name[e.name] = &e;
    for (auto& [sname, buf] : opt_state)
      for (const ParamSlot& s : optimizer->slots()) {
        const SafetensorsEntry* e = by_name.at(sname + "." + s.name);
        std::memcpy(buf->data() + s.offset, ob.data() + oh.data_start + e->begin, e->end - e->begin);
      }
    optimizer->set_step_count(step_count);
  }
  return out;
}

std::optional<std::string> find_latest_checkpoint(const std::string& out_dir) {
  for (const auto& [step, path] : list_step_dirs(out_dir)) {
    try {
      if (read_verified(path.string()).step == step) return path.string();
    } catch (const Error&) {
      // Incomplete or damaged: try the next older one.
    }
  }
  return std::nullopt;
}

void prune_checkpoints(const std::string& out_dir, int keep) {
  XF_CHECK(keep >= 0, "checkpoint", "keep ", keep, " is negative");
  if (keep == 0) return;
  const auto dirs = list_step_dirs(out_dir);  // newest first
  if (dirs.empty()) return;
  std::error_code ec;
  int kept = 0;
  bool seen_complete = false;
  for (const auto& [step, path] : dirs) {
    const bool complete = fs::exists(path / kManifestFile, ec);
    if (complete) seen_complete = true;
    if (!seen_complete) continue;  // newer than every complete one: possibly a save in progress
    if (complete && kept < keep) {
      ++kept;
      continue;
    }
    if (!complete && kept < keep) continue;  // between kept checkpoints: left for a later prune
    // Manifest first, so an interrupted removal leaves an incomplete folder, never a "complete" broken one.
    if (complete) {
      fs::remove(path / kManifestFile, ec);
      if (ec) fail(path.string(), "cannot remove manifest: " + ec.message());
      fsync_directory(path.string());
    }
    fs::remove_all(path, ec);
    if (ec) fail(path.string(), "cannot remove: " + ec.message());
  }
  fsync_directory((fs::path(out_dir) / "checkpoints").string());
}

}  // namespace xfr
