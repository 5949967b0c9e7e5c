// Training checkpoints: one folder per saved step,
//
//   <out_dir>/checkpoints/step_<N>/
//     model.safetensors      every parameter of the ParamStore by name, F32, in its declared shape
//                            (loadable by Python's safetensors.torch.load_file as is)
//     optimizer.safetensors  each optimizer state buffer per parameter, "<state>.<param name>" (e.g.
//                            "exp_avg.encoder.0.mha.q_proj.weight"); metadata: optimizer, step_count
//     state.json             whatever the trainer passes (step, data position, RNG state, loss scale...)
//     manifest.json          written last: the step and, per file, its size and CRC-32 (zlib's)
//
// Every file is written atomically (temporary name, fsync, rename, fsync of the folder), and the manifest
// only after all the others, so a folder without a manifest, or whose files do not match it, is an
// interrupted save: find_latest_checkpoint() skips it. Errors throw xfr::Error("checkpoint", ...).
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/optimizer.h"
#include "runtime/param_store.h"

namespace xfr {

// "<out_dir>/checkpoints/step_<step>".
std::string checkpoint_dir(const std::string& out_dir, int64_t step);

// Saves `store`'s parameters, `optimizer`'s state (when not null; its slots must be parameters of
// `store`) and `state` as step `step` (>= 0) under `out_dir`. Re-saving an existing step first removes
// its manifest, so a crash midway leaves it incomplete rather than inconsistent. Returns the folder.
std::string save_checkpoint(const std::string& out_dir, int64_t step, const ParamStore& store, Optimizer* optimizer,
                            const nlohmann::json& state);

struct LoadedCheckpoint {
  int64_t step = 0;
  nlohmann::json state;
};

// Checks the manifest and every file's size and CRC-32, then that the files hold exactly the tensors that
// `store` (and `optimizer`, when not null) expect, in their shapes, refusing a missing, extra or
// mis-shaped tensor by name; only then overwrites the parameters, the optimizer state and step count.
// Nothing is modified when it throws. A checkpoint saved with an optimizer may be loaded without one.
LoadedCheckpoint load_checkpoint(const std::string& step_dir, ParamStore& store, Optimizer* optimizer);

// Loads the parameters of `store` from one safetensors file (a step folder's model.safetensors, or a bare
// one written by save_safetensors / Python's safetensors.torch.save_file): the file must hold exactly the
// store's parameters, F32, in their shapes; a missing, extra or mis-shaped tensor is refused by name
// before anything is overwritten.
void load_model_weights(const std::string& safetensors_path, ParamStore& store);

// Checks the manifest of a step folder and the size and CRC-32 of every file it lists; returns the step.
// Throws xfr::Error("checkpoint", ...) saying what is missing or does not match.
int64_t verify_checkpoint(const std::string& step_dir);

// The folder of the newest step_<N> under <out_dir>/checkpoints that verifies; folders that do not
// (no manifest, a file missing, truncated or corrupted) are skipped. nullopt when there is none.
std::optional<std::string> find_latest_checkpoint(const std::string& out_dir);

// Keeps the newest `keep` complete checkpoints (those with a manifest) and removes older ones, along with
// incomplete folders older than the oldest kept one (leftovers of interrupted saves). Folders newer
// than the newest complete one are left alone (a save may be in progress). keep == 0 keeps everything.
void prune_checkpoints(const std::string& out_dir, int keep);

}  // namespace xfr
