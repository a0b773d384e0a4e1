// Checkpoints: DIR/step_%08d/ holding
//   model.safetensors      fp32 weights, one tensor per parameter, PyTorch names
//   optimizer.safetensors  the optimizer's flat state buffers
//   what else the model asks for (GPT-2: config.json, for Hugging Face)
//   manifest.json          step, format, what else the trainer records, and
//                          each file's size and SHA-256
// The directory is written under a temporary name, every file and the
// directory are fsynced, then it is renamed: a crash never leaves a half
// checkpoint that looks whole.
#pragma once

#include <nlohmann/json.hpp>
#include <map>
#include <string>
#include <vector>

#include "runtime/safetensors.h"

namespace tandem {

struct CheckpointData {
  int64_t step = 0;
  std::vector<NamedTensor> model;
  std::vector<NamedTensor> optimizer;
  nlohmann::json info = nlohmann::json::object();  // config, data cursor, RNG state
  std::map<std::string, std::string> files;         // more files: name -> contents
};

// Writes `data` under `dir`; returns the checkpoint's directory.
std::string save_checkpoint(const std::string& dir, const CheckpointData& data);

// Removes all but the newest `keep` step directories under `dir` (keep <= 0: all stay).
void keep_newest_checkpoints(const std::string& dir, int keep);

// Reads and checks a manifest (every file present, sizes and SHA-256s match);
// throws UserError naming the first problem. Returns the manifest.
nlohmann::json verify_checkpoint(const std::string& step_dir);

// "DIR/step_00000042"
std::string checkpoint_path(const std::string& dir, int64_t step);

}  // namespace tandem
