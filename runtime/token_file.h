// Token files in llm.c's format (dev/data/data_common.py, llmc/dataloader.h),
// so shards made by llm.c's scripts and by `tandem data tokenize` are the
// same thing:
//
//   header: 256 int32, little-endian: [0] magic 20240520, [1] version 1,
//           [2] number of tokens; the rest zero
//   then:   that many uint16 tokens, little-endian
//
// Version 2 (llm.c's uint32 tokens for LLaMA 3) is not supported.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tandem {

constexpr int32_t kTokenFileMagic = 20240520;
constexpr int32_t kTokenFileVersion = 1;
constexpr int64_t kTokenHeaderInts = 256;
constexpr int64_t kTokenHeaderBytes = kTokenHeaderInts * 4;

struct TokenFileHeader {
  int32_t magic = 0;
  int32_t version = 0;
  int64_t count = 0;  // tokens after the header
};

// Writes `tokens` to `path` through path.tmp, fsync and rename, so a crash
// never leaves a partial file under the final name. The parent directory
// must exist. Throws UserError naming the file when writing fails.
void write_token_file(const std::string& path, std::span<const uint16_t> tokens);

// Reads and checks the header of `path` and that the file size matches its
// count, without reading the tokens. Throws UserError naming the file and
// what was expected vs found: missing file, short header, bad magic,
// unsupported version, size not matching the count.
TokenFileHeader read_token_header(const std::string& path);

// Every token of `path`, after the checks of read_token_header.
std::vector<uint16_t> read_token_file(const std::string& path);

}  // namespace tandem
