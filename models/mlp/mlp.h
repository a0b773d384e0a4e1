// A multi-layer perceptron classifier: Linear -> activation [-> Dropout],
// repeated for each hidden width, then a Linear to the class logits.
// Parameter names follow a PyTorch nn.Sequential held as `layers`:
// "layers.0.weight", "layers.0.bias", "layers.3.weight", ...
#pragma once

#include <toml++/toml.h>
#include <vector>

#include "models/image_classifier.h"

namespace tandem::models {

struct MlpOptions {
  int64_t in_features = 784;
  std::vector<int64_t> hidden = {256};
  int64_t classes = 10;
  std::string activation = "relu";  // "relu" or "gelu"
  float dropout = 0.f;
};

// Reads the [mlp] table (hidden, activation, dropout); `where` names the
// config in errors. in_features/classes come from the data set.
MlpOptions parse_mlp_options(const toml::table& table, int64_t in_features, int64_t classes, const std::string& where);

struct Mlp : ImageClassifier {
  explicit Mlp(const MlpOptions& options);
};

}  // namespace tandem::models
