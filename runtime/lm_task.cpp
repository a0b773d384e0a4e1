#include "runtime/lm_task.h"

#include <fmt/format.h>

#include "runtime/layers.h"
#include "runtime/parallel/ddp.h"

namespace tandem {

namespace {

std::vector<std::string> train_shards(const TrainConfig& c) {
  if (c.train_data.empty())
    throw UserError(fmt::format("{} sets no train_data (token files, e.g. \"data/fortunes_train.bin\", made by "
                                "`tandem data tokenize`)",
                                c.source));
  return expand_token_shards(c.train_data);
}

TokenLoaderOptions loader_options(const TrainConfig& c, const parallel::ProcessGroup& pg) {
  return {.batch_size = c.batch_size, .seq_len = c.seq_len, .rank = pg.rank(), .world_size = pg.size()};
}

}  // namespace

TokenBatch::TokenBatch(int64_t B, int64_t T, Device device)
    : inputs_host(Tensor::empty({B, T}, DType::i32, Device::cpu())),
      targets_host(Tensor::empty({B * T}, DType::i32, Device::cpu())),
      inputs(device.is_cpu() ? inputs_host : Tensor::empty({B, T}, DType::i32, device)),
      targets(device.is_cpu() ? targets_host : Tensor::empty({B * T}, DType::i32, device)) {}

void TokenBatch::next(TokenLoader& loader, const Context& ctx) {
  loader.next(inputs_host.data_as<int32_t>(), targets_host.data_as<int32_t>());
  if (ctx.device.is_cpu()) return;
  inputs.copy_from(inputs_host, ctx.stream);
  targets.copy_from(targets_host, ctx.stream);
}

LanguageModelTask::LanguageModelTask(const TrainConfig& config, const parallel::ProcessGroup& pg)
    : train_(train_shards(config), loader_options(config, pg)),
      val_batches_(config.val_batches),
      comm_timeout_(static_cast<int64_t>(config.comm_timeout * 1000)) {
  if (!config.val_data.empty())
    val_ = std::make_unique<TokenLoader>(expand_token_shards(config.val_data), loader_options(config, pg));
}

void LanguageModelTask::load(int64_t index, Context& ctx) {
  if (!batch_) batch_.emplace(train_.batch_size(), train_.seq_len(), ctx.device);
  train_.seek(index);
  batch_->next(train_, ctx);
}

nlohmann::json LanguageModelTask::evaluate(Module& model, Context& ctx, const parallel::ProcessGroup& pg) {
  if (!val_) return nlohmann::json::object();
  int64_t batches = val_batches_ > 0 ? std::min(val_batches_, val_->num_batches()) : val_->num_batches();
  double loss = mean_token_loss(model, *val_, batches, ctx);
  // Every rank evaluated as many batches: the mean of the means is the mean.
  if (pg.comm) loss = parallel::mean_over_ranks(loss, ctx.device, *pg.comm, comm_timeout_);
  return {{"val_loss", loss}};
}

double mean_token_loss(Module& model, TokenLoader& loader, int64_t batches, Context& ctx) {
  if (batches <= 0) batches = loader.num_batches();
  bool was_training = ctx.training;
  ctx.training = false;
  TokenBatch batch(loader.batch_size(), loader.seq_len(), ctx.device);
  CrossEntropyLoss loss_fn;
  loader.reset();
  double total = 0;
  for (int64_t i = 0; i < batches; i++) {
    batch.next(loader, ctx);
    Tensor logits = model.forward(batch.inputs, ctx);
    loss_fn.forward(logits.reshape(rows_by_last(logits)), batch.targets, ctx);
    total += loss_fn.mean(ctx);
  }
  ctx.training = was_training;
  return total / static_cast<double>(batches);
}

}  // namespace tandem
