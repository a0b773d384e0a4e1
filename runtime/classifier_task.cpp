#include "runtime/classifier_task.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cast.h"

namespace tandem {

ImageBatch::ImageBatch(int64_t batch, int64_t features, const Context& ctx)
    : x_host(Tensor::empty({batch, features}, DType::f32, Device::cpu())),
      y_host(Tensor::empty({batch}, DType::i32, Device::cpu())) {
  if (ctx.device.is_cpu()) {
    x = x_host;
    y = y_host;
    return;
  }
  x_f32 = Tensor::empty({batch, features}, DType::f32, ctx.device);
  x = ctx.dtype == DType::f32 ? x_f32 : Tensor::empty({batch, features}, ctx.dtype, ctx.device);
  y = Tensor::empty({batch}, DType::i32, ctx.device);
}

void ImageBatch::fill(const ImageDataset& data, const int64_t* indices, int64_t count, const Context& ctx,
                      const AugmentOptions& augment, uint64_t seed, int64_t epoch) {
  int64_t f = data.features();
  float* xp = x_host.data_as<float>();
  int32_t* yp = y_host.data_as<int32_t>();
  for (int64_t i = 0; i < count; i++) {
    const float* image = data.images.data() + indices[i] * f;
    if (augment.enabled())
      augment_image(xp + i * f, image, data.rows, data.cols, data.black, augment.crop_padding,
                    draw_augment(augment, seed, epoch, indices[i]));
    else
      std::memcpy(xp + i * f, image, f * sizeof(float));
    yp[i] = data.labels[indices[i]];
  }
  if (ctx.device.is_cpu()) return;
  x_f32.copy_from(x_host, ctx.stream);
  y.copy_from(y_host, ctx.stream);
  if (ctx.dtype != DType::f32) kernels::cast(x, x_f32, ctx.stream);
}

ClassifierTask::ClassifierTask(const ImageDataset& train, const ImageDataset& test, int64_t batch_size,
                               uint64_t seed, const parallel::ProcessGroup& pg, const AugmentOptions& augment)
    : train_(train), test_(test), batch_size_(batch_size), seed_(seed), augment_(augment),
      sampler_(train.count, batch_size, seed, pg.rank(), pg.size()) {}

void ClassifierTask::load(int64_t index, Context& ctx) {
  std::vector<int64_t> indices = sampler_.batch(index);
  if (!batch_) batch_.emplace(batch_size_, train_.features(), ctx);
  batch_->fill(train_, indices.data(), batch_size_, ctx, augment_, seed_, index / batches_per_epoch());
}

nlohmann::json ClassifierTask::evaluate(Module& model, Context& ctx, const parallel::ProcessGroup&) {
  ClassifierScore score = evaluate_classifier(model, test_, 1000, ctx);
  return {{"test_accuracy", score.accuracy}, {"test_loss", score.loss}};
}

ClassifierScore evaluate_classifier(Module& model, const ImageDataset& data, int64_t batch_size, Context& ctx) {
  bool was_training = ctx.training;
  ctx.training = false;
  ImageBatch batch(batch_size, data.features(), ctx);
  std::vector<int64_t> indices(data.count);
  for (int64_t i = 0; i < data.count; i++) indices[i] = i;
  int64_t correct = 0;
  double loss = 0;
  for (int64_t begin = 0; begin < data.count; begin += batch_size) {
    int64_t count = std::min(batch_size, data.count - begin);
    batch.fill(data, indices.data() + begin, count, ctx);
    Tensor logits = model.forward(batch.x.slice_rows(0, count), ctx);
    ctx.stream.synchronize();
    std::vector<float> host = logits.to_vector();
    int64_t classes = logits.dim(-1);
    for (int64_t i = 0; i < count; i++) {
      const float* row = host.data() + i * classes;
      int64_t best = std::max_element(row, row + classes) - row;
      int32_t label = data.labels[begin + i];
      correct += best == label;
      double sum = 0;  // log-sum-exp, shifted by the largest logit
      for (int64_t c = 0; c < classes; c++) sum += std::exp(static_cast<double>(row[c]) - row[best]);
      loss += std::log(sum) + row[best] - row[label];
    }
  }
  ctx.training = was_training;
  auto n = static_cast<double>(data.count);
  return {.loss = loss / n, .accuracy = static_cast<double>(correct) / n};
}

}  // namespace tandem
