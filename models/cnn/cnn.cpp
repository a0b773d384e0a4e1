#include "models/cnn/cnn.h"

#include <fmt/format.h>

#include <cmath>

#include "runtime/config.h"
#include "runtime/core/error.h"
#include "runtime/vision_layers.h"

namespace tandem::models {

int64_t square_image_side(int64_t features, const char* model) {
  auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(features))));
  if (side * side != features)
    throw UserError(fmt::format("the {} takes square one-channel images; {} features are not", model, features));
  return side;
}

CnnOptions parse_cnn_options(const toml::table& table, int64_t in_features, int64_t classes, const std::string& where) {
  check_keys(table, {"channels", "hidden", "dropout", "batchnorm"}, where + " [cnn]");
  CnnOptions o;
  o.image_size = square_image_side(in_features, "cnn");
  o.classes = classes;
  o.channels = read_positive_list(table, "cnn", "channels", where, /*allow_empty=*/false,
                                  "a non-empty array, e.g. [32, 64]", o.channels);
  if (o.image_size >> o.channels.size() == 0)
    throw UserError(fmt::format("cnn.channels in {}: {} stages halve a {}-pixel image to nothing", where,
                                o.channels.size(), o.image_size));
  o.hidden = read_positive_int(table, "cnn", "hidden", where, o.hidden);
  o.dropout = read_dropout(table, "cnn", where, o.dropout);
  if (const toml::node* n = table.get("batchnorm")) {
    if (!n->is_boolean()) throw UserError(fmt::format("cnn.batchnorm in {} must be true or false", where));
    o.batchnorm = n->value<bool>().value();
  }
  return o;
}

Cnn::Cnn(const CnnOptions& o) {
  int index = 0;  // position in the Sequential, as PyTorch numbers it
  net.add(std::make_unique<Reshape>(std::vector<int64_t>{1, o.image_size, o.image_size}));
  index++;
  int64_t channels = 1, size = o.image_size;
  for (int64_t c : o.channels) {
    net.add(std::make_unique<Conv2d>(params, fmt::format("layers.{}", index++), channels, c,
                                     Conv2dOptions{.kernel = 3, .stride = 1, .padding = 1, .bias = !o.batchnorm}));
    if (o.batchnorm) net.add(std::make_unique<BatchNorm2d>(params, fmt::format("layers.{}", index++), c));
    net.add(std::make_unique<ReLU>());
    net.add(std::make_unique<Pool2d>(Pool2d::Kind::max, 2));
    forward_flops_per_image += 2.0 * static_cast<double>(channels * 9) * static_cast<double>(c * size * size);
    index += 2;
    channels = c;
    size /= 2;
  }
  net.add(std::make_unique<Reshape>(std::vector<int64_t>{-1}));
  index++;
  net.add(std::make_unique<Linear>(params, fmt::format("layers.{}", index), channels * size * size, o.hidden));
  net.add(std::make_unique<ReLU>());
  index += 2;
  if (o.dropout > 0.f) {
    net.add(std::make_unique<Dropout>(o.dropout));
    index++;
  }
  net.add(std::make_unique<Linear>(params, fmt::format("layers.{}", index), o.hidden, o.classes));
  forward_flops_per_image += 2.0 * static_cast<double>(channels * size * size * o.hidden + o.hidden * o.classes);
}

}  // namespace tandem::models
