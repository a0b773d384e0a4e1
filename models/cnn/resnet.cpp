#include "models/cnn/resnet.h"

#include <fmt/format.h>

#include "kernels/residual.h"
#include "models/cnn/cnn.h"
#include "runtime/config.h"
#include "runtime/core/error.h"
#include "runtime/vision_layers.h"

namespace tandem::models {

namespace {

// Multiply-adds x 2 of a k x k convolution producing a (out, size, size) map.
double conv_flops(int64_t in, int64_t out, int64_t k, int64_t size) {
  return 2.0 * static_cast<double>(in * k * k) * static_cast<double>(out * size * size);
}

}  // namespace

ResNetOptions parse_resnet_options(const toml::table& table, int64_t in_features, int64_t classes,
                                   const std::string& where) {
  check_keys(table, {"channels", "blocks"}, where + " [resnet]");
  ResNetOptions o;
  o.image_size = square_image_side(in_features, "resnet");
  o.classes = classes;
  o.channels = read_positive_list(table, "resnet", "channels", where, /*allow_empty=*/false,
                                  "a non-empty array, e.g. [16, 32, 64]", o.channels);
  if (o.image_size >> (o.channels.size() - 1) == 0)
    throw UserError(fmt::format("resnet.channels in {}: {} stages halve a {}-pixel image to nothing", where,
                                o.channels.size(), o.image_size));
  o.blocks = read_positive_int(table, "resnet", "blocks", where, o.blocks);
  return o;
}

// ---- BasicBlock

BasicBlock::BasicBlock(ParameterSet& params, const std::string& prefix, int64_t in, int64_t out, int64_t stride) {
  Conv2dOptions conv3{.kernel = 3, .stride = stride, .padding = 1, .bias = false};
  main_.add(std::make_unique<Conv2d>(params, prefix + ".conv1", in, out, conv3));
  main_.add(std::make_unique<BatchNorm2d>(params, prefix + ".bn1", out));
  main_.add(std::make_unique<ReLU>());
  main_.add(std::make_unique<Conv2d>(params, prefix + ".conv2", out, out, Conv2dOptions{.kernel = 3, .stride = 1,
                                                                                        .padding = 1, .bias = false}));
  main_.add(std::make_unique<BatchNorm2d>(params, prefix + ".bn2", out));
  if (stride != 1 || in != out) {
    downsample_.add(std::make_unique<Conv2d>(params, prefix + ".downsample.0", in, out,
                                             Conv2dOptions{.kernel = 1, .stride = stride, .padding = 0, .bias = false}));
    downsample_.add(std::make_unique<BatchNorm2d>(params, prefix + ".downsample.1", out));
  }
}

Tensor BasicBlock::forward(const Tensor& input, Context& ctx) {
  Tensor main = main_.forward(input, ctx);
  Tensor shortcut = downsample_.size() > 0 ? downsample_.forward(input, ctx) : input;
  ensure_buffer(sum_, main.shape(), ctx.dtype, ctx.device);
  kernels::residual_add(sum_, main, shortcut, ctx.stream);
  return relu_.forward(sum_, ctx);
}

Tensor BasicBlock::backward(const Tensor& grad_output, Context& ctx) {
  Tensor grad_sum = relu_.backward(grad_output, ctx);
  // Both branches read grad_sum; neither writes it (each module returns its own buffer).
  Tensor grad_main = main_.backward(grad_sum, ctx);
  Tensor grad_shortcut = downsample_.size() > 0 ? downsample_.backward(grad_sum, ctx) : grad_sum;
  ensure_buffer(grad_input_, grad_main.shape(), ctx.dtype, ctx.device);
  kernels::residual_add(grad_input_, grad_main, grad_shortcut, ctx.stream);
  return grad_input_;
}

// ---- ResNet

ResNet::ResNet(const ResNetOptions& o) {
  int64_t size = o.image_size, width = o.channels[0];
  net.add(std::make_unique<Reshape>(std::vector<int64_t>{1, size, size}));
  net.add(std::make_unique<Conv2d>(params, "conv1", 1, width, Conv2dOptions{.kernel = 3, .stride = 1, .padding = 1,
                                                                            .bias = false}));
  net.add(std::make_unique<BatchNorm2d>(params, "bn1", width));
  net.add(std::make_unique<ReLU>());
  forward_flops_per_image += conv_flops(1, width, 3, size);
  for (size_t s = 0; s < o.channels.size(); s++) {
    for (int64_t b = 0; b < o.blocks; b++) {
      int64_t out = o.channels[s], stride = s > 0 && b == 0 ? 2 : 1;
      net.add(std::make_unique<BasicBlock>(params, fmt::format("layer{}.{}", s + 1, b), width, out, stride));
      size = (size - 1) / stride + 1;  // 3x3, padding 1 (and the 1x1 shortcut): ceil(size / stride)
      forward_flops_per_image += conv_flops(width, out, 3, size) + conv_flops(out, out, 3, size);
      if (stride != 1 || width != out) forward_flops_per_image += conv_flops(width, out, 1, size);
      width = out;
    }
  }
  net.add(std::make_unique<GlobalAvgPool>());
  net.add(std::make_unique<Linear>(params, "fc", width, o.classes));
  forward_flops_per_image += 2.0 * static_cast<double>(width * o.classes);
}

}  // namespace tandem::models
