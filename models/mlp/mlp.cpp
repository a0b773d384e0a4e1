#include "models/mlp/mlp.h"

#include <fmt/format.h>

#include "runtime/config.h"
#include "runtime/core/error.h"

namespace tandem::models {

MlpOptions parse_mlp_options(const toml::table& table, int64_t in_features, int64_t classes, const std::string& where) {
  check_keys(table, {"hidden", "activation", "dropout"}, where + " [mlp]");
  MlpOptions o;
  o.in_features = in_features;
  o.classes = classes;
  o.hidden = read_positive_list(table, "mlp", "hidden", where, /*allow_empty=*/true,
                                "an array of widths, e.g. [256, 128]", o.hidden);
  if (const toml::node* n = table.get("activation")) {
    o.activation = n->value<std::string>().value_or("");
    if (o.activation != "relu" && o.activation != "gelu")
      throw UserError(fmt::format("mlp.activation in {} is '{}'; expected relu or gelu", where, o.activation));
  }
  o.dropout = read_dropout(table, "mlp", where, o.dropout);
  return o;
}

Mlp::Mlp(const MlpOptions& o) {
  int index = 0;  // position in the Sequential, as PyTorch numbers it
  int64_t width = o.in_features;
  for (int64_t h : o.hidden) {
    net.add(std::make_unique<Linear>(params, fmt::format("layers.{}", index++), width, h));
    forward_flops_per_image += 2.0 * static_cast<double>(width * h);
    if (o.activation == "gelu")
      net.add(std::make_unique<GELU>());
    else
      net.add(std::make_unique<ReLU>());
    index++;
    if (o.dropout > 0.f) {
      net.add(std::make_unique<Dropout>(o.dropout));
      index++;
    }
    width = h;
  }
  net.add(std::make_unique<Linear>(params, fmt::format("layers.{}", index), width, o.classes));
  forward_flops_per_image += 2.0 * static_cast<double>(width * o.classes);
}

}  // namespace tandem::models
