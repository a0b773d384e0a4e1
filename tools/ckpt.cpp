// tandem ckpt inspect DIR: what a checkpoint holds.
// tandem ckpt verify DIR:  exit 0 when every file matches its manifest,
//                          else one line naming the first bad file.
// DIR is a step directory (DIR/step_00000042) or a checkpoint directory,
// whose newest step is taken.
#include <fmt/format.h>

#include <filesystem>
#include <memory>

#include "runtime/checkpoint.h"
#include "runtime/safetensors.h"
#include "tools/commands.h"

namespace tandem::tools {

namespace {

namespace fs = std::filesystem;

// A step directory as given, or the newest step_* inside a checkpoint directory.
std::string step_dir(const std::string& dir) {
  if (fs::exists(fs::path(dir) / "manifest.json")) return dir;
  std::string newest;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.starts_with("step_") && entry.path().string() > newest) newest = entry.path().string();
  }
  if (newest.empty()) throw UserError(fmt::format("{} is neither a checkpoint nor a directory of checkpoints", dir));
  return newest;
}

void inspect(const std::string& dir) {
  std::string path = step_dir(dir);
  nlohmann::json manifest = verify_checkpoint(path);
  fmt::print("{}: {} at step {}, world size {}, seed {}\n", path, manifest.value("format", "?"),
             manifest.value("step", int64_t{0}), manifest.value("world_size", 1), manifest.value("seed", int64_t{0}));
  for (auto& [name, entry] : manifest["files"].items())
    fmt::print("  {:<24} {:>12} bytes  sha256 {}\n", name, entry.value("bytes", uint64_t{0}),
               entry.value("sha256", std::string()));
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    SafetensorsFile f = read_safetensors(path + "/" + file);
    int64_t total = 0;
    fmt::print("{}:\n", file);
    for (auto& [name, t] : f.tensors) {
      fmt::print("  {:<32} {:<5} {}\n", name, dtype_name(t.dtype()), shape_str(t.shape()));
      total += t.numel();
    }
    fmt::print("  ({} tensors, {} values)\n", f.tensors.size(), total);
  }
  if (manifest.contains("config")) fmt::print("config:\n{}\n", manifest["config"].get<std::string>());
}

void verify(const std::string& dir) {
  std::string path = step_dir(dir);
  nlohmann::json manifest = verify_checkpoint(path);  // throws UserError naming the first bad file
  fmt::print("{}: ok ({} files verified)\n", path, manifest["files"].size());
}

}  // namespace

void add_ckpt_command(CLI::App& app) {
  CLI::App* ckpt = app.add_subcommand("ckpt", "Inspect or verify checkpoints");
  ckpt->require_subcommand(1);
  auto dir = std::make_shared<std::string>();
  CLI::App* ins = ckpt->add_subcommand("inspect", "Print what a checkpoint holds");
  ins->add_option("DIR", *dir, "A step directory, or a checkpoint directory (its newest step)")->required();
  ins->callback([dir] { inspect(*dir); });
  auto vdir = std::make_shared<std::string>();
  CLI::App* ver = ckpt->add_subcommand("verify", "Check every file against the manifest");
  ver->add_option("DIR", *vdir, "A step directory, or a checkpoint directory (its newest step)")->required();
  ver->callback([vdir] { verify(*vdir); });
}

}  // namespace tandem::tools
