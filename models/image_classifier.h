// What every image classifier (the mlp, the cnn, the resnet) is to the code
// that trains, evaluates or benchmarks it: a network from images (B,
// features) to class logits (B, classes) and the flat parameters it views.
#pragma once

#include "runtime/layers.h"
#include "runtime/parameters.h"

namespace tandem::models {

struct ImageClassifier {
  virtual ~ImageClassifier() = default;
  ParameterSet params;
  Sequential net;
  double forward_flops_per_image = 0;  // convolutions and linears, 2 per multiply-add
};

}  // namespace tandem::models
