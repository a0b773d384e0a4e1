// Image classification on an in-memory data set (the MLP and the CNNs on
// Fashion-MNIST): batches drawn by the EpochSampler (runtime/sampler.h),
// optionally augmented (runtime/augment.h), judged by the test set's
// accuracy.
#pragma once

#include <optional>

#include "runtime/augment.h"
#include "runtime/idx_dataset.h"
#include "runtime/sampler.h"
#include "runtime/train_task.h"

namespace tandem {

// A batch of images staged on the host, and where the model reads it: the
// same tensors on CPU, device copies (in the compute dtype) on CUDA.
struct ImageBatch {
  ImageBatch(int64_t batch, int64_t features, const Context& ctx);
  // Gathers samples `indices[0, count)` of `data` and moves them to the
  // device; with `augment` enabled, each image augmented with the draw for
  // (seed, epoch, its index).
  void fill(const ImageDataset& data, const int64_t* indices, int64_t count, const Context& ctx,
            const AugmentOptions& augment = {}, uint64_t seed = 0, int64_t epoch = 0);

  Tensor x_host, y_host, x_f32, x, y;
};

class ClassifierTask : public TrainTask {
 public:
  // batch_size per rank; `train` and `test` must outlive the task.
  ClassifierTask(const ImageDataset& train, const ImageDataset& test, int64_t batch_size, uint64_t seed,
                 const parallel::ProcessGroup& pg, const AugmentOptions& augment = {});

  int64_t batches_per_epoch() const override { return sampler_.steps_per_epoch(); }
  void load(int64_t index, Context& ctx) override;
  const Tensor& inputs() const override { return batch_->x; }
  const Tensor& targets() const override { return batch_->y; }
  const char* unit() const override { return "samples"; }
  int64_t units_per_batch() const override { return batch_size_; }
  nlohmann::json evaluate(Module& model, Context& ctx, const parallel::ProcessGroup& pg) override;

 private:
  const ImageDataset& train_;
  const ImageDataset& test_;
  int64_t batch_size_;
  uint64_t seed_;
  AugmentOptions augment_;
  EpochSampler sampler_;
  std::optional<ImageBatch> batch_;  // made by the first load, on its context's device
};

// A classifier judged on a whole data set, as PyTorch users report it: the
// mean cross-entropy of the logits (nats, summed in float64) and the
// fraction classified correctly.
struct ClassifierScore {
  double loss = 0, accuracy = 0;
};

// `model` in evaluation mode over all of `data`, in batches of `batch_size`.
ClassifierScore evaluate_classifier(Module& model, const ImageDataset& data, int64_t batch_size, Context& ctx);

}  // namespace tandem
