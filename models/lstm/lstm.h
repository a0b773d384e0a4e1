// A character-level LSTM language model: Embedding (vocab, embedding) ->
// LSTM (layers of `hidden`) -> Linear (hidden, vocab), over (B, T) tokens.
// Names follow a PyTorch module with attributes embedding, lstm and head
// ("lstm.weight_ih_l0", "head.weight", ...).
#pragma once

#include <toml++/toml.h>

#include "runtime/layers.h"
#include "runtime/parameters.h"

namespace tandem::models {

struct CharLstmOptions {
  int64_t vocab_size = 256;  // byte tokens
  int64_t embedding = 64;
  int64_t hidden = 256;
  int64_t layers = 2;
};

// Reads the [lstm] table; `where` names the config in errors.
CharLstmOptions parse_lstm_options(const toml::table& table, const std::string& where);

struct CharLstm {
  explicit CharLstm(const CharLstmOptions& options);
  ParameterSet params;
  Sequential net;  // tokens (B, T) i32 -> logits (B, T, vocab)
  // The gate GEMMs of every layer and the head, 2 per multiply-add.
  double forward_flops_per_token = 0;
};

}  // namespace tandem::models
