#include "runtime/checkpoint.h"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <algorithm>
#include <fstream>
#include <memory>

#include "runtime/core/error.h"

namespace tandem {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kFormat = "tandem-checkpoint-v1";

// The SHA-256 of a file, as lowercase hex (what `sha256sum` prints).
std::string file_sha256(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(fmt::format("cannot read {}", path.string()));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  TANDEM_CHECK(ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1, "OpenSSL SHA-256 init");
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    TANDEM_CHECK(EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount())) == 1, "OpenSSL SHA-256 update");
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  TANDEM_CHECK(EVP_DigestFinal_ex(ctx.get(), digest, &length) == 1, "OpenSSL SHA-256 final");
  std::string hex;
  for (unsigned int i = 0; i < length; i++) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

// Forces `path` (a file or a directory) to disk, so that the rename that
// publishes a checkpoint never lands before its contents.
void fsync_path(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw UserError(fmt::format("cannot open {} to sync it", path.string()));
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw UserError(fmt::format("cannot sync {} to disk", path.string()));
}

}  // namespace

std::string checkpoint_path(const std::string& dir, int64_t step) {
  return (fs::path(dir) / fmt::format("step_{:08d}", step)).string();
}

std::string save_checkpoint(const std::string& dir, const CheckpointData& data) {
  fs::path final_dir = checkpoint_path(dir, data.step);
  fs::path tmp_dir = fs::path(dir) / fmt::format(".step_{:08d}.tmp", data.step);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw UserError(fmt::format("cannot create checkpoint directory {}: {}", dir, ec.message()));
  fs::remove_all(tmp_dir);
  fs::create_directories(tmp_dir);

  write_safetensors((tmp_dir / "model.safetensors").string(), data.model, {{"format", "pt"}});
  write_safetensors((tmp_dir / "optimizer.safetensors").string(), data.optimizer);
  std::vector<std::string> names = {"model.safetensors", "optimizer.safetensors"};
  for (const auto& [name, contents] : data.files) {
    std::ofstream out(tmp_dir / name, std::ios::binary);
    out << contents;
    if (!out.flush()) throw UserError(fmt::format("error writing {} (disk full?)", (tmp_dir / name).string()));
    names.push_back(name);
  }

  json manifest = data.info;
  manifest["format"] = kFormat;
  manifest["step"] = data.step;
  json files = json::object();
  for (const std::string& name : names) {
    fs::path p = tmp_dir / name;
    files[name] = {{"bytes", fs::file_size(p)}, {"sha256", file_sha256(p)}};
  }
  manifest["files"] = files;
  {
    std::ofstream out(tmp_dir / "manifest.json");
    out << manifest.dump(2) << "\n";
    if (!out) throw UserError(fmt::format("error writing {}/manifest.json", tmp_dir.string()));
  }
  names.push_back("manifest.json");
  for (const std::string& name : names) fsync_path(tmp_dir / name);
  fsync_path(tmp_dir);
  fs::remove_all(final_dir);
  fs::rename(tmp_dir, final_dir);
  fsync_path(dir);  // the rename itself
  return final_dir.string();
}

void keep_newest_checkpoints(const std::string& dir, int keep) {
  if (keep <= 0) return;
  std::vector<fs::path> steps;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.is_directory() && entry.path().filename().string().starts_with("step_")) steps.push_back(entry.path());
  std::sort(steps.begin(), steps.end());  // zero-padded names sort by step
  for (size_t i = 0; i + keep < steps.size(); i++) fs::remove_all(steps[i]);
}

static json verify_files(const std::string& step_dir) {
  fs::path manifest_path = fs::path(step_dir) / "manifest.json";
  std::ifstream in(manifest_path);
  if (!in) throw UserError(fmt::format("{} has no manifest.json: not a tandem checkpoint", step_dir));
  json manifest = json::parse(in, nullptr, false);
  if (!manifest.is_object() || manifest.value("format", "") != kFormat || !manifest.contains("files") ||
      !manifest["files"].is_object())
    throw UserError(fmt::format("{} is not a {} manifest", manifest_path.string(), kFormat));
  for (auto& [name, entry] : manifest["files"].items()) {
    fs::path p = fs::path(step_dir) / name;
    if (!fs::exists(p)) throw UserError(fmt::format("checkpoint file {} is missing", p.string()));
    if (fs::file_size(p) != entry.value("bytes", uint64_t{0}))
      throw UserError(fmt::format("checkpoint file {} has {} bytes, the manifest says {}", p.string(),
                                  fs::file_size(p), entry.value("bytes", uint64_t{0})));
    if (!entry.contains("sha256"))
      throw UserError(fmt::format("{} records no SHA-256 for {}: it was written by an older tandem and cannot be "
                                  "verified",
                                  manifest_path.string(), name));
    if (file_sha256(p) != entry.value("sha256", std::string()))
      throw UserError(fmt::format("checkpoint file {} does not match its SHA-256 in the manifest: it is corrupt", p.string()));
  }
  return manifest;
}

json verify_checkpoint(const std::string& step_dir) {
  try {
    return verify_files(step_dir);
  } catch (const json::exception& e) {  // a field of the wrong type in a damaged manifest
    throw UserError(fmt::format("{}/manifest.json is malformed: {}", step_dir, e.what()));
  } catch (const fs::filesystem_error& e) {  // a file name that is not a file
    throw UserError(fmt::format("{}/manifest.json names something that is not a file: {}", step_dir, e.what()));
  }
}

}  // namespace tandem
