#include "tools/image_models.h"

#include <fmt/format.h>

#include "models/cnn/cnn.h"
#include "models/cnn/resnet.h"
#include "models/mlp/mlp.h"
#include "runtime/core/error.h"

namespace tandem::tools {

bool is_image_model(const std::string& model) { return model == "mlp" || model == "cnn" || model == "resnet"; }

std::unique_ptr<models::ImageClassifier> make_image_classifier(const std::string& model, const toml::table& options,
                                                               int64_t features, int64_t classes,
                                                               const std::string& where) {
  if (model == "mlp") return std::make_unique<models::Mlp>(models::parse_mlp_options(options, features, classes, where));
  if (model == "cnn") return std::make_unique<models::Cnn>(models::parse_cnn_options(options, features, classes, where));
  if (model == "resnet")
    return std::make_unique<models::ResNet>(models::parse_resnet_options(options, features, classes, where));
  throw UserError(fmt::format("model '{}' in {} is not an image classifier (mlp, cnn, resnet)", model, where));
}

ImageDataset load_image_split(const std::string& data, const std::string& dir, bool train, const std::string& model,
                              const std::string& where) {
  if (data != "fashion-mnist")
    throw UserError(fmt::format("data '{}' in {} is not known for the {} (available: fashion-mnist)", data, where,
                                model));
  return load_fashion_mnist(dir, train);
}

}  // namespace tandem::tools
