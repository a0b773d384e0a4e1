#include "models/lstm/lstm.h"

#include <fmt/format.h>

#include "runtime/config.h"
#include "runtime/core/error.h"
#include "runtime/lstm_layer.h"

namespace tandem::models {

CharLstmOptions parse_lstm_options(const toml::table& table, const std::string& where) {
  check_keys(table, {"vocab_size", "embedding", "hidden", "layers"}, where + " [lstm]");
  CharLstmOptions o;
  for (auto [key, field] : {std::pair{"vocab_size", &o.vocab_size}, std::pair{"embedding", &o.embedding},
                            std::pair{"hidden", &o.hidden}, std::pair{"layers", &o.layers}})
    *field = read_positive_int(table, "lstm", key, where, *field);
  if (o.vocab_size > 65536)
    throw UserError(fmt::format("lstm.vocab_size {} in {} does not fit the uint16 token files", o.vocab_size, where));
  return o;
}

CharLstm::CharLstm(const CharLstmOptions& o) {
  net.add(std::make_unique<Embedding>(params, "embedding", o.vocab_size, o.embedding));
  net.add(std::make_unique<Lstm>(params, "lstm", o.embedding, o.hidden, o.layers));
  net.add(std::make_unique<Linear>(params, "head", o.hidden, o.vocab_size));
  for (int64_t l = 0; l < o.layers; l++)
    forward_flops_per_token += 2.0 * static_cast<double>(((l == 0 ? o.embedding : o.hidden) + o.hidden) * 4 * o.hidden);
  forward_flops_per_token += 2.0 * static_cast<double>(o.hidden * o.vocab_size);
}

}  // namespace tandem::models
