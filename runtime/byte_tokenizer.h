// The byte-level tokenizer: every byte of the text is one token (vocabulary
// 256), and decoding is the inverse, so any text, in any encoding, round-trips.
// It needs no merges file, which is why `tandem data tokenize` and
// `tandem generate` use it for the small fortunes corpus.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/core/error.h"

namespace tandem {

constexpr int kByteVocabSize = 256;

inline std::vector<uint16_t> byte_encode(std::string_view text) {
  std::vector<uint16_t> tokens(text.size());
  for (size_t i = 0; i < text.size(); i++) tokens[i] = static_cast<unsigned char>(text[i]);
  return tokens;
}

inline bool is_byte_token(int64_t token) { return token >= 0 && token < kByteVocabSize; }

// Throws UserError for a token that is not a byte (a file made by another
// tokenizer, or a model whose vocabulary is larger).
template <typename Int>
std::string byte_decode(std::span<const Int> tokens) {
  std::string text(tokens.size(), '\0');
  for (size_t i = 0; i < tokens.size(); i++) {
    if (!is_byte_token(tokens[i]))
      throw UserError(fmt::format("token {} at index {} is not a byte token (vocabulary {})", int64_t{tokens[i]}, i,
                                  kByteVocabSize));
    text[i] = static_cast<char>(tokens[i]);
  }
  return text;
}
inline std::string byte_decode(const std::vector<uint16_t>& tokens) {
  return byte_decode(std::span<const uint16_t>(tokens));
}
inline std::string byte_decode(const std::vector<int32_t>& tokens) {
  return byte_decode(std::span<const int32_t>(tokens));
}

}  // namespace tandem
