// A small convolutional classifier for 28x28 grayscale images: per stage a
// 3x3 Conv2d (padding 1) [then BatchNorm2d, the convolution then without
// bias], ReLU and a 2x2 max pool, then Flatten, a hidden
// Linear with ReLU [and Dropout], and a Linear to the class logits.
// Parameter names follow a PyTorch nn.Sequential held as `layers`
// ("layers.1.weight" is the first convolution: layers.0 is the Reshape of
// the 784 input features to (1, 28, 28)).
#pragma once

#include <toml++/toml.h>
#include <vector>

#include "models/image_classifier.h"

namespace tandem::models {

struct CnnOptions {
  int64_t image_size = 28;              // square, one channel
  std::vector<int64_t> channels = {32, 64};  // one stage per entry; each halves the image
  int64_t hidden = 128;
  int64_t classes = 10;
  float dropout = 0.f;
  bool batchnorm = false;  // BatchNorm2d after each convolution
};

// The side of a square one-channel image of `features` pixels; UserError
// naming `model` when there is none.
int64_t square_image_side(int64_t features, const char* model);

// Reads the [cnn] table (channels, hidden, dropout, batchnorm); `where` names the config in errors.
CnnOptions parse_cnn_options(const toml::table& table, int64_t in_features, int64_t classes, const std::string& where);

struct Cnn : ImageClassifier {
  explicit Cnn(const CnnOptions& options);
};

}  // namespace tandem::models
