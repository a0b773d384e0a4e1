#include "runtime/resume.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "runtime/checkpoint.h"
#include "runtime/core/log.h"
#include "runtime/safetensors.h"

namespace tandem {

namespace fs = std::filesystem;

std::optional<std::string> newest_valid_checkpoint(const std::string& ckpt_dir) {
  std::error_code ec;
  if (ckpt_dir.empty() || !fs::is_directory(ckpt_dir, ec)) return std::nullopt;
  std::vector<std::string> steps;  // "step_00000042": zero-padded, so names sort by step
  for (const auto& entry : fs::directory_iterator(ckpt_dir, ec)) {
    std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.starts_with("step_")) steps.push_back(name);
  }
  std::sort(steps.rbegin(), steps.rend());
  for (const std::string& name : steps) {
    std::string dir = (fs::path(ckpt_dir) / name).string();
    try {
      verify_checkpoint(dir);
      return dir;
    } catch (const UserError& e) {
      log_warn("skipping checkpoint {}: {}", dir, e.what());
    }
  }
  return std::nullopt;
}

ResumePoint load_resume_point(const std::string& step_dir, const ParameterSet& params) {
  nlohmann::json manifest = verify_checkpoint(step_dir);
  ResumePoint r;
  r.dir = step_dir;
  r.step = manifest.value("step", int64_t{0});
  SafetensorsFile model = read_safetensors(step_dir + "/model.safetensors");
  r.weights = Tensor::zeros({params.numel()}, DType::f32, Device::cpu());
  for (const Parameter& p : params.list()) {
    auto it = model.tensors.find(p.name);
    if (it == model.tensors.end())
      throw UserError(fmt::format("checkpoint {} has no parameter '{}': it was written by another model", step_dir, p.name));
    from_file_layout(p, it->second, r.weights.data_as<float>() + p.offset, "checkpoint " + step_dir);
  }
  if (params.buffer_numel() > 0) r.buffers = Tensor::zeros({params.buffer_numel()}, DType::f32, Device::cpu());
  for (const Parameter& b : params.buffer_list()) {
    auto it = model.tensors.find(b.name);
    if (it == model.tensors.end())
      throw UserError(fmt::format("checkpoint {} has no buffer '{}': it was written by another model", step_dir, b.name));
    from_file_layout(b, it->second, r.buffers.data_as<float>() + b.offset, "checkpoint " + step_dir);
  }
  SafetensorsFile optimizer = read_safetensors(step_dir + "/optimizer.safetensors");
  r.optimizer_state = std::move(optimizer.tensors);
  return r;
}

}  // namespace tandem
