// The image classifiers by the names configs give them ("mlp", "cnn",
// "resnet"): what tandem train and tandem eval share.
#pragma once

#include <toml++/toml.h>

#include <memory>
#include <string>

#include "models/image_classifier.h"
#include "runtime/idx_dataset.h"

namespace tandem::tools {

bool is_image_model(const std::string& model);

// `model` built from its config table ([mlp], [cnn] or [resnet]) for images
// of `features` pixels; `where` names the config in errors.
std::unique_ptr<models::ImageClassifier> make_image_classifier(const std::string& model, const toml::table& options,
                                                               int64_t features, int64_t classes,
                                                               const std::string& where);

// The Fashion-MNIST split in `dir` (the one data set image models read).
ImageDataset load_image_split(const std::string& data, const std::string& dir, bool train, const std::string& model,
                              const std::string& where);

}  // namespace tandem::tools
