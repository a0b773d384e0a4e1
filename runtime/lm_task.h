// Next-token prediction on llm.c token files (GPT-2): batches from a
// TokenLoader (runtime/token_loader.h), judged by the mean cross-entropy on
// the validation files ("val_loss", nats per token).
#pragma once

#include <memory>
#include <optional>

#include "runtime/config.h"
#include "runtime/token_loader.h"
#include "runtime/train_task.h"

namespace tandem {

// One batch of (B, T) input tokens and their (B*T) targets, staged on the
// host and copied to the device (the same tensors on CPU).
struct TokenBatch {
  TokenBatch(int64_t B, int64_t T, Device device);
  // Reads the loader's next batch and moves it to ctx's device.
  void next(TokenLoader& loader, const Context& ctx);

  Tensor inputs_host, targets_host, inputs, targets;
};

class LanguageModelTask : public TrainTask {
 public:
  // Reads config.train_data (and val_data, if set) with config.batch_size
  // sequences of config.seq_len tokens per rank.
  LanguageModelTask(const TrainConfig& config, const parallel::ProcessGroup& pg);

  int64_t batches_per_epoch() const override { return train_.num_batches(); }
  void load(int64_t index, Context& ctx) override;
  const Tensor& inputs() const override { return batch_->inputs; }
  const Tensor& targets() const override { return batch_->targets; }
  const char* unit() const override { return "tokens"; }
  int64_t units_per_batch() const override { return train_.batch_size() * train_.seq_len(); }
  nlohmann::json evaluate(Module& model, Context& ctx, const parallel::ProcessGroup& pg) override;

 private:
  TokenLoader train_;
  std::unique_ptr<TokenLoader> val_;  // null without val_data
  int64_t val_batches_;
  collectives::Millis comm_timeout_;
  std::optional<TokenBatch> batch_;  // made by the first load, on its context's device
};

// Mean next-token cross-entropy (nats) of `model` over `batches` batches
// of `loader` from its start (0: one whole pass); tokens (B, T) in,
// logits (B, T, V) out. Evaluation mode; synchronizes.
double mean_token_loss(Module& model, TokenLoader& loader, int64_t batches, Context& ctx);

}  // namespace tandem
