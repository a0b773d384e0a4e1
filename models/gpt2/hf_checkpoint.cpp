#include "models/gpt2/hf_checkpoint.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>

#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/safetensors.h"

namespace tandem::models {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "transformer.";

bool ignored(const std::string& name) {
  return name == "lm_head.weight" || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias");
}

}  // namespace

Gpt2Config read_hf_config(const std::string& dir) {
  fs::path path = fs::path(dir) / "config.json";
  std::ifstream in(path);
  if (!in) throw UserError(fmt::format("{} has no config.json: not a GPT-2 checkpoint directory", dir));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw UserError(fmt::format("{} is not valid JSON", path.string()));
  return from_hf_config(j, path.string());
}

Tensor read_hf_weights(const std::string& dir, const ParameterSet& params) {
  std::string path = (fs::path(dir) / "model.safetensors").string();
  if (!fs::exists(path))
    throw UserError(fmt::format("{} has no model.safetensors (only safetensors weights are read)", dir));
  SafetensorsFile file = read_safetensors(path);
  Tensor weights = Tensor::zeros({params.numel()}, DType::f32, Device::cpu());
  size_t used = 0;
  for (const Parameter& p : params.list()) {
    auto it = file.tensors.find(p.name);
    if (it == file.tensors.end() && p.name.starts_with(kPrefix))
      it = file.tensors.find(p.name.substr(std::string(kPrefix).size()));
    if (it == file.tensors.end())
      throw UserError(fmt::format("{} has no tensor '{}' (nor without the '{}' prefix)", path, p.name, kPrefix));
    from_file_layout(p, it->second, weights.data_as<float>() + p.offset, path);
    used++;
  }
  size_t extra = 0;
  for (const auto& [name, t] : file.tensors) extra += !ignored(name);
  if (extra > used)
    log_warn("{}: {} tensors are not GPT-2 parameters of this configuration and were ignored", path, extra - used);
  return weights;
}

std::unique_ptr<Gpt2> load_gpt2(const std::string& dir, Device device, DType dtype) {
  auto model = std::make_unique<Gpt2>(read_hf_config(dir));
  model->params.allocate(device, dtype, read_hf_weights(dir, model->params));
  return model;
}

}  // namespace tandem::models
