// A ResNet-style classifier for small grayscale images (CIFAR-style: a 3x3
// stem, no max pool), with torchvision's parameter names so that a PyTorch
// user can load a checkpoint into the same torch.nn layout:
//
//   conv1 (3x3, 1 -> channels[0], no bias), bn1, ReLU
//   layer1 .. layerS: `blocks` BasicBlocks each; the first block of every
//     stage after the first halves the image (stride 2) and widens it to
//     channels[s], its shortcut a 1x1 conv + BatchNorm2d (`downsample`)
//   global average pool, fc (channels[S-1] -> classes)
//
// A BasicBlock is out = ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x)),
// with shortcut(x) = x when the shape is kept, as torchvision's.
#pragma once

#include <toml++/toml.h>
#include <vector>

#include "models/image_classifier.h"
#include "runtime/layers.h"

namespace tandem::models {

struct ResNetOptions {
  int64_t image_size = 28;                        // square, one channel
  std::vector<int64_t> channels = {16, 32, 64};   // one stage per entry
  int64_t blocks = 1;                             // BasicBlocks per stage
  int64_t classes = 10;
};

// Reads the [resnet] table (channels, blocks); `where` names the config in errors.
ResNetOptions parse_resnet_options(const toml::table& table, int64_t in_features, int64_t classes,
                                   const std::string& where);

// The residual block: main branch conv-bn-relu-conv-bn, shortcut identity or
// downsample, sum, ReLU. Its parameters are reported ready (Context::
// grad_ready) by its inner Sequentials, so it owns none itself.
class BasicBlock : public Module {
 public:
  BasicBlock(ParameterSet& params, const std::string& prefix, int64_t in_channels, int64_t out_channels,
             int64_t stride);
  Tensor forward(const Tensor& input, Context& ctx) override;
  Tensor backward(const Tensor& grad_output, Context& ctx) override;
  const char* kind() const override { return "BasicBlock"; }

 private:
  Sequential main_, downsample_;  // downsample_ empty: the identity
  ReLU relu_;
  Tensor sum_, grad_input_;
};

struct ResNet : ImageClassifier {
  explicit ResNet(const ResNetOptions& options);
};

}  // namespace tandem::models
