#include "runtime/token_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "runtime/core/error.h"

namespace tandem {

namespace {

namespace fs = std::filesystem;

// The file is little-endian whatever the host: bytes are packed and
// unpacked one at a time rather than memcpy'd.
void put_le32(std::string& out, size_t at, int32_t v) {
  for (int i = 0; i < 4; i++) out[at + i] = static_cast<char>(static_cast<uint32_t>(v) >> (8 * i));
}
int32_t get_le32(const unsigned char* p) {
  return static_cast<int32_t>(uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24);
}

std::string encode(std::span<const uint16_t> tokens) {
  std::string bytes(static_cast<size_t>(kTokenHeaderBytes) + 2 * tokens.size(), '\0');
  put_le32(bytes, 0, kTokenFileMagic);
  put_le32(bytes, 4, kTokenFileVersion);
  put_le32(bytes, 8, static_cast<int32_t>(tokens.size()));
  char* p = bytes.data() + kTokenHeaderBytes;
  for (uint16_t t : tokens) {
    *p++ = static_cast<char>(t & 0xff);
    *p++ = static_cast<char>(t >> 8);
  }
  return bytes;
}

// Writes all of `bytes` to a new `path` and forces it to disk.
void write_synced(const std::string& path, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw UserError(fmt::format("cannot create token file {}: {}", path, std::strerror(errno)));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::string why = std::strerror(errno);
      ::close(fd);
      throw UserError(fmt::format("error writing token file {}: {}", path, why));
    }
    done += static_cast<size_t>(n);
  }
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw UserError(fmt::format("cannot sync token file {} to disk", path));
}

// So that the rename which publishes the file is itself on disk.
void sync_directory(const fs::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // the file is whole either way; only durability of the name is at stake
  ::fsync(fd);
  ::close(fd);
}

void check_header(const std::string& path, const TokenFileHeader& h, int64_t file_bytes) {
  if (h.magic != kTokenFileMagic)
    throw UserError(fmt::format("{} is not an llm.c token file (magic {}, expected {})", path, h.magic,
                                kTokenFileMagic));
  if (h.version != kTokenFileVersion)
    throw UserError(fmt::format("{} has token file version {}; only version {} (uint16 tokens) is supported", path,
                                h.version, kTokenFileVersion));
  if (h.count < 0) throw UserError(fmt::format("{}: the header says {} tokens", path, h.count));
  int64_t data_bytes = file_bytes - kTokenHeaderBytes;
  if (data_bytes != 2 * h.count)
    throw UserError(fmt::format("{}: the header says {} tokens ({} bytes after the header) but the file has {} bytes "
                                "after the header (truncated or not a token file)",
                                path, h.count, 2 * h.count, data_bytes));
}

std::ifstream open_token_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw UserError(fmt::format("token file {} not found", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(fmt::format("cannot open token file {}", path));
  return in;
}

TokenFileHeader read_header(std::ifstream& in, const std::string& path) {
  unsigned char raw[kTokenHeaderBytes];
  in.read(reinterpret_cast<char*>(raw), sizeof raw);
  if (in.gcount() != kTokenHeaderBytes)
    throw UserError(fmt::format("{} is too short for an llm.c token file: {} bytes, expected a header of {} bytes",
                                path, in.gcount(), kTokenHeaderBytes));
  TokenFileHeader h{.magic = get_le32(raw), .version = get_le32(raw + 4), .count = get_le32(raw + 8)};
  std::error_code ec;
  auto file_bytes = fs::file_size(path, ec);
  if (ec) throw UserError(fmt::format("cannot read the size of token file {}: {}", path, ec.message()));
  check_header(path, h, static_cast<int64_t>(file_bytes));
  return h;
}

}  // namespace

void write_token_file(const std::string& path, std::span<const uint16_t> tokens) {
  // The header holds the count as an int32, as llm.c's does.
  if (tokens.size() > static_cast<size_t>(INT32_MAX))
    throw UserError(fmt::format("{}: {} tokens do not fit one llm.c token file (at most {}); split into shards", path,
                                tokens.size(), INT32_MAX));
  std::string tmp = path + ".tmp";
  write_synced(tmp, encode(tokens));
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw UserError(fmt::format("cannot rename {} to {}: {}", tmp, path, ec.message()));
  sync_directory(fs::path(path).parent_path());
}

TokenFileHeader read_token_header(const std::string& path) {
  std::ifstream in = open_token_file(path);
  return read_header(in, path);
}

std::vector<uint16_t> read_token_file(const std::string& path) {
  std::ifstream in = open_token_file(path);
  TokenFileHeader h = read_header(in, path);
  std::vector<unsigned char> raw(static_cast<size_t>(2 * h.count));
  in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
  if (in.gcount() != static_cast<std::streamsize>(raw.size()))
    throw UserError(fmt::format("{} is truncated: read {} of {} token bytes", path, in.gcount(), raw.size()));
  std::vector<uint16_t> tokens(static_cast<size_t>(h.count));
  for (size_t i = 0; i < tokens.size(); i++) tokens[i] = static_cast<uint16_t>(raw[2 * i] | raw[2 * i + 1] << 8);
  return tokens;
}

}  // namespace tandem
