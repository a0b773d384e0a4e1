// The training loop for classifiers on in-memory image data (the MLP on
// Fashion-MNIST): sample, forward, loss, backward (all-reducing gradient
// buckets as they fill), clip, step, log, evaluate, checkpoint.
#pragma once

#include <string>

#include "runtime/config.h"
#include "runtime/idx_dataset.h"
#include "runtime/module.h"
#include "runtime/parameters.h"
#include "runtime/parallel/process_group.h"

namespace tandem {

struct TrainOutputs {
  std::string metrics_out;  // JSON lines; empty: none
  std::string ckpt_dir;     // checkpoints; empty: none
  bool progress = true;     // the progress line on stderr
  std::string trace_out;    // a Chrome/Perfetto trace; ranks > 0 write FILE with "-rank<R>" before its extension
  std::string resume = "none";  // "none", "auto" (newest valid checkpoint in ckpt_dir) or a step directory
  int keep = 0;                 // checkpoints to keep, newest first (0: all)
};

struct TrainSummary {
  int64_t steps = 0;
  double final_loss = 0;     // mean loss of the last logged step
  double test_accuracy = 0;  // after the last evaluation
  double seconds = 0;
  std::string checkpoint;    // the last one written, if any
};

// `model` maps (B, features) inputs to (B, classes) logits; its parameters
// are `params` (not yet allocated: the trainer places them on the device).
// With a communicator in `pg`, this is one rank of a data-parallel job:
// every rank trains on its slice of each global batch and gradients are
// averaged (runtime/parallel/ddp.h); rank 0 logs and checkpoints.
TrainSummary train_classifier(const TrainConfig& config, Module& model, ParameterSet& params,
                              const ImageDataset& train, const ImageDataset& test, const TrainOutputs& outputs,
                              const parallel::ProcessGroup& pg = {});

// Fraction of `data` classified correctly, in batches of `batch_size`.
double evaluate_accuracy(Module& model, const ImageDataset& data, int64_t batch_size, Context& ctx);

}  // namespace tandem
