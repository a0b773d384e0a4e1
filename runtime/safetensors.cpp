#include "runtime/safetensors.h"

#include <fmt/format.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/core/error.h"

namespace tandem {

namespace {

// The format's own limit on the JSON header (100 MB), which also keeps a
// corrupt length from turning into a huge allocation.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

using json = nlohmann::json;

}  // namespace

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const NamedTensor& t : tensors) {
    uint64_t bytes = t.tensor.nbytes();
    header[t.name] = {{"dtype", safetensors_name(t.tensor.dtype())},
                      {"shape", t.tensor.shape()},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw UserError(fmt::format("cannot write {}", path));
  uint64_t n = text.size();
  unsigned char len[8];
  for (int i = 0; i < 8; i++) len[i] = static_cast<unsigned char>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const NamedTensor& t : tensors) {
    Tensor host = t.tensor.device().is_cpu() ? t.tensor : t.tensor.to(Device::cpu());
    out.write(static_cast<const char*>(host.data()), static_cast<std::streamsize>(host.nbytes()));
  }
  out.flush();
  if (!out) throw UserError(fmt::format("error writing {} (disk full?)", path));
}

SafetensorsFile read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw UserError(fmt::format("cannot open {}", path));
  uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  auto bad = [&](const std::string& why) { return UserError(fmt::format("{} is not a valid safetensors file: {}", path, why)); };

  unsigned char len[8];
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(len), 8)) throw bad("shorter than its 8-byte header length");
  uint64_t header_bytes = 0;
  for (int i = 0; i < 8; i++) header_bytes |= uint64_t{len[i]} << (8 * i);
  if (header_bytes > kMaxHeaderBytes || header_bytes > file_size - 8)
    throw bad(fmt::format("header length {} exceeds the file or the 100 MB limit", header_bytes));
  std::string text(header_bytes, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_bytes));
  uint64_t data_bytes = file_size - 8 - header_bytes;

  json header = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!header.is_object()) throw bad("header is not a JSON object");

  SafetensorsFile file;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw bad("__metadata__ is not an object");
      for (auto& [k, v] : entry.items())
        if (v.is_string()) file.metadata[k] = v.get<std::string>();
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      throw bad(fmt::format("entry '{}' lacks dtype, shape or data_offsets", name));
    const json& offsets = entry["data_offsets"];
    if (!entry["dtype"].is_string() || !entry["shape"].is_array() || !offsets.is_array() || offsets.size() != 2 ||
        !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      throw bad(fmt::format("entry '{}' is malformed", name));
    DType dtype;
    try {
      dtype = parse_dtype(entry["dtype"].get<std::string>());
    } catch (const UserError&) {
      throw bad(fmt::format("entry '{}' has unsupported dtype {}", name, entry["dtype"].get<std::string>()));
    }
    Shape shape;
    for (const json& d : entry["shape"]) {
      if (!d.is_number_unsigned()) throw bad(fmt::format("entry '{}' has a bad shape", name));
      shape.push_back(d.get<int64_t>());
    }
    uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    // Overflow-safe: the element count is checked against the byte range.
    uint64_t expect = dtype_size(dtype);
    for (int64_t d : shape) {
      if (d != 0 && expect > data_bytes / static_cast<uint64_t>(d)) throw bad(fmt::format("entry '{}' is larger than the file", name));
      expect *= static_cast<uint64_t>(d);
    }
    if (begin > end || end > data_bytes || end - begin != expect)
      throw bad(fmt::format("entry '{}' has byte range [{}, {}) for {} bytes of data ({} in the file)", name, begin,
                            end, expect, data_bytes));
    Tensor t = Tensor::empty(shape, dtype, Device::cpu());
    in.seekg(static_cast<std::streamoff>(8 + header_bytes + begin));
    if (!in.read(static_cast<char*>(t.data()), static_cast<std::streamsize>(expect))) throw bad("truncated data");
    file.tensors[name] = t;
  }
  return file;
}

}  // namespace tandem
