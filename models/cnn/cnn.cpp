#include "models/cnn/cnn.h"

#include <fmt/format.h>

#include <cmath>

#include "runtime/config.h"
#include "runtime/core/error.h"
#include "runtime/vision_layers.h"

namespace tandem::models {

CnnOptions parse_cnn_options(const toml::table& table, int64_t in_features, int64_t classes, const std::string& where) {
  check_keys(table, {"channels", "hidden", "dropout", "batchnorm"}, where + " [cnn]");
  CnnOptions o;
  o.image_size = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(in_features))));
  if (o.image_size * o.image_size != in_features)
    throw UserError(fmt::format("the cnn takes square one-channel images; {} features are not", in_features));
  o.classes = classes;
  if (const toml::node* n = table.get("channels")) {
    const toml::array* a = n->as_array();
    if (!a || a->empty()) throw UserError(fmt::format("cnn.channels in {} must be a non-empty array, e.g. [32, 64]", where));
    o.channels.clear();
    for (const toml::node& c : *a) {
      if (!c.is_integer() || c.value<int64_t>().value() <= 0)
        throw UserError(fmt::format("cnn.channels in {} must hold positive integers", where));
      o.channels.push_back(c.value<int64_t>().value());
    }
  }
  if (o.image_size >> o.channels.size() == 0)
    throw UserError(fmt::format("cnn.channels in {}: {} stages halve a {}-pixel image to nothing", where,
                                o.channels.size(), o.image_size));
  if (const toml::node* n = table.get("hidden")) {
    if (!n->is_integer() || n->value<int64_t>().value() <= 0)
      throw UserError(fmt::format("cnn.hidden in {} must be a positive integer", where));
    o.hidden = n->value<int64_t>().value();
  }
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
